use std::io;
use std::sync::{Arc, Mutex};

use super::*;

/// A writer that keeps what it was given, optionally failing or blocking.
#[derive(Clone, Default)]
struct Sink {
    bytes: Arc<Mutex<Vec<u8>>>,
    writes: Arc<AtomicU64>,
    fail: bool,
    /// Held by the test to stall the writer thread.
    gate: Arc<Mutex<()>>,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _held = self.gate.lock().unwrap();
        if self.fail {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "gone"));
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.bytes.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn line(fill: impl FnOnce(&mut JsonLine<'_>)) -> String {
    let mut buf = Vec::new();
    fill(&mut JsonLine { buf: &mut buf });
    String::from_utf8(buf).unwrap()
}

#[test]
fn lines_are_json_that_serde_reads_back_with_every_value_intact() {
    let hostile = "a\"b\\c\nd\re\tf\u{1}g\u{7f}h é 🦀 </script>";
    let text = line(|l| {
        l.str("message", "access");
        l.str("path", hostile);
        l.display("addr", format_args!("{}:{}", "192.0.2.1", 443));
        l.display("quoted", format_args!("x\"{}", "\\y"));
        l.uint("status", 200);
        l.uint("big", u64::MAX);
        l.bool("complete", false);
        l.end();
    });
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["message"], "access");
    assert_eq!(v["path"], hostile);
    assert_eq!(v["addr"], "192.0.2.1:443");
    assert_eq!(v["quoted"], "x\"\\y");
    assert_eq!(v["status"], 200);
    assert_eq!(v["big"], u64::MAX);
    assert_eq!(v["complete"], false);
    assert!(!text.contains('\n'), "one line: {text}");
}

#[test]
fn an_empty_object_is_still_an_object() {
    assert_eq!(line(|l| l.end()), "{}");
}

#[test]
fn every_queued_line_is_written_by_the_time_the_guard_is_dropped() {
    let sink = Sink::default();
    let (log, guard) = AccessLog::start(sink.clone(), DEFAULT_CAPACITY).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    log.write_with(|l| {
                        l.uint("thread", t);
                        l.uint("i", i);
                        l.end();
                    });
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(guard);
    let bytes = sink.bytes.lock().unwrap().clone();
    let text = String::from_utf8(bytes).unwrap();
    let mut seen = std::collections::HashSet::new();
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(seen.insert((v["thread"].as_u64(), v["i"].as_u64())), "{l}");
    }
    assert_eq!(seen.len(), 2000);
    assert_eq!(log.dropped(), 0);
    // Batched: far fewer writes than lines (each write is a system call on
    // stdout).
    assert!(sink.writes.load(Ordering::Relaxed) <= 2000);
}

#[test]
fn a_stalled_output_drops_and_counts_lines_beyond_the_capacity_instead_of_blocking() {
    let sink = Sink::default();
    let stall = sink.gate.lock().unwrap();
    let (log, guard) = AccessLog::start(sink.clone(), 100).unwrap();
    let fill = |l: &mut JsonLine<'_>| {
        l.str("k", "0123456789"); // {"k":"0123456789"} + \n = 19 bytes
        l.end();
    };
    // The first line goes to the writer, which then stalls in `write`.
    log.write_with(fill);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !log.lock().buf.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never took the line"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // Five more fit in 100 bytes; the other 44 are dropped, at once.
    for _ in 0..49 {
        log.write_with(fill);
    }
    assert_eq!(log.dropped(), 44);
    drop(stall);
    drop(guard);
    let written = sink.bytes.lock().unwrap().len();
    assert_eq!(written, 6 * 19);
}

#[test]
fn lines_that_cannot_be_written_are_counted_as_dropped() {
    let sink = Sink {
        fail: true,
        ..Sink::default()
    };
    let (log, guard) = AccessLog::start(sink, DEFAULT_CAPACITY).unwrap();
    let metrics = crate::telemetry::Metrics::new().unwrap();
    log.count_drops_in(metrics.counter("gatehouse_access_log_dropped_total", &[]));
    for _ in 0..3 {
        log.write_with(|l| l.end());
    }
    drop(guard);
    assert_eq!(log.dropped(), 3);
    // After the guard is gone nothing is queued any more: counted too.
    log.write_with(|l| l.end());
    assert_eq!(log.dropped(), 4);
    // The same count reaches /metrics.
    let rendered = metrics.render();
    assert!(
        rendered
            .lines()
            .any(|l| l == "gatehouse_access_log_dropped_total 4"),
        "{rendered}"
    );
}
