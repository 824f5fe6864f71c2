use std::net::Ipv6Addr;
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, OpCode};
use hickory_resolver::proto::rr::RecordType;
use hickory_resolver::proto::rr::rdata::{CNAME, SRV};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

use super::*;

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

/// A reply to `query` with `code` and `answers`.
fn reply(query: &Message, code: ResponseCode, answers: Vec<Record>) -> Message {
    let mut m = Message::response(query.metadata.id, OpCode::Query);
    m.metadata.response_code = code;
    m.metadata.recursion_desired = true;
    m.metadata.recursion_available = true;
    m.add_queries(query.queries.clone());
    m.add_answers(answers);
    m
}

/// The question's name (lower case, no trailing dot) and type.
fn question(query: &Message) -> (String, RecordType) {
    let q = &query.queries[0];
    let n = q.name().to_lowercase().to_ascii();
    (n.trim_end_matches('.').to_owned(), q.query_type())
}

/// A record for the question's name.
fn owned(query: &Message, ttl: u32, data: RData) -> Record {
    Record::from_rdata(query.queries[0].name().clone(), ttl, data)
}

fn ip(s: &str) -> RData {
    RData::from(s.parse::<IpAddr>().unwrap())
}

/// A UDP server answering 42-second A (10.0.0.7) and AAAA (::7)
/// records, after sending a spoofed reply (another address, the wrong id);
/// truncated when `tc`, with the full answer over TCP on the same port.
/// The question types asked are logged.
async fn server(tc: bool) -> (SocketAddr, Arc<Mutex<Vec<RecordType>>>) {
    server_with(tc, |q| match question(q).1 {
        RecordType::A => reply(q, ResponseCode::NoError, vec![owned(q, 42, ip("10.0.0.7"))]),
        _ => reply(
            q,
            ResponseCode::NoError,
            vec![owned(
                q,
                42,
                RData::from(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 7)),
            )],
        ),
    })
    .await
}

/// The server of [`server`], answering with `answer`.
async fn server_with(
    tc: bool,
    answer: fn(&Message) -> Message,
) -> (SocketAddr, Arc<Mutex<Vec<RecordType>>>) {
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
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            log.lock().unwrap().push(question(&q).1);
            // Another address under the wrong id: must be ignored.
            let mut spoof = reply(
                &q,
                ResponseCode::NoError,
                vec![owned(&q, 42, ip("10.6.6.6"))],
            );
            spoof.metadata.id ^= 0xFFFF;
            let _ = udp.send_to(&spoof.to_vec().unwrap(), from).await;
            let real = if tc {
                let mut cut = reply(&q, ResponseCode::NoError, Vec::new());
                cut.metadata.truncation = true;
                cut
            } else {
                answer(&q)
            };
            let _ = udp.send_to(&real.to_vec().unwrap(), from).await;
        }
    });
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            tokio::spawn(async move {
                while let Ok(len) = s.read_u16().await {
                    let mut q = vec![0u8; usize::from(len)];
                    if s.read_exact(&mut q).await.is_err() {
                        return;
                    }
                    let q = Message::from_vec(&q).unwrap();
                    let out = answer(&q).to_vec().unwrap();
                    s.write_u16(out.len() as u16).await.unwrap();
                    s.write_all(&out).await.unwrap();
                }
            });
        }
    });
    (addr, asked)
}

#[test]
fn names_are_checked() {
    assert_eq!(check_name("Api.Internal."), Ok(()));
    assert_eq!(check_name("_api._tcp.example"), Ok(()));
    for (bad, why) in [
        ("", "empty"),
        ("a..b", "empty label"),
        ("a b", "only letters"),
        ("a:b", "only letters"),
        (&"x".repeat(64), "63"),
        (&["abcdefghij"; 30].join("."), "255"),
    ] {
        let e = check_name(bad).unwrap_err().to_string();
        assert!(e.contains(why), "{bad:?}: {e}");
    }
}

#[test]
fn srv_targets_must_be_host_names() {
    assert_eq!(
        target_host(&name("A.Example.")),
        Some("a.example".to_owned())
    );
    assert_eq!(target_host(&Name::root()), None, "`.`: no service there");
    let odd = Name::from_labels(vec![b"a b".to_vec(), b"example".to_vec()]).unwrap();
    assert_eq!(target_host(&odd), None, "{odd:?}");
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
        assert_eq!(
            asked.lock().unwrap().len(),
            2,
            "one A, one AAAA query over UDP"
        );
    }
}

#[tokio::test]
async fn a_family_limits_what_is_asked() {
    for (family, want, qtype) in [
        (AddressFamily::Ipv4, "10.0.0.7", RecordType::A),
        (AddressFamily::Ipv6, "::7", RecordType::AAAA),
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

#[tokio::test]
async fn ttls_follow_cname_chains_and_errors_are_told_apart() {
    let (addr, _) = server_with(false, |q| match question(q) {
        // CNAME → CNAME → A: the chain's smallest TTL; a record of
        // another name is ignored.
        (n, RecordType::A) if n == "api.internal" => reply(
            q,
            ResponseCode::NoError,
            vec![
                Record::from_rdata(name("other.example."), 1, ip("192.0.2.9")),
                owned(q, 15, RData::CNAME(CNAME(name("lb.example.")))),
                Record::from_rdata(
                    name("lb.example."),
                    40,
                    RData::CNAME(CNAME(name("node.example."))),
                ),
                Record::from_rdata(name("node.example."), 60, ip("10.0.0.3")),
            ],
        ),
        (n, _) if n == "api.internal" => reply(q, ResponseCode::NoError, Vec::new()),
        (n, _) if n == "broken.internal" => reply(q, ResponseCode::ServFail, Vec::new()),
        (n, _) if n == "refused.internal" => reply(q, ResponseCode::Refused, Vec::new()),
        _ => reply(q, ResponseCode::NXDomain, Vec::new()),
    })
    .await;
    let r = DnsResolver::with_nameservers(vec![addr], Duration::from_secs(2));
    let got = r.resolve("api.internal").await.unwrap();
    assert_eq!(got.addrs, vec!["10.0.0.3".parse::<IpAddr>().unwrap()]);
    assert_eq!(got.ttl, Some(Duration::from_secs(15)));
    // NXDOMAIN: no address (the last good set stays), not a DNS failure.
    let nx = r.resolve("gone.internal").await.unwrap_err();
    assert!(matches!(nx, DiscoveryError::NoAddress(_)), "{nx:?}");
    // Error codes are failures, named as DNS tools name them, with the
    // server asked.
    for (host, code) in [
        ("broken.internal", "SERVFAIL"),
        ("refused.internal", "REFUSED"),
    ] {
        let e = r.resolve(host).await.unwrap_err();
        assert!(matches!(e, DiscoveryError::Dns { .. }), "{e:?}");
        let e = e.to_string();
        assert!(e.contains(code) && e.contains(&addr.to_string()), "{e}");
    }
}

fn srv(priority: u16, weight: u16, port: u16, target: &str) -> RData {
    RData::SRV(SRV::new(priority, weight, port, name(target)))
}

#[tokio::test]
async fn srv_lookups_keep_the_lowest_priority_and_resolve_its_hosts() {
    let (addr, asked) = server_with(false, |q| match question(q) {
        (n, RecordType::SRV) if n == "_api._tcp.example" => reply(
            q,
            ResponseCode::NoError,
            vec![
                owned(q, 300, srv(10, 3, 8080, "a.example.")),
                owned(q, 300, srv(10, 0, 8081, "b.example.")),
                owned(q, 300, srv(10, 1, 8082, "gone.example.")),
                owned(q, 300, srv(10, 1, 8083, ".")),
                owned(q, 300, srv(20, 1, 9000, "backup.example.")),
            ],
        ),
        (n, RecordType::A) if n == "a.example" => {
            reply(q, ResponseCode::NoError, vec![owned(q, 40, ip("10.0.0.1"))])
        }
        (n, RecordType::A) if n == "b.example" => {
            reply(q, ResponseCode::NoError, vec![owned(q, 90, ip("10.0.0.2"))])
        }
        (n, _) if n == "gone.example" => reply(q, ResponseCode::NXDomain, Vec::new()),
        _ => reply(q, ResponseCode::NoError, Vec::new()),
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
        "priority 20 unused, the vanished host and `.` left out, the smallest TTL"
    );
    let asked = asked.lock().unwrap().clone();
    assert_eq!(asked.iter().filter(|t| **t == RecordType::SRV).count(), 1);
    assert!(
        !asked.contains(&RecordType::AAAA),
        "family ipv4 asks no AAAA"
    );
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
    let e = only_silent.resolve("api.internal").await.unwrap_err();
    assert!(matches!(e, DiscoveryError::Dns { .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("api.internal") && e.contains("no reply"), "{e}");
}

#[tokio::test]
async fn the_system_way_reads_hosts_then_resolv_conf() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    let conf = dir.path().join("resolv.conf");
    std::fs::write(&hosts, "10.9.9.9 pinned.internal\n").unwrap();
    // resolv.conf cannot name a port, so it points at a loopback address
    // where nothing listens on 53: the hosts file must win for its names,
    // and other names must go to that nameserver (and fail with a DNS
    // error naming it, not fall back to the C library).
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
    // (Should something answer there after all, NXDOMAIN is fine too: what
    // must not happen is the C library's error.)
    let e = r.resolve("elsewhere.internal").await.unwrap_err();
    assert!(
        matches!(e, DiscoveryError::Dns { .. } | DiscoveryError::NoAddress(_)),
        "{e:?}"
    );
    if let DiscoveryError::Dns { reason, .. } = &e {
        assert!(reason.contains("127.0.0.254:53"), "{reason}");
    }
    // An address is its own answer; a hosts entry of the wrong family does
    // not count.
    let literal = r.resolve("10.1.2.3").await.unwrap();
    assert_eq!(literal.addrs, vec!["10.1.2.3".parse::<IpAddr>().unwrap()]);
    std::fs::write(&hosts, "::9 pinned.internal\n").unwrap();
    let v4 = DnsResolver {
        family: AddressFamily::Ipv4,
        ..r.clone()
    };
    assert!(v4.resolve("pinned.internal").await.is_err(), "went to DNS");
    // No nameserver in resolv.conf: the C library answers (here from the
    // machine's own hosts file, which always has localhost); SRV needs a
    // nameserver.
    std::fs::write(&conf, "# no nameserver\n").unwrap();
    let local = r.resolve("localhost").await.unwrap();
    assert!(local.addrs.iter().all(|a| a.is_loopback()) && !local.addrs.is_empty());
    assert_eq!(local.ttl, None);
    let srv = r.resolve_srv("_api._tcp.internal").await.unwrap_err();
    assert!(srv.to_string().contains("no nameserver"), "{srv}");
}
