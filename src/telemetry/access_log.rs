//! The access log's writer: each line serialised once, into a reused
//! per-thread buffer, then handed to one writer thread.
//!
//! Ours, for a measured speed-up (BENCHMARKS.md, "log info" row): through
//! tracing-subscriber's JSON formatter every access line visited its 21
//! fields through `dyn Visit`, built a `serde_json` map and allocated a
//! `String` per line before `tracing-appender` copied it into a channel.
//! Here a line is written straight into bytes ([`JsonLine`]) and appended to
//! one shared buffer that the writer thread swaps out and writes whole every
//! [`FLUSH_EVERY`] (sooner when 64 KiB are waiting), so the request path pays
//! a lock and a copy per line, and the lines of 20 ms cost one `write`
//! system call and no wake-up at all.
//!
//! Bounded: at most `capacity` bytes wait for the writer. A line that does
//! not fit (stdout is slow, blocked, or gone) is dropped and counted in
//! `gatehouse_access_log_dropped_total`; the request path never waits for
//! the log and memory never grows with it. Nothing waiting is lost on a
//! graceful shutdown: dropping the [`AccessLogGuard`] writes what is left.
//!
//! The line has the same keys as tracing-subscriber's flattened JSON
//! (`timestamp`, `level`, `message`, the fields, `target`), so log
//! pipelines see no difference.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;

use super::metrics::Counter;

/// Bytes allowed to wait for the writer by default (8 MiB, some 16,000
/// lines).
pub const DEFAULT_CAPACITY: usize = 8 << 20;

/// The writer wakes on its own this often and writes what has gathered;
/// a line waits at most this long (plus the write) before it is written.
pub const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// Waiting bytes at which the writer is woken before its next tick, so a
/// burst goes out in pieces of this size rather than all at the tick.
const WAKE_AT: usize = 64 * 1024;

/// Where access lines go; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("capacity", &self.inner.capacity)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

struct Inner {
    pending: Mutex<Pending>,
    wake: Condvar,
    capacity: usize,
    dropped: AtomicU64,
    dropped_counter: OnceLock<Counter>,
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    closed: bool,
}

/// Stops the writer thread when dropped, after it has written every line
/// still waiting.
#[derive(Debug)]
pub struct AccessLogGuard {
    log: AccessLog,
    thread: Option<JoinHandle<()>>,
}

impl Drop for AccessLogGuard {
    fn drop(&mut self) {
        self.log.lock().closed = true;
        self.log.inner.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            // A writer that panicked has nothing left to flush.
            let _ = thread.join();
        }
    }
}

thread_local! {
    /// The line being built on this thread, reused for every line.
    static LINE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(1024));
}

impl AccessLog {
    /// Starts the writer thread on `out`, with at most `capacity` bytes
    /// waiting for it.
    pub fn start<W: Write + Send + 'static>(
        out: W,
        capacity: usize,
    ) -> std::io::Result<(AccessLog, AccessLogGuard)> {
        let log = AccessLog {
            inner: Arc::new(Inner {
                pending: Mutex::new(Pending::default()),
                wake: Condvar::new(),
                capacity,
                dropped: AtomicU64::new(0),
                dropped_counter: OnceLock::new(),
            }),
        };
        let writer = log.clone();
        let thread = std::thread::Builder::new()
            .name("gatehouse-access-log".into())
            .spawn(move || writer.run(out))?;
        let guard = AccessLogGuard {
            log: log.clone(),
            thread: Some(thread),
        };
        Ok((log, guard))
    }

    /// Also counts dropped lines in `counter` (from now on).
    pub fn count_drops_in(&self, counter: Counter) {
        let _ = self.inner.dropped_counter.set(counter);
    }

    /// Lines dropped so far because the writer was behind (or stdout gone).
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Builds one line with `fill` (in this thread's reused buffer) and
    /// queues it. Never blocks on the output.
    pub fn write_with(&self, fill: impl FnOnce(&mut JsonLine<'_>)) {
        LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => {
                buf.clear();
                fill(&mut JsonLine { buf: &mut buf });
                buf.push(b'\n');
                self.queue(&buf);
                if buf.capacity() > 64 * 1024 {
                    // One huge line must not pin its buffer for good.
                    *buf = Vec::with_capacity(1024);
                }
            }
            // Re-entered on this thread (a log line built while building
            // one): a fresh buffer, the rare case.
            Err(_) => {
                let mut buf = Vec::with_capacity(1024);
                fill(&mut JsonLine { buf: &mut buf });
                buf.push(b'\n');
                self.queue(&buf);
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // The buffer holds whole lines only, so a panic elsewhere cannot
        // leave it half-written: carry on with it.
        self.inner
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn queue(&self, line: &[u8]) {
        let mut pending = self.lock();
        if pending.closed || pending.buf.len() + line.len() > self.inner.capacity {
            drop(pending);
            self.count_dropped(1);
            return;
        }
        let before = pending.buf.len();
        pending.buf.extend_from_slice(line);
        drop(pending);
        // The writer wakes on its own every FLUSH_EVERY. Woken per line, it
        // cost a futex call and a context switch per request (measured: the
        // "log info" row, commit message); only a large backlog wakes it.
        if before < WAKE_AT && before + line.len() >= WAKE_AT {
            self.inner.wake.notify_one();
        }
    }

    fn count_dropped(&self, lines: u64) {
        self.inner.dropped.fetch_add(lines, Ordering::Relaxed);
        if let Some(counter) = self.inner.dropped_counter.get() {
            counter.increment(lines);
        }
    }

    fn run<W: Write>(&self, mut out: W) {
        let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            {
                let mut pending = self.lock();
                if pending.buf.len() < WAKE_AT && !pending.closed {
                    pending = self
                        .inner
                        .wake
                        .wait_timeout(pending, FLUSH_EVERY)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                if pending.buf.is_empty() {
                    if pending.closed {
                        return; // closed, and everything written
                    }
                    continue;
                }
                std::mem::swap(&mut pending.buf, &mut batch);
            }
            if out.write_all(&batch).and_then(|()| out.flush()).is_err() {
                let lines = batch.iter().filter(|&&b| b == b'\n').count();
                self.count_dropped(u64::try_from(lines).unwrap_or(u64::MAX));
            }
            batch.clear();
            if batch.capacity() > self.inner.capacity.max(64 * 1024) {
                batch = Vec::with_capacity(64 * 1024);
            }
        }
    }
}

/// One JSON object being written: `{"key":value,...}` with strings
/// escaped per RFC 8259.
#[derive(Debug)]
pub struct JsonLine<'a> {
    buf: &'a mut Vec<u8>,
}

impl JsonLine<'_> {
    fn key(&mut self, key: &str) {
        self.buf.push(if self.buf.is_empty() { b'{' } else { b',' });
        escape_into(self.buf, key);
        self.buf.push(b':');
    }

    /// `"key":"value"`.
    pub fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        escape_into(self.buf, value);
    }

    /// `"key":"value"` with the value's `Display` text.
    pub fn display(&mut self, key: &str, value: impl std::fmt::Display) {
        use std::fmt::Write as _;
        self.key(key);
        let mut text = Escaped { buf: self.buf };
        text.buf.push(b'"');
        // Writing into a Vec cannot fail.
        let _ = write!(text, "{value}");
        text.buf.push(b'"');
    }

    /// `"key":123`.
    pub fn uint(&mut self, key: &str, value: u64) {
        self.key(key);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// `"key":true`.
    pub fn bool(&mut self, key: &str, value: bool) {
        self.key(key);
        self.buf
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    /// Closes the object.
    pub fn end(&mut self) {
        if self.buf.is_empty() {
            self.buf.push(b'{');
        }
        self.buf.push(b'}');
    }
}

/// A `fmt::Write` that escapes as it appends (for `Display` values).
struct Escaped<'a> {
    buf: &'a mut Vec<u8>,
}

impl std::fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        escape_body(self.buf, s);
        Ok(())
    }
}

/// `s` as a JSON string, quotes included.
fn escape_into(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    escape_body(buf, s);
    buf.push(b'"');
}

/// `s` escaped for inside a JSON string: `"`, `\` and control characters;
/// everything else (UTF-8 included) as it is.
fn escape_body(buf: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..0x20 | 0x7f => b"",
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            buf.extend_from_slice(b"\\u00");
            buf.push(HEX[usize::from(b >> 4)]);
            buf.push(HEX[usize::from(b & 0xf)]);
        } else {
            buf.extend_from_slice(short);
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
#[path = "access_log_tests.rs"]
mod tests;
