//! Integers as they reach istiod through the API server.
//!
//! kubectl turns YAML into JSON, and that step writes `100.0` as `100`; tutorials rely on it
//! (`weight: 100.0`, `mirror_percent: 100.0`), so integer fields accept an integer or an integral float.
//! A fractional value (`10.5`) is an error, and so is a numeric string (`"80"`): the CRD schemas declare
//! these fields `type: integer`, so the API server rejects a string before istiod's protobuf decoding,
//! which would read it, runs.

use serde::de::{self, Deserializer, Visitor};

struct OptI64;

impl<'de> Visitor<'de> for OptI64 {
    type Value = Option<i64>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an integer")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(OptI64)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        i64::try_from(v)
            .map(Some)
            .map_err(|_| E::custom(format!("integer {v} is too large")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // Integral floats within i64 range convert exactly; the bound check keeps the cast lossless.
        if v.fract() == 0.0 && v.abs() < 9.0e15 {
            #[expect(
                clippy::cast_possible_truncation,
                reason = "integral and well within i64 range"
            )]
            return Ok(Some(v as i64));
        }
        Err(E::invalid_type(de::Unexpected::Float(v), &self))
    }
}

/// `deserialize_with` for `Option<i64>` fields.
pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    d.deserialize_option(OptI64)
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    struct T {
        #[serde(default, deserialize_with = "super::opt_i64")]
        n: Option<i64>,
    }

    #[test]
    fn accepts_integral_forms() {
        for (text, want) in [
            ("n: 100", Some(100)),
            ("n: 100.0", Some(100)),
            ("n: -1", Some(-1)),
            ("n: null", None),
            ("{}", None),
        ] {
            let t: T = serde_yaml::from_str(text).expect(text);
            assert_eq!(t.n, want, "{text}");
        }
        assert!(serde_yaml::from_str::<T>("n: 10.5").is_err());
        assert!(serde_yaml::from_str::<T>("n: abc").is_err());
        assert!(serde_yaml::from_str::<T>("n: \"1024\"").is_err());
    }
}
