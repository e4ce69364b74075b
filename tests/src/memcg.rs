//! A memory cgroup for one process, with a limit, its working set and its OOM kills, on whichever
//! hierarchy holds the memory controller: cgroup v2 (`memory.max`), or v1 on a hybrid host such as
//! this machine (`/sys/fs/cgroup/memory`, `memory.limit_in_bytes`). Removed on drop.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A memory cgroup the test made.
#[derive(Debug)]
pub struct MemoryCgroup {
    dir: PathBuf,
    v2: bool,
}

const V1_ROOT: &str = "/sys/fs/cgroup/memory";
const V2_ROOT: &str = "/sys/fs/cgroup";

impl MemoryCgroup {
    /// Makes (or empties and reuses) cgroup `name` at the top of the memory hierarchy. Fails loudly
    /// when no hierarchy has the memory controller.
    pub fn create(name: &str) -> Result<MemoryCgroup> {
        let (root, v2) = if Path::new(V1_ROOT).join("memory.limit_in_bytes").exists() {
            (PathBuf::from(V1_ROOT), false)
        } else {
            let controllers =
                std::fs::read_to_string(Path::new(V2_ROOT).join("cgroup.subtree_control"))
                    .unwrap_or_default();
            if !controllers.split_whitespace().any(|c| c == "memory") {
                bail!(
                    "no memory controller: neither {V1_ROOT} (cgroup v1) nor `memory` in \
                     {V2_ROOT}/cgroup.subtree_control (cgroup v2)"
                );
            }
            (PathBuf::from(V2_ROOT), true)
        };
        let dir = root.join(name);
        if dir.exists() {
            let _ = std::fs::remove_dir(&dir);
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(MemoryCgroup { dir, v2 })
    }

    /// The cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves process `pid` (all its threads) in. Memory it already holds stays charged where it
    /// was; what it allocates from now on is charged here.
    pub fn adopt(&self, pid: u32) -> Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", self.dir.display()))
    }

    /// Sets the memory limit (`None`: no limit).
    pub fn set_limit(&self, bytes: Option<u64>) -> Result<()> {
        let (file, value) = match (self.v2, bytes) {
            (true, Some(b)) => ("memory.max", b.to_string()),
            (true, None) => ("memory.max", "max".to_string()),
            (false, Some(b)) => ("memory.limit_in_bytes", b.to_string()),
            (false, None) => ("memory.limit_in_bytes", "-1".to_string()),
        };
        std::fs::write(self.dir.join(file), value)
            .with_context(|| format!("setting {}/{file}", self.dir.display()))
    }

    /// Usage less inactive file pages (kubelet's working set), bytes.
    pub fn working_set(&self) -> Result<u64> {
        let (usage_file, inactive_key) = if self.v2 {
            ("memory.current", "inactive_file")
        } else {
            ("memory.usage_in_bytes", "total_inactive_file")
        };
        let usage: u64 = std::fs::read_to_string(self.dir.join(usage_file))?
            .trim()
            .parse()
            .with_context(|| format!("parsing {usage_file}"))?;
        let stat = std::fs::read_to_string(self.dir.join("memory.stat"))?;
        Ok(usage.saturating_sub(stat_value(&stat, inactive_key).unwrap_or(0)))
    }

    /// How many processes the kernel OOM-killed in this cgroup.
    pub fn oom_kills(&self) -> Result<u64> {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        let text = std::fs::read_to_string(self.dir.join(file))?;
        stat_value(&text, "oom_kill").with_context(|| format!("no oom_kill in {file}: {text}"))
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Its processes are gone (or about to be): retry briefly until the kernel lets it go.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}
