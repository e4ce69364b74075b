//! Where access log lines go: a dedicated writer thread per output, fed by a bounded channel.
//!
//! Invariants: the request path never blocks on the log. A request formats its line on its own
//! task and hands it over with `try_send`; when the channel is full the line is dropped and counted
//! (`keel_access_log_dropped_total`). The writer drains what is queued, writes it through one
//! buffer and flushes once per batch. With the log off, a request pays one relaxed load and a
//! branch ([`AccessLog::sink`]).
//!
//! Configuration: `keel run --access-log` / `--access-log-encoding` win over the `MeshConfig`
//! fields (`accessLogFile`, `accessLogEncoding`, `accessLogFormat`); the `MeshConfig` is applied
//! again after every config load, so turning the log on, off or changing its format needs no
//! restart.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;

use super::access_log::{Encoding, Entry, LogFormat};

/// Lines queued for the writer before further lines are dropped.
pub const QUEUE_LINES: usize = 16_384;
/// Lines written between flushes at most.
const BATCH_LINES: usize = 1024;

/// What the access log should be: output path and format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// A file path; `/dev/stdout` and `-` are standard output.
    pub path: String,
    /// TEXT or JSON.
    pub encoding: Encoding,
    /// A custom `accessLogFormat` (validated when the config was converted).
    pub format: Option<String>,
}

/// The `keel run` flags, which win over the `MeshConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFlags {
    /// `--access-log`.
    pub path: Option<String>,
    /// `--access-log-encoding`.
    pub encoding: Option<Encoding>,
}

impl LogFlags {
    /// The settings in force: each flag that is set wins over its `MeshConfig` field; a custom
    /// `accessLogFormat` applies only with the encoding it was written for.
    pub fn resolve(
        &self,
        mesh_file: Option<&str>,
        mesh_encoding: Encoding,
        mesh_format: Option<&str>,
    ) -> Option<LogSettings> {
        let path = self
            .path
            .clone()
            .or_else(|| mesh_file.filter(|f| !f.is_empty()).map(str::to_string))?;
        let encoding = self.encoding.unwrap_or(mesh_encoding);
        let format = mesh_format
            .filter(|_| encoding == mesh_encoding)
            .map(str::to_string);
        Some(LogSettings {
            path,
            encoding,
            format,
        })
    }
}

/// One output: its format and the channel to its writer thread.
#[derive(Debug)]
pub struct Sink {
    format: LogFormat,
    settings: LogSettings,
    tx: SyncSender<String>,
    dropped: Counter,
}

impl Sink {
    /// The format (what to capture from a request before it is gone).
    pub fn format(&self) -> &LogFormat {
        &self.format
    }

    /// Format `entry` here (the caller's task) and queue it; a full queue drops and counts it.
    pub fn submit(&self, entry: &Entry) {
        let mut line = String::with_capacity(384);
        self.format.write(entry, &mut line);
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

/// The node's access log (off until configured).
#[derive(Debug, Default)]
pub struct AccessLog {
    enabled: AtomicBool,
    sink: ArcSwapOption<Sink>,
    flags: Mutex<LogFlags>,
    /// Serialises reconfiguration (the control task is the only caller; tests may race).
    reconfig: Mutex<()>,
    dropped: Counter,
}

impl AccessLog {
    /// The current output, or `None` when the log is off (the request path's one branch).
    #[inline]
    pub fn sink(&self) -> Option<Arc<Sink>> {
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        self.sink.load_full()
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> &Counter {
        &self.dropped
    }

    /// Record the `keel run` flags (before the first [`AccessLog::apply`]).
    pub fn set_flags(&self, flags: LogFlags) {
        *self.flags.lock().unwrap_or_else(|p| p.into_inner()) = flags;
    }

    /// Apply the `MeshConfig` fields (flags win). Unchanged settings keep the running writer;
    /// changed ones start a new writer and retire the old one once its queue is written.
    pub fn apply(
        &self,
        mesh_file: Option<&str>,
        mesh_encoding: Encoding,
        mesh_format: Option<&str>,
    ) -> std::io::Result<()> {
        let _serial = self.reconfig.lock().unwrap_or_else(|p| p.into_inner());
        let wanted = self
            .flags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .resolve(mesh_file, mesh_encoding, mesh_format);
        let current = self.sink.load_full();
        if current.as_ref().map(|s| &s.settings) == wanted.as_ref() {
            return Ok(());
        }
        let Some(settings) = wanted else {
            self.enabled.store(false, Ordering::Relaxed);
            self.sink.store(None);
            tracing::info!("access log off");
            return Ok(());
        };
        let format = match &settings.format {
            Some(f) => LogFormat::parse(settings.encoding, f).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "accessLogFormat refused; using Istio's default");
                LogFormat::istio_default(settings.encoding)
            }),
            None => LogFormat::istio_default(settings.encoding),
        };
        let out = open(&settings.path)?;
        let (tx, rx) = sync_channel(QUEUE_LINES);
        std::thread::Builder::new()
            .name("keel-access-log".into())
            .spawn(move || write_lines(rx, out))?;
        tracing::info!(path = %settings.path, encoding = ?settings.encoding, "access log on");
        self.sink.store(Some(Arc::new(Sink {
            format,
            settings,
            tx,
            dropped: self.dropped.clone(),
        })));
        self.enabled.store(true, Ordering::Relaxed);
        Ok(())
    }
}

fn open(path: &str) -> std::io::Result<Box<dyn Write + Send>> {
    if path == "-" || path == "/dev/stdout" {
        return Ok(Box::new(std::io::stdout()));
    }
    if path == "/dev/stderr" {
        return Ok(Box::new(std::io::stderr()));
    }
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    Ok(Box::new(file))
}

/// The writer thread: block for a line, then write whatever else is queued (up to a batch) and
/// flush. Ends when every sender is gone and the queue is empty.
fn write_lines(rx: Receiver<String>, out: Box<dyn Write + Send>) {
    let mut w = BufWriter::with_capacity(64 * 1024, out);
    let mut failed = false;
    while let Ok(first) = rx.recv() {
        let mut result = w.write_all(first.as_bytes());
        for _ in 1..BATCH_LINES {
            match rx.try_recv() {
                Ok(line) => result = result.and_then(|()| w.write_all(line.as_bytes())),
                Err(_) => break,
            }
        }
        if let Err(e) = result.and_then(|()| w.flush()) {
            // Say it once; the log keeps trying (a full disk may drain).
            if !failed {
                tracing::warn!(error = %e, "writing the access log failed");
                failed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_field_by_field() {
        let none = LogFlags::default();
        assert_eq!(none.resolve(None, Encoding::Text, None), None);
        assert_eq!(none.resolve(Some(""), Encoding::Text, None), None);
        let from_mesh = none.resolve(Some("/dev/stdout"), Encoding::Json, Some("{}"));
        assert_eq!(
            from_mesh,
            Some(LogSettings {
                path: "/dev/stdout".into(),
                encoding: Encoding::Json,
                format: Some("{}".into())
            })
        );
        let flags = LogFlags {
            path: Some("/tmp/x.log".into()),
            encoding: Some(Encoding::Text),
        };
        // The flag's encoding differs from the mesh's: the mesh's JSON format no longer applies.
        assert_eq!(
            flags.resolve(Some("/dev/stdout"), Encoding::Json, Some("{}")),
            Some(LogSettings {
                path: "/tmp/x.log".into(),
                encoding: Encoding::Text,
                format: None
            })
        );
    }

    #[test]
    fn lines_reach_the_file_and_off_means_no_sink() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("keel-log-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("access.log");
        let _ = std::fs::remove_file(&path);
        let log = AccessLog::default();
        assert!(log.sink().is_none());
        log.apply(path.to_str(), Encoding::Text, Some("%RESPONSE_CODE%"))?;
        let Some(sink) = log.sink() else {
            panic!("no sink after apply")
        };
        let entry = Entry {
            start_time: std::time::UNIX_EPOCH,
            protocol: None,
            code: 204,
            flags: Default::default(),
            details: None,
            bytes_received: 0,
            bytes_sent: 0,
            duration: std::time::Duration::ZERO,
            request: Vec::new(),
            response: Vec::new(),
            upstream_host: None,
            upstream_cluster: None,
            downstream_local: ([10, 96, 0, 1], 80).into(),
            downstream_remote: ([10, 244, 0, 2], 1000).into(),
            requested_server_name: None,
            route_name: None,
            grpc_status: None,
        };
        sink.submit(&entry);
        sink.submit(&entry);
        drop(sink);
        // Turning it off retires the writer after its queue is written.
        log.apply(None, Encoding::Text, None)?;
        assert!(log.sink().is_none());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text == "204\n204\n" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "file holds {text:?}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(log.dropped().get(), 0);
        std::fs::remove_dir_all(&dir)
    }
}
