//! The fields a wire object sets, as paths: how "accepted, not applied" warnings name every field of a
//! block Keel does not apply without a hand-kept list that could miss one.
//!
//! The walk goes over the object as the wire types serialise it, so paths use the canonical (camelCase)
//! field names even when the YAML used a snake_case alias (`mirror_percent`).

use serde::Serialize;
use serde_yaml::Value;

use crate::source::FieldPath;

/// Every field set in `object`, below `at`, in the wire type's field order. Objects are descended into;
/// scalars and lists are reported whole (a list of servers is one setting, not one per entry). Unset
/// fields (`null`) and empty lists or maps are not set.
pub(super) fn set_fields<T: Serialize>(object: &T, at: &FieldPath) -> Vec<(FieldPath, Value)> {
    let mut out = Vec::new();
    match serde_yaml::to_value(object) {
        Ok(value) => collect(&value, at, &mut out),
        // The wire types always serialise; should one not, the warning names the whole block.
        Err(_) => out.push((at.clone(), Value::Null)),
    }
    out
}

fn collect(value: &Value, at: &FieldPath, out: &mut Vec<(FieldPath, Value)>) {
    match value {
        Value::Null => {}
        Value::Sequence(items) if items.is_empty() => {}
        Value::Mapping(map) if map.is_empty() => {}
        Value::Mapping(map) => {
            for (k, v) in map {
                match k.as_str() {
                    Some(k) => collect(v, &at.key(k), out),
                    // Not a field name (a map keyed by numbers): the map is one setting.
                    None => {
                        out.push((at.clone(), value.clone()));
                        return;
                    }
                }
            }
        }
        Value::Tagged(t) => collect(&t.value, at, out),
        other => out.push((at.clone(), other.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::istio as w;

    fn paths(fields: &[(FieldPath, Value)]) -> Vec<String> {
        fields.iter().map(|(p, _)| p.to_string()).collect()
    }

    #[test]
    fn lists_set_leaves_and_skips_unset_fields() {
        let pool = w::ConnectionPoolSettings {
            tcp: Some(w::TcpSettings {
                max_connections: Some(1),
                tcp_keepalive: Some(w::TcpKeepalive {
                    time: Some("7200s".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            http: Some(w::HttpSettings::default()),
        };
        let at = FieldPath::parse("spec.trafficPolicy.connectionPool");
        assert_eq!(
            paths(&set_fields(&pool, &at)),
            vec![
                "spec.trafficPolicy.connectionPool.tcp.maxConnections",
                "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.time",
            ]
        );
    }

    #[test]
    fn lists_are_one_field_and_false_is_set() {
        let lb = w::LoadBalancerSettings {
            locality_lb_setting: Some(w::LocalityLbSetting {
                failover_priority: vec!["a".into(), "b".into()],
                enabled: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        };
        let fields = set_fields(&lb, &FieldPath::parse("lb"));
        assert_eq!(
            paths(&fields),
            vec![
                "lb.localityLbSetting.failoverPriority",
                "lb.localityLbSetting.enabled"
            ]
        );
        assert_eq!(fields[1].1, Value::Bool(false));
        assert!(set_fields(&w::LoadBalancerSettings::default(), &FieldPath::root()).is_empty());
    }
}
