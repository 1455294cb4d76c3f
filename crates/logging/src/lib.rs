//! Logging setup shared by Wrenn's programs (`wrenn-agent`, `wrenn-cp`).
//!
//! Every event goes to stderr (for journald and terminals) and, optionally, is appended to a
//! log file (`$WRENN_DIR/logs/<program>.log`, see [`log_file_path`]) and kept in an in-memory
//! ring of the last lines ([`LogRing`]), which the programs serve through their APIs so
//! `wrenn logs` works without shell access to the host.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open the log file {path}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInitialised,
}

/// What [`init`] sets up.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Environment variable holding the filter (`info`, `debug`, `wrenn_agent=debug,info`, …).
    /// When it is unset, `RUST_LOG` is used; when both are unset, `info`. Unparsable
    /// directives are skipped.
    pub level_env: String,
    /// Log file to append to (created with its directory, mode 0640).
    pub file: Option<PathBuf>,
    /// Formatted lines kept in memory for [`LogRing::tail`]; 0 keeps none.
    pub ring_lines: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            level_env: "LOG_LEVEL".to_owned(),
            file: None,
            ring_lines: 2000,
        }
    }
}

/// `<wrenn_dir>/logs/<program>.log`, where upstream keeps its logs.
pub fn log_file_path(wrenn_dir: &Path, program: &str) -> PathBuf {
    wrenn_dir.join("logs").join(format!("{program}.log"))
}

/// The last lines logged, shared by the logger and whoever serves them. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LogRing {
    lines: Arc<Mutex<VecDeque<String>>>,
    capacity: usize,
}

impl LogRing {
    pub fn new(capacity: usize) -> Self {
        Self {
            lines: Arc::new(Mutex::new(VecDeque::with_capacity(capacity.min(4096)))),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<String>> {
        // Plain data, always consistent: a panic elsewhere must not silence logging.
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one line, dropping the oldest when full.
    pub fn push(&self, line: String) {
        if self.capacity == 0 {
            return;
        }
        let mut lines = self.lock();
        while lines.len() >= self.capacity {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The last `n` lines (fewer if fewer were logged), oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let lines = self.lock();
        lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// The log file, reopenable after logrotate moved it.
#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl LogFile {
    fn open(path: &Path) -> Result<File, LogError> {
        let err = |source| LogError::File {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)
            .map_err(err)
    }

    fn write(&self, bytes: &[u8]) {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        // Nowhere to report a failed log write; stderr still has the line.
        let _ = file.write_all(bytes);
    }
}

/// Handle to the installed logging: its ring, and the file to reopen.
#[derive(Debug, Clone)]
pub struct Logging {
    ring: LogRing,
    file: Option<Arc<LogFile>>,
}

impl Logging {
    pub fn ring(&self) -> LogRing {
        self.ring.clone()
    }

    /// Reopens the log file at its path (call on SIGHUP after logrotate moved it).
    pub fn reopen(&self) -> Result<(), LogError> {
        if let Some(file) = &self.file {
            let fresh = LogFile::open(&file.path)?;
            *file.file.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        }
        Ok(())
    }
}

/// Installs the global subscriber. Fails if one is installed already or the file cannot be
/// opened.
pub fn init(options: &LogOptions) -> Result<Logging, LogError> {
    let (subscriber, logging) = subscriber(options, std::io::stderr)?;
    subscriber
        .try_init()
        .map_err(|_| LogError::AlreadyInitialised)?;
    Ok(logging)
}

/// The subscriber [`init`] installs, with the console part writing to `console` (stderr in
/// programs; tests capture it or scope the subscriber with `tracing::subscriber::with_default`).
pub fn subscriber<W>(
    options: &LogOptions,
    console: W,
) -> Result<(impl tracing::Subscriber + Send + Sync + use<W>, Logging), LogError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let directives = std::env::var(&options.level_env)
        .or_else(|_| std::env::var(EnvFilter::DEFAULT_ENV))
        .unwrap_or_default();
    subscriber_with_directives(options, console, &directives)
}

fn subscriber_with_directives<W>(
    options: &LogOptions,
    console: W,
    directives: &str,
) -> Result<(impl tracing::Subscriber + Send + Sync + use<W>, Logging), LogError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .parse_lossy(directives);
    let file = match &options.file {
        Some(path) => Some(Arc::new(LogFile {
            file: Mutex::new(LogFile::open(path)?),
            path: path.clone(),
        })),
        None => None,
    };
    let logging = Logging {
        ring: LogRing::new(options.ring_lines),
        file,
    };
    let console = tracing_subscriber::fmt::layer()
        .with_writer(console)
        .with_ansi(std::io::stderr().is_terminal());
    let keep = (logging.file.is_some() || logging.ring.capacity() > 0).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(Sink {
                ring: logging.ring.clone(),
                file: logging.file.clone(),
            })
    });
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(console)
        .with(keep);
    Ok((subscriber, logging))
}

/// Where formatted events go besides the console: the file and the ring.
struct Sink {
    ring: LogRing,
    file: Option<Arc<LogFile>>,
}

/// One event's text; handed on whole when the formatter is done with it (on drop), so a line
/// is never split between concurrent events.
struct SinkEvent<'a> {
    sink: &'a Sink,
    buf: Vec<u8>,
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = SinkEvent<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        SinkEvent {
            sink: self,
            buf: Vec::with_capacity(256),
        }
    }
}

impl Write for SinkEvent<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SinkEvent<'_> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if let Some(file) = &self.sink.file {
            file.write(&self.buf);
        }
        for line in String::from_utf8_lossy(&self.buf).lines() {
            if !line.is_empty() {
                self.sink.ring.push(line.to_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ring_keeps_the_last_lines() {
        let ring = LogRing::new(3);
        for i in 0..5 {
            ring.push(format!("line {i}"));
        }
        assert_eq!(ring.tail(10), ["line 2", "line 3", "line 4"]);
        assert_eq!(ring.tail(1), ["line 4"]);
        assert!(ring.tail(0).is_empty());
        let none = LogRing::new(0);
        none.push("x".into());
        assert!(none.tail(5).is_empty());
    }

    #[test]
    fn events_reach_the_file_and_the_ring_but_not_below_the_level() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = log_file_path(dir.path(), "wrenn-test");
        let options = LogOptions {
            level_env: "UNUSED".into(),
            file: Some(path.clone()),
            ring_lines: 2,
        };
        // No directives (neither variable set): info and above.
        let (subscriber, logging) =
            subscriber_with_directives(&options, std::io::sink, "").expect("subscriber");
        let dispatch = tracing::Dispatch::new(subscriber);
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!(sandbox = "sb-1", "first");
            tracing::debug!("hidden");
            tracing::warn!("second\nwith a newline");
        });
        let tail = logging.ring().tail(10);
        assert_eq!(tail.len(), 2, "{tail:?}");
        assert!(
            tail[0].contains("WARN") && tail[0].contains("second"),
            "{tail:?}"
        );
        assert_eq!(tail[1], "with a newline");
        let text = std::fs::read_to_string(&path).expect("log file");
        assert!(
            text.contains("first") && text.contains("sandbox=\"sb-1\""),
            "{text}"
        );
        assert!(!text.contains("hidden"), "{text}");
        assert!(!text.contains('\u{1b}'), "no colours in the file: {text}");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o640);

        // Reopen after a rotation: later lines go to the new file.
        std::fs::rename(&path, dir.path().join("rotated.log")).expect("rotate");
        logging.reopen().expect("reopen");
        tracing::dispatcher::with_default(&dispatch, || tracing::info!("after rotation"));
        let text = std::fs::read_to_string(&path).expect("new log file");
        assert!(
            text.contains("after rotation") && !text.contains("first"),
            "{text}"
        );
    }
}
