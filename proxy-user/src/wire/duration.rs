//! Duration strings as they appear in Istio YAML.
//!
//! Protobuf's JSON mapping writes a `google.protobuf.Duration` as seconds with a `s` suffix (`1.5s`), but
//! Istio's YAML path has always accepted Go's `time.ParseDuration` syntax too (`100ms`, `1m`, `1h30m`), and
//! the tutorials use both. We accept the union: one or more `<decimal><unit>` terms with units `ns`, `us`
//! (`µs`), `ms`, `s`, `m`, `h`, plus a bare `0`. Signs are rejected: no Istio duration may be negative.

use std::time::Duration;

/// Why a duration string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string is empty or only whitespace.
    #[error("empty duration")]
    Empty,
    /// A leading `-` (or `+`); Istio durations are never negative.
    #[error("duration {0:?} must not be signed")]
    Signed(String),
    /// A number without a unit (`10`); only `0` may omit it.
    #[error("duration {0:?} is missing a unit (use e.g. \"10s\", \"100ms\")")]
    MissingUnit(String),
    /// An unknown unit such as `sec` or `d`.
    #[error("duration {input:?} has unknown unit {unit:?} (expected ns, us, ms, s, m or h)")]
    UnknownUnit {
        /// The whole input.
        input: String,
        /// The offending unit.
        unit: String,
    },
    /// Something that is not a decimal number where one was expected.
    #[error("duration {0:?} is not a number followed by a unit")]
    Malformed(String),
    /// Larger than Rust's `Duration` (or protobuf's 10,000-year limit) can hold.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Nanoseconds per unit; the longest unit names come first so `ms` is not read as `m` + garbage.
const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Protobuf `Duration` allows at most 315,576,000,000 seconds (10,000 years).
const MAX_NANOS: u128 = 315_576_000_000 * 1_000_000_000;

/// Parses `1.5s`, `100ms`, `1m`, `1h30m`, `0` into a [`Duration`].
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.starts_with('-') || s.starts_with('+') {
        return Err(DurationError::Signed(input.to_string()));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        // Number part: digits with at most one '.'.
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(DurationError::Malformed(input.to_string()));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(DurationError::MissingUnit(input.to_string()));
        }
        let Some((_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(DurationError::UnknownUnit {
                input: input.to_string(),
                unit: unit.to_string(),
            });
        };
        total = total
            .checked_add(
                scaled(num, *scale).ok_or_else(|| DurationError::Overflow(input.to_string()))?,
            )
            .ok_or_else(|| DurationError::Overflow(input.to_string()))?;
        rest = next;
    }
    if total > MAX_NANOS {
        return Err(DurationError::Overflow(input.to_string()));
    }
    let secs = u64::try_from(total / 1_000_000_000)
        .map_err(|_| DurationError::Overflow(input.to_string()))?;
    // The remainder is < 1e9 and so always fits in u32.
    let nanos = u32::try_from(total % 1_000_000_000).unwrap_or(0);
    Ok(Duration::new(secs, nanos))
}

/// `num` (decimal, maybe with a fraction) times `scale` nanoseconds, truncated to whole nanoseconds.
fn scaled(num: &str, scale: u128) -> Option<u128> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut total = int.checked_mul(scale)?;
    // Fractions: digit by digit so `0.1s` is exactly 100 ms (no float rounding).
    let mut place = scale;
    for d in frac.chars() {
        place /= 10;
        if place == 0 {
            break;
        }
        total = total.checked_add(u128::from(d.to_digit(10)?) * place)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_istio_accepts() {
        let cases = [
            ("1s", Duration::from_secs(1)),
            ("1.5s", Duration::from_millis(1500)),
            ("0.001s", Duration::from_millis(1)),
            ("100ms", Duration::from_millis(100)),
            ("250us", Duration::from_micros(250)),
            ("10ns", Duration::from_nanos(10)),
            ("1m", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
            ("1h30m", Duration::from_secs(5400)),
            ("0s", Duration::ZERO),
            ("0", Duration::ZERO),
            (".5s", Duration::from_millis(500)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn rejects_bad_input_with_typed_errors() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(matches!(
            parse_duration("-1s"),
            Err(DurationError::Signed(_))
        ));
        assert!(matches!(
            parse_duration("10"),
            Err(DurationError::MissingUnit(_))
        ));
        assert!(matches!(
            parse_duration("5sec"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("1d"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("s"),
            Err(DurationError::Malformed(_))
        ));
        assert!(matches!(
            parse_duration("1..2s"),
            Err(DurationError::Malformed(_))
        ));
        assert!(matches!(
            parse_duration("99999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }
}
