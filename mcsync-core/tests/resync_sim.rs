//! Seeded simulation of the range-digest resync protocol: two hash indexes with random
//! differences (including empty sides, everything different, and records packed into
//! one bucket), driven through the real planner and the real message encodings. Checks
//! that the planner finds exactly the differences and that bytes grow with the number of
//! differences, not with the database size.

use mcsync::proto::resync::{
    child_digests, HashIndex, Range, ResyncPlanner, ResyncStep, FULL_SUM_BYTES, SHORT_SUM_BYTES,
};
use mcsync::wire::control::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};

struct Outcome {
    fetch: BTreeSet<u64>,
    delete: BTreeSet<u64>,
    bytes: usize,
    verified: bool,
}

fn frame(m: &Message) -> usize {
    m.to_vec().len()
}

/// Runs the protocol between `local` (subscriber) and `remote` (publisher) in memory, as
/// the subscriber does: short sums first, full sums when the result does not verify.
fn run(local: &BTreeMap<u64, u64>, remote: &BTreeMap<u64, u64>) -> Outcome {
    let short = run_with(local, remote, SHORT_SUM_BYTES);
    if short.verified {
        return short;
    }
    let full = run_with(local, remote, FULL_SUM_BYTES);
    Outcome {
        bytes: short.bytes + full.bytes,
        ..full
    }
}

/// One comparison with sums of `sum_bytes` bytes.
fn run_with(local: &BTreeMap<u64, u64>, remote: &BTreeMap<u64, u64>, sum_bytes: u8) -> Outcome {
    let li = HashIndex::new(local.iter().map(|(k, v)| (*k, *v)).collect());
    let ri = HashIndex::new(remote.iter().map(|(k, v)| (*k, *v)).collect());
    let root = ri.digest(Range::ROOT);
    let mut bytes = frame(&Message::ResyncBegin)
        + frame(&Message::ResyncSnapshot {
            version: 1,
            count: root.count,
            sum: root.sum,
        });
    let mut p = ResyncPlanner::new(li, root, sum_bytes);
    while let Some(step) = p.poll() {
        match step {
            ResyncStep::Digests(ranges) => {
                let digests = child_digests(&ri, &ranges, sum_bytes);
                bytes += frame(&Message::DigestRequest {
                    ranges: ranges.clone(),
                    sum_bytes,
                });
                bytes += frame(&Message::DigestReply {
                    sum_bytes,
                    digests: digests.clone(),
                });
                p.on_digests(&ranges, &digests).unwrap();
            }
            ResyncStep::List(ranges) => {
                let entries: Vec<_> = ranges
                    .iter()
                    .flat_map(|r| ri.entries(*r).to_vec())
                    .collect();
                bytes += frame(&Message::ListRequest {
                    ranges: ranges.clone(),
                });
                bytes += frame(&Message::ListReply {
                    entries: entries.clone(),
                });
                p.on_list(&ranges, &entries);
            }
        }
    }
    Outcome {
        fetch: p.to_fetch().iter().copied().collect(),
        delete: p.to_delete().iter().copied().collect(),
        bytes,
        verified: p.verified(),
    }
}

fn expected(
    local: &BTreeMap<u64, u64>,
    remote: &BTreeMap<u64, u64>,
) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let fetch = remote
        .iter()
        .filter(|(k, v)| local.get(k) != Some(v))
        .map(|(k, _)| *k)
        .collect();
    let delete = local
        .keys()
        .filter(|k| !remote.contains_key(k))
        .copied()
        .collect();
    (fetch, delete)
}

/// A database of `n` records, with key hashes either spread over the space or packed
/// into a narrow band (bucket edge cases: many records per leaf, boundaries).
fn database(rng: &mut StdRng, n: usize, packed: bool) -> BTreeMap<u64, u64> {
    (0..n)
        .map(|_| {
            let k = if packed {
                // Within one level-3 bucket, often right on bucket boundaries.
                let base = 0x1230_0000_0000_0000u64;
                match rng.gen_range(0..4) {
                    0 => base,
                    1 => base + (1 << 52) - 1,
                    _ => base + rng.gen_range(0..1u64 << 52),
                }
            } else {
                rng.gen()
            };
            (k, rng.gen())
        })
        .collect()
}

#[test]
fn random_differences_converge() {
    for seed in 0..300u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.gen_range(0..3000);
        let packed = seed % 5 == 0;
        let remote = database(&mut rng, n, packed);
        let mut local = remote.clone();
        match seed % 7 {
            0 => local.clear(), // empty replica
            1 => {
                // All different.
                let m = rng.gen_range(0..500);
                local = database(&mut rng, m, packed);
            }
            _ => {
                let changes = rng.gen_range(0..60);
                let keys: Vec<u64> = remote.keys().copied().collect();
                for _ in 0..changes {
                    match rng.gen_range(0..3) {
                        0 if !keys.is_empty() => {
                            local.remove(&keys[rng.gen_range(0..keys.len())]);
                        }
                        1 if !keys.is_empty() => {
                            local.insert(keys[rng.gen_range(0..keys.len())], rng.gen());
                        }
                        _ => {
                            local.insert(rng.gen(), rng.gen());
                        }
                    }
                }
            }
        }
        let out = run(&local, &remote);
        let (fetch, delete) = expected(&local, &remote);
        assert!(out.verified, "seed {seed}");
        assert_eq!(out.fetch, fetch, "seed {seed}: fetch set");
        assert_eq!(out.delete, delete, "seed {seed}: delete set");
        // Applying the plan makes the two equal.
        let mut fixed = local.clone();
        for k in &out.delete {
            fixed.remove(k);
        }
        for k in &out.fetch {
            fixed.insert(*k, remote[k]);
        }
        assert_eq!(fixed, remote, "seed {seed}");
    }
}

#[test]
fn bytes_scale_with_differences_not_size() {
    let mut rng = StdRng::seed_from_u64(99);
    let mut per_size = Vec::new();
    for n in [10_000usize, 100_000, 400_000] {
        let remote = database(&mut rng, n, false);
        let mut local = remote.clone();
        let keys: Vec<u64> = remote.keys().copied().collect();
        for _ in 0..100 {
            local.insert(keys[rng.gen_range(0..keys.len())], rng.gen());
        }
        let out = run(&local, &remote);
        assert_eq!(out.fetch, expected(&local, &remote).0);
        per_size.push((n, out.bytes));
    }
    // 40x more records, same 100 differences: bytes grow only with the tree depth.
    let (small, large) = (per_size[0].1, per_size[2].1);
    assert!(large < small * 2, "{per_size:?}");
    // And 10x more differences cost roughly 10x more.
    let remote = database(&mut rng, 100_000, false);
    let keys: Vec<u64> = remote.keys().copied().collect();
    let bytes_for = |d: usize, rng: &mut StdRng| {
        let mut local = remote.clone();
        for _ in 0..d {
            local.insert(keys[rng.gen_range(0..keys.len())], rng.gen());
        }
        run(&local, &remote).bytes
    };
    let b100 = bytes_for(100, &mut rng);
    let b1000 = bytes_for(1000, &mut rng);
    assert!(b1000 > b100 * 5 && b1000 < b100 * 15, "{b100} vs {b1000}");
    // Identical sides exchange only the snapshot.
    assert!(run(&remote, &remote).bytes < 64);
}

#[test]
fn differences_short_sums_cannot_see_are_found_with_full_sums() {
    for seed in 0..50u64 {
        let mut rng = StdRng::seed_from_u64(1_000 + seed);
        let n = rng.gen_range(1..3000);
        let remote = database(&mut rng, n, seed % 5 == 0);
        let mut local = remote.clone();
        let keys: Vec<u64> = remote.keys().copied().collect();
        // Content hashes that differ only above the low 32 bits: every short sum agrees.
        for _ in 0..rng.gen_range(1..20) {
            let k = keys[rng.gen_range(0..keys.len())];
            *local.get_mut(&k).unwrap() ^= rng.gen_range(1..u32::MAX as u64) << 32;
        }
        let short = run_with(&local, &remote, SHORT_SUM_BYTES);
        let (fetch, delete) = expected(&local, &remote);
        assert!(
            short.fetch.len() < fetch.len() || !short.verified,
            "seed {seed}"
        );
        let out = run(&local, &remote);
        assert!(out.verified, "seed {seed}");
        assert_eq!((out.fetch, out.delete), (fetch, delete), "seed {seed}");
    }
}
