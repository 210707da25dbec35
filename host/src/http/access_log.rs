//! The per-request access log, off the request path.
//!
//! A request that finishes hands its [`Entry`] to a bounded queue and goes
//! on; one writer thread formats entries (text or JSON) into a buffer and
//! writes whatever has queued up in one go, so a busy waypoint pays one write
//! per batch rather than a formatted, locked, unbuffered write per request.
//! After each write the writer waits [`FLUSH_INTERVAL`] before it looks at the
//! queue again (Envoy flushes its access log every second or per 64 KiB):
//! entries queued meanwhile find no writer parked on the queue, so logging a
//! request wakes no thread, and a line is written at most that long after
//! its request ended (at once after an idle spell). A full queue (a stalled
//! stdout) never blocks a request: the entry is dropped and counted in
//! `wayplug_access_log_dropped_total`.
//!
//! Without a writer (the pipeline in unit tests and benches) entries go to
//! `tracing` at target `wayplug::access`, as they did before the writer
//! existed.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;

use crate::config::{AccessLogConfig, AccessLogFormat};
use crate::exchange::RequestInfo;

/// Entries waiting for the writer; past this they are dropped. The queue
/// (tokio's bounded channel, usable from plain threads) allocates blocks of
/// slots as entries arrive, not this many slots up front, so an idle or
/// switched-off log holds next to no memory for it.
pub const QUEUE_CAPACITY: usize = 16_384;
/// Bytes formatted before the writer flushes even though more are queued.
const BATCH_BYTES: usize = 64 * 1024;
/// How long the writer lets entries accumulate after a write: the longest a
/// line waits behind its request while requests keep coming.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// What one request's line says. The request's fixed facts (id, namespace,
/// service, source, protocol, start) are the exchange's, shared, not copied.
#[derive(Debug, Clone)]
pub struct Entry {
    pub info: Arc<RequestInfo>,
    pub principal: String,
    pub method: http::Method,
    pub authority: String,
    pub path: String,
    pub status: u16,
    pub local_by: String,
    pub decisions: String,
    pub duration_ms: f64,
}

/// What the writer's queue carries: an entry, or a nudge that gets an idle
/// writer (parked on the queue) to look at a flush request.
enum Queued {
    Entry(Entry),
    Wake,
}

enum Sink {
    Tracing,
    Queue {
        entries: tokio::sync::mpsc::Sender<Queued>,
        /// Asks the writer to write what is queued now; carries the channel
        /// it answers on once it has.
        flush: Sender<Sender<()>>,
    },
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
        Self::writer_every(config, out, dropped, FLUSH_INTERVAL)
    }

    /// [`AccessLog::writer`] with another flush interval.
    fn writer_every(
        config: &AccessLogConfig,
        out: Box<dyn Write + Send>,
        dropped: Counter,
        interval: Duration,
    ) -> std::io::Result<AccessLog> {
        let (entries, queued) = tokio::sync::mpsc::channel(QUEUE_CAPACITY);
        let (flush, flushes) = std::sync::mpsc::channel();
        let log = AccessLog {
            enabled: AtomicBool::new(config.enabled),
            json: Arc::new(AtomicBool::new(config.format == AccessLogFormat::Json)),
            sink: Sink::Queue { entries, flush },
            dropped,
        };
        let writer = Writer {
            queued,
            flushes,
            out,
            json: log.json.clone(),
            interval,
            buf: Vec::with_capacity(BATCH_BYTES * 2),
            clock: Clock::default(),
        };
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run())?;
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
            Sink::Queue { entries, .. } => {
                // Full or closed (the writer is gone): dropped, never waited for.
                if entries.try_send(Queued::Entry(entry)).is_err() {
                    self.dropped.inc();
                }
            }
        }
    }

    /// Has the writer write what is queued now rather than at the end of its
    /// flush interval, waiting at most `wait` (at shutdown, so the last
    /// requests' lines are not lost with the process). `false` when the
    /// writer did not answer in time.
    pub fn flush(&self, wait: Duration) -> bool {
        let Sink::Queue { entries, flush } = &self.sink else {
            return true;
        };
        let (done, written) = std::sync::mpsc::channel();
        if flush.send(done).is_err() {
            return false;
        }
        // An idle writer waits on the queue, not on flush requests. A full
        // queue needs no nudge: the writer is busy and sees the request at
        // its next pause.
        let _ = entries.try_send(Queued::Wake);
        written.recv_timeout(wait).is_ok()
    }
}

/// The writer thread's side of the queue.
struct Writer {
    queued: tokio::sync::mpsc::Receiver<Queued>,
    flushes: Receiver<Sender<()>>,
    out: Box<dyn Write + Send>,
    json: Arc<AtomicBool>,
    interval: Duration,
    buf: Vec<u8>,
    clock: Clock,
}

impl Writer {
    fn run(mut self) {
        // Parks only after an idle spell; ends when the log (the sender) is dropped.
        while let Some(first) = self.queued.blocking_recv() {
            self.write_queued(Some(first));
            // Nothing waits on the queue meanwhile, so senders only enqueue.
            // A flush request cuts the pause short.
            match self.flushes.recv_timeout(self.interval) {
                Ok(done) => {
                    self.write_queued(None);
                    let _ = done.send(());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.write_queued(None);
                    return;
                }
            }
        }
    }

    /// Formats `first` and whatever is queued, writing every `BATCH_BYTES`.
    fn write_queued(&mut self, first: Option<Queued>) {
        let json = self.json.load(Ordering::Relaxed);
        if let Some(Queued::Entry(e)) = first {
            self.clock.format_entry(&mut self.buf, &e, json);
        }
        loop {
            let mut drained = false;
            while self.buf.len() < BATCH_BYTES {
                match self.queued.try_recv() {
                    Ok(Queued::Entry(e)) => self.clock.format_entry(&mut self.buf, &e, json),
                    Ok(Queued::Wake) => {}
                    Err(_) => {
                        drained = true;
                        break;
                    }
                }
            }
            if !self.buf.is_empty() {
                // A failed write (stdout closed) loses these lines, never a request.
                let _ = self
                    .out
                    .write_all(&self.buf)
                    .and_then(|()| self.out.flush());
                self.buf.clear();
            }
            if drained {
                return;
            }
        }
    }
}

fn emit_tracing(e: &Entry) {
    tracing::info!(
        target: "wayplug::access",
        id = %e.info.id,
        namespace = %e.info.namespace,
        service = %e.info.service_hostname,
        source = %e.info.source,
        principal = %e.principal,
        method = %e.method,
        authority = %e.authority,
        path = %e.path,
        protocol = e.info.protocol,
        status = e.status,
        local_by = %e.local_by,
        decisions = %e.decisions,
        duration_ms = e.duration_ms,
        "request"
    );
}

/// RFC 3339 through the `time` crate: "" for a year it cannot print.
fn timestamp(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// RFC 3339 timestamps as the `time` crate writes them for UTC
/// (`2023-11-14T22:13:20.5Z`: the fraction without trailing zeros, none
/// when whole), with the calendar part formatted once per second rather
/// than per entry.
#[derive(Default)]
struct Clock {
    /// The second `prefix` is for.
    secs: Option<u64>,
    /// `YYYY-MM-DDTHH:MM:SS` of that second.
    prefix: String,
    stamp: String,
}

impl Clock {
    fn stamp(&mut self, t: SystemTime) -> &str {
        self.stamp.clear();
        let since = match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d,
            Err(_) => {
                self.stamp = timestamp(t);
                return &self.stamp;
            }
        };
        let secs = since.as_secs();
        if self.secs != Some(secs) {
            let whole = timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
            match whole.strip_suffix('Z') {
                Some(p) => {
                    self.prefix.clear();
                    self.prefix.push_str(p);
                    self.secs = Some(secs);
                }
                None => {
                    self.secs = None;
                    self.stamp = timestamp(t);
                    return &self.stamp;
                }
            }
        }
        self.stamp.push_str(&self.prefix);
        let nanos = since.subsec_nanos();
        if nanos != 0 {
            let mut digits = [b'0'; 9];
            let mut n = nanos;
            for d in digits.iter_mut().rev() {
                *d = b'0' + (n % 10) as u8;
                n /= 10;
            }
            let len = 9 - digits.iter().rev().take_while(|&&d| d == b'0').count();
            self.stamp.push('.');
            for &d in &digits[..len] {
                self.stamp.push(char::from(d));
            }
        }
        self.stamp.push('Z');
        &self.stamp
    }

    /// Appends one line (with its newline) for `e`.
    fn format_entry(&mut self, out: &mut Vec<u8>, e: &Entry, json: bool) {
        if json {
            self.json_line(out, e);
            return;
        }
        let info = &*e.info;
        out.extend_from_slice(self.stamp(info.start).as_bytes());
        out.extend_from_slice(b" INFO wayplug::access: request");
        field(out, "id", &info.id);
        field(out, "namespace", &info.namespace);
        field(out, "service", &info.service_hostname);
        out.extend_from_slice(b" source=");
        push_addr(out, info.source);
        field(out, "principal", &e.principal);
        field(out, "method", e.method.as_str());
        field(out, "authority", &e.authority);
        field(out, "path", &e.path);
        field(out, "protocol", info.protocol);
        out.extend_from_slice(b" status=");
        out.extend_from_slice(itoa::Buffer::new().format(e.status).as_bytes());
        field(out, "local_by", &e.local_by);
        field(out, "decisions", &e.decisions);
        let _ = writeln!(out, " duration_ms={:.3}", e.duration_ms);
    }

    fn json_line(&mut self, out: &mut Vec<u8>, e: &Entry) {
        let info = &*e.info;
        let line = JsonLine {
            authority: &e.authority,
            decisions: &e.decisions,
            duration_ms: e.duration_ms,
            id: &info.id,
            local_by: &e.local_by,
            method: e.method.as_str(),
            namespace: &info.namespace,
            path: &e.path,
            principal: &e.principal,
            protocol: info.protocol,
            service: &info.service_hostname,
            source: info.source,
            status: e.status,
            target: "wayplug::access",
            timestamp: self.stamp(info.start),
        };
        // Writing into a Vec cannot fail, and every field serialises.
        let _ = serde_json::to_writer(&mut *out, &line);
        out.push(b'\n');
    }
}

/// A JSON line, its keys in the (sorted) order the line always had.
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    authority: &'a str,
    decisions: &'a str,
    duration_ms: f64,
    id: &'a str,
    local_by: &'a str,
    method: &'a str,
    namespace: &'a str,
    path: &'a str,
    principal: &'a str,
    protocol: &'a str,
    service: &'a str,
    #[serde(serialize_with = "as_display")]
    source: SocketAddr,
    status: u16,
    target: &'static str,
    timestamp: &'a str,
}

fn as_display<S: serde::Serializer>(v: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn field(out: &mut Vec<u8>, k: &str, v: &str) {
    out.push(b' ');
    out.extend_from_slice(k.as_bytes());
    out.push(b'=');
    text_value(out, v);
}

/// An address as `Display` prints it, IPv4 without the formatter.
fn push_addr(out: &mut Vec<u8>, a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            let mut n = itoa::Buffer::new();
            for (i, o) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(n.format(o).as_bytes());
            }
            out.push(b':');
            out.extend_from_slice(n.format(v4.port()).as_bytes());
        }
        // Always one plain token: digits, hex, `[]:%.`.
        SocketAddr::V6(_) => {
            let _ = write!(out, "{a}");
        }
    }
}

/// A value as is when it is one plain token, else quoted with escapes, so a
/// client-chosen path can neither split a line nor fake a field.
fn text_value(out: &mut Vec<u8>, v: &str) {
    if v.is_empty() {
        out.extend_from_slice(b"\"\"");
        return;
    }
    // Any byte of a non-ASCII char fails `is_ascii_graphic` too.
    let plain = v
        .bytes()
        .all(|c| c.is_ascii_graphic() && c != b'"' && c != b'\\' && c != b'=');
    if plain {
        out.extend_from_slice(v.as_bytes());
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
        entry_at(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            path,
        )
    }

    fn entry_at(start: SystemTime, path: &str) -> Entry {
        Entry {
            info: Arc::new(RequestInfo {
                id: "abc".into(),
                namespace: "shop".into(),
                service_hostname: "shop.shop.svc".into(),
                service_name: "shop".into(),
                source: "127.0.0.1:4000".parse().unwrap(),
                destination: "127.0.0.1:80".parse().unwrap(),
                protocol: "HTTP/1.1",
                peer: None,
                start,
            }),
            principal: String::new(),
            method: http::Method::GET,
            authority: "shop".into(),
            path: path.into(),
            status: 200,
            local_by: String::new(),
            decisions: String::new(),
            duration_ms: 1.5,
        }
    }

    fn line(e: &Entry, json: bool) -> String {
        let mut out = Vec::new();
        Clock::default().format_entry(&mut out, e, json);
        String::from_utf8(out).unwrap()
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>, Arc<Mutex<usize>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            *self.1.lock().unwrap() += 1;
            Ok(())
        }
    }

    #[test]
    fn text_lines_quote_what_could_split_them() {
        let out = line(&entry("/a b\nstatus=500"), false);
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
    fn text_lines_keep_their_exact_layout() {
        let mut e = entry("/é");
        e.principal = "cluster.local/ns/a/sa/b".into();
        e.decisions = "authz:p[1]=allow".into();
        e.duration_ms = 0.0004;
        assert_eq!(
            line(&e, false),
            "2023-11-14T22:13:20Z INFO wayplug::access: request id=abc namespace=shop \
             service=shop.shop.svc source=127.0.0.1:4000 principal=cluster.local/ns/a/sa/b \
             method=GET authority=shop path=\"/é\" protocol=HTTP/1.1 status=200 local_by=\"\" \
             decisions=\"authz:p[1]=allow\" duration_ms=0.000\n"
        );
        let mut v6 = entry("/");
        Arc::make_mut(&mut v6.info).source = "[::1]:9".parse().unwrap();
        assert!(line(&v6, false).contains(" source=[::1]:9 "));
    }

    #[test]
    fn json_lines_are_one_object_each() {
        let out = line(&entry("/x\"y"), true);
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(v["path"], "/x\"y");
        assert_eq!(v["status"], 200);
        assert_eq!(v["namespace"], "shop");
    }

    /// The line as it was built before: a `serde_json` value, keys sorted.
    fn json_reference(e: &Entry) -> String {
        let i = &e.info;
        let v = serde_json::json!({
            "timestamp": timestamp(i.start),
            "target": "wayplug::access",
            "id": i.id,
            "namespace": i.namespace,
            "service": i.service_hostname,
            "source": i.source.to_string(),
            "principal": e.principal,
            "method": e.method.as_str(),
            "authority": e.authority,
            "path": e.path,
            "protocol": i.protocol,
            "status": e.status,
            "local_by": e.local_by,
            "decisions": e.decisions,
            "duration_ms": e.duration_ms,
        });
        format!("{v}\n")
    }

    #[test]
    fn json_lines_are_byte_for_byte_what_they_were() {
        let mut e = entry("/a\"b\\c\u{1}é");
        e.duration_ms = 12.345678;
        e.local_by = "authz".into();
        assert_eq!(line(&e, true), json_reference(&e));
        e.duration_ms = 3.0;
        assert_eq!(line(&e, true), json_reference(&e));
    }

    #[test]
    fn timestamps_match_the_time_crate_to_the_nanosecond() {
        let mut clock = Clock::default();
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        // Same second (the cached part), the next ones, fractions with and
        // without trailing zeros, and far dates.
        let cases = [
            0u64,
            1,
            10,
            500_000_000,
            123_456_789,
            999_999_999,
            1_000_000_000,
            1_000_000_010,
            61_250_000_000,
            86_400_000_000_000,
            40 * 365 * 86_400_000_000_000,
        ];
        for nanos in cases {
            let t = base + Duration::from_nanos(nanos);
            assert_eq!(clock.stamp(t), timestamp(t), "{nanos} ns after");
        }
        let early = SystemTime::UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(clock.stamp(early), timestamp(early));
        let epoch = SystemTime::UNIX_EPOCH;
        assert_eq!(clock.stamp(epoch), "1970-01-01T00:00:00Z");
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
    fn entries_logged_during_the_pause_arrive_in_one_later_write() {
        // Long enough that the three entries below are logged within it.
        let interval = Duration::from_secs(1);
        let (buf, log) = pausing_writer(interval);
        log.log(entry("/first"));
        assert!(
            wait_for(&buf, 1).contains("/first"),
            "an idle writer writes at once"
        );
        for p in ["/a", "/b", "/c"] {
            log.log(entry(p));
        }
        let text = wait_for(&buf, 4);
        assert_eq!(
            text.lines().count(),
            4,
            "the lines arrive after the pause: {text}"
        );
        assert!(text.lines().last().unwrap().contains(" path=/c "), "{text}");
        assert_eq!(
            *buf.1.lock().unwrap(),
            2,
            "one write for the first line, one for the rest"
        );
    }

    /// A writer into a shared buffer that pauses `interval` after each write.
    fn pausing_writer(interval: Duration) -> (Shared, AccessLog) {
        let buf = Shared::default();
        let log = AccessLog::writer_every(
            &AccessLogConfig::default(),
            Box::new(buf.clone()),
            Counter::default(),
            interval,
        )
        .unwrap();
        (buf, log)
    }

    #[test]
    fn the_queue_bound_is_given_back_as_the_writer_takes_entries() {
        let buf = Shared::default();
        let dropped = Counter::default();
        let log = AccessLog::writer_every(
            &AccessLogConfig::default(),
            Box::new(buf.clone()),
            dropped.clone(),
            Duration::from_secs(3600),
        )
        .unwrap();
        // Three times the bound in all, never more than half of it queued:
        // were a taken entry's room not given back, the later batches would
        // be dropped.
        let batch = QUEUE_CAPACITY / 2;
        for _ in 0..6 {
            for _ in 0..batch {
                log.log(entry("/"));
            }
            assert!(log.flush(Duration::from_secs(10)), "the writer answered");
        }
        assert_eq!(dropped.get(), 0);
        let lines = String::from_utf8(buf.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .count();
        assert_eq!(lines, 6 * batch);
    }

    #[test]
    fn a_flush_writes_what_is_queued_without_waiting_for_the_interval() {
        let (buf, log) = pausing_writer(Duration::from_secs(3600));
        log.log(entry("/first"));
        wait_for(&buf, 1);
        log.log(entry("/last"));
        assert!(log.flush(Duration::from_secs(5)), "the writer answered");
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains(" path=/last "), "{text}");
    }

    #[test]
    fn a_flush_of_an_idle_writer_is_answered() {
        // Shutdown flushes: a writer with nothing queued waits on its queue,
        // and must still answer instead of letting the flush run out its wait.
        let (buf, log) = pausing_writer(Duration::from_millis(1));
        log.log(entry("/only"));
        wait_for(&buf, 1);
        // Well past the pause: the writer is parked on its queue again.
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            log.flush(Duration::from_secs(10)),
            "an idle writer answers a flush"
        );
        assert!(log.flush(Duration::from_secs(10)), "and the next one too");
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
