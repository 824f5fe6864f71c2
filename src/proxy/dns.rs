//! A small DNS stub resolver for upstream discovery: A, AAAA and SRV
//! queries over UDP (RFC 1035; no EDNS0, as the C library by default, so no
//! old server or middlebox chokes on an OPT record), retried over TCP when
//! the answer is truncated, CNAME chains followed, and — what `getaddrinfo`
//! cannot give — the record TTLs, so a discovered upstream is re-resolved
//! when its answer expires instead of on a fixed timer.
//!
//! It is a stub, not a recursive resolver: it asks the configured
//! nameservers (or those of `/etc/resolv.conf`, with its `search`, `ndots`,
//! `timeout` and `attempts`) and trusts their answers. Replies are only
//! accepted from the server asked (connected socket), with the query's
//! random id and an echo of its question; anything else is ignored until the
//! timeout, so a stray or spoofed datagram cannot end a query early.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::discovery::{
    DiscoveryError, Resolve, Resolved, ServiceTarget, Services, SystemResolver, hosts_lookup,
};
use super::state::LOG_TARGET;
use crate::config::AddressFamily;

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const TYPE_SRV: u16 = 33;
const CLASS_IN: u16 = 1;
/// CNAME hops followed before giving up.
const MAX_CHAIN: usize = 8;
/// SRV targets used from one answer.
const MAX_SERVICE_TARGETS: usize = 64;
/// Compression pointers followed within one name.
const MAX_POINTERS: usize = 32;

/// Why a DNS query gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The name cannot be put in a query.
    #[error("{0:?} is not a valid DNS name: {1}")]
    BadName(String, &'static str),
    /// No reply within the timeout from any server.
    #[error("no reply from {0}")]
    Timeout(String),
    /// The server answered with an error code.
    #[error("{server} answered {rcode}")]
    Rcode {
        /// The server.
        server: SocketAddr,
        /// `SERVFAIL`, `REFUSED`, …
        rcode: &'static str,
    },
    /// The reply is not a well-formed DNS message.
    #[error("malformed reply: {0}")]
    Malformed(&'static str),
    /// Socket trouble.
    #[error("{0}")]
    Io(String),
}

/// A reply that is not for our query (other id or question): ignored.
#[derive(Debug, PartialEq, Eq)]
struct NotOurs;

/// What one query found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// Records of the type asked, with the smallest TTL on the way to them
    /// (CNAMEs included).
    Records(Vec<Data>, u32),
    /// The name exists but has no record of this type.
    NoData,
    /// The name does not exist.
    NxDomain,
    /// The UDP reply was cut short: ask again over TCP.
    Truncated,
}

/// The data of one answer record.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Data {
    /// A or AAAA.
    Ip(IpAddr),
    /// SRV.
    Srv(Srv),
}

/// An SRV record (RFC 2782).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Srv {
    priority: u16,
    weight: u16,
    port: u16,
    target: WireName,
}

/// A name in wire form (length-prefixed labels, lower-cased, ending in the
/// root label): compared byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WireName(Vec<u8>);

impl WireName {
    fn parse(name: &str) -> Result<Self, DnsError> {
        let bad = |why| DnsError::BadName(name.to_owned(), why);
        let trimmed = name.strip_suffix('.').unwrap_or(name);
        if trimmed.is_empty() {
            return Err(bad("empty"));
        }
        let mut out = Vec::with_capacity(trimmed.len() + 2);
        for label in trimmed.split('.') {
            if label.is_empty() {
                return Err(bad("empty label"));
            }
            if label.len() > 63 {
                return Err(bad("a label is longer than 63 bytes"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad("only letters, digits, '-' and '_' are allowed"));
            }
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
        out.push(0);
        if out.len() > 255 {
            return Err(bad("longer than 255 bytes"));
        }
        Ok(Self(out))
    }
}

impl WireName {
    /// The dotted form of a name read from a reply, if it is a host name
    /// (letters, digits, `-`, `_`); `None` for the root (`.`: "no such
    /// service" in SRV) and for names with other bytes.
    fn to_host(&self) -> Option<String> {
        let mut out = String::new();
        let mut at = 0;
        while let Some(&len) = self.0.get(at) {
            if len == 0 {
                break;
            }
            let label = self.0.get(at + 1..at + 1 + usize::from(len))?;
            if !label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
            {
                return None;
            }
            if !out.is_empty() {
                out.push('.');
            }
            out.extend(label.iter().map(|b| char::from(*b)));
            at += 1 + usize::from(len);
        }
        (!out.is_empty()).then_some(out)
    }
}

/// Checks that `name` can be resolved (config validation).
pub fn check_name(name: &str) -> Result<(), DnsError> {
    WireName::parse(name).map(|_| ())
}

/// A query message for `name` and `qtype` with id `id`, asking for
/// recursion.
fn encode_query(id: u16, name: &WireName, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(12 + name.0.len() + 4);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    q.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    q.extend_from_slice(&0u16.to_be_bytes()); // ANCOUNT
    q.extend_from_slice(&0u16.to_be_bytes()); // NSCOUNT
    q.extend_from_slice(&0u16.to_be_bytes()); // ARCOUNT
    q.extend_from_slice(&name.0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    q
}

struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, DnsError> {
        let b = *self.msg.get(self.pos).ok_or(DnsError::Malformed("short"))?;
        self.pos += 1;
        Ok(b)
    }
    fn u16(&mut self) -> Result<u16, DnsError> {
        Ok(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Result<u32, DnsError> {
        Ok(u32::from_be_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DnsError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DnsError::Malformed("short"))?;
        let b = self
            .msg
            .get(self.pos..end)
            .ok_or(DnsError::Malformed("short"))?;
        self.pos = end;
        Ok(b)
    }
    /// A possibly compressed name, lower-cased into wire form.
    fn name(&mut self) -> Result<WireName, DnsError> {
        let mut out = Vec::new();
        let mut at = self.pos;
        let mut resume = None;
        let mut pointers = 0;
        loop {
            let len = *self.msg.get(at).ok_or(DnsError::Malformed("short name"))?;
            match len & 0xC0 {
                0x00 if len == 0 => {
                    out.push(0);
                    self.pos = resume.unwrap_or(at + 1);
                    break;
                }
                0x00 => {
                    let label = self
                        .msg
                        .get(at + 1..at + 1 + len as usize)
                        .ok_or(DnsError::Malformed("short label"))?;
                    out.push(len);
                    out.extend(label.iter().map(u8::to_ascii_lowercase));
                    at += 1 + len as usize;
                }
                0xC0 => {
                    let low = *self.msg.get(at + 1).ok_or(DnsError::Malformed("short"))?;
                    pointers += 1;
                    if pointers > MAX_POINTERS {
                        return Err(DnsError::Malformed("compression loop"));
                    }
                    resume.get_or_insert(at + 2);
                    at = (usize::from(len & 0x3F) << 8) | usize::from(low);
                }
                _ => return Err(DnsError::Malformed("unknown label type")),
            }
            if out.len() > 255 {
                return Err(DnsError::Malformed("name too long"));
            }
        }
        Ok(WireName(out))
    }
}

struct Record {
    owner: WireName,
    rtype: u16,
    ttl: u32,
    /// Where the record data starts and how long it is.
    data: (usize, usize),
}

/// Reads the reply to query `id` for (`name`, `qtype`).
fn parse_reply(
    msg: &[u8],
    id: u16,
    name: &WireName,
    qtype: u16,
) -> Result<Result<Answer, DnsError>, NotOurs> {
    let mut r = Reader { msg, pos: 0 };
    let header =
        (|| Ok::<_, DnsError>((r.u16()?, r.u16()?, r.u16()?, r.u16()?, r.u16()?, r.u16()?)))();
    let Ok((rid, flags, qd, an, _ns, _ar)) = header else {
        return Err(NotOurs);
    };
    let is_reply = flags & 0x8000 != 0;
    let opcode = (flags >> 11) & 0xF;
    if rid != id || !is_reply || opcode != 0 || qd != 1 {
        return Err(NotOurs);
    }
    let question = (|| Ok::<_, DnsError>((r.name()?, r.u16()?, r.u16()?)))();
    match question {
        Ok((qname, t, c)) if qname == *name && t == qtype && c == CLASS_IN => {}
        _ => return Err(NotOurs),
    }
    if flags & 0x0200 != 0 {
        return Ok(Ok(Answer::Truncated));
    }
    let rcode = match flags & 0xF {
        0 => None,
        3 => return Ok(Ok(Answer::NxDomain)),
        1 => Some("FORMERR"),
        2 => Some("SERVFAIL"),
        4 => Some("NOTIMP"),
        5 => Some("REFUSED"),
        _ => Some("an unknown error"),
    };
    if let Some(rcode) = rcode {
        return Ok(Err(DnsError::Rcode {
            server: SocketAddr::from(([0, 0, 0, 0], 0)),
            rcode,
        }));
    }
    Ok(answers(&mut r, an, name, qtype))
}

fn answers(
    r: &mut Reader<'_>,
    count: u16,
    name: &WireName,
    qtype: u16,
) -> Result<Answer, DnsError> {
    let mut records = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let owner = r.name()?;
        let rtype = r.u16()?;
        let class = r.u16()?;
        // RFC 2181 §8: a TTL with the top bit set is treated as zero.
        let ttl = match r.u32()? {
            t if t > i32::MAX as u32 => 0,
            t => t,
        };
        let len = usize::from(r.u16()?);
        let start = r.pos;
        r.bytes(len)?;
        if class == CLASS_IN {
            records.push(Record {
                owner,
                rtype,
                ttl,
                data: (start, len),
            });
        }
    }
    let mut current = name.clone();
    let mut ttl = u32::MAX;
    for _ in 0..=MAX_CHAIN {
        let mut found = Vec::new();
        for rec in records
            .iter()
            .filter(|x| x.owner == current && x.rtype == qtype)
        {
            let data = &r.msg[rec.data.0..rec.data.0 + rec.data.1];
            let item = match (qtype, data.len()) {
                (TYPE_A, 4) => Data::Ip(IpAddr::V4(Ipv4Addr::new(
                    data[0], data[1], data[2], data[3],
                ))),
                (TYPE_AAAA, 16) => {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(data);
                    Data::Ip(IpAddr::V6(Ipv6Addr::from(b)))
                }
                (TYPE_SRV, 7..) => {
                    let mut at = Reader {
                        msg: r.msg,
                        pos: rec.data.0,
                    };
                    let (priority, weight, port) = (at.u16()?, at.u16()?, at.u16()?);
                    // The target may be compressed (RFC 2782 forbids it,
                    // servers do it anyway); it must end inside the record.
                    let target = at.name()?;
                    if at.pos > rec.data.0 + rec.data.1 {
                        return Err(DnsError::Malformed("SRV target runs past its record"));
                    }
                    Data::Srv(Srv {
                        priority,
                        weight,
                        port,
                        target,
                    })
                }
                _ => return Err(DnsError::Malformed("record data of the wrong length")),
            };
            ttl = ttl.min(rec.ttl);
            found.push(item);
        }
        if !found.is_empty() {
            return Ok(Answer::Records(found, ttl));
        }
        let Some(cname) = records
            .iter()
            .find(|x| x.owner == current && x.rtype == TYPE_CNAME)
        else {
            return Ok(Answer::NoData);
        };
        ttl = ttl.min(cname.ttl);
        let mut at = Reader {
            msg: r.msg,
            pos: cname.data.0,
        };
        current = at.name()?;
    }
    Err(DnsError::Malformed("CNAME chain too long"))
}

/// Reads `msg` as the reply to a query for `api.internal` with the id it
/// carries and the type of its first question (A, AAAA or SRV): how the
/// fuzz target reaches the reply parser. `Some(records)` when it is read
/// as an answer, `None` when it is ignored or refused.
#[doc(hidden)]
pub fn read_reply_for_fuzzing(msg: &[u8]) -> Option<usize> {
    let name = WireName::parse("api.internal").ok()?;
    let id = u16::from_be_bytes([*msg.first()?, *msg.get(1)?]);
    let at = 12 + name.0.len();
    let qtype = u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]);
    if ![TYPE_A, TYPE_AAAA, TYPE_SRV].contains(&qtype) {
        return None;
    }
    match parse_reply(msg, id, &name, qtype) {
        Ok(Ok(Answer::Records(found, ttl))) => {
            assert!(ttl <= i32::MAX as u32, "a TTL beyond RFC 2181's range");
            Some(found.len())
        }
        Ok(Ok(_)) => Some(0),
        Ok(Err(_)) | Err(NotOurs) => None,
    }
}

/// Asks DNS servers, one after the other, until one answers.
#[derive(Debug, Clone)]
pub struct DnsClient {
    /// The servers, tried in order.
    pub servers: Vec<SocketAddr>,
    /// How long one server gets per attempt.
    pub timeout: Duration,
    /// Rounds over the servers.
    pub attempts: u32,
}

impl DnsClient {
    async fn query(&self, name: &WireName, qtype: u16) -> Result<Answer, DnsError> {
        let mut last = DnsError::Timeout(
            self.servers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        );
        for _ in 0..self.attempts.max(1) {
            for server in &self.servers {
                match self.ask(*server, name, qtype).await {
                    Ok(a) => return Ok(a),
                    // An error code is an answer; another server may do
                    // better (as the C library does on SERVFAIL).
                    Err(e) => last = e,
                }
            }
        }
        Err(last)
    }

    async fn ask(
        &self,
        server: SocketAddr,
        name: &WireName,
        qtype: u16,
    ) -> Result<Answer, DnsError> {
        let id: u16 = rand::random();
        let query = encode_query(id, name, qtype);
        let io = |e: std::io::Error| DnsError::Io(format!("{server}: {e}"));
        let udp = async {
            let local: SocketAddr = if server.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let sock = UdpSocket::bind(local).await.map_err(io)?;
            sock.connect(server).await.map_err(io)?;
            sock.send(&query).await.map_err(io)?;
            let mut buf = vec![0u8; 4096];
            loop {
                let n = sock.recv(&mut buf).await.map_err(io)?;
                if let Ok(answer) = parse_reply(&buf[..n], id, name, qtype) {
                    return answer;
                }
            }
        };
        let answer = tokio::time::timeout(self.timeout, udp)
            .await
            .map_err(|_| DnsError::Timeout(server.to_string()))?;
        let answer = match answer {
            Ok(Answer::Truncated) => {
                tokio::time::timeout(self.timeout, self.ask_tcp(server, &query, id, name, qtype))
                    .await
                    .map_err(|_| DnsError::Timeout(server.to_string()))?
            }
            other => other,
        };
        answer.map_err(|e| match e {
            DnsError::Rcode { rcode, .. } => DnsError::Rcode { server, rcode },
            e => e,
        })
    }

    async fn ask_tcp(
        &self,
        server: SocketAddr,
        query: &[u8],
        id: u16,
        name: &WireName,
        qtype: u16,
    ) -> Result<Answer, DnsError> {
        let io = |e: std::io::Error| DnsError::Io(format!("{server} (tcp): {e}"));
        let mut stream = TcpStream::connect(server).await.map_err(io)?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await.map_err(io)?;
        let len = usize::from(stream.read_u16().await.map_err(io)?);
        let mut buf = vec![0u8; len];
        stream.read_exact(&mut buf).await.map_err(io)?;
        match parse_reply(&buf, id, name, qtype) {
            Ok(Ok(Answer::Truncated)) => Err(DnsError::Malformed("truncated over TCP")),
            Ok(answer) => answer,
            Err(NotOurs) => Err(DnsError::Malformed("the TCP reply is for another query")),
        }
    }

    /// The A and AAAA addresses of `name` (asked at once) and the smallest
    /// TTL among the records that gave them. `Ok(None)` when the name has
    /// no address.
    async fn addresses(
        &self,
        name: &WireName,
        family: AddressFamily,
    ) -> Result<Option<(Vec<IpAddr>, u32)>, DnsError> {
        let ask = |qtype, wanted: bool| async move {
            if wanted {
                self.query(name, qtype).await
            } else {
                Ok(Answer::NoData)
            }
        };
        let (a, aaaa) = tokio::join!(
            ask(TYPE_A, family != AddressFamily::Ipv6),
            ask(TYPE_AAAA, family != AddressFamily::Ipv4)
        );
        let mut addrs = Vec::new();
        let mut ttl = u32::MAX;
        let mut error = None;
        for answer in [a, aaaa] {
            match answer {
                Ok(Answer::Records(found, t)) => {
                    addrs.extend(found.into_iter().filter_map(|d| match d {
                        Data::Ip(ip) => Some(ip),
                        Data::Srv(_) => None,
                    }));
                    ttl = ttl.min(t);
                }
                Ok(_) => {}
                Err(e) => error = Some(e),
            }
        }
        match error {
            // One family answered: use it (the other's trouble is logged by
            // the next resolution if it persists and nothing answers).
            _ if !addrs.is_empty() => Ok(Some((addrs, ttl))),
            Some(e) => Err(e),
            None => Ok(None),
        }
    }
}

/// What `/etc/resolv.conf` says (the parts a stub resolver uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    /// `nameserver` lines (at most three, as the C library).
    pub nameservers: Vec<SocketAddr>,
    /// `search` (or `domain`) suffixes.
    pub search: Vec<String>,
    /// `options ndots:N`.
    pub ndots: usize,
    /// `options timeout:N`.
    pub timeout: Duration,
    /// `options attempts:N`.
    pub attempts: u32,
}

impl ResolvConf {
    /// Parses resolv.conf text; unknown lines are ignored, as the C library
    /// does.
    pub fn parse(text: &str) -> Self {
        let mut conf = ResolvConf {
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(5),
            attempts: 2,
        };
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    let addr = words.next().and_then(|w| {
                        // A scoped IPv6 address (`fe80::1%eth0`) keeps its
                        // address; the scope cannot be honoured here.
                        w.split('%').next()?.parse::<IpAddr>().ok()
                    });
                    if let Some(ip) = addr
                        && conf.nameservers.len() < 3
                    {
                        conf.nameservers.push(SocketAddr::new(ip, 53));
                    }
                }
                Some("search") => {
                    conf.search = words
                        .filter(|w| check_name(w).is_ok())
                        .map(|w| w.trim_end_matches('.').to_owned())
                        .collect();
                }
                Some("domain") => {
                    conf.search = words
                        .next()
                        .filter(|w| check_name(w).is_ok())
                        .map(|w| vec![w.trim_end_matches('.').to_owned()])
                        .unwrap_or_default();
                }
                Some("options") => {
                    for opt in words {
                        let (key, value) = opt.split_once(':').unwrap_or((opt, ""));
                        let n = value.parse::<u64>().ok();
                        match (key, n) {
                            ("ndots", Some(n)) => conf.ndots = n.min(15) as usize,
                            ("timeout", Some(n)) => {
                                conf.timeout = Duration::from_secs(n.clamp(1, 30));
                            }
                            ("attempts", Some(n)) => conf.attempts = n.clamp(1, 5) as u32,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        conf
    }

    /// The names to try for `name`, in order: as given first when it has
    /// at least `ndots` dots, after the search suffixes otherwise; a name
    /// ending in `.` is only tried as given.
    pub fn candidates(&self, name: &str) -> Vec<String> {
        if name.ends_with('.') {
            return vec![name.to_owned()];
        }
        let suffixed = self.search.iter().map(|s| format!("{name}.{s}"));
        if name.matches('.').count() >= self.ndots {
            std::iter::once(name.to_owned()).chain(suffixed).collect()
        } else {
            suffixed.chain(std::iter::once(name.to_owned())).collect()
        }
    }
}

/// Resolves names with DNS, reporting TTLs: through the given nameservers,
/// or — when none are given — like the C library would (the hosts file
/// first, then the nameservers, search list and options of
/// `/etc/resolv.conf`, both read on every resolution), falling back to
/// `getaddrinfo` if resolv.conf names no nameserver.
#[derive(Debug, Clone)]
pub struct DnsResolver {
    /// Explicit nameservers: no hosts file, no search list.
    pub nameservers: Vec<SocketAddr>,
    /// Per-server timeout with explicit nameservers.
    pub timeout: Duration,
    /// The system's resolver configuration.
    pub resolv_conf: PathBuf,
    /// The system's hosts file.
    pub hosts: PathBuf,
    /// Which records are asked for.
    pub family: AddressFamily,
}

impl DnsResolver {
    /// Through these nameservers.
    pub fn with_nameservers(nameservers: Vec<SocketAddr>, timeout: Duration) -> Self {
        Self {
            nameservers,
            timeout,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            hosts: PathBuf::from("/etc/hosts"),
            family: AddressFamily::Any,
        }
    }

    /// Like the system would.
    pub fn system() -> Self {
        Self::with_nameservers(Vec::new(), Duration::from_secs(2))
    }

    /// The client and the names to try for `name`: the explicit
    /// nameservers and the name as given, or resolv.conf's nameservers and
    /// search list; `None` when resolv.conf names no nameserver.
    async fn client_for(&self, name: &str) -> Option<(DnsClient, Vec<String>)> {
        if !self.nameservers.is_empty() {
            let client = DnsClient {
                servers: self.nameservers.clone(),
                timeout: self.timeout,
                attempts: 2,
            };
            return Some((client, vec![name.to_owned()]));
        }
        let conf = tokio::fs::read_to_string(&self.resolv_conf)
            .await
            .map(|t| ResolvConf::parse(&t))
            .ok()
            .filter(|c| !c.nameservers.is_empty())?;
        let client = DnsClient {
            servers: conf.nameservers.clone(),
            timeout: conf.timeout,
            attempts: conf.attempts,
        };
        Some((client, conf.candidates(name)))
    }
}

/// Walks the search list: the first candidate `ask` finds something for,
/// `Ok(None)` when none has anything, the last error when one failed.
async fn first_found<T, F, Fut>(candidates: &[String], ask: F) -> Result<Option<T>, DnsError>
where
    F: Fn(WireName) -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, DnsError>>,
{
    let mut error = None;
    for candidate in candidates {
        // A search suffix can make a long name too long: skip it.
        let Ok(wire) = WireName::parse(candidate) else {
            continue;
        };
        match ask(wire).await {
            Ok(Some(found)) => return Ok(Some(found)),
            Ok(None) => {}
            // No server answers: more names would only wait more.
            Err(e @ DnsError::Timeout(_)) => return Err(e),
            Err(e) => error = Some(e),
        }
    }
    error.map_or(Ok(None), Err)
}

#[async_trait::async_trait]
impl Resolve for DnsResolver {
    async fn resolve(&self, name: &str) -> Result<Resolved, DiscoveryError> {
        // An address is its own answer.
        if let Ok(ip) = name.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(Resolved {
                addrs: vec![ip],
                ttl: None,
            });
        }
        if self.nameservers.is_empty()
            && let Ok(text) = tokio::fs::read_to_string(&self.hosts).await
        {
            // Only entries of the wanted family count (as with
            // `getaddrinfo` for one family): otherwise DNS is asked.
            let mut addrs = hosts_lookup(&text, name.trim_end_matches('.'));
            addrs.retain(|a| self.family.admits(a));
            if !addrs.is_empty() {
                return Ok(Resolved { addrs, ttl: None });
            }
        }
        let Some((client, candidates)) = self.client_for(name).await else {
            return SystemResolver.resolve(name).await;
        };
        let found = first_found(&candidates, |wire| {
            let client = &client;
            async move { client.addresses(&wire, self.family).await }
        })
        .await;
        match found.map_err(|e| dns_error(name, e))? {
            Some((mut addrs, ttl)) => {
                addrs.sort();
                addrs.dedup();
                Ok(Resolved {
                    addrs,
                    ttl: Some(Duration::from_secs(u64::from(ttl))),
                })
            }
            None => Err(DiscoveryError::NoAddress(name.to_owned())),
        }
    }

    async fn resolve_srv(&self, name: &str) -> Result<Services, DiscoveryError> {
        let Some((client, candidates)) = self.client_for(name).await else {
            return Err(dns_error(
                name,
                DnsError::Io("resolv.conf names no nameserver".into()),
            ));
        };
        let found = first_found(&candidates, |wire| {
            let client = &client;
            async move {
                match client.query(&wire, TYPE_SRV).await? {
                    Answer::Records(records, ttl) => Ok(Some((records, ttl))),
                    _ => Ok(None),
                }
            }
        })
        .await;
        let Some((records, mut ttl)) = found.map_err(|e| dns_error(name, e))? else {
            return Err(DiscoveryError::NoAddress(name.to_owned()));
        };
        // The lowest priority present is used (RFC 2782); "." means the
        // service is not offered there.
        let srvs: Vec<(Srv, String)> = records
            .into_iter()
            .filter_map(|d| match d {
                Data::Srv(s) => s.target.to_host().map(|h| (s, h)),
                Data::Ip(_) => None,
            })
            .collect();
        let Some(top) = srvs.iter().map(|(s, _)| s.priority).min() else {
            return Err(DiscoveryError::NoAddress(name.to_owned()));
        };
        let chosen: Vec<&(Srv, String)> = srvs
            .iter()
            .filter(|(s, _)| s.priority == top)
            .take(MAX_SERVICE_TARGETS)
            .collect();
        let lookups = chosen
            .iter()
            .map(|(s, _)| client.addresses(&s.target, self.family));
        let answers = futures_util::future::join_all(lookups).await;
        let mut targets = Vec::new();
        for ((srv, host), answer) in chosen.into_iter().zip(answers) {
            match answer {
                Ok(Some((mut addrs, t))) => {
                    ttl = ttl.min(t);
                    addrs.sort();
                    addrs.dedup();
                    targets.push(ServiceTarget {
                        host: host.clone(),
                        port: srv.port,
                        weight: u32::from(srv.weight),
                        addrs,
                    });
                }
                Ok(None) => {
                    tracing::warn!(target: LOG_TARGET, service = %name, host = %host, "an SRV target has no address; left out");
                }
                Err(e) => {
                    tracing::warn!(target: LOG_TARGET, service = %name, host = %host, error = %e, "an SRV target did not resolve; left out");
                }
            }
        }
        if targets.is_empty() {
            return Err(DiscoveryError::NoAddress(name.to_owned()));
        }
        Ok(Services {
            targets,
            ttl: Some(Duration::from_secs(u64::from(ttl))),
        })
    }
}

fn dns_error(name: &str, e: DnsError) -> DiscoveryError {
    DiscoveryError::Dns {
        name: name.to_owned(),
        reason: e.to_string(),
    }
}

/// Parses `ip`, `ip:port` or `[ipv6]:port` (port 53 when absent).
pub fn parse_nameserver(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(format!(
        "nameserver {s:?} is not an IP address (`10.0.0.2`, `10.0.0.2:53`, `[::1]:53`)"
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Builds DNS replies for tests (and the in-test DNS servers).
    struct ReplyBuilder {
        msg: Vec<u8>,
        answers: u16,
    }

    impl ReplyBuilder {
        /// A reply to `query` with `rcode`, echoing its id and question.
        fn new(query: &[u8], rcode: u8, truncated: bool) -> Self {
            let qend = question_end(query);
            let mut msg = Vec::new();
            msg.extend_from_slice(&query[0..2]);
            let mut flags = 0x8180u16 | u16::from(rcode);
            if truncated {
                flags |= 0x0200;
            }
            msg.extend_from_slice(&flags.to_be_bytes());
            msg.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
            msg.extend_from_slice(&query[12..qend]);
            Self { msg, answers: 0 }
        }

        /// Adds a record; `owner` is a pointer to the question name when
        /// `None`.
        fn record(mut self, owner: Option<&str>, rtype: u16, ttl: u32, data: &[u8]) -> Self {
            match owner {
                None => self.msg.extend_from_slice(&[0xC0, 12]),
                Some(n) => self.msg.extend_from_slice(&WireName::parse(n).unwrap().0),
            }
            self.msg.extend_from_slice(&rtype.to_be_bytes());
            self.msg.extend_from_slice(&CLASS_IN.to_be_bytes());
            self.msg.extend_from_slice(&ttl.to_be_bytes());
            self.msg
                .extend_from_slice(&(data.len() as u16).to_be_bytes());
            self.msg.extend_from_slice(data);
            self.answers += 1;
            self
        }

        fn build(mut self) -> Vec<u8> {
            self.msg[6..8].copy_from_slice(&self.answers.to_be_bytes());
            self.msg
        }
    }

    fn question_end(query: &[u8]) -> usize {
        let mut at = 12;
        while query[at] != 0 {
            at += 1 + query[at] as usize;
        }
        at + 5
    }

    /// The question type of a query.
    fn qtype(query: &[u8]) -> u16 {
        let end = question_end(query);
        u16::from_be_bytes([query[end - 4], query[end - 3]])
    }

    fn name(s: &str) -> WireName {
        WireName::parse(s).unwrap()
    }

    fn ips(list: &[&str], ttl: u32) -> Answer {
        Answer::Records(
            list.iter().map(|s| Data::Ip(s.parse().unwrap())).collect(),
            ttl,
        )
    }

    #[test]
    fn names_are_checked_and_lower_cased() {
        assert_eq!(name("Api.Internal.").0, b"\x03api\x08internal\x00");
        for (bad, why) in [
            ("", "empty"),
            ("a..b", "empty label"),
            ("a b", "only letters"),
            (&"x".repeat(64), "63"),
            (&["abcdefghij"; 30].join("."), "255"),
        ] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn replies_are_read_with_ttls_and_cname_chains() {
        let q = encode_query(7, &name("api.internal"), TYPE_A);
        assert_eq!(qtype(&q), TYPE_A);
        // Two addresses: the smaller TTL wins.
        let reply = ReplyBuilder::new(&q, 0, false)
            .record(None, TYPE_A, 30, &[10, 0, 0, 1])
            .record(None, TYPE_A, 20, &[10, 0, 0, 2])
            .build();
        assert_eq!(
            parse_reply(&reply, 7, &name("api.internal"), TYPE_A),
            Ok(Ok(ips(&["10.0.0.1", "10.0.0.2"], 20)))
        );
        // CNAME → CNAME → A: the chain's smallest TTL, records of other
        // names ignored.
        let reply = ReplyBuilder::new(&q, 0, false)
            .record(Some("other.example"), TYPE_A, 1, &[192, 0, 2, 9])
            .record(None, TYPE_CNAME, 15, &name("lb.example").0)
            .record(Some("lb.example"), TYPE_CNAME, 40, &name("node.example").0)
            .record(Some("NODE.example"), TYPE_A, 60, &[10, 0, 0, 3])
            .build();
        assert_eq!(
            parse_reply(&reply, 7, &name("api.internal"), TYPE_A),
            Ok(Ok(ips(&["10.0.0.3"], 15)))
        );
        // A CNAME to nowhere is no data; NXDOMAIN and SERVFAIL are told apart.
        let dangling = ReplyBuilder::new(&q, 0, false)
            .record(None, TYPE_CNAME, 15, &name("gone.example").0)
            .build();
        assert_eq!(
            parse_reply(&dangling, 7, &name("api.internal"), TYPE_A),
            Ok(Ok(Answer::NoData))
        );
        let nx = ReplyBuilder::new(&q, 3, false).build();
        assert_eq!(
            parse_reply(&nx, 7, &name("api.internal"), TYPE_A),
            Ok(Ok(Answer::NxDomain))
        );
        let fail = ReplyBuilder::new(&q, 2, false).build();
        assert!(matches!(
            parse_reply(&fail, 7, &name("api.internal"), TYPE_A),
            Ok(Err(DnsError::Rcode {
                rcode: "SERVFAIL",
                ..
            }))
        ));
        // AAAA, and a TTL with the top bit set counts as zero.
        let q6 = encode_query(8, &name("api.internal"), TYPE_AAAA);
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        let reply = ReplyBuilder::new(&q6, 0, false)
            .record(None, TYPE_AAAA, 0x8000_0000, &v6)
            .build();
        assert_eq!(
            parse_reply(&reply, 8, &name("api.internal"), TYPE_AAAA),
            Ok(Ok(ips(&["::1"], 0)))
        );
    }

    #[test]
    fn replies_for_other_queries_or_malformed_are_refused() {
        let q = encode_query(7, &name("api.internal"), TYPE_A);
        let reply = ReplyBuilder::new(&q, 0, false)
            .record(None, TYPE_A, 30, &[10, 0, 0, 1])
            .build();
        // Another id, another question, a query instead of a reply.
        assert_eq!(
            parse_reply(&reply, 8, &name("api.internal"), TYPE_A),
            Err(NotOurs)
        );
        assert_eq!(
            parse_reply(&reply, 7, &name("evil.example"), TYPE_A),
            Err(NotOurs)
        );
        assert_eq!(
            parse_reply(&reply, 7, &name("api.internal"), TYPE_AAAA),
            Err(NotOurs)
        );
        assert_eq!(
            parse_reply(&q, 7, &name("api.internal"), TYPE_A),
            Err(NotOurs)
        );
        assert_eq!(
            parse_reply(&reply[..5], 7, &name("api.internal"), TYPE_A),
            Err(NotOurs)
        );
        // Cut inside the answer; an A record of the wrong length; a
        // compression pointer loop.
        let cut = &reply[..reply.len() - 2];
        assert!(matches!(
            parse_reply(cut, 7, &name("api.internal"), TYPE_A),
            Ok(Err(DnsError::Malformed(_)))
        ));
        let wrong = ReplyBuilder::new(&q, 0, false)
            .record(None, TYPE_A, 30, &[10, 0, 0])
            .build();
        assert!(matches!(
            parse_reply(&wrong, 7, &name("api.internal"), TYPE_A),
            Ok(Err(DnsError::Malformed(_)))
        ));
        let mut looped = ReplyBuilder::new(&q, 0, false)
            .record(None, TYPE_A, 30, &[10, 0, 0, 1])
            .build();
        let owner = 12 + name("api.internal").0.len() + 4;
        let here = owner as u8;
        looped[owner..owner + 2].copy_from_slice(&[0xC0, here]);
        assert_eq!(
            parse_reply(&looped, 7, &name("api.internal"), TYPE_A),
            Ok(Err(DnsError::Malformed("compression loop")))
        );
        // Truncated replies ask for TCP.
        let tc = ReplyBuilder::new(&q, 0, true).build();
        assert_eq!(
            parse_reply(&tc, 7, &name("api.internal"), TYPE_A),
            Ok(Ok(Answer::Truncated))
        );
    }

    proptest::proptest! {
        /// Whatever arrives on the socket, reading it ends without a panic,
        /// and whatever it accepts as addresses carries a TTL within
        /// RFC 2181's range.
        #[test]
        fn any_bytes_are_read_without_panicking(
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            flips in proptest::collection::vec((0usize..200, proptest::num::u8::ANY), 0..8),
        ) {
            let q = encode_query(7, &name("api.internal"), TYPE_A);
            let mut reply = ReplyBuilder::new(&q, 0, false)
                .record(None, TYPE_CNAME, 30, &name("lb.example").0)
                .record(Some("lb.example"), TYPE_A, 20, &[10, 0, 0, 2])
                .build();
            for (at, byte) in flips {
                if let Some(b) = reply.get_mut(at) {
                    *b = byte;
                }
            }
            for msg in [&noise, &reply] {
                for qtype in [TYPE_A, TYPE_SRV] {
                    if let Ok(Ok(Answer::Records(_, ttl))) =
                        parse_reply(msg, 7, &name("api.internal"), qtype)
                    {
                        proptest::prop_assert!(ttl <= i32::MAX as u32);
                    }
                }
                read_reply_for_fuzzing(msg);
            }
            // Unflipped, the reply is read through its CNAME.
            let clean = ReplyBuilder::new(&q, 0, false)
                .record(None, TYPE_CNAME, 30, &name("lb.example").0)
                .record(Some("lb.example"), TYPE_A, 20, &[10, 0, 0, 2])
                .build();
            proptest::prop_assert_eq!(read_reply_for_fuzzing(&clean), Some(1));
        }
    }

    #[test]
    fn resolv_conf_is_read_like_the_c_library() {
        let conf = ResolvConf::parse(
            "# comment\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver bogus\n\
             domain old.example\nsearch svc.cluster.local cluster.local ; trailing\n\
             options ndots:5 timeout:3 attempts:9 rotate\n\
             nameserver 10.0.0.3\nnameserver 10.0.0.4\n",
        );
        let ns: Vec<SocketAddr> = ["10.0.0.2:53", "[fe80::1]:53", "10.0.0.3:53"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(conf.nameservers, ns, "at most three, bad ones skipped");
        assert_eq!(conf.search, vec!["svc.cluster.local", "cluster.local"]);
        assert_eq!(conf.ndots, 5);
        assert_eq!(conf.timeout, Duration::from_secs(3));
        assert_eq!(conf.attempts, 5, "capped");
        assert_eq!(
            conf.candidates("api"),
            vec!["api.svc.cluster.local", "api.cluster.local", "api"]
        );
        assert_eq!(conf.candidates("api.example."), vec!["api.example."]);
        let one_dot = ResolvConf::parse("search corp.example\n");
        assert_eq!(
            one_dot.candidates("api.internal"),
            vec!["api.internal", "api.internal.corp.example"],
            "enough dots: as given first"
        );
        assert_eq!(one_dot.nameservers, Vec::<SocketAddr>::new());
    }

    #[tokio::test]
    async fn the_search_list_skips_bad_names_and_stops_on_timeouts() {
        let candidates: Vec<String> = [&"x".repeat(300), "a.example", "b.example", "c.example"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let walk = |answers: [Result<Option<u8>, DnsError>; 3]| {
            let asked = Mutex::new(Vec::new());
            let answers = answers.clone();
            let candidates = candidates.clone();
            async move {
                let got = first_found(&candidates, |wire| {
                    let host = wire.to_host().unwrap_or_default();
                    asked.lock().unwrap().push(host.clone());
                    let i = ["a.example", "b.example", "c.example"]
                        .iter()
                        .position(|c| *c == host)
                        .unwrap();
                    let answer = answers[i].clone();
                    async move { answer }
                })
                .await;
                (got, asked.into_inner().unwrap())
            }
        };
        let refused = || {
            Err(DnsError::Rcode {
                server: "127.0.0.1:53".parse().unwrap(),
                rcode: "REFUSED",
            })
        };
        let timeout = || Err(DnsError::Timeout("127.0.0.1:53".into()));
        // An error on one name does not stop the walk; an answer does.
        let (got, asked) = walk([refused(), Ok(Some(7)), Ok(Some(8))]).await;
        assert_eq!(got, Ok(Some(7)));
        assert_eq!(
            asked,
            vec!["a.example", "b.example"],
            "the too-long name skipped"
        );
        // A timeout ends it: no more waiting on a dead server.
        let (got, asked) = walk([Ok(None), timeout(), Ok(Some(8))]).await;
        assert_eq!(got, Err(DnsError::Timeout("127.0.0.1:53".into())));
        assert_eq!(asked, vec!["a.example", "b.example"]);
        // Nothing anywhere; the last error when there was one.
        assert_eq!(walk([Ok(None), Ok(None), Ok(None)]).await.0, Ok(None));
        assert!(matches!(
            walk([refused(), Ok(None), Ok(None)]).await.0,
            Err(DnsError::Rcode { .. })
        ));
    }

    #[test]
    fn nameservers_parse_with_and_without_ports() {
        assert_eq!(
            parse_nameserver("10.0.0.2"),
            Ok("10.0.0.2:53".parse().unwrap())
        );
        assert_eq!(
            parse_nameserver("10.0.0.2:5353"),
            Ok("10.0.0.2:5353".parse().unwrap())
        );
        assert_eq!(
            parse_nameserver("[::1]:54"),
            Ok("[::1]:54".parse().unwrap())
        );
        assert_eq!(parse_nameserver("::1"), Ok("[::1]:53".parse().unwrap()));
        assert!(
            parse_nameserver("dns.example")
                .unwrap_err()
                .contains("not an IP")
        );
    }

    /// A UDP server answering 42-second A (10.0.0.7) and AAAA (::7)
    /// records, after sending a spoofed reply (another address, the wrong
    /// id); truncated when `tc`, with the full answer over TCP on the same
    /// port. The question types asked are logged.
    async fn server(tc: bool) -> (SocketAddr, Arc<Mutex<Vec<u16>>>) {
        server_with(tc, |q: &[u8]| match qtype(q) {
            TYPE_A => ReplyBuilder::new(q, 0, false)
                .record(None, TYPE_A, 42, &[10, 0, 0, 7])
                .build(),
            _ => ReplyBuilder::new(q, 0, false)
                .record(
                    None,
                    TYPE_AAAA,
                    42,
                    &Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 7).octets(),
                )
                .build(),
        })
        .await
    }

    /// The server of [`server`], answering with `answer`.
    async fn server_with(
        tc: bool,
        answer: fn(&[u8]) -> Vec<u8>,
    ) -> (SocketAddr, Arc<Mutex<Vec<u16>>>) {
        // The same port for UDP and TCP (a few tries: the TCP port may be
        // taken).
        let mut bound = None;
        for _ in 0..20 {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            if let Ok(tcp) = tokio::net::TcpListener::bind(udp.local_addr().unwrap()).await {
                bound = Some((udp, tcp));
                break;
            }
        }
        let (udp, tcp) = bound.expect("a port free for both UDP and TCP");
        let addr = udp.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                let q = &buf[..n];
                log.lock().unwrap().push(qtype(q));
                // Another address under the wrong id: must be ignored.
                let mut spoof = ReplyBuilder::new(q, 0, false)
                    .record(None, TYPE_A, 42, &[10, 6, 6, 6])
                    .build();
                spoof[0] ^= 0xFF;
                let _ = udp.send_to(&spoof, from).await;
                let reply = if tc {
                    ReplyBuilder::new(q, 0, true).build()
                } else {
                    answer(q)
                };
                let _ = udp.send_to(&reply, from).await;
            }
        });
        tokio::spawn(async move {
            while let Ok((mut s, _)) = tcp.accept().await {
                let len = s.read_u16().await.unwrap() as usize;
                let mut q = vec![0u8; len];
                s.read_exact(&mut q).await.unwrap();
                let reply = answer(&q);
                s.write_u16(reply.len() as u16).await.unwrap();
                s.write_all(&reply).await.unwrap();
            }
        });
        (addr, asked)
    }

    #[tokio::test]
    async fn a_real_exchange_over_udp_and_tcp() {
        let both: Vec<IpAddr> = vec!["10.0.0.7".parse().unwrap(), "::7".parse().unwrap()];
        for tc in [false, true] {
            let (addr, asked) = server(tc).await;
            let r = DnsResolver::with_nameservers(vec![addr], Duration::from_secs(2));
            let got = r.resolve("api.internal").await.unwrap();
            assert_eq!(
                got,
                Resolved {
                    addrs: both.clone(),
                    ttl: Some(Duration::from_secs(42)),
                },
                "truncated: {tc}"
            );
            assert_eq!(asked.lock().unwrap().len(), 2, "one A, one AAAA query");
        }
    }

    #[tokio::test]
    async fn a_family_limits_what_is_asked() {
        for (family, want, qtype) in [
            (AddressFamily::Ipv4, "10.0.0.7", TYPE_A),
            (AddressFamily::Ipv6, "::7", TYPE_AAAA),
        ] {
            let (addr, asked) = server(false).await;
            let r = DnsResolver {
                family,
                ..DnsResolver::with_nameservers(vec![addr], Duration::from_secs(2))
            };
            let got = r.resolve("api.internal").await.unwrap();
            assert_eq!(
                got.addrs,
                vec![want.parse::<IpAddr>().unwrap()],
                "{family:?}"
            );
            assert_eq!(
                *asked.lock().unwrap(),
                vec![qtype],
                "{family:?}: only its records"
            );
        }
    }

    fn srv_data(priority: u16, weight: u16, port: u16, target: &str) -> Vec<u8> {
        let mut d = Vec::new();
        for v in [priority, weight, port] {
            d.extend_from_slice(&v.to_be_bytes());
        }
        d.extend_from_slice(&name(target).0);
        d
    }

    #[test]
    fn srv_records_are_read() {
        let q = encode_query(9, &name("_api._tcp.example"), TYPE_SRV);
        // A target compressed into a pointer to the question name.
        let mut compressed = 10u16.to_be_bytes().to_vec();
        compressed.extend_from_slice(&[0, 5, 0x1F, 0x90, 0xC0, 12]);
        let reply = ReplyBuilder::new(&q, 0, false)
            .record(None, TYPE_SRV, 60, &srv_data(10, 5, 8080, "a.example"))
            .record(None, TYPE_SRV, 30, &compressed)
            .build();
        let Ok(Ok(Answer::Records(found, ttl))) =
            parse_reply(&reply, 9, &name("_api._tcp.example"), TYPE_SRV)
        else {
            panic!("no SRV answer");
        };
        assert_eq!(ttl, 30);
        let srv: Vec<(u16, u16, u16, Option<String>)> = found
            .iter()
            .map(|d| match d {
                Data::Srv(s) => (s.priority, s.weight, s.port, s.target.to_host()),
                Data::Ip(_) => panic!("an address in an SRV answer"),
            })
            .collect();
        assert_eq!(
            srv,
            vec![
                (10, 5, 8080, Some("a.example".into())),
                (10, 5, 8080, Some("_api._tcp.example".into())),
            ]
        );
        // "." is the root, not a host; an SRV record too short is refused.
        assert_eq!(WireName(vec![0]).to_host(), None);
        let short = ReplyBuilder::new(&q, 0, false)
            .record(None, TYPE_SRV, 60, &[0, 1, 0, 1])
            .build();
        assert!(matches!(
            parse_reply(&short, 9, &name("_api._tcp.example"), TYPE_SRV),
            Ok(Err(DnsError::Malformed(_)))
        ));
    }

    #[tokio::test]
    async fn srv_lookups_keep_the_lowest_priority_and_resolve_its_hosts() {
        let (addr, asked) = server_with(false, |q: &[u8]| {
            let b = ReplyBuilder::new(q, 0, false);
            let qname = &q[12..q.len() - 4];
            match (qtype(q), qname) {
                (TYPE_SRV, n) if n == name("_api._tcp.example").0 => b
                    .record(None, TYPE_SRV, 300, &srv_data(10, 3, 8080, "a.example"))
                    .record(None, TYPE_SRV, 300, &srv_data(10, 0, 8081, "b.example"))
                    .record(None, TYPE_SRV, 300, &srv_data(10, 1, 8082, "gone.example"))
                    .record(
                        None,
                        TYPE_SRV,
                        300,
                        &srv_data(20, 1, 9000, "backup.example"),
                    )
                    .build(),
                (TYPE_A, n) if n == name("a.example").0 => {
                    b.record(None, TYPE_A, 40, &[10, 0, 0, 1]).build()
                }
                (TYPE_A, n) if n == name("b.example").0 => {
                    b.record(None, TYPE_A, 90, &[10, 0, 0, 2]).build()
                }
                (TYPE_A | TYPE_AAAA, n) if n == name("gone.example").0 => {
                    ReplyBuilder::new(q, 3, false).build()
                }
                _ => b.build(),
            }
        })
        .await;
        let r = DnsResolver {
            family: AddressFamily::Ipv4,
            ..DnsResolver::with_nameservers(vec![addr], Duration::from_secs(2))
        };
        let got = r.resolve_srv("_api._tcp.example").await.unwrap();
        let ip = |s: &str| vec![s.parse::<IpAddr>().unwrap()];
        assert_eq!(
            got,
            Services {
                targets: vec![
                    ServiceTarget {
                        host: "a.example".into(),
                        port: 8080,
                        weight: 3,
                        addrs: ip("10.0.0.1"),
                    },
                    ServiceTarget {
                        host: "b.example".into(),
                        port: 8081,
                        weight: 0,
                        addrs: ip("10.0.0.2"),
                    },
                ],
                ttl: Some(Duration::from_secs(40)),
            },
            "priority 20 unused, the vanished host left out, the smallest TTL"
        );
        let asked = asked.lock().unwrap().clone();
        assert_eq!(asked.iter().filter(|t| **t == TYPE_SRV).count(), 1);
        assert!(!asked.contains(&TYPE_AAAA), "family ipv4 asks no AAAA");
        // No SRV record at all: no address (the last good set stays).
        let none = r.resolve_srv("_other._tcp.example").await.unwrap_err();
        assert!(matches!(none, DiscoveryError::NoAddress(_)), "{none:?}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out_and_the_next_one_answers() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (good, _) = server(false).await;
        let r = DnsResolver::with_nameservers(
            vec![silent.local_addr().unwrap(), good],
            Duration::from_millis(200),
        );
        let got = r.resolve("api.internal").await.unwrap();
        assert_eq!(got.addrs.len(), 2, "{got:?}");
        assert!(got.addrs.contains(&"10.0.0.7".parse::<IpAddr>().unwrap()));
        let only_silent = DnsResolver::with_nameservers(
            vec![silent.local_addr().unwrap()],
            Duration::from_millis(100),
        );
        let e = only_silent
            .resolve("api.internal")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("api.internal"), "{e}");
    }

    #[tokio::test]
    async fn the_system_way_reads_hosts_then_resolv_conf() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        let conf = dir.path().join("resolv.conf");
        std::fs::write(&hosts, "10.9.9.9 pinned.internal\n").unwrap();
        // resolv.conf cannot name a port, so it points at a loopback
        // address where nothing listens on 53: the hosts file must win
        // for its names, and other names must go to that nameserver (and
        // fail with a DNS error naming it, not fall back to the C library).
        std::fs::write(
            &conf,
            "nameserver 127.0.0.254\noptions timeout:1 attempts:1\n",
        )
        .unwrap();
        let r = DnsResolver {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(1),
            resolv_conf: conf.clone(),
            hosts: hosts.clone(),
            family: AddressFamily::Any,
        };
        let pinned = r.resolve("pinned.internal").await.unwrap();
        assert_eq!(pinned.addrs, vec!["10.9.9.9".parse::<IpAddr>().unwrap()]);
        assert_eq!(pinned.ttl, None, "hosts entries have no TTL");
        // (Should something answer there after all, NXDOMAIN is fine too:
        // what must not happen is the C library's error.)
        let e = r.resolve("elsewhere.internal").await.unwrap_err();
        assert!(
            matches!(e, DiscoveryError::Dns { .. } | DiscoveryError::NoAddress(_)),
            "{e:?}"
        );
        // An address is its own answer; a hosts entry of the wrong family
        // does not count.
        let literal = r.resolve("10.1.2.3").await.unwrap();
        assert_eq!(literal.addrs, vec!["10.1.2.3".parse::<IpAddr>().unwrap()]);
        std::fs::write(&hosts, "::9 pinned.internal\n").unwrap();
        let v4 = DnsResolver {
            family: AddressFamily::Ipv4,
            ..r.clone()
        };
        assert!(v4.resolve("pinned.internal").await.is_err(), "went to DNS");
        // No nameserver in resolv.conf: the C library answers (here from
        // the machine's own hosts file, which always has localhost).
        std::fs::write(&conf, "# no nameserver\n").unwrap();
        let local = r.resolve("localhost").await.unwrap();
        assert!(local.addrs.iter().all(|a| a.is_loopback()) && !local.addrs.is_empty());
        assert_eq!(local.ttl, None);
    }
}
