//! Service discovery: target sets from a DNS name (re-resolved in the
//! background) or from a targets file (a JSON or TOML list any deploy tool
//! can write), swapped in without a config reload.
//!
//! A failed resolution or an unreadable file keeps the last good set and
//! logs why; an empty list is a valid answer (requests then get 503). Names
//! are resolved through the [`Resolve`] seam: DNS ([`super::dns`], on
//! hickory-resolver, which reports record TTLs: the next resolution is due
//! when the answer expires, clamped to `min_ttl..max_ttl`) asking the
//! configured nameservers or those of `/etc/resolv.conf`, or a hosts-style
//! file named in the config (tests, and deployments that want overrides
//! without touching the machine's DNS).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

use super::Upstream;
use super::state::LOG_TARGET;
use crate::config::{DnsSpec, TargetSpec};

/// Why a name or file gave no targets.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The resolver failed.
    #[error("cannot resolve {name}")]
    Resolve {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// DNS gave no usable answer.
    #[error("cannot resolve {name}: {reason}")]
    Dns {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The name has no address.
    #[error("{0} has no address")]
    NoAddress(String),
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a list of targets.
    #[error("{path} is not a target list: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A target in the file is not a valid URL.
    #[error("{path}: {reason}")]
    Target {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A discovered target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// `scheme://address:port[/base]`.
    pub url: String,
    /// Its weight.
    pub weight: u32,
    /// The DNS name it was found under: sent as Host (with the port unless
    /// the scheme's default) and, over TLS, as the server name to verify.
    pub name: Option<String>,
}

impl Found {
    fn new(url: String, weight: u32, name: Option<&str>) -> Found {
        Found {
            url,
            weight,
            name: name.map(|n| n.trim_end_matches('.').to_owned()),
        }
    }
}

/// A service's targets from SRV records (the lowest priority present).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTarget {
    /// The target host name.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Its SRV weight.
    pub weight: u32,
    /// Its addresses.
    pub addrs: Vec<IpAddr>,
}

/// What an SRV lookup found, and how long it may be kept when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Services {
    /// The targets.
    pub targets: Vec<ServiceTarget>,
    /// The smallest TTL of the SRV and address records.
    pub ttl: Option<Duration>,
}

/// Addresses of a name, and how long they may be kept when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The addresses.
    pub addrs: Vec<IpAddr>,
    /// The record TTL, when the resolver knows it.
    pub ttl: Option<Duration>,
}

/// Turns a host name into addresses.
#[async_trait::async_trait]
pub trait Resolve: Send + Sync + std::fmt::Debug {
    /// The addresses of `name`.
    async fn resolve(&self, name: &str) -> Result<Resolved, DiscoveryError>;

    /// The SRV targets of `name`; only DNS has them.
    async fn resolve_srv(&self, name: &str) -> Result<Services, DiscoveryError> {
        Err(DiscoveryError::Dns {
            name: name.to_owned(),
            reason: "SRV records need DNS".into(),
        })
    }
}

/// The C library's resolver (`getaddrinfo`; no TTL is known, so names are
/// re-resolved every `min_ttl`): the fallback when resolv.conf names no
/// nameserver.
#[derive(Debug)]
pub struct SystemResolver;

#[async_trait::async_trait]
impl Resolve for SystemResolver {
    async fn resolve(&self, name: &str) -> Result<Resolved, DiscoveryError> {
        let addrs =
            tokio::net::lookup_host((name, 0))
                .await
                .map_err(|source| DiscoveryError::Resolve {
                    name: name.to_owned(),
                    source,
                })?;
        let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
        ips.sort();
        ips.dedup();
        Ok(Resolved {
            addrs: ips,
            ttl: None,
        })
    }
}

/// A hosts-style file (`ADDRESS NAME [NAME…]` per line, `#` comments),
/// read on every resolution.
#[derive(Debug)]
pub struct HostsFile(pub PathBuf);

#[async_trait::async_trait]
impl Resolve for HostsFile {
    async fn resolve(&self, name: &str) -> Result<Resolved, DiscoveryError> {
        let text =
            tokio::fs::read_to_string(&self.0)
                .await
                .map_err(|source| DiscoveryError::Read {
                    path: self.0.clone(),
                    source,
                })?;
        Ok(Resolved {
            addrs: hosts_lookup(&text, name),
            ttl: None,
        })
    }
}

pub(crate) fn hosts_lookup(text: &str, name: &str) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let ip: IpAddr = words.next()?.parse().ok()?;
            words.any(|w| w.eq_ignore_ascii_case(name)).then_some(ip)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The targets of a DNS answer.
pub fn dns_targets(spec: &DnsSpec, addrs: &[IpAddr]) -> Vec<Found> {
    let port = spec.port.unwrap_or(0);
    addrs
        .iter()
        .map(|ip| Found::new(url_of(&spec.scheme, ip, port), 1, Some(&spec.name)))
        .collect()
}

/// The targets of SRV answers: every address of every target host (an
/// address found under two hosts counts once). A host's SRV weight is
/// split among its addresses, so a host with four addresses gets no more
/// traffic than one with one: weights are scaled by the largest address
/// count first (so one address per host keeps the SRV weights as they
/// are). Weight 0 counts as 1.
pub fn service_targets(spec: &DnsSpec, services: &Services) -> Vec<Found> {
    let admitted = |t: &ServiceTarget| -> Vec<IpAddr> {
        t.addrs
            .iter()
            .copied()
            .filter(|a| spec.family.admits(a))
            .collect()
    };
    let scale = services
        .targets
        .iter()
        .map(|t| admitted(t).len())
        .max()
        .unwrap_or(1)
        .max(1) as u32;
    let mut out: Vec<Found> = Vec::new();
    for t in &services.targets {
        let addrs = admitted(t);
        let share = (t.weight * scale / addrs.len().max(1) as u32).max(1);
        for ip in &addrs {
            let url = url_of(&spec.scheme, ip, t.port);
            if !out.iter().any(|f| f.url == url) {
                out.push(Found::new(url, share, Some(&t.host)));
            }
        }
    }
    out.sort_by(|a, b| a.url.cmp(&b.url));
    out
}

fn url_of(scheme: &str, ip: &IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{scheme}://{a}:{port}"),
        IpAddr::V6(a) => format!("{scheme}://[{a}]:{port}"),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TargetList {
    List(Vec<TargetSpec>),
    Table { targets: Vec<TargetSpec> },
}

/// Reads a targets file: a JSON array (or `{"targets": [...]}`), or TOML
/// `targets = [...]`; entries are URLs or `{url, weight}`.
pub fn read_targets_file(path: &Path) -> Result<Vec<Found>, DiscoveryError> {
    let text = std::fs::read_to_string(path).map_err(|source| DiscoveryError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_targets(path, &text)
}

fn parse_targets(path: &Path, text: &str) -> Result<Vec<Found>, DiscoveryError> {
    let is_toml = path.extension().is_some_and(|e| e == "toml");
    let list: TargetList = if is_toml {
        toml::from_str(text).map_err(|e| DiscoveryError::Parse {
            path: path.to_path_buf(),
            reason: e.message().to_owned(),
        })?
    } else {
        serde_json::from_str(text).map_err(|e| DiscoveryError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?
    };
    let list = match list {
        TargetList::List(l) | TargetList::Table { targets: l } => l,
    };
    list.iter()
        .map(|t| {
            super::Target::parse(t.url())
                .map(|_| Found::new(t.url().trim_end_matches('/').to_owned(), t.weight(), None))
                .map_err(|reason| DiscoveryError::Target {
                    path: path.to_path_buf(),
                    reason,
                })
        })
        .collect()
}

/// Where an upstream's targets come from, besides its config.
#[derive(Debug, Clone)]
pub enum Source {
    /// A DNS name.
    Dns {
        /// The spec.
        spec: DnsSpec,
        /// How names are resolved.
        resolver: Arc<dyn Resolve>,
    },
    /// A watched file.
    File {
        /// The file.
        path: PathBuf,
        /// How often it is looked at.
        every: Duration,
    },
}

/// When to resolve again: when the answer expires, but no sooner than
/// `min_ttl` (a zero or tiny TTL must not turn into a query storm) and no
/// later than `max_ttl` (a day-long TTL must not pin a dead address); every
/// `min_ttl` when the TTL is unknown or the resolution failed.
pub fn next_resolution(ttl: Option<Duration>, min_ttl: Duration, max_ttl: Duration) -> Duration {
    ttl.unwrap_or(min_ttl).clamp(min_ttl, max_ttl.max(min_ttl))
}

/// The targets `spec`'s name resolves to (A/AAAA of its address family,
/// or SRV), and the answer's TTL when known; no address is an error (the
/// last good set stays).
async fn resolve_targets(
    spec: &DnsSpec,
    resolver: &dyn Resolve,
) -> (Result<Vec<Found>, DiscoveryError>, Option<Duration>) {
    let found = if spec.srv {
        resolver
            .resolve_srv(&spec.name)
            .await
            .map(|s| (service_targets(spec, &s), s.ttl))
    } else {
        resolver.resolve(&spec.name).await.map(|mut r| {
            r.addrs.retain(|a| spec.family.admits(a));
            (dns_targets(spec, &r.addrs), r.ttl)
        })
    };
    match found {
        Ok((list, _)) if list.is_empty() => {
            (Err(DiscoveryError::NoAddress(spec.name.clone())), None)
        }
        Ok((list, ttl)) => (Ok(list), ttl),
        Err(e) => (Err(e), None),
    }
}

/// Keeps `upstream`'s targets in step with its source until `stop`.
pub(crate) async fn run(upstream: Arc<Upstream>, source: Source, mut stop: watch::Receiver<bool>) {
    let mut last: Option<Vec<Found>> = upstream.state.discovered();
    loop {
        let (found, wait) = match &source {
            Source::Dns { spec, resolver } => {
                let (found, ttl) = resolve_targets(spec, resolver.as_ref()).await;
                let wait = next_resolution(ttl, spec.min_ttl.0, spec.max_ttl.0);
                tracing::debug!(target: LOG_TARGET, upstream = %upstream.name, name = %spec.name,
                    ttl_ms = ttl.map(|t| t.as_millis() as u64), next_in_ms = wait.as_millis() as u64,
                    "resolved");
                (found, wait)
            }
            Source::File { path, every } => {
                let path = path.clone();
                let r = tokio::task::spawn_blocking(move || read_targets_file(&path))
                    .await
                    .unwrap_or_else(|e| {
                        Err(DiscoveryError::Parse {
                            path: PathBuf::new(),
                            reason: e.to_string(),
                        })
                    });
                (r, *every)
            }
        };
        match found {
            Ok(list) if last.as_ref() != Some(&list) => {
                tracing::info!(target: LOG_TARGET, upstream = %upstream.name, targets = list.len(), "discovered targets changed");
                upstream.replace_targets(&list);
                upstream.state.set_discovered(list.clone());
                last = Some(list);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(target: LOG_TARGET, upstream = %upstream.name, error = %e, "discovery failed; keeping the last good targets");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_files() {
        let text = "# comment\n10.0.0.1 api.internal other\n10.0.0.2\tAPI.internal # second\n\
                    ::1 api.internal\nbad line\n10.0.0.9 elsewhere\n";
        let cases = [
            (
                "three addresses",
                "api.internal",
                vec!["10.0.0.1", "10.0.0.2", "::1"],
            ),
            ("alias", "other", vec!["10.0.0.1"]),
            ("missing", "nope", vec![]),
        ];
        for (name, host, want) in cases {
            let want: Vec<IpAddr> = want.iter().map(|s| s.parse().unwrap()).collect();
            assert_eq!(hosts_lookup(text, host), want, "{name}");
        }
    }

    #[test]
    fn target_files() {
        let cases = [
            (
                "json list",
                "t.json",
                r#"["http://a:1", {"url": "http://b:2/", "weight": 3}]"#,
                Ok(vec![("http://a:1", 1), ("http://b:2", 3)]),
            ),
            (
                "json table",
                "t.json",
                r#"{"targets": ["http://a:1"]}"#,
                Ok(vec![("http://a:1", 1)]),
            ),
            (
                "toml",
                "t.toml",
                "targets = [\"http://a:1\", { url = \"http://b:2\", weight = 2 }]",
                Ok(vec![("http://a:1", 1), ("http://b:2", 2)]),
            ),
            ("empty", "t.json", "[]", Ok(vec![])),
            (
                "not a list",
                "t.json",
                r#"{"x": 1}"#,
                Err("not a target list"),
            ),
            (
                "bad url",
                "t.json",
                r#"["ftp://a"]"#,
                Err("only http and https"),
            ),
        ];
        for (name, file, text, want) in cases {
            let got = parse_targets(Path::new(file), text);
            match (got, want) {
                (Ok(got), Ok(want)) => {
                    let want: Vec<Found> = want
                        .iter()
                        .map(|(u, w)| Found::new(u.to_string(), *w, None))
                        .collect();
                    assert_eq!(got, want, "{name}");
                }
                (Err(e), Err(part)) => assert!(e.to_string().contains(part), "{name}: {e}"),
                (got, _) => panic!("{name}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn the_ttl_sets_the_next_resolution_within_floor_and_ceiling() {
        let s = Duration::from_secs;
        let cases = [
            ("ttl inside", Some(s(30)), s(30)),
            ("zero ttl: floor", Some(s(0)), s(5)),
            ("long ttl: ceiling", Some(s(86_400)), s(300)),
            ("unknown: floor", None, s(5)),
        ];
        for (name, ttl, want) in cases {
            assert_eq!(next_resolution(ttl, s(5), s(300)), want, "{name}");
        }
    }

    fn spec(name: &str, port: Option<u16>) -> DnsSpec {
        DnsSpec {
            name: name.into(),
            port,
            srv: port.is_none(),
            scheme: "http".into(),
            min_ttl: crate::config::Dur(Duration::from_secs(1)),
            max_ttl: crate::config::Dur(Duration::from_secs(60)),
            hosts_file: None,
            nameservers: Vec::new(),
            family: crate::config::AddressFamily::Any,
            timeout: crate::config::Dur(Duration::from_secs(2)),
        }
    }

    #[tokio::test]
    async fn resolved_addresses_are_filtered_by_family() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "10.0.0.1 api\n::1 api\n::2 v6only\n").unwrap();
        let resolver = HostsFile(hosts);
        let mut spec = spec("api", Some(80));
        spec.family = crate::config::AddressFamily::Ipv4;
        let (found, ttl) = resolve_targets(&spec, &resolver).await;
        let want = Found::new("http://10.0.0.1:80".to_owned(), 1, Some("api"));
        assert_eq!(found.unwrap(), vec![want]);
        assert_eq!(ttl, None);
        spec.family = crate::config::AddressFamily::Any;
        assert_eq!(resolve_targets(&spec, &resolver).await.0.unwrap().len(), 2);
        spec.name = "v6only".into();
        spec.family = crate::config::AddressFamily::Ipv4;
        let (found, _) = resolve_targets(&spec, &resolver).await;
        assert!(
            matches!(found, Err(DiscoveryError::NoAddress(_))),
            "{found:?}"
        );
        // A hosts file has no SRV records.
        let (found, _) = resolve_targets(&self::spec("_http._tcp.api", None), &resolver).await;
        assert!(
            found
                .unwrap_err()
                .to_string()
                .contains("SRV records need DNS")
        );
    }

    #[test]
    fn dns_answers_become_urls() {
        let addrs: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        assert_eq!(
            dns_targets(&spec("api.", Some(8080)), &addrs),
            vec![
                Found::new("http://10.0.0.1:8080".to_owned(), 1, Some("api")),
                Found::new("http://[::1]:8080".to_owned(), 1, Some("api")),
            ]
        );
    }

    #[test]
    fn services_become_weighted_urls_under_their_host_names() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let services = Services {
            targets: vec![
                ServiceTarget {
                    host: "b.example".into(),
                    port: 8443,
                    weight: 0,
                    addrs: vec![ip("10.0.0.2"), ip("::2")],
                },
                ServiceTarget {
                    host: "a.example".into(),
                    port: 8080,
                    weight: 30,
                    addrs: vec![ip("10.0.0.1")],
                },
                ServiceTarget {
                    host: "many.example".into(),
                    port: 8080,
                    weight: 30,
                    addrs: vec![ip("10.0.1.1"), ip("10.0.1.2"), ip("10.0.1.3")],
                },
                // The same address and port under another name counts once.
                ServiceTarget {
                    host: "alias.example".into(),
                    port: 8443,
                    weight: 5,
                    addrs: vec![ip("10.0.0.2")],
                },
            ],
            ttl: None,
        };
        let mut spec = spec("_api._tcp.example", None);
        let found = service_targets(&spec, &services);
        assert_eq!(
            found,
            vec![
                Found::new("http://10.0.0.1:8080".into(), 90, Some("a.example")),
                Found::new("http://10.0.0.2:8443".into(), 1, Some("b.example")),
                Found::new("http://10.0.1.1:8080".into(), 30, Some("many.example")),
                Found::new("http://10.0.1.2:8080".into(), 30, Some("many.example")),
                Found::new("http://10.0.1.3:8080".into(), 30, Some("many.example")),
                Found::new("http://[::2]:8443".into(), 1, Some("b.example")),
            ],
            "a host's weight is split among its addresses (scaled by the largest count, 3)"
        );
        spec.family = crate::config::AddressFamily::Ipv6;
        assert_eq!(
            service_targets(&spec, &services),
            vec![Found::new("http://[::2]:8443".into(), 1, Some("b.example"))]
        );
    }
}
