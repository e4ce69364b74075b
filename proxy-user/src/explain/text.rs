//! The text form of an [`Explanation`]: short lines, columns aligned, one section per step of the
//! request path (client, VirtualServices, rules, route, clusters).

use super::Explanation;

/// Rows of cells with each column padded to its widest cell (the last column is not padded).
fn columns(out: &mut String, indent: &str, rows: &[Vec<String>]) {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..width)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = indent.to_string();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths.get(c).copied().unwrap_or(0);
                line.push_str(&format!("{cell:<pad$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

fn cells<const N: usize>(c: [&str; N]) -> Vec<String> {
    c.iter().map(|s| s.to_string()).collect()
}

/// The explanation as text.
pub fn render(e: &Explanation) -> String {
    let mut out = String::new();
    let mut head = vec![cells(["Client:", &e.client])];
    if let Some(s) = &e.sidecar {
        head.push(cells(["Sidecar:", s]));
    }
    head.push(cells(["Request:", &e.request]));
    for h in &e.headers {
        head.push(cells(["Header:", h]));
    }
    match &e.service {
        Some(s) => head.push(vec![
            "Service:".to_string(),
            format!("{s} at {}", e.destination),
        ]),
        None => head.push(cells(["Destination:", &e.destination])),
    }
    if let Some(c) = &e.capture {
        head.push(cells(["Capture:", c]));
    }
    head.push(cells(["Result:", &e.result]));
    columns(&mut out, "", &head);

    if !e.virtual_services.is_empty() {
        out.push_str("\nVirtualServices for this host, in precedence order:\n");
        let rows: Vec<Vec<String>> = e
            .virtual_services
            .iter()
            .map(|v| {
                vec![
                    v.name.clone(),
                    v.location.clone().unwrap_or_else(|| "-".to_string()),
                    v.verdict.clone(),
                ]
            })
            .collect();
        columns(&mut out, "  ", &rows);
    }

    if !e.rules.is_empty() {
        out.push_str("\nRules, in order:\n");
        let mut rows = Vec::new();
        for r in &e.rules {
            let mut details = r.details.iter();
            rows.push(vec![
                r.rule.clone(),
                r.outcome.clone(),
                details.next().cloned().unwrap_or_default(),
            ]);
            for d in details {
                rows.push(vec![String::new(), String::new(), d.clone()]);
            }
        }
        columns(&mut out, "  ", &rows);
    }

    if let Some(route) = &e.route {
        if route.rule == "default route" {
            out.push_str("\nDefault route (no VirtualService rule):\n");
        } else {
            out.push_str(&format!("\nRoute {}:\n", route.rule));
        }
        if !route.destinations.is_empty() {
            let mut rows = vec![cells(["DESTINATION", "WEIGHT", "SHARE", "CLUSTER"])];
            rows.extend(route.destinations.iter().map(|d| {
                vec![
                    d.destination.clone(),
                    d.weight.to_string(),
                    format!("{}%", super::round(d.percent)),
                    d.cluster.clone(),
                ]
            }));
            columns(&mut out, "  ", &rows);
        }
        let rows: Vec<Vec<String>> = route
            .settings
            .iter()
            .map(|s| vec![s.name.clone(), format!("{}  ({})", s.value, s.from)])
            .collect();
        columns(&mut out, "  ", &rows);
    }

    for c in &e.clusters {
        out.push_str(&format!("\nCluster {}:\n", c.name));
        let mut rows = Vec::new();
        match &c.destination_rule {
            Some(dr) => {
                let mut v = dr.name.clone();
                if let Some(l) = &dr.location {
                    v.push_str(&format!(" ({l})"));
                }
                if !dr.verdict.is_empty() {
                    v.push_str(&format!(" {}", dr.verdict));
                }
                rows.push(vec!["DestinationRule".to_string(), v]);
            }
            None if !c.policy.is_empty() => rows.push(cells(["DestinationRule", "none"])),
            None => {}
        }
        if let Some(s) = &c.subset {
            rows.push(vec!["subset".to_string(), s.clone()]);
        }
        for s in &c.policy {
            rows.push(vec![s.name.clone(), format!("{}  ({})", s.value, s.from)]);
        }
        if let Some(d) = &c.discovery {
            rows.push(vec!["endpoints".to_string(), d.clone()]);
        }
        columns(&mut out, "  ", &rows);
        if !c.endpoints.is_empty() {
            let mut rows = vec![cells(["ENDPOINT", "POD", "LOCALITY", "HEALTH"])];
            rows.extend(c.endpoints.iter().map(|ep| {
                vec![
                    ep.address.clone(),
                    ep.pod.clone(),
                    ep.locality.clone(),
                    ep.health.clone(),
                ]
            }));
            columns(&mut out, "  ", &rows);
        } else if c.discovery.is_none() {
            out.push_str("  no endpoints: requests get 503 (UH)\n");
        }
    }

    if !e.notes.is_empty() {
        out.push_str("\nNotes:\n");
        for n in &e.notes {
            out.push_str(&format!("  {n}\n"));
        }
    }
    out
}
