//! Hash resync: finding which records differ between a replica and the master by
//! comparing digests of key-hash ranges, descending only into ranges that differ.
//!
//! Every record sits at `key_hash(key)` in the 64-bit key-hash space. A range is a node of
//! a 16-ary tree over that space: `(lo, level)` covers `2^(64 - 4·level)` hashes from `lo`.
//! The digest of a range is its record count and the wrapping sum of its records' content
//! hashes. Both sides compute digests from sorted `(key hash, content hash)` arrays with
//! prefix sums, so any range's digest costs two binary searches. The subscriber drives:
//! it asks for the children of ranges that differ, lists small ranges entry by entry, and
//! ends with the key hashes to fetch and the local keys to delete. Bytes exchanged grow
//! with the number of differing records times the tree depth, not with the database size.

/// Branching factor of the range tree.
pub const FANOUT: u64 = 16;
/// Deepest level (ranges of one key hash).
pub const MAX_LEVEL: u8 = 16;
/// A differing range is listed entry by entry (instead of split) when the publisher holds
/// at most this many records in it: a listed entry costs 16 bytes, a split 16 short
/// digests (about 3–5 bytes each) plus listing the child that differs.
pub const LIST_AT: u32 = 6;
/// Bytes of each sum a digest reply carries by default: the low 24 bits. A range that
/// differs but whose short sums agree (odds 2^-24 per range compared) is caught at the
/// end, by [`ResyncPlanner::verified`] against the full root digest, and the comparison
/// is then redone with full sums ([`FULL_SUM_BYTES`]).
pub const SHORT_SUM_BYTES: u8 = 3;
/// Full-width sums.
pub const FULL_SUM_BYTES: u8 = 8;
/// Sum widths a digest request may ask for.
pub const SUM_BYTES: std::ops::RangeInclusive<u8> = 3..=8;
/// Most ranges per digest or list request.
pub const MAX_RANGES_PER_REQUEST: usize = 1024;
/// Most key hashes per fetch request (keeps the request frame within the publisher's
/// 64 KiB limit on client frames).
pub const MAX_FETCH_PER_REQUEST: usize = 4096;

/// Where a key sits in the resync space.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// A node of the range tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Range {
    /// First key hash covered.
    pub lo: u64,
    /// Depth: 0 is the whole space, 16 a single hash.
    pub level: u8,
}

impl Range {
    /// The whole key-hash space.
    pub const ROOT: Range = Range { lo: 0, level: 0 };

    /// Whether `lo` is aligned to `level` (what a parser must check).
    pub fn is_valid(&self) -> bool {
        match self.level {
            0 => self.lo == 0,
            l if l <= MAX_LEVEL => self.lo & (self.width() - 1) == 0,
            _ => false,
        }
    }

    fn width(&self) -> u64 {
        if self.level == 0 {
            0 // the full 2^64 span; only used by `hi` and `children`
        } else {
            1u64 << (64 - 4 * u32::from(self.level))
        }
    }

    /// Last key hash covered.
    pub fn hi(&self) -> u64 {
        if self.level == 0 {
            u64::MAX
        } else {
            self.lo + (self.width() - 1)
        }
    }

    /// Its position among the ranges of its level (`lo` over the range's width).
    pub fn index(&self) -> u64 {
        match self.level {
            0 => 0,
            l => self.lo >> (64 - 4 * u32::from(l.min(MAX_LEVEL))),
        }
    }

    /// The range at `index` of `level`, if both are in the tree.
    pub fn at(level: u8, index: u64) -> Option<Range> {
        match level {
            0 => (index == 0).then_some(Range::ROOT),
            l if l < MAX_LEVEL => {
                let shift = 64 - 4 * u32::from(l);
                (index >> (4 * u32::from(l)) == 0).then(|| Range {
                    lo: index << shift,
                    level: l,
                })
            }
            MAX_LEVEL => Some(Range { lo: index, level }),
            _ => None,
        }
    }

    /// Its 16 children (none at the deepest level).
    pub fn children(&self) -> Vec<Range> {
        if self.level >= MAX_LEVEL {
            return Vec::new();
        }
        let child = Range {
            lo: self.lo,
            level: self.level + 1,
        };
        (0..FANOUT)
            .map(|i| Range {
                lo: self.lo + i * child.width(),
                level: child.level,
            })
            .collect()
    }
}

/// Record count and wrapping sum of content hashes of a range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digest {
    /// Records in the range.
    pub count: u32,
    /// Wrapping sum of their content hashes (in a digest reply, its low `sum_bytes` bytes).
    pub sum: u64,
}

impl Digest {
    /// The digest with its sum cut to the low `sum_bytes` bytes (what a reply carries).
    pub fn truncated(self, sum_bytes: u8) -> Digest {
        let sum = match sum_bytes {
            0 => 0,
            1..=7 => self.sum & ((1u64 << (8 * u32::from(sum_bytes))) - 1),
            _ => self.sum,
        };
        Digest { sum, ..self }
    }

    fn add(&mut self, other: Digest) {
        self.count = self.count.wrapping_add(other.count);
        self.sum = self.sum.wrapping_add(other.sum);
    }

    fn sub(&mut self, other: Digest) {
        self.count = self.count.wrapping_sub(other.count);
        self.sum = self.sum.wrapping_sub(other.sum);
    }

    fn of(entries: &[(u64, u64)]) -> Digest {
        let mut d = Digest::default();
        for &(_, h) in entries {
            d.add(Digest { count: 1, sum: h });
        }
        d
    }
}

/// Sorted `(key hash, content hash)` pairs with prefix sums.
#[derive(Debug, Clone, Default)]
pub struct HashIndex {
    entries: Vec<(u64, u64)>,
    prefix: Vec<u64>,
}

impl HashIndex {
    /// Builds the index (sorting the entries).
    pub fn new(mut entries: Vec<(u64, u64)>) -> HashIndex {
        entries.sort_unstable();
        let mut prefix = Vec::with_capacity(entries.len() + 1);
        let mut acc = 0u64;
        prefix.push(0);
        for &(_, h) in &entries {
            acc = acc.wrapping_add(h);
            prefix.push(acc);
        }
        HashIndex { entries, prefix }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn bounds(&self, r: Range) -> (usize, usize) {
        let a = self.entries.partition_point(|e| e.0 < r.lo);
        let b = self.entries.partition_point(|e| e.0 <= r.hi());
        (a, b)
    }

    /// Digest of a range.
    pub fn digest(&self, r: Range) -> Digest {
        let (a, b) = self.bounds(r);
        Digest {
            count: (b - a).min(u32::MAX as usize) as u32,
            sum: self.prefix[b].wrapping_sub(self.prefix[a]),
        }
    }

    /// Entries of a range.
    pub fn entries(&self, r: Range) -> &[(u64, u64)] {
        let (a, b) = self.bounds(r);
        &self.entries[a..b]
    }
}

/// The next thing the subscriber asks the publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResyncStep {
    /// Digests of the children of these ranges.
    Digests(Vec<Range>),
    /// Every `(key hash, content hash)` in these ranges.
    List(Vec<Range>),
}

/// The subscriber's side of a hash resync, sans-IO.
///
/// Child digests carry sums cut to `sum_bytes` bytes, so two different ranges can look
/// alike. The planner therefore also predicts the publisher's full root digest from its
/// own: its root, minus what it found to differ, plus the publisher's entries of the
/// ranges listed (which carry full content hashes). Only when that prediction equals the
/// publisher's root is every difference found ([`verified`](Self::verified)).
#[derive(Debug)]
pub struct ResyncPlanner {
    local: HashIndex,
    sum_bytes: u8,
    remote_root: Digest,
    predicted: Digest,
    descend: Vec<Range>,
    list: Vec<Range>,
    fetch: Vec<u64>,
    delete: Vec<u64>,
    differing_leaves: Vec<Range>,
}

impl ResyncPlanner {
    /// Starts from the publisher's (full) root digest; child digests will carry sums of
    /// `sum_bytes` bytes ([`SUM_BYTES`]).
    pub fn new(local: HashIndex, remote_root: Digest, sum_bytes: u8) -> ResyncPlanner {
        let predicted = local.digest(Range::ROOT);
        let mut p = ResyncPlanner {
            local,
            sum_bytes: sum_bytes.clamp(*SUM_BYTES.start(), *SUM_BYTES.end()),
            remote_root,
            predicted,
            descend: Vec::new(),
            list: Vec::new(),
            fetch: Vec::new(),
            delete: Vec::new(),
            differing_leaves: Vec::new(),
        };
        p.classify(Range::ROOT, remote_root);
        p
    }

    /// Width of the sums this planner asks for.
    pub fn sum_bytes(&self) -> u8 {
        self.sum_bytes
    }

    /// Once [`poll`](Self::poll) returned `None`: whether the differences found account
    /// for the whole difference of the root digests. `false` means short sums hid a
    /// difference (redo with [`FULL_SUM_BYTES`]) or, with full sums, that the publisher's
    /// answers contradict its root.
    pub fn verified(&self) -> bool {
        self.predicted == self.remote_root
    }

    fn classify(&mut self, r: Range, remote: Digest) {
        let local = self.local.digest(r);
        if local.truncated(self.sum_bytes) == remote.truncated(self.sum_bytes) {
            return;
        }
        if remote.count == 0 {
            // Nothing there at the publisher: every local record in it goes.
            self.delete
                .extend(self.local.entries(r).iter().map(|e| e.0));
            self.predicted.sub(local);
            self.differing_leaves.push(r);
        } else if remote.count <= LIST_AT || r.level >= MAX_LEVEL {
            self.list.push(r);
        } else {
            self.descend.push(r);
        }
    }

    /// The next request, or `None` when the differences are known.
    pub fn poll(&mut self) -> Option<ResyncStep> {
        if !self.descend.is_empty() {
            let n = self.descend.len().min(MAX_RANGES_PER_REQUEST);
            return Some(ResyncStep::Digests(self.descend.drain(..n).collect()));
        }
        if !self.list.is_empty() {
            let n = self.list.len().min(MAX_RANGES_PER_REQUEST);
            return Some(ResyncStep::List(self.list.drain(..n).collect()));
        }
        None
    }

    /// The publisher's child digests for `parents` (16 per parent, in order).
    pub fn on_digests(&mut self, parents: &[Range], digests: &[Digest]) -> Result<(), String> {
        if digests.len() != parents.len() * FANOUT as usize {
            return Err(format!(
                "{} digests for {} ranges",
                digests.len(),
                parents.len()
            ));
        }
        for (p, ds) in parents.iter().zip(digests.chunks(FANOUT as usize)) {
            for (c, d) in p.children().into_iter().zip(ds) {
                self.classify(c, *d);
            }
        }
        Ok(())
    }

    /// The publisher's entries of `ranges`: each range's entries, sorted by key hash, in
    /// the order the ranges were asked for. Entries outside their range are ignored.
    pub fn on_list(&mut self, ranges: &[Range], remote: &[(u64, u64)]) {
        let mut pos = 0;
        for &r in ranges {
            self.differing_leaves.push(r);
            let a = pos;
            while pos < remote.len() && remote[pos].0 >= r.lo && remote[pos].0 <= r.hi() {
                pos += 1;
            }
            let theirs = &remote[a..pos];
            let mine = self.local.entries(r);
            self.predicted.add(Digest::of(theirs));
            self.predicted.sub(Digest::of(mine));
            for &(kh, h) in theirs {
                match mine.binary_search_by_key(&kh, |e| e.0) {
                    Ok(i) if mine[i].1 == h => {}
                    _ => self.fetch.push(kh),
                }
            }
            for &(kh, _) in mine {
                if theirs.binary_search_by_key(&kh, |e| e.0).is_err() {
                    self.delete.push(kh);
                }
            }
        }
    }

    /// Key hashes to fetch from the publisher (changed or missing here).
    pub fn to_fetch(&self) -> &[u64] {
        &self.fetch
    }

    /// Key hashes of local records the publisher does not have.
    pub fn to_delete(&self) -> &[u64] {
        &self.delete
    }

    /// The smallest ranges found to differ (for reports such as `mcsync verify`).
    pub fn differing_ranges(&self) -> &[Range] {
        &self.differing_leaves
    }
}

/// The publisher's answer to a digest request: 16 child digests per parent, sums cut to
/// `sum_bytes` bytes.
pub fn child_digests(index: &HashIndex, parents: &[Range], sum_bytes: u8) -> Vec<Digest> {
    parents
        .iter()
        .flat_map(|p| {
            p.children()
                .into_iter()
                .map(|c| index.digest(c).truncated(sum_bytes))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(n: u64, salt: u64) -> HashIndex {
        HashIndex::new(
            (0..n)
                .map(|i| (key_hash(&i.to_be_bytes()), i ^ salt))
                .collect(),
        )
    }

    #[test]
    fn children_tile_their_parent() {
        for r in [
            Range::ROOT,
            Range {
                lo: 0x3000_0000_0000_0000,
                level: 1,
            },
        ] {
            let c = r.children();
            assert_eq!(c.len(), 16);
            assert_eq!(c[0].lo, r.lo);
            assert_eq!(c[15].hi(), r.hi());
            for w in c.windows(2) {
                assert_eq!(w[0].hi() + 1, w[1].lo);
            }
            assert!(c.iter().all(Range::is_valid));
        }
        assert!(!Range { lo: 1, level: 1 }.is_valid());
        assert!(Range { lo: 7, level: 16 }.is_valid());
        // A root that does not start at 0, and levels past the deepest, are invalid (and
        // checking them does not overflow).
        assert!(!Range { lo: 5, level: 0 }.is_valid());
        assert!(!Range { lo: 0, level: 17 }.is_valid());
        assert!(!Range { lo: 0, level: 255 }.is_valid());
        assert!(Range { lo: 7, level: 16 }.children().is_empty());
        // Index round trip.
        for r in [
            Range::ROOT,
            Range {
                lo: 0x3000_0000_0000_0000,
                level: 1,
            },
            Range {
                lo: 0xabc0_0000_0000_0000,
                level: 3,
            },
            Range { lo: 7, level: 16 },
            Range {
                lo: u64::MAX,
                level: 16,
            },
        ] {
            assert_eq!(Range::at(r.level, r.index()), Some(r));
        }
        assert_eq!(Range::at(0, 1), None);
        assert_eq!(Range::at(1, 16), None);
        assert_eq!(Range::at(17, 0), None);
    }

    #[test]
    fn digests_add_up() {
        let i = idx(1000, 0);
        let root = i.digest(Range::ROOT);
        let kids = child_digests(&i, &[Range::ROOT], FULL_SUM_BYTES);
        assert_eq!(kids.iter().map(|d| d.count).sum::<u32>(), 1000);
        assert_eq!(
            kids.iter().fold(0u64, |a, d| a.wrapping_add(d.sum)),
            root.sum
        );
    }

    /// Runs a whole comparison in memory; returns the planner when `poll` ran dry.
    fn plan(local: &HashIndex, remote: &HashIndex, sum_bytes: u8) -> ResyncPlanner {
        let mut p = ResyncPlanner::new(local.clone(), remote.digest(Range::ROOT), sum_bytes);
        while let Some(step) = p.poll() {
            match step {
                ResyncStep::Digests(r) => {
                    let d = child_digests(remote, &r, sum_bytes);
                    p.on_digests(&r, &d).unwrap();
                }
                ResyncStep::List(r) => {
                    let e: Vec<_> = r.iter().flat_map(|x| remote.entries(*x).to_vec()).collect();
                    p.on_list(&r, &e);
                }
            }
        }
        p
    }

    #[test]
    fn a_difference_short_sums_hide_fails_verification_and_full_sums_find_it() {
        let local = idx(500, 0);
        // One record's content hash differs only above the low 32 bits: every short sum
        // on its path agrees.
        let mut entries: Vec<_> = (0..500u64)
            .map(|i| (key_hash(&i.to_be_bytes()), i))
            .collect();
        entries[7].1 += 1 << 40;
        let remote = HashIndex::new(entries.clone());
        let short = plan(&local, &remote, SHORT_SUM_BYTES);
        assert!(short.to_fetch().is_empty() && !short.verified());
        let full = plan(&local, &remote, FULL_SUM_BYTES);
        assert_eq!(full.to_fetch(), &[entries[7].0]);
        assert!(full.verified());
        // An ordinary difference is found and verified with short sums.
        entries[7].1 -= 1 << 40;
        entries[9].1 += 1;
        entries.remove(3);
        let remote = HashIndex::new(entries.clone());
        let p = plan(&local, &remote, SHORT_SUM_BYTES);
        assert!(p.verified());
        assert_eq!(p.to_delete().len(), 1);
        assert_eq!(p.to_fetch().len(), 1);
    }

    #[test]
    fn truncation_keeps_the_low_bytes() {
        let d = Digest {
            count: 3,
            sum: 0x1122_3344_5566_7788,
        };
        assert_eq!(d.truncated(4).sum, 0x5566_7788);
        assert_eq!(d.truncated(3).sum, 0x66_7788);
        assert_eq!(d.truncated(8), d);
        assert_eq!(d.truncated(4).count, 3);
    }
}
