//! A strict HTTP/1 framing guard in front of hyper.
//!
//! hyper parses HTTP/1 well, but it quietly repairs some ambiguous requests
//! instead of refusing them: with both `Content-Length` and
//! `Transfer-Encoding` it drops the length and reads chunked, so the
//! gateway's own checks never see the conflict. [`FramingGuard`] wraps the
//! client connection and reads every request head *before* hyper does, with
//! `httparse` and stricter rules: one `Content-Length` of digits only, never
//! together with `Transfer-Encoding`, `Transfer-Encoding` exactly `chunked`,
//! no bare CR or invalid header bytes, head size, header count and URI length
//! caps. It follows the body framing (length or chunked) so that it knows
//! where the next head starts, and hands hyper only heads it accepted.
//!
//! A refused head is never shown to hyper. In its place hyper gets a fixed,
//! harmless `GET / HTTP/1.1` with `Connection: close`, and the refusal is
//! recorded under that request's position on the connection; the gateway's
//! pipeline answers it with the JSON error body (so the refusal is logged
//! with a request id like any other), and the connection ends after it.
//! After a protocol upgrade request the guard steps aside (the bytes are no
//! longer HTTP); the gateway closes the connection when the upgrade is not
//! accepted. HTTP/2 connections are not wrapped: their framing is binary.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface (prior knowledge).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What hyper is given in place of a refused head.
pub const REFUSED_REQUEST: &[u8] =
    b"GET / HTTP/1.1\r\nHost: refused.gatehouse.invalid\r\nConnection: close\r\n\r\n";

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a well-formed HTTP/1 request head.
    Malformed(&'static str),
    /// Body length could be read two ways.
    Ambiguous(&'static str),
    /// The request target is longer than allowed.
    UriTooLong,
    /// The head is larger, or has more fields, than allowed.
    HeadTooLarge,
}

/// Limits the guard enforces.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Largest request head in bytes.
    pub max_head_bytes: usize,
    /// Most header fields.
    pub max_headers: usize,
    /// Longest request target.
    pub max_uri_bytes: usize,
}

/// Refusals of one connection, by request position (0-based).
#[derive(Debug, Default)]
pub struct Verdicts {
    refused: Mutex<Option<(u64, Refusal)>>,
}

impl Verdicts {
    fn refuse(&self, index: u64, why: Refusal) {
        if let Ok(mut r) = self.refused.lock() {
            r.get_or_insert((index, why));
        }
    }

    /// The refusal for the request at `index`, if its head was refused.
    pub fn refused(&self, index: u64) -> Option<Refusal> {
        let r = self.refused.lock().ok()?;
        match *r {
            Some((i, why)) if i == index => Some(why),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size { digits: u8, value: u64 },
    Ext { value: u64 },
    SizeLf { value: u64 },
    Data { remaining: u64 },
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing read yet: HTTP/2 prior knowledge is recognised here.
    Start,
    /// Collecting a head.
    Head,
    /// A body of known length.
    Body { remaining: u64 },
    /// A chunked body.
    Chunked { at: Chunk, line: usize },
    /// No more checks (HTTP/2 or after an upgrade request).
    Passthrough,
    /// A refusal was injected; end of stream after it.
    Poisoned,
}

/// The byte-level state machine, kept apart from I/O so it can be tested.
#[derive(Debug)]
struct Machine {
    state: State,
    after_body: State,
    head: Vec<u8>,
    pending: Vec<u8>,
    heads: u64,
    limits: HeadLimits,
    verdicts: Arc<Verdicts>,
}

pin_project_lite::pin_project! {
    /// The guard around a client connection.
    pub struct FramingGuard<I> {
        #[pin]
        io: I,
        pending_at: usize,
        m: Machine,
        // Until the first head is complete. hyper times the later heads
        // itself, but it sees nothing of the first one until the guard
        // lets it through, so a client dribbling it is timed here.
        first_head: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<I> FramingGuard<I> {
    /// Wraps `io`; refusals are recorded in `verdicts`. The first request
    /// head must be complete within `first_head_timeout`.
    pub fn new(
        io: I,
        limits: HeadLimits,
        verdicts: Arc<Verdicts>,
        first_head_timeout: std::time::Duration,
    ) -> Self {
        FramingGuard {
            io,
            pending_at: 0,
            m: Machine::new(limits, verdicts),
            first_head: Some(Box::pin(tokio::time::sleep(first_head_timeout))),
        }
    }
}

/// What the guard decided about a complete head.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// Incomplete: need more bytes.
    Partial,
    /// Accepted: its length in bytes, the body framing, and whether the
    /// connection leaves HTTP after it (upgrade / CONNECT).
    Accepted {
        len: usize,
        body: Body,
        leaves_http: bool,
    },
    /// Refused.
    Refused(Refusal),
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Body {
    None,
    Length(u64),
    Chunked,
}

fn header_is(name: &str, want: &str) -> bool {
    name.eq_ignore_ascii_case(want)
}

/// Examines the bytes collected so far.
fn examine(buf: &[u8], limits: &HeadLimits) -> Head {
    // The usual limit fits on the stack; only a raised one allocates.
    let mut on_stack = [httparse::EMPTY_HEADER; 128];
    let mut on_heap;
    let headers: &mut [httparse::Header<'_>] = if limits.max_headers <= on_stack.len() {
        &mut on_stack[..limits.max_headers]
    } else {
        on_heap = vec![httparse::EMPTY_HEADER; limits.max_headers];
        &mut on_heap
    };
    let mut req = httparse::Request::new(headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if let Some(path) = req.path
                && path.len() > limits.max_uri_bytes
            {
                return Head::Refused(Refusal::UriTooLong);
            }
            if buf.len() > limits.max_head_bytes {
                // The request line alone may be what is too long.
                let line_done = buf.contains(&b'\n');
                return Head::Refused(if line_done {
                    Refusal::HeadTooLarge
                } else {
                    Refusal::UriTooLong
                });
            }
            return Head::Partial;
        }
        Err(httparse::Error::TooManyHeaders) => return Head::Refused(Refusal::HeadTooLarge),
        Err(httparse::Error::Version) => {
            return Head::Refused(Refusal::Malformed("unsupported HTTP version"));
        }
        Err(_) => return Head::Refused(Refusal::Malformed("malformed request head")),
    };
    if len > limits.max_head_bytes {
        return Head::Refused(Refusal::HeadTooLarge);
    }
    if req.path.is_some_and(|p| p.len() > limits.max_uri_bytes) {
        return Head::Refused(Refusal::UriTooLong);
    }
    let mut lengths = req
        .headers
        .iter()
        .filter(|h| header_is(h.name, "content-length"));
    let mut encodings = req
        .headers
        .iter()
        .filter(|h| header_is(h.name, "transfer-encoding"));
    let length = lengths.next();
    let encoding = encodings.next();
    if lengths.next().is_some() {
        return Head::Refused(Refusal::Ambiguous("more than one Content-Length"));
    }
    if encodings.next().is_some() {
        return Head::Refused(Refusal::Ambiguous("more than one Transfer-Encoding"));
    }
    let body = match (length, encoding) {
        (Some(_), Some(_)) => {
            return Head::Refused(Refusal::Ambiguous(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        (Some(cl), None) => {
            let v = cl.value;
            if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                return Head::Refused(Refusal::Ambiguous("invalid Content-Length"));
            }
            let n = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            match n {
                Some(0) => Body::None,
                Some(n) => Body::Length(n),
                None => return Head::Refused(Refusal::Ambiguous("invalid Content-Length")),
            }
        }
        (None, Some(te)) => {
            if req.version != Some(1) {
                return Head::Refused(Refusal::Ambiguous("Transfer-Encoding in HTTP/1.0"));
            }
            if !te.value.eq_ignore_ascii_case(b"chunked") {
                return Head::Refused(Refusal::Ambiguous("Transfer-Encoding other than chunked"));
            }
            Body::Chunked
        }
        (None, None) => Body::None,
    };
    let upgrade = req.headers.iter().any(|h| header_is(h.name, "upgrade"));
    let leaves_http = upgrade
        || req
            .method
            .is_some_and(|m| m.eq_ignore_ascii_case("CONNECT"));
    Head::Accepted {
        len,
        body,
        leaves_http,
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

/// Advances the chunked-body state over `data`; returns how many bytes
/// belong to the body and whether it ended (the rest starts the next head).
fn chunked(at: &mut Chunk, line: &mut usize, data: &[u8]) -> Result<(usize, bool), &'static str> {
    const MAX_LINE: usize = 4096;
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        *at = match *at {
            Chunk::Size { digits, value } => match (b, hex(b)) {
                (_, Some(d)) if digits < 16 => Chunk::Size {
                    digits: digits + 1,
                    value: value * 16 + d,
                },
                (_, Some(_)) => return Err("chunk size too large"),
                (b';', _) if digits > 0 => Chunk::Ext { value },
                (b'\r', _) if digits > 0 => Chunk::SizeLf { value },
                _ => return Err("malformed chunk size"),
            },
            Chunk::Ext { value } => {
                *line += 1;
                if *line > MAX_LINE {
                    return Err("chunk extension too long");
                }
                match b {
                    b'\r' => Chunk::SizeLf { value },
                    b'\n' => return Err("bare LF in chunk line"),
                    _ => Chunk::Ext { value },
                }
            }
            Chunk::SizeLf { value } => {
                if b != b'\n' {
                    return Err("bare CR in chunk line");
                }
                *line = 0;
                if value == 0 {
                    Chunk::TrailerStart
                } else {
                    Chunk::Data { remaining: value }
                }
            }
            Chunk::Data { remaining } => {
                let take = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len() - i);
                i += take;
                let left = remaining - take as u64;
                *at = if left == 0 {
                    Chunk::DataCr
                } else {
                    Chunk::Data { remaining: left }
                };
                continue;
            }
            Chunk::DataCr if b == b'\r' => Chunk::DataLf,
            Chunk::DataLf if b == b'\n' => Chunk::Size {
                digits: 0,
                value: 0,
            },
            Chunk::DataCr | Chunk::DataLf => return Err("chunk data not followed by CRLF"),
            Chunk::TrailerStart => match b {
                b'\r' => Chunk::EndLf,
                b'\n' => return Err("bare LF in trailers"),
                _ => Chunk::TrailerLine,
            },
            Chunk::TrailerLine => {
                *line += 1;
                if *line > MAX_LINE * 4 {
                    return Err("trailers too long");
                }
                match b {
                    b'\r' => Chunk::TrailerLf,
                    b'\n' => return Err("bare LF in trailers"),
                    _ => Chunk::TrailerLine,
                }
            }
            Chunk::TrailerLf if b == b'\n' => Chunk::TrailerStart,
            Chunk::TrailerLf => return Err("bare CR in trailers"),
            Chunk::EndLf if b == b'\n' => return Ok((i + 1, true)),
            Chunk::EndLf => return Err("bare CR after the last chunk"),
        };
        i += 1;
    }
    Ok((data.len(), false))
}

impl Machine {
    fn new(limits: HeadLimits, verdicts: Arc<Verdicts>) -> Machine {
        Machine {
            state: State::Start,
            after_body: State::Head,
            head: Vec::new(),
            pending: Vec::new(),
            heads: 0,
            limits,
            verdicts,
        }
    }

    /// Runs the state machine over freshly read bytes, moving what may
    /// pass to hyper into `pending`.
    fn feed(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.state {
                State::Start => {
                    let mut seen = std::mem::take(&mut self.head);
                    seen.extend_from_slice(data);
                    let n = seen.len().min(H2_PREFACE.len());
                    if seen[..n] != H2_PREFACE[..n] {
                        self.state = State::Head;
                        return self.feed(&seen);
                    }
                    if seen.len() >= H2_PREFACE.len() {
                        self.state = State::Passthrough;
                        self.pending.extend_from_slice(&seen);
                    } else {
                        self.head = seen;
                    }
                    return Ok(());
                }
                State::Passthrough => {
                    self.pending.extend_from_slice(data);
                    return Ok(());
                }
                State::Poisoned => return Ok(()),
                State::Head => {
                    // Empty lines before a request line are ignored (RFC 9112 2.2).
                    if self.head.is_empty() {
                        let skip = data
                            .iter()
                            .take_while(|b| matches!(b, b'\r' | b'\n'))
                            .count();
                        data = &data[skip..];
                        if data.is_empty() {
                            return Ok(());
                        }
                    }
                    let before = self.head.len();
                    self.head.extend_from_slice(data);
                    match examine(&self.head, &self.limits) {
                        Head::Partial => return Ok(()),
                        Head::Refused(why) => {
                            self.verdicts.refuse(self.heads, why);
                            self.heads += 1;
                            self.head.clear();
                            self.pending.extend_from_slice(REFUSED_REQUEST);
                            self.state = State::Poisoned;
                            return Ok(());
                        }
                        Head::Accepted {
                            len,
                            body,
                            leaves_http,
                        } => {
                            self.heads += 1;
                            self.pending.extend_from_slice(&self.head[..len]);
                            data = &data[len - before..];
                            self.head.clear();
                            self.after_body = if leaves_http {
                                State::Passthrough
                            } else {
                                State::Head
                            };
                            self.state = match body {
                                Body::None => self.after_body,
                                Body::Length(n) => State::Body { remaining: n },
                                Body::Chunked => State::Chunked {
                                    at: Chunk::Size {
                                        digits: 0,
                                        value: 0,
                                    },
                                    line: 0,
                                },
                            };
                        }
                    }
                }
                State::Body { remaining } => {
                    let take = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(data.len());
                    self.pending.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        self.after_body
                    } else {
                        State::Body { remaining: left }
                    };
                }
                State::Chunked { mut at, mut line } => {
                    let (used, done) = chunked(&mut at, &mut line, data)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    self.pending.extend_from_slice(&data[..used]);
                    data = &data[used..];
                    self.state = if done {
                        self.after_body
                    } else {
                        State::Chunked { at, line }
                    };
                }
            }
        }
        Ok(())
    }
}

/// Runs the guard over a whole byte stream at once (default limits): what
/// hyper would be given, and the first refusal. For fuzzing and tests.
pub fn inspect_stream(data: &[u8]) -> (Vec<u8>, Option<Refusal>) {
    let verdicts = Arc::new(Verdicts::default());
    let limits = HeadLimits {
        max_head_bytes: 16 * 1024,
        max_headers: 100,
        max_uri_bytes: 8 * 1024,
    };
    let mut m = Machine::new(limits, verdicts.clone());
    let _ = m.feed(data);
    let refused = (0..=m.heads).find_map(|i| verdicts.refused(i));
    (m.pending, refused)
}

impl<I: AsyncRead> AsyncRead for FramingGuard<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        loop {
            let m = &mut *this.m;
            if *this.pending_at < m.pending.len() {
                let avail = &m.pending[*this.pending_at..];
                let n = avail.len().min(buf.remaining());
                buf.put_slice(&avail[..n]);
                *this.pending_at += n;
                if *this.pending_at == m.pending.len() {
                    m.pending.clear();
                    *this.pending_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if m.heads > 0 || matches!(m.state, State::Passthrough | State::Poisoned) {
                *this.first_head = None;
            }
            match m.state {
                State::Passthrough => return this.io.as_mut().poll_read(cx, buf),
                State::Poisoned => {
                    // hyper answers the refusal and closes. Until then, what
                    // the client sends is discarded; an early end of stream
                    // would make hyper drop the answer.
                    let mut rb = buf.take(buf.remaining());
                    ready!(this.io.as_mut().poll_read(cx, &mut rb))?;
                    if rb.filled().is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    continue;
                }
                _ => {}
            }
            // Read into the unfilled part of hyper's own buffer, which
            // hyper does not look at until it is marked filled: the guard
            // keeps no read buffer of its own (a zeroed 16 KiB one per
            // connection before; BENCHMARKS.md, idle-connections memory).
            // The machine copies what it read before anything is put into
            // `buf`, so hyper still sees only what the machine passes.
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let mut rb = buf.take(buf.remaining());
            let polled = this.io.as_mut().poll_read(cx, &mut rb);
            if polled.is_pending() {
                if let Some(timer) = this.first_head.as_mut()
                    && timer.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head not received in time",
                    )));
                }
                return Poll::Pending;
            }
            if let Poll::Ready(Err(e)) = polled {
                return Poll::Ready(Err(e));
            }
            let n = rb.filled().len();
            if n == 0 {
                // End of stream: hand hyper any partial head, so it reports
                // the incomplete message itself.
                if m.head.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                m.pending.append(&mut m.head);
                m.state = State::Passthrough;
                continue;
            }
            m.feed(rb.filled())?;
        }
    }
}

impl<I: AsyncWrite> AsyncWrite for FramingGuard<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_head_bytes: 2048,
        max_headers: 20,
        max_uri_bytes: 256,
    };

    /// Feeds `input` in pieces of `step` bytes; returns what hyper would
    /// see and the verdicts.
    fn run(input: &[u8], step: usize) -> (Vec<u8>, Arc<Verdicts>, State) {
        let verdicts = Arc::new(Verdicts::default());
        let mut m = Machine::new(LIMITS, verdicts.clone());
        for piece in input.chunks(step.max(1)) {
            if m.feed(piece).is_err() {
                break;
            }
        }
        (m.pending, verdicts, m.state)
    }

    fn refused_at(v: &Verdicts) -> Option<(u64, Refusal)> {
        (0..8).find_map(|i| v.refused(i).map(|r| (i, r)))
    }

    #[test]
    fn heads_and_bodies() {
        let get = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let post = "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        let chunked = "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                       5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n";
        // A body that looks like a smuggled request must stay a body.
        let inner = "GET /admin HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let hidden = format!(
            "POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{inner}",
            inner.len()
        );
        let hidden_chunked = format!(
            "POST /e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{inner}\r\n0\r\n\r\n",
            inner.len()
        );
        let cases: Vec<(&str, String, Option<(u64, Refusal)>)> = vec![
            ("one get", get.into(), None),
            ("pipelined", format!("{get}{post}{get}"), None),
            ("chunked with ext and trailers", format!("{chunked}{get}"), None),
            ("leading empty lines", format!("\r\n{get}"), None),
            ("request in a length body", format!("{hidden}{get}"), None),
            ("request in a chunked body", format!("{hidden_chunked}{get}"), None),
            (
                "cl and te",
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
                Some((0, Refusal::Ambiguous("both Content-Length and Transfer-Encoding"))),
            ),
            (
                "te and cl after a good request",
                format!("{post}POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
                Some((1, Refusal::Ambiguous("both Content-Length and Transfer-Encoding"))),
            ),
            (
                "two equal lengths",
                "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx".into(),
                Some((0, Refusal::Ambiguous("more than one Content-Length"))),
            ),
            (
                "signed length",
                "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx".into(),
                Some((0, Refusal::Ambiguous("invalid Content-Length"))),
            ),
            (
                "chunked, identity",
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n".into(),
                Some((0, Refusal::Ambiguous("Transfer-Encoding other than chunked"))),
            ),
            (
                "te on http/1.0",
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
                Some((0, Refusal::Ambiguous("Transfer-Encoding in HTTP/1.0"))),
            ),
            (
                "bare cr in a header",
                "GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n".into(),
                Some((0, Refusal::Malformed("malformed request head"))),
            ),
            (
                "space before colon",
                "GET / HTTP/1.1\r\nHost : x\r\n\r\n".into(),
                Some((0, Refusal::Malformed("malformed request head"))),
            ),
            (
                "obs-fold",
                "GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n".into(),
                Some((0, Refusal::Malformed("malformed request head"))),
            ),
            (
                "too many headers",
                format!("GET / HTTP/1.1\r\n{}\r\n", "X-A: 1\r\n".repeat(21)),
                Some((0, Refusal::HeadTooLarge)),
            ),
            (
                "long uri",
                format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(300)),
                Some((0, Refusal::UriTooLong)),
            ),
            (
                "big header",
                format!("GET / HTTP/1.1\r\nX-A: {}\r\n\r\n", "a".repeat(3000)),
                Some((0, Refusal::HeadTooLarge)),
            ),
        ];
        for (name, input, want) in cases {
            for step in [input.len(), 1, 7] {
                let (out, verdicts, _) = run(input.as_bytes(), step);
                assert_eq!(refused_at(&verdicts), want, "{name} (step {step})");
                match want {
                    None => {
                        let expected = input.trim_start_matches(['\r', '\n']);
                        assert_eq!(
                            String::from_utf8_lossy(&out),
                            expected,
                            "{name} (step {step})"
                        );
                    }
                    Some(_) => {
                        assert!(
                            out.ends_with(REFUSED_REQUEST),
                            "{name}: poison handed to hyper"
                        );
                        let shown = String::from_utf8_lossy(&out);
                        assert!(
                            !shown.contains("Transfer-Encoding: chunked\r\nContent-Length"),
                            "{name}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn nothing_after_a_refusal_is_passed_on() {
        let input = "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxGET /next HTTP/1.1\r\n\r\n";
        let (out, _, state) = run(input.as_bytes(), input.len());
        assert_eq!(out, REFUSED_REQUEST);
        assert_eq!(state, State::Poisoned);
    }

    #[test]
    fn http2_preface_and_upgrades_pass_through() {
        let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04";
        for step in [h2.len(), 1, 5] {
            let (out, _, state) = run(h2, step);
            assert_eq!(out, h2, "step {step}");
            assert_eq!(state, State::Passthrough);
        }
        let ws = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello";
        let (out, _, state) = run(ws, ws.len());
        assert_eq!(out, ws);
        assert_eq!(state, State::Passthrough);
    }

    #[test]
    fn malformed_chunking_is_an_error() {
        for body in ["zz\r\n", "5\nhello", "5\r\nhelloXX", "0\r\n\r\r"] {
            let input = format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
            let verdicts = Arc::new(Verdicts::default());
            let mut m = Machine::new(LIMITS, verdicts);
            assert!(m.feed(input.as_bytes()).is_err(), "{body:?}");
        }
    }
}
