//! What an upstream does at run time: targets replaced by discovery, the
//! pick (balancing, hashing, sets), shifts and drains, status, sending.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::{BodyStats, GwBody};
use crate::config::WhenAllUnhealthy;

use super::*;

impl Upstream {
    /// Replaces the targets (discovery found a new list). Targets seen
    /// before keep their state.
    pub fn replace_targets(&self, list: &[discovery::Found]) {
        let members = self.members();
        let set_names: Vec<Arc<str>> = members.sets.iter().map(|s| s.name.clone()).collect();
        let new: Vec<Member> = list
            .iter()
            .filter_map(|f| discovered_member(&self.state, f))
            .collect();
        // Names first: a connection to a new target must find its name. A
        // request or health check that loaded the old members may still
        // connect to a target just dropped: its name stays one generation.
        let mut names = server_names(list);
        for (authority, (name, current)) in self.server_names.load().iter() {
            if *current {
                names
                    .entry(authority.clone())
                    .or_insert_with(|| (name.clone(), false));
            }
        }
        self.server_names.store(Arc::new(names));
        self.members.store(Arc::new(Members::new(new, &set_names)));
    }

    /// The targets' URLs as configured or discovered (for the status page).
    pub fn target_labels(&self) -> Vec<String> {
        self.members()
            .members
            .iter()
            .map(|m| m.state.url.to_string())
            .collect()
    }

    /// The current targets.
    pub fn members(&self) -> Arc<Members> {
        self.members.load_full()
    }

    /// The hash key of a request for `balance = "hash"`; `None` (round
    /// robin) when the header or cookie is missing.
    pub fn hash_key(&self, headers: &http::HeaderMap, client: std::net::IpAddr) -> Option<u64> {
        match self.hash_on.as_ref()? {
            HashOn::ClientIp => Some(match client {
                std::net::IpAddr::V4(a) => balance::hash_bytes(&a.octets()),
                std::net::IpAddr::V6(a) => balance::hash_bytes(&a.octets()),
            }),
            HashOn::Header(h) => headers.get(h).map(|v| balance::hash_bytes(v.as_bytes())),
            HashOn::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| balance::hash_bytes(v.as_bytes())),
        }
    }

    /// The set a request's header asks for (`match_header`), if any.
    pub fn set_hint(&self, headers: &http::HeaderMap) -> Option<usize> {
        self.set_headers
            .iter()
            .find(|(_, name, value)| headers.get(name) == Some(value))
            .map(|(i, _, _)| *i)
    }

    /// Picks a target not in `tried` if one is available, else any
    /// available one, else (panic mode) any undrained one. A set named by
    /// the request's header is tried first, whatever its weight.
    pub(super) fn pick(
        &self,
        members: &Members,
        hash: Option<u64>,
        hint: Option<usize>,
        tried: &[usize],
    ) -> Option<usize> {
        let now = self.state.now_ms();
        let fresh = |i: usize| !tried.contains(&i);
        let available = |m: &Member| m.state.is_available(now);
        let levels: [&dyn Fn(usize, &Member) -> bool; 4] = [
            &|i, m| available(m) && fresh(i),
            &|_, m| available(m),
            &|i, m| !m.state.is_drained() && fresh(i),
            &|_, m| !m.state.is_drained(),
        ];
        let usable = match self.when_all_unhealthy {
            WhenAllUnhealthy::TryAnyway => 4,
            WhenAllUnhealthy::Fail => 2,
        };
        if let Some(set) = hint
            && let Some(i) = levels
                .iter()
                .take(2)
                .find_map(|ok| members.pick_in(set, self.balance, &self.cursor, hash, *ok))
        {
            return Some(i);
        }
        if let [only] = self.set_weights.as_slice() {
            // One set (the common case): no set choice, no allocation.
            if only.load(Ordering::Relaxed) == 0 {
                return None;
            }
            return levels
                .iter()
                .take(usable)
                .find_map(|ok| members.pick_in(0, self.balance, &self.cursor, hash, *ok));
        }
        let order = self.set_order();
        for ok in levels.iter().take(usable) {
            for set in &order {
                if let Some(i) = members.pick_in(*set, self.balance, &self.cursor, hash, *ok) {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Sets with traffic, the one chosen by weight first.
    pub(super) fn set_order(&self) -> Vec<usize> {
        let weights: Vec<u32> = self
            .set_weights
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect();
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        if total == 0 {
            return Vec::new();
        }
        let mut r = rand::random_range(0..total);
        let mut first = 0;
        for (i, w) in weights.iter().enumerate() {
            if r < u64::from(*w) {
                first = i;
                break;
            }
            r -= u64::from(*w);
        }
        let mut order = vec![first];
        order.extend(
            weights
                .iter()
                .enumerate()
                .filter(|(i, w)| *i != first && **w > 0)
                .map(|(i, _)| i),
        );
        order
    }

    /// Moves traffic: the named sets get these weights, the others 0.
    pub fn shift(&self, to: &std::collections::BTreeMap<String, u32>) -> Result<(), ChangeError> {
        let members = self.members();
        let names: Vec<&str> = members.sets.iter().map(|s| &*s.name).collect();
        if let Some(unknown) = to.keys().find(|k| !names.contains(&k.as_str())) {
            return Err(ChangeError::UnknownSet(unknown.clone()));
        }
        if to.values().all(|w| *w == 0) {
            return Err(ChangeError::AllZero);
        }
        for (name, w) in names.iter().zip(&self.set_weights) {
            let new = to.get(*name).copied().unwrap_or(0);
            let old = w.swap(new, Ordering::AcqRel);
            if old != new {
                tracing::info!(target: state::LOG_TARGET, upstream = %self.name, set = %name, from = old, to = new, "traffic shifted");
            }
        }
        Ok(())
    }

    /// Drains (no new requests) or undrains the target `url`.
    pub fn drain(&self, url: &str, drained: bool) -> Result<(), ChangeError> {
        let members = self.members();
        let url = url.trim_end_matches('/');
        let found: Vec<&Member> = members
            .members
            .iter()
            .filter(|m| &*m.state.url == url)
            .collect();
        if found.is_empty() {
            return Err(ChangeError::UnknownTarget(url.to_owned()));
        }
        for m in found {
            self.state.set_drained(&m.state, drained);
        }
        Ok(())
    }

    /// What the admin API and the status page show.
    pub fn status(&self) -> UpstreamStatus {
        let members = self.members();
        let targets: Vec<TargetStatus> = members
            .members
            .iter()
            .map(|m| {
                let ejected_for_ms = self.state.ejected_for_ms(&m.state);
                TargetStatus {
                    url: m.state.url.to_string(),
                    set: members
                        .sets
                        .get(m.set)
                        .map(|s| s.name.to_string())
                        .unwrap_or_default(),
                    weight: m.weight,
                    healthy: m.state.is_healthy(),
                    ejected: ejected_for_ms > 0,
                    ejected_for_ms,
                    drained: m.state.is_drained(),
                    in_flight: m.state.in_flight(),
                    latency_ewma_ms: m.state.latency_ms(),
                    requests: m.state.requests(),
                }
            })
            .collect();
        let sets = members
            .sets
            .iter()
            .zip(&self.set_weights)
            .map(|(s, w)| SetStatus {
                name: s.name.to_string(),
                weight: w.load(Ordering::Relaxed),
                in_flight: s
                    .members
                    .iter()
                    .filter_map(|i| members.members.get(*i))
                    .map(|m| m.state.in_flight())
                    .sum(),
            })
            .collect();
        UpstreamStatus {
            name: self.name.to_string(),
            breaker: self.state.breaker_state().to_owned(),
            in_flight: self.state.in_flight.load(Ordering::Relaxed),
            sets,
            targets,
        }
    }

    /// Sends `req` (URI already pointing at a target) and waits for the
    /// response head: at most `first_byte` after the request body has been
    /// sent (a slow upload is not a slow upstream), and never past `deadline`.
    pub(super) async fn send(
        &self,
        req: Request<GwBody>,
        plan: &Plan,
        body: &BodyStats,
    ) -> Result<Response<Incoming>, ForwardError> {
        let (first_byte, deadline) = (plan.first_byte, plan.deadline);
        let client = plan
            .connect_timeout
            .and_then(|t| self.route_clients.iter().find(|(d, _)| *d == t))
            .map_or(&self.client, |(_, c)| c);
        let response = client.request(req);
        let result = if body.is_sent() {
            // No body to wait for (the common case): one timer.
            let at = deadline.min(tokio::time::Instant::now() + first_byte);
            match tokio::time::timeout_at(at, response).await {
                Ok(r) => r,
                Err(_) => return Err(ForwardError::Timeout),
            }
        } else {
            let first_byte_timer = async {
                body.sent().await;
                tokio::time::sleep(first_byte).await;
            };
            tokio::select! {
                r = response => r,
                () = first_byte_timer => return Err(ForwardError::Timeout),
                () = tokio::time::sleep_until(deadline) => return Err(ForwardError::Timeout),
            }
        };
        result.map_err(|e| {
            if body.too_large.load(Ordering::Relaxed) {
                ForwardError::BodyTooLarge {
                    limit: body.limit.load(Ordering::Relaxed),
                }
            } else if body.timed_out.load(Ordering::Relaxed) {
                ForwardError::BodyTimeout
            } else if is_timeout(&e) {
                ForwardError::Timeout
            } else {
                ForwardError::Failed(Box::new(e))
            }
        })
    }
}
