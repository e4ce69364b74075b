//! [`Proc`]: a spawned child that is killed and reaped when dropped, with its output in log files.
//!
//! Output goes to files, not pipes: a chatty child can never block on a full pipe that nobody reads, and
//! the logs are still there to quote when a test fails.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How much of a log [`Proc::stderr_tail`] quotes in error messages.
const TAIL_BYTES: usize = 8 * 1024;

static NEXT_LOG: AtomicU64 = AtomicU64::new(0);

/// A child process owned by a test. Dropping it sends SIGKILL (if still running) and reaps it.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    label: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stdout/stderr written to `<log_dir>/<label>.<n>.{out,err}`.
    pub fn spawn(mut cmd: Command, label: &str, log_dir: &Path) -> Result<Proc> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating log dir {}", log_dir.display()))?;
        let n = NEXT_LOG.fetch_add(1, Ordering::Relaxed);
        let safe: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let stdout_path = log_dir.join(format!("{safe}.{n}.out"));
        let stderr_path = log_dir.join(format!("{safe}.{n}.err"));
        let stdout = File::create(&stdout_path)
            .with_context(|| format!("creating {}", stdout_path.display()))?;
        let stderr = File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {label}: {cmd:?}"))?;
        Ok(Proc {
            child,
            label: label.to_string(),
            stdout_path,
            stderr_path,
            status: None,
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The label given at spawn time.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Sends `sig` to the child (no-op once it has been reaped).
    pub fn signal(&self, sig: Signal) -> Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        let pid = i32::try_from(self.child.id()).context("pid out of range")?;
        kill(Pid::from_raw(pid), sig).with_context(|| format!("sending {sig} to {}", self.label))
    }

    /// The exit status if the child has exited (reaps it).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.label))?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the child to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL and reap. Idempotent.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        // ESRCH is fine: it may have exited between try_wait and kill.
        let _ = self.signal(Signal::SIGKILL);
        let status = self
            .child
            .wait()
            .with_context(|| format!("reaping {}", self.label))?;
        self.status = Some(status);
        Ok(status)
    }

    /// Waits for exit within `timeout`, killing the child if it overstays, and fails in that case.
    pub fn wait_or_kill(&mut self, timeout: Duration) -> Result<ExitStatus> {
        match self.wait_timeout(timeout)? {
            Some(status) => Ok(status),
            None => {
                self.kill()?;
                bail!(
                    "{} did not finish within {timeout:?} and was killed; stderr:\n{}",
                    self.label,
                    self.stderr_tail()
                )
            }
        }
    }

    /// Everything the child wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read(&self.stdout_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read(&self.stderr_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last few KiB of stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr(), TAIL_BYTES)
    }

    /// Polls stdout until a line satisfies `pred` or `timeout` passes; fails early if the child exits.
    pub fn wait_for_stdout_line(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.stdout().lines().find(|l| pred(l)) {
                return Ok(line.to_string());
            }
            if let Some(status) = self.try_wait()? {
                bail!(
                    "{} exited ({status}) before it was ready; stderr:\n{}",
                    self.label,
                    self.stderr_tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} was not ready within {timeout:?}; stdout:\n{}\nstderr:\n{}",
                    self.label,
                    tail(&self.stdout(), TAIL_BYTES),
                    self.stderr_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            let _ = writeln!(
                std::io::stderr(),
                "keel-tests: could not kill {}: {e:#}",
                self.label
            );
        }
    }
}

/// The last `max` bytes of `s`, cut at a char boundary.
pub fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[...]{}", &s[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_cuts_at_char_boundary() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("abcdef", 3), "[...]def");
        assert_eq!(tail("aé", 1), "[...]");
    }
}
