//! PATCH bodies: JSON merge patch (RFC 7386, `application/merge-patch+json`) and the subset of
//! strategic merge patch (`application/strategic-merge-patch+json`) that `kubectl apply` sends for
//! the kinds served here: lists of objects keyed by `name` (containers, ports, ...) merge by name,
//! honouring `$setElementOrder/<field>` and `$patch: delete`; other `$` directives are dropped.

use serde_json::{Map, Value};

/// Applies `patch` to `target` in place; `strategic` selects strategic merge semantics.
pub fn apply(target: &mut Value, patch: &Value, strategic: bool) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(t) = target.as_object_mut() else {
        return;
    };
    for (key, value) in p {
        if key.starts_with('$') {
            if let (true, Some(field)) = (strategic, key.strip_prefix("$deleteFromPrimitiveList/"))
            {
                if let (Some(Value::Array(items)), Some(gone)) =
                    (t.get_mut(field), value.as_array())
                {
                    items.retain(|i| !gone.contains(i));
                }
            }
            continue;
        }
        if value.is_null() {
            t.remove(key);
            continue;
        }
        let slot = t.entry(key.clone()).or_insert(Value::Null);
        match (strategic, named_list(value), slot.as_array_mut()) {
            (true, Some(items), Some(existing))
                if existing.iter().all(|e| e["name"].is_string()) =>
            {
                merge_named(existing, items);
                if let Some(order) = p
                    .get(&format!("$setElementOrder/{key}"))
                    .and_then(Value::as_array)
                {
                    reorder(existing, order);
                }
            }
            _ if value.is_array() => {
                let mut v = value.clone();
                strip_directives(&mut v);
                *slot = v;
            }
            _ => apply(slot, value, strategic),
        }
    }
}

/// `value` as a list of objects that all carry a `name`.
fn named_list(value: &Value) -> Option<&Vec<Value>> {
    value
        .as_array()
        .filter(|items| !items.is_empty() && items.iter().all(|i| i["name"].is_string()))
}

fn merge_named(existing: &mut Vec<Value>, items: &[Value]) {
    for item in items {
        let name = &item["name"];
        let pos = existing.iter().position(|e| &e["name"] == name);
        if item["$patch"].as_str() == Some("delete") {
            if let Some(i) = pos {
                existing.remove(i);
            }
            continue;
        }
        match pos {
            Some(i) => apply(&mut existing[i], item, true),
            None => {
                let mut v = item.clone();
                strip_directives(&mut v);
                existing.push(v);
            }
        }
    }
}

fn reorder(existing: &mut [Value], order: &[Value]) {
    let rank = |e: &Value| {
        order
            .iter()
            .position(|o| o["name"] == e["name"])
            .unwrap_or(usize::MAX)
    };
    existing.sort_by_key(rank);
}

fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('$'));
            m.values_mut().for_each(strip_directives);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]});
        apply(&mut t, &json!({"a": null, "b": {"c": 5}, "l": [3]}), false);
        assert_eq!(t, json!({"b": {"c": 5, "d": 3}, "l": [3]}));
    }

    #[test]
    fn strategic_named_lists() {
        let mut t = json!({"spec": {"containers": [
            {"name": "a", "image": "x"}, {"name": "b", "image": "y"}, {"name": "c", "image": "z"}
        ]}});
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "d"}],
            "containers": [
                {"name": "a", "image": "x2"},
                {"name": "b", "$patch": "delete"},
                {"name": "d", "image": "w"}
            ]
        }});
        apply(&mut t, &patch, true);
        assert_eq!(
            t,
            json!({"spec": {"containers": [
                {"name": "c", "image": "z"}, {"name": "a", "image": "x2"}, {"name": "d", "image": "w"}
            ]}})
        );
    }
}
