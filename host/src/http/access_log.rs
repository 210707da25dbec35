//! The per-request access log, off the request path.
//!
//! A request that finishes hands its [`Entry`] to a bounded queue and goes
//! on; one writer thread formats entries (text or JSON) into a buffer and
//! writes whatever has queued up in one go, so a busy waypoint pays one write
//! per batch rather than a formatted, locked, unbuffered write per request.
//! A full queue (a stalled stdout) never blocks a request: the entry is
//! dropped and counted in `wayplug_access_log_dropped_total`.
//!
//! Without a writer (the pipeline in unit tests and benches) entries go to
//! `tracing` at target `wayplug::access`, as they did before the writer
//! existed.

use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;

use crate::config::{AccessLogConfig, AccessLogFormat};

/// Entries waiting for the writer; past this they are dropped.
pub const QUEUE_CAPACITY: usize = 16_384;
/// Bytes formatted before the writer flushes even though more are queued.
const BATCH_BYTES: usize = 64 * 1024;

/// What one request's line says.
#[derive(Debug, Clone)]
pub struct Entry {
    pub time: SystemTime,
    pub id: String,
    pub namespace: String,
    pub service: String,
    pub source: SocketAddr,
    pub principal: String,
    pub method: http::Method,
    pub authority: String,
    pub path: String,
    pub protocol: &'static str,
    pub status: u16,
    pub local_by: String,
    pub decisions: String,
    pub duration_ms: f64,
}

enum Sink {
    Tracing,
    Queue(SyncSender<Entry>),
}

pub struct AccessLog {
    enabled: AtomicBool,
    /// Shared with the writer thread, so a reload can change the format.
    json: Arc<AtomicBool>,
    sink: Sink,
    dropped: Counter,
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog::tracing()
    }
}

impl AccessLog {
    /// Entries as `tracing` events (no writer thread).
    pub fn tracing() -> AccessLog {
        AccessLog {
            enabled: AtomicBool::new(true),
            json: Arc::new(AtomicBool::new(false)),
            sink: Sink::Tracing,
            dropped: Counter::default(),
        }
    }

    /// Entries written to `out` by a thread of their own; `dropped` counts
    /// those the full queue refused.
    pub fn writer(
        config: &AccessLogConfig,
        out: Box<dyn Write + Send>,
        dropped: Counter,
    ) -> std::io::Result<AccessLog> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_CAPACITY);
        let log = AccessLog {
            enabled: AtomicBool::new(config.enabled),
            json: Arc::new(AtomicBool::new(config.format == AccessLogFormat::Json)),
            sink: Sink::Queue(tx),
            dropped,
        };
        let json = log.json.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, out, json))?;
        Ok(log)
    }

    /// Applies a (re)loaded `accessLog:` section.
    pub fn configure(&self, config: &AccessLogConfig) {
        self.enabled.store(config.enabled, Ordering::Relaxed);
        self.json
            .store(config.format == AccessLogFormat::Json, Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Logs one request without waiting for the write.
    pub fn log(&self, entry: Entry) {
        if !self.enabled() {
            return;
        }
        match &self.sink {
            Sink::Tracing => emit_tracing(&entry),
            Sink::Queue(tx) => match tx.try_send(entry) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.dropped.inc();
                }
            },
        }
    }
}

fn write_loop(rx: Receiver<Entry>, mut out: Box<dyn Write + Send>, json: Arc<AtomicBool>) {
    let mut buf = String::with_capacity(BATCH_BYTES * 2);
    // Blocks only this thread; ends when the log (the sender) is dropped.
    while let Ok(first) = rx.recv() {
        let json = json.load(Ordering::Relaxed);
        format_entry(&mut buf, &first, json);
        while buf.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(e) => format_entry(&mut buf, &e, json),
                Err(_) => break,
            }
        }
        // A failed write (stdout closed) loses these lines, never a request.
        let _ = out.write_all(buf.as_bytes()).and_then(|()| out.flush());
        buf.clear();
    }
}

fn emit_tracing(e: &Entry) {
    tracing::info!(
        target: "wayplug::access",
        id = %e.id,
        namespace = %e.namespace,
        service = %e.service,
        source = %e.source,
        principal = %e.principal,
        method = %e.method,
        authority = %e.authority,
        path = %e.path,
        protocol = e.protocol,
        status = e.status,
        local_by = %e.local_by,
        decisions = %e.decisions,
        duration_ms = e.duration_ms,
        "request"
    );
}

fn timestamp(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Appends one line (with its newline) for `e`.
pub fn format_entry(out: &mut String, e: &Entry, json: bool) {
    if json {
        let v = serde_json::json!({
            "timestamp": timestamp(e.time),
            "target": "wayplug::access",
            "id": e.id,
            "namespace": e.namespace,
            "service": e.service,
            "source": e.source.to_string(),
            "principal": e.principal,
            "method": e.method.as_str(),
            "authority": e.authority,
            "path": e.path,
            "protocol": e.protocol,
            "status": e.status,
            "local_by": e.local_by,
            "decisions": e.decisions,
            "duration_ms": e.duration_ms,
        });
        let _ = writeln!(out, "{v}");
        return;
    }
    let _ = write!(out, "{} INFO wayplug::access: request", timestamp(e.time));
    let source = e.source.to_string();
    let status = e.status.to_string();
    for (k, v) in [
        ("id", e.id.as_str()),
        ("namespace", &e.namespace),
        ("service", &e.service),
        ("source", &source),
        ("principal", &e.principal),
        ("method", e.method.as_str()),
        ("authority", &e.authority),
        ("path", &e.path),
        ("protocol", e.protocol),
        ("status", &status),
        ("local_by", &e.local_by),
        ("decisions", &e.decisions),
    ] {
        let _ = write!(out, " {k}=");
        text_value(out, v);
    }
    let _ = writeln!(out, " duration_ms={:.3}", e.duration_ms);
}

/// A value as is when it is one plain token, else quoted with escapes, so a
/// client-chosen path can neither split a line nor fake a field.
fn text_value(out: &mut String, v: &str) {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' && c != '=');
    if plain {
        out.push_str(v);
    } else {
        let _ = write!(out, "{v:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    fn entry(path: &str) -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            id: "abc".into(),
            namespace: "shop".into(),
            service: "shop.shop.svc".into(),
            source: "127.0.0.1:4000".parse().unwrap(),
            principal: String::new(),
            method: http::Method::GET,
            authority: "shop".into(),
            path: path.into(),
            protocol: "HTTP/1.1",
            status: 200,
            local_by: String::new(),
            decisions: String::new(),
            duration_ms: 1.5,
        }
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn text_lines_quote_what_could_split_them() {
        let mut out = String::new();
        format_entry(&mut out, &entry("/a b\nstatus=500"), false);
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.starts_with("2023-11-14T22:13:20Z INFO wayplug::access: request id=abc"));
        assert!(out.contains(r#" path="/a b\nstatus=500" "#), "{out}");
        assert!(
            out.contains(" status=200 ") && out.contains(r#"principal="""#),
            "{out}"
        );
        assert!(out.ends_with(" duration_ms=1.500\n"), "{out}");
    }

    #[test]
    fn json_lines_are_one_object_each() {
        let mut out = String::new();
        format_entry(&mut out, &entry("/x\"y"), true);
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(v["path"], "/x\"y");
        assert_eq!(v["status"], 200);
        assert_eq!(v["namespace"], "shop");
    }

    fn wait_for(buf: &Shared, lines: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
            if text.lines().count() >= lines || Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_writer_thread_writes_every_entry_and_can_be_switched_off() {
        let buf = Shared::default();
        let config = AccessLogConfig::default();
        let log = AccessLog::writer(&config, Box::new(buf.clone()), Counter::default()).unwrap();
        for i in 0..100 {
            log.log(entry(&format!("/{i}")));
        }
        let text = wait_for(&buf, 100);
        assert_eq!(text.lines().count(), 100);
        assert!(text.lines().last().unwrap().contains(" path=/99 "));
        log.configure(&AccessLogConfig {
            enabled: false,
            format: AccessLogFormat::Text,
        });
        log.log(entry("/off"));
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !wait_for(&buf, 101).contains("/off"),
            "a disabled log writes nothing"
        );
    }

    #[test]
    fn a_stalled_output_drops_and_counts_instead_of_blocking() {
        struct Stalled(std::sync::mpsc::Receiver<()>);
        impl Write for Stalled {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let _ = self.0.recv();
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (release, stalled) = std::sync::mpsc::channel();
        let dropped = Counter::default();
        let log = AccessLog::writer(
            &AccessLogConfig::default(),
            Box::new(Stalled(stalled)),
            dropped.clone(),
        )
        .unwrap();
        // Were `log` to wait for the writer, this thread would never finish.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..QUEUE_CAPACITY + 5_000 {
                log.log(entry("/"));
            }
            let _ = done.send(log);
        });
        let log = finished
            .recv_timeout(Duration::from_secs(10))
            .expect("logging blocked on a stalled output");
        assert!(dropped.get() >= 4_000, "dropped {}", dropped.get());
        drop(release);
        drop(log);
    }
}
