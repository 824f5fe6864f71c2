//! The PROXY protocol (HAProxy's v1 text and v2 binary headers), so the
//! client address behind an L4 load balancer (AWS NLB, HAProxy) is the real
//! one for rate limits, IP rules, throttles and logs.
//!
//! Parsing is the `ppp` crate's; this module only reads exactly the header's
//! bytes off the connection (nothing of the request after it), bounds what it
//! reads, and decides what the header means. It does not decide who may send
//! one: the accept loop asks for a header only from peers in
//! `[access] trusted_proxies`, and refuses a connection whose untrusted peer
//! sends one ([`sends_header`]) — anyone else could claim any address.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::v1;
use ppp::v2;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

/// The v1 signature (`PROXY ` then the protocol).
const V1_PREFIX: &[u8] = b"PROXY ";
/// The v2 signature: twelve fixed bytes.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header (the spec's 107 bytes, CRLF included).
const V1_MAX: usize = 107;
/// Largest v2 address-and-TLV block accepted. Load balancers send a few
/// dozen bytes (AWS adds a VPC endpoint id); the format allows 64 KiB.
const V2_MAX_PAYLOAD: usize = 4096;

/// Why a PROXY header was not accepted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyHeaderError {
    /// The peer closed or the read failed before a whole header arrived.
    #[error("connection ended inside the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// What arrived is not a PROXY header.
    #[error("not a PROXY protocol header")]
    Missing,
    /// A header that is too long or does not parse.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
}

impl ProxyHeaderError {
    /// The reason label for the refused-connections counter.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            ProxyHeaderError::Io(_) => "proxy_protocol_incomplete",
            ProxyHeaderError::Missing => "proxy_protocol_missing",
            ProxyHeaderError::Malformed(_) => "proxy_protocol_malformed",
        }
    }
}

/// Reads one PROXY header (v1 or v2) from `io` and returns the client
/// address it names: `None` for a v2 `LOCAL` command or v1 `UNKNOWN` (the
/// balancer's own health check; the connection's peer is the client), and for
/// address families other than TCP over IPv4/IPv6. Reads exactly the
/// header's bytes.
pub(crate) async fn read_header<S: AsyncRead + Unpin>(
    io: &mut S,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut buf = vec![0u8; 8];
    io.read_exact(&mut buf).await?;
    if buf.starts_with(V1_PREFIX) {
        // One byte at a time up to the CRLF, so nothing after it is taken.
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(ProxyHeaderError::Malformed(
                    "v1 header longer than 107 bytes",
                ));
            }
            io.read_exact(&mut byte).await?;
            buf.push(byte[0]);
        }
        let header = v1::Header::try_from(buf.as_slice())
            .map_err(|_| ProxyHeaderError::Malformed("v1 header does not parse"))?;
        return Ok(match header.addresses {
            v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
            }
            v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
            }
            v1::Addresses::Unknown => None,
        });
    }
    if !V2_SIGNATURE.starts_with(&buf) {
        return Err(ProxyHeaderError::Missing);
    }
    buf.resize(16, 0);
    io.read_exact(&mut buf[8..]).await?;
    if !buf.starts_with(V2_SIGNATURE) {
        return Err(ProxyHeaderError::Missing);
    }
    let payload = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if payload > V2_MAX_PAYLOAD {
        return Err(ProxyHeaderError::Malformed("v2 header longer than 4 KiB"));
    }
    buf.resize(16 + payload, 0);
    io.read_exact(&mut buf[16..]).await?;
    let header = v2::Header::try_from(buf.as_slice())
        .map_err(|_| ProxyHeaderError::Malformed("v2 header does not parse"))?;
    if header.command == v2::Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        v2::Addresses::IPv4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        v2::Addresses::IPv6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    })
}

/// Whether the first bytes `tcp` received are a PROXY header (peeked, not
/// consumed). Waits at most `wait` for enough bytes to tell; a peer that
/// sends nothing, or something else, is not sending one.
pub(crate) async fn sends_header(tcp: &TcpStream, wait: Duration) -> bool {
    let look = async {
        let mut buf = [0u8; 12];
        loop {
            let n = match tcp.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            let seen = &buf[..n];
            if seen.starts_with(V1_PREFIX) || seen.starts_with(V2_SIGNATURE) {
                return true;
            }
            let may_become = V1_PREFIX.starts_with(seen) || V2_SIGNATURE.starts_with(seen);
            if !may_become {
                return false;
            }
            // A prefix of a signature: wait for the next bytes.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(wait, look).await.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&u16::try_from(payload.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn v2_tcp4(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut p = src.to_vec();
        p.extend_from_slice(&[10, 0, 0, 1]);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&443u16.to_be_bytes());
        v2(1, 0x11, &p)
    }

    #[tokio::test]
    async fn headers_give_the_client_address_and_leave_the_request() {
        let mut v6 = vec![0x20, 0x01, 0x0d, 0xb8];
        v6.extend_from_slice(&[0; 11]);
        v6.push(7);
        let mut v6_payload = v6.clone();
        v6_payload.extend_from_slice(&[0; 16]);
        v6_payload.extend_from_slice(&5555u16.to_be_bytes());
        v6_payload.extend_from_slice(&443u16.to_be_bytes());
        let mut with_tlv = v2_tcp4([198, 51, 100, 9], 4000);
        // One TLV (type 0x04, NOOP) appended: the length grows by 4.
        with_tlv.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]);
        with_tlv[15] += 4;
        let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
            (
                "v1 tcp4",
                b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n".to_vec(),
                Some("203.0.113.7:51000"),
            ),
            (
                "v1 tcp6",
                b"PROXY TCP6 2001:db8::7 ::1 51000 443\r\n".to_vec(),
                Some("[2001:db8::7]:51000"),
            ),
            ("v1 unknown", b"PROXY UNKNOWN\r\n".to_vec(), None),
            (
                "v2 tcp4",
                v2_tcp4([198, 51, 100, 9], 4000),
                Some("198.51.100.9:4000"),
            ),
            ("v2 tcp4 with a TLV", with_tlv, Some("198.51.100.9:4000")),
            (
                "v2 tcp6",
                v2(1, 0x21, &v6_payload),
                Some("[2001:db8::7]:5555"),
            ),
            ("v2 local", v2(0, 0x00, &[]), None),
        ];
        for (name, mut bytes, want) in cases {
            bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let mut reader = bytes.as_slice();
            let got = read_header(&mut reader).await;
            let got = match got {
                Ok(addr) => addr.map(|a| a.to_string()),
                Err(e) => panic!("{name}: {e}"),
            };
            assert_eq!(got.as_deref(), want, "{name}");
            assert_eq!(reader, b"GET / HTTP/1.1\r\n", "{name}: the request is left");
        }
    }

    #[tokio::test]
    async fn bad_headers_are_refused() {
        let mut too_long = b"PROXY TCP4 ".to_vec();
        too_long.extend(std::iter::repeat_n(b'1', 120));
        let mut huge_v2 = v2(1, 0x11, &[]);
        huge_v2[14] = 0xff;
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "plain http",
                b"GET / HTTP/1.1\r\n\r\n".to_vec(),
                "proxy_protocol_missing",
            ),
            (
                "tls hello",
                vec![0x16, 3, 1, 0, 200, 1, 0, 0, 196],
                "proxy_protocol_missing",
            ),
            (
                "v1 junk address",
                b"PROXY TCP4 999.1.1.1 10.0.0.1 1 2\r\n".to_vec(),
                "proxy_protocol_malformed",
            ),
            ("v1 without CRLF", too_long, "proxy_protocol_malformed"),
            ("v2 too long", huge_v2, "proxy_protocol_malformed"),
            (
                "v2 truncated",
                v2_tcp4([1, 2, 3, 4], 1)[..20].to_vec(),
                "proxy_protocol_incomplete",
            ),
            (
                "v2 bad version",
                {
                    let mut b = v2_tcp4([1, 2, 3, 4], 1);
                    b[12] = 0x11;
                    b
                },
                "proxy_protocol_malformed",
            ),
        ];
        for (name, bytes, reason) in cases {
            let mut reader = bytes.as_slice();
            match read_header(&mut reader).await {
                Ok(addr) => panic!("{name}: accepted as {addr:?}"),
                Err(e) => assert_eq!(e.reason(), reason, "{name}: {e}"),
            }
        }
    }

    proptest::proptest! {
        /// Whatever a balancer (or anyone) sends, reading a header ends
        /// without a panic, never reads past the bytes a header may have,
        /// and anything accepted started with a signature.
        #[test]
        fn any_bytes_are_read_without_panicking(
            prefix in proptest::sample::select(vec![&b""[..], V1_PREFIX, V2_SIGNATURE]),
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        ) {
            let mut bytes = prefix.to_vec();
            bytes.extend_from_slice(&noise);
            let runtime = tokio::runtime::Builder::new_current_thread().build();
            let Ok(runtime) = runtime else {
                return Err(proptest::test_runner::TestCaseError::fail("no runtime"));
            };
            let mut reader = bytes.as_slice();
            let got = runtime.block_on(read_header(&mut reader));
            let consumed = bytes.len() - reader.len();
            proptest::prop_assert!(consumed <= 16 + V2_MAX_PAYLOAD);
            if got.is_ok() {
                proptest::prop_assert!(
                    bytes.starts_with(V1_PREFIX) || bytes.starts_with(V2_SIGNATURE)
                );
            }
        }
    }

    #[tokio::test]
    async fn a_peeked_header_is_recognised_and_left_in_place() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await;
        let Ok(listener) = listener else {
            panic!("cannot bind a loopback listener");
        };
        let Ok(addr) = listener.local_addr() else {
            panic!("no local address");
        };
        let cases: [(&str, &[u8], bool); 4] = [
            ("v1", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", true),
            ("v2", V2_SIGNATURE, true),
            ("http", b"GET / HTTP/1.1\r\n", false),
            ("method named PROX", b"PROXYZ / HTTP/1.1\r\n", false),
        ];
        for (name, first, want) in cases {
            let client = tokio::spawn({
                let first = first.to_vec();
                async move {
                    use tokio::io::AsyncWriteExt;
                    let mut s = TcpStream::connect(addr).await.ok()?;
                    s.write_all(&first).await.ok()?;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Some(())
                }
            });
            let Ok((tcp, _)) = listener.accept().await else {
                panic!("{name}: accept failed");
            };
            assert_eq!(
                sends_header(&tcp, Duration::from_secs(2)).await,
                want,
                "{name}"
            );
            let mut again = [0u8; 4];
            let n = tcp.peek(&mut again).await.unwrap_or(0);
            assert_eq!(
                &again[..n],
                &first[..n.min(first.len())],
                "{name}: not consumed"
            );
            let _ = client.await;
        }
    }
}
