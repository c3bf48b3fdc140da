//! The crash test's workload and reference model, shared by the child binary
//! (`src/bin/crash_node.rs`, which commits it) and the test (`tests/crash.rs`, which checks
//! every store against it).
//!
//! The operations of each version are a pure function of the run's seed and the version,
//! so a publisher restarted after a kill commits exactly what the model expects next, and
//! the master state at any version is the model replayed up to it (redb's habit: a
//! `BTreeMap` beside the store under test).

use std::collections::BTreeMap;

/// The one database the crash test replicates.
pub const DB: &str = "crashdb";

/// Keys the workload touches (small, so deletes and overwrites hit existing records).
const KEYS: u64 = 160;

/// splitmix64: a tiny, stable generator (its sequence never changes with a crate version).
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// One operation of the workload, without its value bytes (made by [`value`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpSpec {
    /// Key number.
    pub key: u64,
    /// `Some(length)` for a put, `None` for a delete.
    pub put: Option<usize>,
}

/// The key of key number `k`.
pub fn key(k: u64) -> Vec<u8> {
    format!("key-{k:03}").into_bytes()
}

/// The value a put at `version`, operation `index`, of `len` bytes writes: a readable
/// prefix, then either repeated text (compressible) or pseudo-random bytes.
pub fn value(seed: u64, version: u64, index: usize, len: usize) -> Vec<u8> {
    let mut out = format!("v{version}.{index}|").into_bytes();
    let mut g = SplitMix(seed ^ version.rotate_left(20) ^ (index as u64).rotate_left(50));
    let text = g.chance(50);
    while out.len() < len {
        let w = g.next_u64();
        if text {
            out.extend_from_slice(b"lorem ipsum ");
        } else {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
    out.truncate(len.max(1));
    out
}

/// The operations committed as version `version` of the run seeded `seed`: mostly single
/// puts (values of 1 B to 6 KiB), some single deletes, some transactions of 2 to 6 mixed
/// operations.
pub fn ops_spec(seed: u64, version: u64) -> Vec<OpSpec> {
    let mut g = SplitMix(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ version);
    let len = |g: &mut SplitMix| match g.range(0, 99) {
        0..=69 => g.range(1, 256) as usize,
        70..=94 => g.range(257, 2048) as usize,
        _ => g.range(2049, 6000) as usize,
    };
    let n = match g.range(0, 99) {
        0..=79 => 1,
        _ => g.range(2, 6),
    };
    (0..n)
        .map(|_| {
            let key = g.range(0, KEYS - 1);
            let put = if g.chance(80) {
                Some(len(&mut g))
            } else {
                None
            };
            OpSpec { key, put }
        })
        .collect()
}

/// The operations of `version` with their value bytes.
pub fn ops_for(seed: u64, version: u64) -> Vec<mcsync::Op> {
    ops_spec(seed, version)
        .into_iter()
        .enumerate()
        .map(|(i, s)| match s.put {
            Some(len) => mcsync::Op::put(key(s.key), value(seed, version, i, len)),
            None => mcsync::Op::delete(key(s.key)),
        })
        .collect()
}

/// The master's state at `version`: every operation of versions `1..=version` replayed
/// in order.
pub fn state_at(seed: u64, version: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    // Replay the specs (cheap), then make only the surviving values.
    let mut latest: BTreeMap<u64, (u64, usize, usize)> = BTreeMap::new();
    for v in 1..=version {
        for (i, s) in ops_spec(seed, v).into_iter().enumerate() {
            match s.put {
                Some(len) => {
                    latest.insert(s.key, (v, i, len));
                }
                None => {
                    latest.remove(&s.key);
                }
            }
        }
    }
    latest
        .into_iter()
        .map(|(k, (v, i, len))| (key(k), value(seed, v, i, len)))
        .collect()
}

/// A short description of a version's operations, for the acknowledgement file.
pub fn summary(ops: &[mcsync::Op]) -> String {
    ops.iter()
        .map(|o| match o.kind {
            mcsync::OpKind::Put => {
                format!("put:{}:{}", String::from_utf8_lossy(&o.key), o.value.len())
            }
            mcsync::OpKind::Delete => format!("del:{}", String::from_utf8_lossy(&o.key)),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_the_operations_replayed() {
        let seed = 7;
        let mut m = BTreeMap::new();
        for v in 1..=300 {
            for op in ops_for(seed, v) {
                match op.kind {
                    mcsync::OpKind::Put => {
                        m.insert(op.key, op.value);
                    }
                    mcsync::OpKind::Delete => {
                        m.remove(&op.key);
                    }
                }
            }
            if v % 50 == 0 {
                assert_eq!(state_at(seed, v), m, "version {v}");
            }
        }
        assert!(m.len() > 50, "{} keys", m.len());
    }
}
