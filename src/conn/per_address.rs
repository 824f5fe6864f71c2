//! Counts of things one client address holds at once (open connections,
//! TLS handshakes in progress), each bounded.
//!
//! Addresses are keyed as the rate limiters key them: a whole IPv4 address,
//! or the /64 of an IPv6 one (a single host usually owns a whole /64, so
//! counting full IPv6 addresses would let it open 2^64 times the cap).
//! IPv4-mapped IPv6 counts as IPv4. The map only holds addresses that hold
//! something right now: a slot removes its entry when the count drops to
//! zero, so random addresses cannot grow memory past the global connection
//! limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// A client address as per-client limits count it (these caps, the API-key
/// failure budget): an IPv4 address, or the /64 of an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum AddressKey {
    /// A whole IPv4 address (IPv4-mapped IPv6 included).
    V4([u8; 4]),
    /// The /64 an IPv6 address is in.
    V6([u8; 8]),
}

impl From<IpAddr> for AddressKey {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => AddressKey::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let [a, b, c, d, e, f, g, h, ..] = v6.octets();
                AddressKey::V6([a, b, c, d, e, f, g, h])
            }
        }
    }
}

/// At most `cap` of something per client address.
#[derive(Debug)]
pub(crate) struct PerAddress {
    cap: u32,
    held: Mutex<HashMap<AddressKey, u32>>,
}

/// One place held by an address; given back on drop.
#[derive(Debug)]
pub(crate) struct AddressSlot {
    owner: Arc<PerAddress>,
    key: AddressKey,
}

impl PerAddress {
    /// A counter allowing `cap` places per address (0 counts as 1).
    pub(crate) fn new(cap: u32) -> Arc<PerAddress> {
        Arc::new(PerAddress {
            cap: cap.max(1),
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A place for `ip`, or `None` when it already holds `cap`.
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let key = AddressKey::from(ip);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(key).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            owner: Arc::clone(self),
            key,
        })
    }

    /// Places `ip` holds now.
    #[cfg(test)]
    fn held_by(&self, ip: IpAddr) -> u32 {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(&AddressKey::from(ip)).copied().unwrap_or(0)
    }

    /// Addresses holding anything.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self
            .owner
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn an_address_gets_at_most_its_cap_and_slots_come_back() {
        let caps = PerAddress::new(2);
        let a = caps.acquire(ip("192.0.2.1"));
        let b = caps.acquire(ip("192.0.2.1"));
        assert!(a.is_some() && b.is_some());
        assert!(caps.acquire(ip("192.0.2.1")).is_none(), "third refused");
        assert!(caps.acquire(ip("192.0.2.2")).is_some(), "others unaffected");
        drop(a);
        assert_eq!(caps.held_by(ip("192.0.2.1")), 1);
        assert!(caps.acquire(ip("192.0.2.1")).is_some(), "a freed slot");
        drop(b);
        assert_eq!(caps.addresses(), 0, "empty entries are removed");
    }

    #[test]
    fn addresses_are_keyed_like_the_rate_limiters() {
        let cases = [
            ("same /64", "2001:db8:1:2::1", "2001:db8:1:2:ffff::9", true),
            ("other /64", "2001:db8:1:2::1", "2001:db8:1:3::1", false),
            ("mapped v4", "::ffff:192.0.2.7", "192.0.2.7", true),
            ("other v4", "192.0.2.7", "192.0.2.8", false),
        ];
        for (name, first, second, shared) in cases {
            let caps = PerAddress::new(1);
            let _held = caps.acquire(ip(first));
            assert_eq!(caps.acquire(ip(second)).is_none(), shared, "{name}");
        }
    }
}
