//! Keel's own metrics: config generation and reloads, rejected resources, kernel map occupancy,
//! connections redirected and refused. Read at scrape time from the counters the data plane and the
//! control task keep ([`KeelFacts`] is a snapshot of them); named `keel.<name>` in the Envoy-style
//! `/stats` and `keel_<name>` in the Prometheus exposition, one list of names for both.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::ebpf::MapOccupancy;

/// A snapshot of Keel's own numbers at one read.
#[derive(Debug, Clone, Default)]
pub struct KeelFacts {
    /// Monotonic counts: `(name, help, value)`.
    pub counters: Vec<(&'static str, &'static str, u64)>,
    /// Values that go up and down: `(name, help, value)`.
    pub gauges: Vec<(&'static str, &'static str, u64)>,
    /// Connections to the proxy port closed at once, by reason: `(reason, count)`.
    pub refused: Vec<(&'static str, u64)>,
    /// Kernel maps (empty when the kernel could not be read).
    pub maps: Vec<MapOccupancy>,
}

type MapLabels = Vec<(&'static str, &'static str)>;

impl KeelFacts {
    /// `keel.<name>` lines for `/stats`: counters and gauges, `keel.connections_refused.<reason>`,
    /// `keel.kernel_map.<MAP>.entries` and `.capacity`.
    pub fn stat_lines(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .counters
            .iter()
            .chain(&self.gauges)
            .map(|(name, _, v)| (format!("keel.{name}"), *v))
            .collect();
        out.extend(
            self.refused
                .iter()
                .map(|(reason, v)| (format!("keel.connections_refused.{reason}"), *v)),
        );
        for m in &self.maps {
            out.push((format!("keel.kernel_map.{}.entries", m.map), m.entries));
            out.push((
                format!("keel.kernel_map.{}.capacity", m.map),
                u64::from(m.capacity),
            ));
        }
        out
    }

    /// The Prometheus text exposition: `keel_<name>_total` counters, `keel_<name>` gauges,
    /// `keel_connections_refused_total{reason}`, `keel_kernel_map_entries{map}` and
    /// `keel_kernel_map_capacity{map}`; ends with `# EOF`.
    pub fn encode_prometheus(&self) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::default();
        for (name, help, v) in &self.counters {
            let c: Counter = Counter::default();
            c.inc_by(*v);
            registry.register(format!("keel_{name}"), *help, c);
        }
        for (name, help, v) in &self.gauges {
            let g: Gauge = Gauge::default();
            g.set(i64::try_from(*v).unwrap_or(i64::MAX));
            registry.register(format!("keel_{name}"), *help, g);
        }
        let refused: Family<MapLabels, Counter> = Family::default();
        for (reason, v) in &self.refused {
            refused.get_or_create(&vec![("reason", *reason)]).inc_by(*v);
        }
        registry.register(
            "keel_connections_refused",
            "Connections to the proxy port closed at once, by reason",
            refused,
        );
        let entries: Family<MapLabels, Gauge> = Family::default();
        let capacity: Family<MapLabels, Gauge> = Family::default();
        for m in &self.maps {
            let labels = vec![("map", m.map)];
            entries
                .get_or_create(&labels)
                .set(i64::try_from(m.entries).unwrap_or(i64::MAX));
            capacity.get_or_create(&labels).set(i64::from(m.capacity));
        }
        registry.register(
            "keel_kernel_map_entries",
            "Entries in a kernel map",
            entries,
        );
        registry.register(
            "keel_kernel_map_capacity",
            "The most entries a kernel map holds",
            capacity,
        );
        let mut out = String::new();
        encode(&mut out, &registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> KeelFacts {
        KeelFacts {
            counters: vec![("config_reloads", "Reloads", 3)],
            gauges: vec![("config_generation", "Generation", 4)],
            refused: vec![("no_record", 2), ("unknown_pod", 0)],
            maps: vec![MapOccupancy {
                map: "POD_CGROUPS",
                entries: 5,
                capacity: 4096,
            }],
        }
    }

    #[test]
    fn stat_lines_name_everything_under_keel() {
        assert_eq!(
            facts().stat_lines(),
            vec![
                ("keel.config_reloads".to_string(), 3),
                ("keel.config_generation".to_string(), 4),
                ("keel.connections_refused.no_record".to_string(), 2),
                ("keel.connections_refused.unknown_pod".to_string(), 0),
                ("keel.kernel_map.POD_CGROUPS.entries".to_string(), 5),
                ("keel.kernel_map.POD_CGROUPS.capacity".to_string(), 4096),
            ]
        );
    }

    #[test]
    fn prometheus_names_and_labels() -> Result<(), std::fmt::Error> {
        let text = facts().encode_prometheus()?;
        for line in [
            "keel_config_reloads_total 3",
            "keel_config_generation 4",
            "keel_connections_refused_total{reason=\"no_record\"} 2",
            "keel_kernel_map_entries{map=\"POD_CGROUPS\"} 5",
            "keel_kernel_map_capacity{map=\"POD_CGROUPS\"} 4096",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        Ok(())
    }
}
