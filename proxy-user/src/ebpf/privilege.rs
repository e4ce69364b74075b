//! Which privileges loading and attaching the programs takes, checked before trying, so a missing
//! one is named instead of surfacing as a bare `Operation not permitted` from a map create.
//!
//! Measured on Linux 6.18 by dropping capabilities one set at a time: the maps need CAP_BPF, the
//! verifier needs CAP_PERFMON for the programs' pointer arithmetic, and loading the sockops program
//! needs CAP_NET_ADMIN; CAP_SYS_ADMIN alone stands in for all three (the kernel's pre-5.8 rule).

use std::fmt;

/// A Linux capability by its number in `include/uapi/linux/capability.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    bit: u32,
    name: &'static str,
}

pub const CAP_NET_ADMIN: Capability = Capability {
    bit: 12,
    name: "CAP_NET_ADMIN",
};
pub const CAP_SYS_ADMIN: Capability = Capability {
    bit: 21,
    name: "CAP_SYS_ADMIN",
};
pub const CAP_PERFMON: Capability = Capability {
    bit: 38,
    name: "CAP_PERFMON",
};
pub const CAP_BPF: Capability = Capability {
    bit: 39,
    name: "CAP_BPF",
};

/// What `keel run` needs besides CAP_SYS_ADMIN.
const NEEDED: [Capability; 3] = [CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN];

impl Capability {
    fn held_in(self, effective: u64) -> bool {
        effective >> self.bit & 1 == 1
    }
}

/// The process lacks what loading the programs takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingPrivilege {
    /// Effective user id.
    pub uid: u32,
    /// The capabilities that would be enough, of those the process lacks.
    pub missing: Vec<&'static str>,
}

impl fmt::Display for MissingPrivilege {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loading and attaching the eBPF programs needs root, or the capabilities CAP_BPF, \
             CAP_PERFMON and CAP_NET_ADMIN (CAP_SYS_ADMIN also covers them); this process \
             (uid {}) lacks {}",
            self.uid,
            self.missing.join(", ")
        )
    }
}

impl std::error::Error for MissingPrivilege {}

/// Checks the effective capability set (`CapEff` of `/proc/self/status`). A status file that cannot
/// be read or parsed passes: the kernel will still answer for itself.
pub fn check() -> Result<(), MissingPrivilege> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return Ok(());
    };
    let Some(effective) = field_hex(&status, "CapEff:") else {
        return Ok(());
    };
    let uid = field_first_u32(&status, "Uid:").unwrap_or(u32::MAX);
    judge(effective, uid)
}

/// Whether `effective` capabilities are enough.
pub fn judge(effective: u64, uid: u32) -> Result<(), MissingPrivilege> {
    if CAP_SYS_ADMIN.held_in(effective) || NEEDED.iter().all(|c| c.held_in(effective)) {
        return Ok(());
    }
    let mut missing: Vec<&'static str> = NEEDED
        .iter()
        .filter(|c| !c.held_in(effective))
        .map(|c| c.name)
        .collect();
    missing.push(CAP_SYS_ADMIN.name);
    Err(MissingPrivilege { uid, missing })
}

fn field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .map(str::trim)
}

fn field_hex(status: &str, key: &str) -> Option<u64> {
    field(status, key).and_then(|v| u64::from_str_radix(v, 16).ok())
}

/// `Uid:` lists real, effective, saved and filesystem ids; the effective one decides.
fn field_first_u32(status: &str, key: &str) -> Option<u32> {
    field(status, key)?.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(list: &[Capability]) -> u64 {
        list.iter().fold(0, |acc, c| acc | 1 << c.bit)
    }

    #[test]
    fn sys_admin_alone_is_enough() {
        assert_eq!(judge(caps(&[CAP_SYS_ADMIN]), 0), Ok(()));
    }

    #[test]
    fn bpf_perfmon_and_net_admin_are_enough() {
        assert_eq!(
            judge(caps(&[CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN]), 1000),
            Ok(())
        );
    }

    #[test]
    fn names_each_missing_capability() {
        let err = judge(caps(&[CAP_BPF]), 65534).err();
        assert_eq!(
            err,
            Some(MissingPrivilege {
                uid: 65534,
                missing: vec!["CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"],
            })
        );
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("needs root, or the capabilities"), "{text}");
        assert!(
            text.ends_with("(uid 65534) lacks CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_ADMIN"),
            "{text}"
        );
    }

    #[test]
    fn reads_proc_status_fields() {
        let status = "Name:\tkeel\nUid:\t0\t65534\t0\t0\nCapEff:\t0000000000200000\n";
        assert_eq!(field_hex(status, "CapEff:"), Some(1 << 21));
        assert_eq!(field_first_u32(status, "Uid:"), Some(65534));
    }
}
