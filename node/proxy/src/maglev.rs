//! Maglev lookup tables (Eisenbud et al., NSDI 2016, section 3.4), computed in user space
//! for the frontends balanced by Maglev; the kernel only indexes them with a flow hash
//! ([`ferrokube_ebpf_common::maglev`]).
//!
//! Each backend has a preference list, a permutation of the table positions `0..M` (`M`
//! prime) given by an `offset` and a `skip` from two hashes of its identity (address,
//! port, protocol: the same on every node, whatever ids the node gave it). Backends take
//! turns claiming their next preferred free position until the table is full, so each
//! gets `M / N` positions (within one), and removing one backend moves only the positions
//! it held plus a few others. The same backends give the same table on every node and
//! every run, so a flow gets the same backend whichever node it enters by.

use crate::model::BackendAddr;

/// Errors in the Maglev settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaglevError {
    /// The table size is not a prime (the permutations need it).
    #[error("Maglev table size {0} is not a prime")]
    NotPrime(u32),
}

/// Checks a table size: a prime (below 65536: the kernel keeps it in 16 bits).
pub fn check_size(size: u16) -> Result<(), MaglevError> {
    if is_prime(u32::from(size)) {
        Ok(())
    } else {
        Err(MaglevError::NotPrime(u32::from(size)))
    }
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// A backend's identity for the table: address, port and protocol (not whether it is
/// local to this node, which differs between nodes).
pub fn identity(backend: &BackendAddr) -> Vec<u8> {
    format!("{}:{}/{}", backend.ip, backend.port, backend.proto).into_bytes()
}

/// 64-bit FNV-1a from `seed`, finished with splitmix64: stable across builds and
/// platforms (unlike std's hasher), which consistency between nodes needs.
fn hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The lookup table of size `size` for `identities`: entry `i` is an index into
/// `identities`. Callers pass the identities in a canonical order (sorted), as ties are
/// broken by position. Empty when there is no backend.
pub fn table(identities: &[Vec<u8>], size: u32) -> Vec<u32> {
    let n = identities.len();
    if n == 0 || size == 0 {
        return Vec::new();
    }
    let m = u64::from(size);
    let prefs: Vec<(u64, u64)> = identities
        .iter()
        .map(|id| {
            let offset = hash(id, 0xcbf2_9ce4_8422_2325) % m;
            let skip = if m > 1 {
                hash(id, 0x8422_2325_cbf2_9ce4) % (m - 1) + 1
            } else {
                1
            };
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; n];
    let mut entries = vec![u32::MAX; size as usize];
    let mut filled = 0u64;
    'fill: loop {
        for (i, (offset, skip)) in prefs.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m;
            while entries[c as usize] != u32::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            entries[c as usize] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    entries
}

/// The table for a set of backends, as backend ids: `backends` are (address, id) pairs
/// in any order (they are put in canonical order here).
pub fn table_of_ids(backends: &[(BackendAddr, u32)], size: u32) -> Vec<u32> {
    let mut sorted: Vec<(Vec<u8>, u32)> =
        backends.iter().map(|(a, id)| (identity(a), *id)).collect();
    sorted.sort();
    sorted.dedup_by(|a, b| a.0 == b.0);
    let identities: Vec<Vec<u8>> = sorted.iter().map(|(i, _)| i.clone()).collect();
    table(&identities, size)
        .into_iter()
        .map(|i| sorted[i as usize].1)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use std::net::{IpAddr, Ipv4Addr};

    fn backend(i: u8) -> BackendAddr {
        BackendAddr {
            ip: IpAddr::V4(Ipv4Addr::new(10, 244, 1, i)),
            port: 8080,
            proto: Protocol::Tcp,
            local: i.is_multiple_of(2),
        }
    }

    fn ids(n: u8) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = (1..=n).map(|i| identity(&backend(i))).collect();
        v.sort();
        v
    }

    #[test]
    fn sizes_must_be_prime() {
        assert_eq!(check_size(16_381), Ok(()));
        assert_eq!(check_size(251), Ok(()));
        assert_eq!(check_size(16_384), Err(MaglevError::NotPrime(16_384)));
        assert!(check_size(1).is_err());
    }

    #[test]
    fn every_backend_gets_its_share_within_a_few_percent() {
        for n in [2u8, 3, 7, 10, 50, 100] {
            let table = table(&ids(n), 16_381);
            assert_eq!(table.len(), 16_381);
            let mut counts = vec![0usize; n as usize];
            for e in &table {
                counts[*e as usize] += 1;
            }
            let ideal = 16_381.0 / f64::from(n);
            for c in &counts {
                let off = (*c as f64 - ideal).abs() / ideal;
                assert!(off < 0.03, "n={n}: {c} vs {ideal:.1} ({off:.4})");
            }
        }
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth_and_only_its_entries_mostly() {
        let n = 10u8;
        let all = ids(n);
        let before = table(&all, 16_381);
        // Remove the backend at position 3 of the canonical order.
        let removed = 3usize;
        let rest: Vec<Vec<u8>> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != removed)
            .map(|(_, v)| v.clone())
            .collect();
        let after = table(&rest, 16_381);
        // Compare by identity.
        let name_before = |e: u32| &all[e as usize];
        let name_after = |e: u32| &rest[e as usize];
        let moved: Vec<usize> = (0..16_381)
            .filter(|i| name_before(before[*i]) != name_after(after[*i]))
            .collect();
        let held = before.iter().filter(|e| **e as usize == removed).count();
        // Every entry of the removed backend moves; others move only a little (the paper
        // reports a few percent of the table at most).
        let others_moved = moved
            .iter()
            .filter(|i| before[**i] as usize != removed)
            .count();
        assert_eq!(moved.len() - others_moved, held);
        let fraction = moved.len() as f64 / 16_381.0;
        assert!(
            (0.09..0.13).contains(&fraction),
            "moved {fraction:.4} of the table (1/N = 0.1)"
        );
        assert!(
            (others_moved as f64) < 0.02 * 16_381.0,
            "{others_moved} entries of remaining backends moved"
        );
    }

    #[test]
    fn the_table_depends_only_on_backend_identities_not_ids_order_or_locality() {
        let a: Vec<(BackendAddr, u32)> = (1..=5).map(|i| (backend(i), u32::from(i))).collect();
        // Another node: other ids, other order, other locality.
        let b: Vec<(BackendAddr, u32)> = (1..=5)
            .rev()
            .map(|i| {
                let mut addr = backend(i);
                addr.local = !addr.local;
                (addr, 100 + u32::from(i))
            })
            .collect();
        let ta = table_of_ids(&a, 251);
        let tb = table_of_ids(&b, 251);
        assert_eq!(ta.len(), 251);
        assert!(ta.iter().zip(&tb).all(|(x, y)| *x + 100 == *y));
    }
}
