//! DNS resolution for upstream discovery, built on [`hickory_resolver`]:
//! the queries (UDP, TCP when a reply is truncated), reply checks (query
//! id, question, the server asked), CNAME chains, resolv.conf parsing and
//! search lists are hickory's. This module adds what discovery needs on top:
//!
//! - **TTLs as a schedule**: a resolution reports the smallest TTL of its
//!   answer (CNAMEs on the way included; for SRV, of the SRV and address
//!   records), and the discovery loop resolves again when it runs out,
//!   clamped to `min_ttl..max_ttl` ([`super::discovery::next_resolution`]).
//!   So hickory keeps nothing: its cache is off (`cache_size = 0`) and a
//!   hickory resolver is built for each resolution (cheap: no I/O until a
//!   query; its background tasks end with it).
//! - **Only the chain asked for**: records of names other than the one
//!   asked and the CNAMEs it leads to are ignored (hickory would pass them
//!   on).
//! - **Two modes.** With `dns.nameservers`: those servers (any port, e.g. a
//!   test server on a loopback port), no hosts file, no search list, each
//!   server given `dns.timeout` per try and tried twice, one after the
//!   other, no EDNS0 (as the C library). Without: like the C library — the
//!   hosts file first (entries of the wanted family only; no TTL, so
//!   re-read every `min_ttl`), then the nameservers, `search`, `ndots`,
//!   `timeout` and `attempts` of resolv.conf (read anew, without blocking,
//!   on every resolution), and `getaddrinfo` if resolv.conf names no
//!   nameserver. hickory's own hosts-file reading is off (it would block
//!   and give hosts entries a day-long TTL). Either way a lookup ends once
//!   every try has had its timeout, even with search-list names left
//!   (hickory would go on asking the silent servers for them).
//! - **The address family**: `ipv4` asks A only, `ipv6` AAAA only, `any`
//!   both at once (one family answering is enough).
//! - **SRV**: the lowest priority present (RFC 2782), at most 64 targets,
//!   each target host resolved (in the family) and left out, with a
//!   warning, when it does not resolve; weights and ports as published.
//!   Target names must be host names (letters, digits, `-`, `_`): they
//!   become the Host header and the TLS server name of their targets.
//! - **Errors told apart**: NXDOMAIN and "no data" are "no address"
//!   ([`DiscoveryError::NoAddress`]); no reply in time, an error code
//!   (`SERVFAIL`, `REFUSED`, …) and socket trouble are
//!   [`DiscoveryError::Dns`] naming what happened and the servers asked.
//!   Either way discovery keeps the last good targets.
//!
//! Security: this is a stub resolver. It trusts what the nameservers
//! answer (no DNSSEC); hickory accepts a reply only from the server asked,
//! with the query's random id and question, from a random source port.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::rdata::CNAME;
use hickory_resolver::proto::rr::{IntoName, Name, RData, Record};

use super::discovery::{
    DiscoveryError, Resolve, Resolved, ServiceTarget, Services, SystemResolver, hosts_lookup,
};
use super::state::LOG_TARGET;
use crate::config::AddressFamily;

/// SRV targets used from one answer.
const MAX_SERVICE_TARGETS: usize = 64;
/// Tries of each explicit nameserver.
const ROUNDS: usize = 2;
/// CNAME hops followed within one answer.
const MAX_CHAIN: usize = 8;

/// A name that cannot be put in a query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a valid DNS name: {why}")]
pub struct BadName {
    /// The name.
    pub name: String,
    /// Why not.
    pub why: &'static str,
}

/// Checks that `name` is a host name that can be resolved (config
/// validation, and SRV targets before they become Host and TLS names).
pub fn check_name(name: &str) -> Result<(), BadName> {
    let bad = |why| {
        Err(BadName {
            name: name.to_owned(),
            why,
        })
    };
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return bad("empty");
    }
    for label in trimmed.split('.') {
        if label.is_empty() {
            return bad("empty label");
        }
        if label.len() > 63 {
            return bad("a label is longer than 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("only letters, digits, '-' and '_' are allowed");
        }
    }
    // The wire form: a length byte per label, the labels, the root label.
    if trimmed.len() + 2 > 255 {
        return bad("longer than 255 bytes");
    }
    Ok(())
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

/// Resolves names with DNS, reporting TTLs: through the given nameservers,
/// or — when none are given — like the C library would (see the module
/// doc).
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

/// A hickory resolver for one resolution, and the servers it asks (for
/// error messages).
struct Client {
    resolver: TokioResolver,
    servers: String,
    /// The longest one name's lookup may take: every try timing out.
    /// hickory walks on through the search list after a timeout; past
    /// this, more names would only wait more, so the resolution ends.
    budget: Duration,
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

    /// The client for one resolution: the explicit nameservers, or those
    /// of resolv.conf with its search list and options; `None` when
    /// resolv.conf cannot be read or names no nameserver.
    async fn client(&self) -> Result<Option<Client>, NetError> {
        let (config, mut opts, rounds) = if self.nameservers.is_empty() {
            let Ok(text) = tokio::fs::read(&self.resolv_conf).await else {
                return Ok(None);
            };
            // An error here is "no nameserver found" (or a search domain
            // hickory cannot read): the C library's turn.
            let Ok((config, opts)) = hickory_resolver::system_conf::parse_resolv_conf(text) else {
                return Ok(None);
            };
            let rounds = opts.attempts.clamp(1, 5);
            (config, opts, rounds)
        } else {
            let servers = self.nameservers.iter().map(|a| name_server(*a)).collect();
            let mut opts = ResolverOpts::default();
            opts.timeout = self.timeout;
            opts.edns0 = false;
            (ResolverConfig::from_name_servers(servers), opts, ROUNDS)
        };
        let servers: Vec<String> = config
            .name_servers()
            .iter()
            .map(|ns| {
                let port = ns.connections.first().map_or(53, |c| c.port);
                SocketAddr::new(ns.ip, port).to_string()
            })
            .collect();
        // The servers one after the other (hickory's pool gives one try a
        // single timeout, so a silent server ends the try): a try per
        // server and round, the first included. Its query statistics put a
        // server that timed out behind the others for the next try.
        let tries = rounds * servers.len();
        opts.num_concurrent_reqs = 1;
        opts.attempts = tries.saturating_sub(1);
        opts.timeout = opts
            .timeout
            .clamp(Duration::from_millis(10), Duration::from_secs(30));
        let budget = opts
            .timeout
            .saturating_mul(u32::try_from(tries.max(1)).unwrap_or(u32::MAX));
        // Our TTL handling schedules the next resolution: no cache.
        opts.cache_size = 0;
        // The hosts file is read here (without blocking), not by hickory.
        opts.use_hosts_file = ResolveHosts::Never;
        opts.ip_strategy = match self.family {
            AddressFamily::Any => LookupIpStrategy::Ipv4AndIpv6,
            AddressFamily::Ipv4 => LookupIpStrategy::Ipv4Only,
            AddressFamily::Ipv6 => LookupIpStrategy::Ipv6Only,
        };
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()?;
        Ok(Some(Client {
            resolver,
            servers: servers.join(", "),
            budget,
        }))
    }
}

/// A nameserver at `addr` over UDP and TCP, both on its port.
fn name_server(addr: SocketAddr) -> NameServerConfig {
    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
    for connection in &mut ns.connections {
        connection.port = addr.port();
    }
    ns
}

impl Client {
    /// The addresses of `host` (sorted, without duplicates) and the
    /// smallest TTL of the answer; `Ok(None)` when it has none (NXDOMAIN,
    /// no data).
    async fn addresses(&self, host: impl IntoName) -> Result<Option<(Vec<IpAddr>, u32)>, NetError> {
        match self.within(self.resolver.lookup_ip(host)).await {
            Ok(found) => {
                let answer = found.as_lookup();
                let records = on_chain(answer.query().name(), answer.answers());
                let mut addrs: Vec<IpAddr> =
                    records.iter().filter_map(|r| r.data.ip_addr()).collect();
                addrs.sort();
                addrs.dedup();
                Ok((!addrs.is_empty()).then_some((addrs, smallest_ttl(&records))))
            }
            Err(e) if e.is_no_records_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `lookup`, cut at the budget.
    async fn within<T>(
        &self,
        lookup: impl Future<Output = Result<T, NetError>>,
    ) -> Result<T, NetError> {
        tokio::time::timeout(self.budget, lookup)
            .await
            .unwrap_or(Err(NetError::Timeout))
    }

    /// `e` for the log: what went wrong and whom we asked.
    fn error(&self, name: &str, e: &NetError) -> DiscoveryError {
        let what = match e {
            NetError::Timeout => "no reply in time".to_owned(),
            NetError::Dns(DnsError::ResponseCode(code)) => format!("answered {}", rcode(*code)),
            e => e.to_string(),
        };
        DiscoveryError::Dns {
            name: name.to_owned(),
            reason: format!("{what} (asked {})", self.servers),
        }
    }
}

/// The records of `answers` that belong to `name` or to a name it leads
/// to through CNAMEs (the CNAMEs included, so their TTLs count); records
/// of other names are ignored.
fn on_chain<'a>(name: &Name, answers: &'a [Record]) -> Vec<&'a Record> {
    let mut names = vec![name.clone()];
    for _ in 0..MAX_CHAIN {
        let next: Vec<Name> = answers
            .iter()
            .filter(|r| names.contains(&r.name))
            .filter_map(|r| match &r.data {
                RData::CNAME(CNAME(target)) if !names.contains(target) => Some(target.clone()),
                _ => None,
            })
            .collect();
        if next.is_empty() {
            break;
        }
        names.extend(next);
    }
    answers.iter().filter(|r| names.contains(&r.name)).collect()
}

/// The smallest TTL among `records` (0 when there is none).
fn smallest_ttl(records: &[&Record]) -> u32 {
    records.iter().map(|r| r.ttl).min().unwrap_or(0)
}

/// The mnemonic of an error code, as DNS tools print it.
fn rcode(code: ResponseCode) -> String {
    match code {
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => format!("{other} ({})", u16::from(other)),
    }
}

/// The host name an SRV target names, if it is one; `None` for `.` ("no
/// such service here", RFC 2782) and for names with other bytes.
fn target_host(target: &Name) -> Option<String> {
    if target.is_root() {
        return None;
    }
    let host = target.to_lowercase().to_ascii();
    let host = host.trim_end_matches('.');
    check_name(host).ok()?;
    Some(host.to_owned())
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
        let client = self.client().await.map_err(|e| unusable(name, &e))?;
        let Some(client) = client else {
            return SystemResolver.resolve(name).await;
        };
        match client.addresses(name).await {
            Ok(Some((addrs, ttl))) => Ok(Resolved {
                addrs,
                ttl: Some(Duration::from_secs(u64::from(ttl))),
            }),
            Ok(None) => Err(DiscoveryError::NoAddress(name.to_owned())),
            Err(e) => Err(client.error(name, &e)),
        }
    }

    async fn resolve_srv(&self, name: &str) -> Result<Services, DiscoveryError> {
        let client = self.client().await.map_err(|e| unusable(name, &e))?;
        let Some(client) = client else {
            return Err(DiscoveryError::Dns {
                name: name.to_owned(),
                reason: "resolv.conf names no nameserver".into(),
            });
        };
        let answer = match client.within(client.resolver.srv_lookup(name)).await {
            Ok(answer) => answer,
            Err(e) if e.is_no_records_found() => {
                return Err(DiscoveryError::NoAddress(name.to_owned()));
            }
            Err(e) => return Err(client.error(name, &e)),
        };
        let records = on_chain(answer.query().name(), answer.answers());
        let mut ttl = smallest_ttl(&records);
        let srvs: Vec<_> = records
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => target_host(&srv.target).map(|host| (srv, host)),
                _ => None,
            })
            .collect();
        let Some(top) = srvs.iter().map(|(s, _)| s.priority).min() else {
            return Err(DiscoveryError::NoAddress(name.to_owned()));
        };
        let chosen: Vec<_> = srvs
            .iter()
            .filter(|(s, _)| s.priority == top)
            .take(MAX_SERVICE_TARGETS)
            .collect();
        // Target names are absolute: no search list applies to them.
        let lookups = chosen
            .iter()
            .map(|(s, _)| client.addresses(s.target.clone()));
        let answers = futures_util::future::join_all(lookups).await;
        let mut targets = Vec::new();
        for ((srv, host), answer) in chosen.into_iter().zip(answers) {
            match answer {
                Ok(Some((addrs, t))) => {
                    ttl = ttl.min(t);
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
                    let error = client.error(host, &e);
                    tracing::warn!(target: LOG_TARGET, service = %name, host = %host, error = %error, "an SRV target did not resolve; left out");
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

/// A resolver that could not be built.
fn unusable(name: &str, e: &NetError) -> DiscoveryError {
    DiscoveryError::Dns {
        name: name.to_owned(),
        reason: format!("cannot set up the resolver: {e}"),
    }
}

#[cfg(test)]
mod tests;
