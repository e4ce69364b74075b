//! Where keel's kernel objects live between processes: pinned maps and links under bpffs.
//!
//! Layout, one directory per attach (cgroup root, proxy address), called the install:
//! ```text
//! /sys/fs/bpf/keel/cg<root cgroup id>-<proxy addr, `.` and `:` as `_`>/
//!     link_keel_connect4, link_keel_connect6, link_keel_sockops   bpf_links (ABI independent)
//!     abi<N>/MESHED_DESTS, POD_CGROUPS, POD_TRAFFIC_RULES, POD_PARENTS, CONN_BY_COOKIE,
//!            CONN_BY_TUPLE, STATS, LIVENESS
//! ```
//! A keel of the same ABI reuses the maps (so a record written for either process is visible to
//! both) and points the pinned links at its own freshly loaded programs with `BPF_LINK_UPDATE`,
//! which swaps the program atomically: there is never a moment without a program attached. A keel
//! of another ABI makes its own `abi<N>` maps, swaps the links the same way and unpins the old
//! ABI's maps (processes still holding them keep them until they exit).
//!
//! Everything here is done under an exclusive `flock` of the install directory, so two keels
//! starting at once do not race on creating maps or links.

use std::ffi::CString;
use std::fs::File;
use std::net::{SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use proxy_common::ABI_VERSION;

/// The bpffs mount keel pins under.
pub const BPFFS: &str = "/sys/fs/bpf";
/// keel's directory in [`BPFFS`].
pub const KEEL_DIR: &str = "keel";
/// `statfs.f_type` of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// `bpf(2)` commands used here (uapi `enum bpf_cmd`).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// The pin directory of one install.
#[derive(Debug, Clone)]
pub struct Install {
    dir: PathBuf,
}

impl Install {
    /// The install for `root_cgroup_id` and the proxy addresses (not created yet).
    pub fn new(
        root_cgroup_id: u64,
        proxy_v4: Option<SocketAddrV4>,
        proxy_v6: Option<SocketAddrV6>,
    ) -> Self {
        Self {
            dir: Path::new(BPFFS)
                .join(KEEL_DIR)
                .join(key(root_cgroup_id, proxy_v4, proxy_v6)),
        }
    }

    /// The install directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// This binary's map directory (`abi<N>`).
    pub fn maps_dir(&self) -> PathBuf {
        self.dir.join(format!("abi{ABI_VERSION}"))
    }

    /// Pin path of map `name` for this ABI.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// Pin path of the link of program `name`.
    pub fn link_path(&self, program: &str) -> PathBuf {
        self.dir.join(format!("link_{program}"))
    }

    /// Creates the directories (bpffs must be mounted at [`BPFFS`]) and takes the install lock,
    /// held until the returned file is dropped.
    pub fn create_and_lock(&self) -> std::io::Result<File> {
        if ensure_bpffs(Path::new(BPFFS)).is_err() {
            // systemd mounts it at boot; a host (or a container) without it gets it now, as
            // Cilium and Calico do.
            mount_bpffs(Path::new(BPFFS))?;
            ensure_bpffs(Path::new(BPFFS))?;
            tracing::info!(path = BPFFS, "mounted the bpf file system");
        }
        std::fs::create_dir_all(self.maps_dir())?;
        lock(&self.dir)
    }

    /// Unpins the maps of every other ABI (after the links were switched to this one's).
    pub fn remove_other_abis(&self) -> std::io::Result<Vec<PathBuf>> {
        let own = self.maps_dir();
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.is_dir() && path != own {
                remove_tree(&path)?;
                removed.push(path);
            }
        }
        Ok(removed)
    }
}

/// `cg<id>-<addr>`; characters other than ASCII alphanumerics become `_` (bpffs refuses names with
/// a `.`).
fn key(root_cgroup_id: u64, v4: Option<SocketAddrV4>, v6: Option<SocketAddrV6>) -> String {
    let addr = match (v4, v6) {
        (Some(a), _) => a.to_string(),
        (None, Some(a)) => a.to_string(),
        (None, None) => "none".to_string(),
    };
    let addr: String = addr
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("cg{root_cgroup_id}-{addr}")
}

/// Fails unless `path` is a bpffs mount.
fn ensure_bpffs(path: &Path) -> std::io::Result<()> {
    let c_path = c_path(path)?;
    // SAFETY: an all-zero statfs is a valid value to be overwritten.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `buf` is a valid out-pointer.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut buf) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's integer type differs between libc targets"
    )]
    if buf.f_type as i64 != BPF_FS_MAGIC {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{} is not a bpf file system (mount -t bpf bpf {0})",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// `mount -t bpf bpf <path>`.
fn mount_bpffs(path: &Path) -> std::io::Result<()> {
    let target = c_path(path)?;
    let fstype = c"bpf";
    // SAFETY: NUL-terminated strings that outlive the call; no data argument.
    let ret = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            e.kind(),
            format!(
                "{} is not a bpf file system and mounting one failed: {e}",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// An exclusive `flock` on directory `dir`, blocking until it is free.
fn lock(dir: &Path) -> std::io::Result<File> {
    let file = File::open(dir)?;
    // SAFETY: a valid open fd.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

/// `BPF_OBJ_GET`: an fd for the object pinned at `path`.
pub fn obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
    }
    let c_path = c_path(path)?;
    let attr = ObjGet {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &attr)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_LINK_UPDATE`: make `link` run `prog` from now on, atomically.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> std::io::Result<()> {
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let attr = LinkUpdate {
        link_fd: fd_u32(link)?,
        new_prog_fd: fd_u32(prog)?,
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &attr).map(drop)
}

fn fd_u32(fd: BorrowedFd<'_>) -> std::io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))
}

/// One `bpf(2)` call with `attr` (a prefix of `union bpf_attr`; the kernel zero-extends it).
fn bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<i32> {
    // SAFETY: `attr` is a valid, initialised `#[repr(C)]` prefix of `union bpf_attr` of the size
    // passed; the kernel only reads it for these commands.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    i32::try_from(ret).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))
}

/// Removes every pin under `dir` and the directory itself. Missing is fine.
pub fn remove_tree(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// `keel uninstall`: unpins the links (the programs detach at once: no process holds link fds
/// after keel exits) and the maps of the install for (`cgroup_root`, proxy addresses). Returns the
/// removed install directory, or `None` if there was none. Leaves `/sys/fs/bpf/keel` itself when
/// other installs remain.
pub fn uninstall(
    root_cgroup_id: u64,
    proxy_v4: Option<SocketAddrV4>,
    proxy_v6: Option<SocketAddrV6>,
) -> std::io::Result<Option<PathBuf>> {
    let install = Install::new(root_cgroup_id, proxy_v4, proxy_v6);
    if !install.dir.exists() {
        return Ok(None);
    }
    {
        let _lock = lock(&install.dir)?;
        // Links first: from the moment they are gone, nothing is redirected.
        for entry in std::fs::read_dir(&install.dir)? {
            let path = entry?.path();
            if !path.is_dir() {
                std::fs::remove_file(&path)?;
            }
        }
        for entry in std::fs::read_dir(&install.dir)? {
            remove_tree(&entry?.path())?;
        }
    }
    std::fs::remove_dir(&install.dir)?;
    let parent = Path::new(BPFFS).join(KEEL_DIR);
    // Only if empty: another install may live there.
    let _ = std::fs::remove_dir(parent);
    Ok(Some(install.dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_key_is_a_file_name() {
        let v4 = "10.244.1.1:15001".parse().ok();
        assert_eq!(key(42, v4, None), "cg42-10_244_1_1_15001");
        let v6 = "[fd00::1]:15001".parse().ok();
        assert_eq!(key(7, None, v6), "cg7-_fd00__1__15001");
    }
}
