//! Consistent hashing for `ConsistentHash` load balancing: Envoy's two algorithms, ring hash
//! and Maglev (the request's key is in `hashkey`).
//!
//! Both tables are built once per config snapshot from the endpoint ADDRESSES (not their order
//! in the config), so every node's proxy maps a key to the same endpoint, and removing one of N
//! endpoints moves only the keys it owned (~1/N; Maglev a little more, as in Envoy).

use std::fmt::Write as _;
use std::net::SocketAddr;

/// 64-bit FNV-1a with the murmur3 finaliser: stable across processes, builds and nodes (unlike
/// std's `DefaultHasher`), and the finaliser gives ring points a uniform spread.
pub(crate) fn hash64(bytes: &[u8]) -> u64 {
    hash64_seeded(bytes, 0)
}

fn hash64_seeded(bytes: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Envoy's ring hash: each endpoint owns points `hash("addr_j")` on a 64-bit ring; a key goes
/// to the first point at or after its hash.
///
/// Unlike Envoy, the points per endpoint do not shrink as endpoints are added while the ring
/// is small: every endpoint gets `minimum_ring_size` points until the ring would exceed
/// [`RING_POINTS_BUDGET`]. Envoy rescales per-endpoint points on every membership change, which
/// also moves keys between endpoints that stayed (30% of keys instead of 20% when one of five
/// leaves); here only the departed endpoint's keys move, and past the budget the rescaling
/// adds only ~1/N more.
#[derive(Debug)]
pub(crate) struct Ring {
    /// Sorted point hashes, and the endpoint index owning each (split: 12 bytes a point).
    hashes: Vec<u64>,
    owners: Vec<u32>,
}

/// Envoy's default and maximum ring sizes.
const RING_DEFAULT_MIN: u64 = 1024;
const RING_MAX: u64 = 8 * 1024 * 1024;
/// Ring points beyond which endpoints share `max(budget, minimum_ring_size)` points (12 bytes
/// each: 192 KiB).
const RING_POINTS_BUDGET: u64 = 16 * 1024;

impl Ring {
    pub(crate) fn build(addrs: &[SocketAddr], minimum_ring_size: u64) -> Ring {
        if addrs.is_empty() {
            return Ring {
                hashes: Vec::new(),
                owners: Vec::new(),
            };
        }
        let size = if minimum_ring_size == 0 {
            RING_DEFAULT_MIN
        } else {
            minimum_ring_size.min(RING_MAX)
        };
        let n = addrs.len() as u64;
        let per_host = if n * size <= RING_POINTS_BUDGET.max(size) {
            size
        } else {
            RING_POINTS_BUDGET.max(size).div_ceil(n)
        };
        let mut points = Vec::with_capacity((per_host * n) as usize);
        let mut key = String::with_capacity(32);
        for (i, addr) in addrs.iter().enumerate() {
            for j in 0..per_host {
                key.clear();
                let _ = write!(key, "{addr}_{j}");
                points.push((hash64(key.as_bytes()), i as u32));
            }
        }
        // Ties (vanishingly rare) are broken by address so the ring never depends on the order
        // the endpoints were listed in.
        points.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| addrs[a.1 as usize].cmp(&addrs[b.1 as usize]))
        });
        Ring {
            hashes: points.iter().map(|p| p.0).collect(),
            owners: points.iter().map(|p| p.1).collect(),
        }
    }

    pub(crate) fn lookup(&self, hash: u64) -> Option<usize> {
        if self.hashes.is_empty() {
            return None;
        }
        let i = self.hashes.partition_point(|&p| p < hash);
        let i = if i == self.hashes.len() { 0 } else { i };
        Some(self.owners[i] as usize)
    }
}

/// Maglev (Eisenbud et al., as in Envoy): a prime-sized lookup table filled from per-endpoint
/// permutations, giving near-perfect balance with minimal disruption.
#[derive(Debug)]
pub(crate) struct Maglev {
    table: Vec<u32>,
}

const MAGLEV_DEFAULT_SIZE: u64 = 65537;
/// Beyond this the table costs more memory than the node proxy's whole budget.
const MAGLEV_MAX_SIZE: u64 = 5_000_011;

impl Maglev {
    pub(crate) fn build(addrs: &[SocketAddr], table_size: u64) -> Maglev {
        if addrs.is_empty() {
            return Maglev { table: Vec::new() };
        }
        let requested = if table_size == 0 {
            MAGLEV_DEFAULT_SIZE
        } else {
            table_size.min(MAGLEV_MAX_SIZE)
        };
        // The permutation walk needs a prime modulus; Envoy rejects non-primes, we round up.
        let m = next_prime(requested.max(addrs.len() as u64));
        // Fill in address order so the table is independent of the config's endpoint order.
        let mut order: Vec<usize> = (0..addrs.len()).collect();
        order.sort_unstable_by_key(|&i| addrs[i]);
        let mut key = String::with_capacity(32);
        let perms: Vec<(u64, u64)> = order
            .iter()
            .map(|&i| {
                key.clear();
                let _ = write!(key, "{}", addrs[i]);
                let offset = hash64_seeded(key.as_bytes(), 1) % m;
                let skip = hash64_seeded(key.as_bytes(), 2) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; order.len()];
        let mut table = vec![u32::MAX; m as usize];
        let mut filled = 0u64;
        'fill: loop {
            for (k, &(offset, skip)) in perms.iter().enumerate() {
                let mut c = (offset + next[k] * skip) % m;
                while table[c as usize] != u32::MAX {
                    next[k] += 1;
                    c = (offset + next[k] * skip) % m;
                }
                table[c as usize] = order[k] as u32;
                next[k] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Maglev { table }
    }

    pub(crate) fn lookup(&self, hash: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        Some(self.table[(hash % self.table.len() as u64) as usize] as usize)
    }
}

fn next_prime(mut n: u64) -> u64 {
    if n <= 2 {
        return 2;
    }
    if n.is_multiple_of(2) {
        n += 1;
    }
    while !is_prime(n) {
        n += 2;
    }
    n
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 8080)))
            .collect()
    }

    /// Share of keys whose endpoint changes when endpoint `gone` leaves the set, and whether
    /// only that endpoint's keys moved.
    fn moved<T>(
        build: impl Fn(&[SocketAddr]) -> T,
        lookup: impl Fn(&T, u64) -> usize,
        n: u8,
        gone: usize,
    ) -> (f64, bool) {
        let all = addrs(n);
        let mut fewer = all.clone();
        fewer.remove(gone);
        let (before, after) = (build(&all), build(&fewer));
        let keys = 20_000u64;
        let (mut moved, mut only_departed) = (0, true);
        for k in 0..keys {
            let h = hash64(format!("user-{k}").as_bytes());
            let (a, b) = (all[lookup(&before, h)], fewer[lookup(&after, h)]);
            if a != b {
                moved += 1;
                only_departed &= a == all[gone];
            }
        }
        (moved as f64 / keys as f64, only_departed)
    }

    #[test]
    fn ring_moves_only_the_departed_endpoints_keys() {
        let (share, only) = moved(|a| Ring::build(a, 1024), |r, h| r.lookup(h).unwrap(), 5, 2);
        assert!((0.12..0.28).contains(&share), "ring moved {share}");
        assert!(only, "ring moved keys of endpoints that stayed");
    }

    #[test]
    fn a_large_ring_moves_little_more_than_one_in_n() {
        // 40 endpoints × 1024 points is past the budget: points per endpoint rescale.
        let (share, _) = moved(|a| Ring::build(a, 1024), |r, h| r.lookup(h).unwrap(), 40, 7);
        assert!(share < 2.5 / 40.0, "ring moved {share}");
    }

    #[test]
    fn maglev_moves_about_one_in_n() {
        let (share, _) = moved(
            |a| Maglev::build(a, 65537),
            |m, h| m.lookup(h).unwrap(),
            5,
            2,
        );
        assert!((0.15..0.30).contains(&share), "maglev moved {share}");
    }

    #[test]
    fn tables_ignore_endpoint_order_and_balance() {
        let a = addrs(4);
        let mut b = a.clone();
        b.reverse();
        let (ra, rb) = (Ring::build(&a, 4096), Ring::build(&b, 4096));
        let (ma, mb) = (Maglev::build(&a, 1009), Maglev::build(&b, 1009));
        let mut counts = [0u32; 4];
        for k in 0..10_000u64 {
            let h = hash64(&k.to_le_bytes());
            assert_eq!(a[ra.lookup(h).unwrap()], b[rb.lookup(h).unwrap()]);
            assert_eq!(a[ma.lookup(h).unwrap()], b[mb.lookup(h).unwrap()]);
            counts[ma.lookup(h).unwrap()] += 1;
        }
        assert!(
            counts.iter().all(|&c| (2000..3000).contains(&c)),
            "maglev balance {counts:?}"
        );
    }
}
