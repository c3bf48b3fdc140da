//! A set of `u64` values kept as disjoint inclusive ranges: the shape of a gap tracker.
//!
//! Sequence numbers and versions arrive mostly in order, so what has arrived is a few long
//! runs; storing runs instead of values keeps the set small and makes "what is missing
//! between here and there" a walk over the runs. Modelled on quinn-proto's `range_set`.

use std::collections::btree_map;
use std::collections::BTreeMap;
use std::ops::RangeInclusive;

/// Disjoint, non-adjacent inclusive ranges of `u64`, keyed by start.
///
/// Invariant: for consecutive entries `(s1, e1)`, `(s2, e2)`: `s1 <= e1` and `e1 + 1 < s2`
/// (ranges that touch are merged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> RangeSet {
        RangeSet::default()
    }

    /// Whether the set holds no value.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of disjoint ranges (not values).
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// Number of values, saturating at `u64::MAX` (the full set has 2^64 values).
    pub fn len(&self) -> u64 {
        self.ranges.iter().fold(0u64, |n, (&s, &e)| {
            n.saturating_add(e - s).saturating_add(1)
        })
    }

    /// Removes every value.
    pub fn clear(&mut self) {
        self.ranges.clear();
    }

    /// The range holding `v`, if any.
    fn range_of(&self, v: u64) -> Option<(u64, u64)> {
        let (&s, &e) = self.ranges.range(..=v).next_back()?;
        (e >= v).then_some((s, e))
    }

    /// Whether `v` is in the set.
    pub fn contains(&self, v: u64) -> bool {
        self.range_of(v).is_some()
    }

    /// Smallest value.
    pub fn min(&self) -> Option<u64> {
        self.ranges.first_key_value().map(|(&s, _)| s)
    }

    /// Largest value.
    pub fn max(&self) -> Option<u64> {
        self.ranges.last_key_value().map(|(_, &e)| e)
    }

    /// Adds `v`. Returns whether it was new.
    pub fn insert(&mut self, v: u64) -> bool {
        if self.contains(v) {
            return false;
        }
        self.insert_range(v..=v);
        true
    }

    /// Adds every value of `range` (nothing if it is empty).
    pub fn insert_range(&mut self, range: RangeInclusive<u64>) {
        let (mut start, mut end) = (*range.start(), *range.end());
        if start > end {
            return;
        }
        // A range ending at or just before `start` merges with the new one.
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e.checked_add(1).is_none_or(|after| after >= start) {
                start = s;
                end = end.max(e);
            }
        }
        // Ranges starting inside, or just after, the new one are absorbed (one at a time:
        // no allocation on the receive path).
        while let Some((&s, &e)) = self.ranges.range(start..=end.saturating_add(1)).next() {
            self.ranges.remove(&s);
            end = end.max(e);
        }
        self.ranges.insert(start, end);
    }

    /// Removes `v`. Returns whether it was there.
    pub fn remove(&mut self, v: u64) -> bool {
        if !self.contains(v) {
            return false;
        }
        self.remove_range(v..=v);
        true
    }

    /// Removes every value of `range` (nothing if it is empty).
    pub fn remove_range(&mut self, range: RangeInclusive<u64>) {
        let (start, end) = (*range.start(), *range.end());
        if start > end {
            return;
        }
        // A range starting before `start` and reaching into the removed one is cut short,
        // and may also continue past `end`.
        if let Some((s, e)) = self
            .ranges
            .range(..start)
            .next_back()
            .map(|(&s, &e)| (s, e))
        {
            if e >= start {
                self.ranges.insert(s, start - 1);
                if e > end {
                    self.ranges.insert(end + 1, e);
                    return;
                }
            }
        }
        while let Some((&s, &e)) = self.ranges.range(start..=end).next() {
            self.ranges.remove(&s);
            if e > end {
                // The last one touched: what it holds past `end` stays.
                self.ranges.insert(end + 1, e);
                break;
            }
        }
    }

    /// Removes and returns the smallest value.
    pub fn pop_min(&mut self) -> Option<u64> {
        let (s, e) = self.ranges.pop_first()?;
        if s < e {
            self.ranges.insert(s + 1, e);
        }
        Some(s)
    }

    /// The ranges in ascending order, as inclusive `(start, end)` pairs.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            inner: self.ranges.iter(),
        }
    }

    /// The inclusive ranges of `bounds` not in the set, ascending.
    pub fn gaps(&self, bounds: RangeInclusive<u64>) -> Gaps<'_> {
        let (lo, hi) = (*bounds.start(), *bounds.end());
        // Start from the range holding `lo`, if any, so `next` skips past it.
        let from = self.range_of(lo).map_or(lo, |(s, _)| s);
        Gaps {
            inner: self.ranges.range(from..),
            next: Some(lo),
            hi,
        }
    }
}

/// The ranges of a [`RangeSet`], ascending.
#[derive(Debug)]
pub struct Iter<'a> {
    inner: btree_map::Iter<'a, u64, u64>,
}

impl Iterator for Iter<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        self.inner.next().map(|(&s, &e)| (s, e))
    }
}

impl<'a> IntoIterator for &'a RangeSet {
    type Item = (u64, u64);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// The gaps of a [`RangeSet`] within bounds; see [`RangeSet::gaps`].
#[derive(Debug)]
pub struct Gaps<'a> {
    inner: btree_map::Range<'a, u64, u64>,
    /// First value not yet covered by a returned gap or a range; `None` past `u64::MAX`.
    next: Option<u64>,
    hi: u64,
}

impl Iterator for Gaps<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        loop {
            let next = self.next.filter(|&n| n <= self.hi)?;
            match self.inner.next() {
                Some((&s, &e)) if s <= next => self.next = e.checked_add(1),
                Some((&s, &e)) if s <= self.hi => {
                    self.next = e.checked_add(1);
                    return Some((next, s - 1));
                }
                _ => {
                    self.next = None;
                    return Some((next, self.hi));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn set(ranges: &[(u64, u64)]) -> RangeSet {
        let mut s = RangeSet::new();
        for &(a, b) in ranges {
            s.insert_range(a..=b);
        }
        s
    }

    fn ranges(s: &RangeSet) -> Vec<(u64, u64)> {
        s.iter().collect()
    }

    #[test]
    fn adjacent_and_overlapping_ranges_merge() {
        let mut s = set(&[(1, 3), (7, 9)]);
        s.insert(4);
        assert_eq!(ranges(&s), [(1, 4), (7, 9)]);
        s.insert_range(5..=6);
        assert_eq!(ranges(&s), [(1, 9)]);
        s.insert_range(0..=20);
        assert_eq!(ranges(&s), [(0, 20)]);
        assert_eq!(s.len(), 21);
        assert!(!s.insert(5), "5 was already there");
    }

    #[test]
    fn removing_from_the_middle_splits_a_range() {
        let mut s = set(&[(1, 10)]);
        assert!(s.remove(5));
        assert!(!s.remove(5));
        assert_eq!(ranges(&s), [(1, 4), (6, 10)]);
        s.remove_range(0..=2);
        s.remove_range(9..=30);
        assert_eq!(ranges(&s), [(3, 4), (6, 8)]);
        s.remove_range(4..=6);
        assert_eq!(ranges(&s), [(3, 3), (7, 8)]);
    }

    #[test]
    fn gaps_are_the_complement_within_bounds() {
        let s = set(&[(3, 4), (7, 7), (10, 12)]);
        assert_eq!(
            s.gaps(1..=15).collect::<Vec<_>>(),
            [(1, 2), (5, 6), (8, 9), (13, 15)]
        );
        assert_eq!(s.gaps(4..=11).collect::<Vec<_>>(), [(5, 6), (8, 9)]);
        assert_eq!(s.gaps(3..=4).count(), 0);
        let (lo, hi) = (5, 4);
        assert_eq!(s.gaps(lo..=hi).count(), 0, "empty bounds have no gap");
        assert_eq!(RangeSet::new().gaps(2..=5).collect::<Vec<_>>(), [(2, 5)]);
    }

    #[test]
    fn the_ends_of_u64_do_not_overflow() {
        let mut s = set(&[(u64::MAX - 1, u64::MAX), (0, 0)]);
        assert!(s.contains(u64::MAX));
        assert_eq!(
            s.gaps(0..=u64::MAX).collect::<Vec<_>>(),
            [(1, u64::MAX - 2)]
        );
        s.insert_range(0..=u64::MAX);
        assert_eq!(ranges(&s), [(0, u64::MAX)]);
        assert_eq!(s.len(), u64::MAX, "saturates");
        s.remove(u64::MAX);
        assert_eq!(s.max(), Some(u64::MAX - 1));
        assert_eq!(
            s.gaps(0..=u64::MAX).collect::<Vec<_>>(),
            [(u64::MAX, u64::MAX)]
        );
    }

    #[test]
    fn pop_min_takes_values_in_order() {
        let mut s = set(&[(5, 6), (9, 9)]);
        let popped: Vec<u64> = std::iter::from_fn(|| s.pop_min()).collect();
        assert_eq!(popped, [5, 6, 9]);
        assert!(s.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        InsertRange(u64, u64),
        Remove(u64),
        RemoveRange(u64, u64),
        PopMin,
    }

    fn op() -> impl Strategy<Value = Op> {
        // A small domain so operations collide, merge and split often.
        let v = 0u64..48;
        prop_oneof![
            v.clone().prop_map(Op::Insert),
            (v.clone(), 0u64..8).prop_map(|(a, n)| Op::InsertRange(a, a + n)),
            v.clone().prop_map(Op::Remove),
            (v, 0u64..8).prop_map(|(a, n)| Op::RemoveRange(a, a + n)),
            Just(Op::PopMin),
        ]
    }

    fn model_gaps(m: &BTreeSet<u64>, lo: u64, hi: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for v in (lo..=hi).filter(|v| !m.contains(v)) {
            match out.last_mut() {
                Some(last) if last.1 + 1 == v => last.1 = v,
                _ => out.push((v, v)),
            }
        }
        out
    }

    fn apply(s: &mut RangeSet, m: &mut BTreeSet<u64>, op: &Op) {
        match *op {
            Op::Insert(v) => assert_eq!(s.insert(v), m.insert(v)),
            Op::InsertRange(a, b) => {
                s.insert_range(a..=b);
                m.extend(a..=b);
            }
            Op::Remove(v) => assert_eq!(s.remove(v), m.remove(&v)),
            Op::RemoveRange(a, b) => {
                s.remove_range(a..=b);
                m.retain(|v| !(a..=b).contains(v));
            }
            Op::PopMin => assert_eq!(s.pop_min(), m.pop_first()),
        }
    }

    proptest! {
        #[test]
        fn behaves_like_a_btreeset(ops in prop::collection::vec(op(), 0..64), lo in 0u64..60, n in 0u64..20) {
            let mut s = RangeSet::new();
            let mut m = BTreeSet::new();
            for op in &ops {
                apply(&mut s, &mut m, op);
                let values: Vec<u64> = s.iter().flat_map(|(a, b)| a..=b).collect();
                prop_assert_eq!(&values, &m.iter().copied().collect::<Vec<_>>());
                // Stored ranges are disjoint and never touch.
                for w in ranges(&s).windows(2) {
                    prop_assert!(w[0].1 + 1 < w[1].0, "{:?}", s);
                }
            }
            prop_assert_eq!(s.len(), m.len() as u64);
            prop_assert_eq!(s.min(), m.first().copied());
            prop_assert_eq!(s.max(), m.last().copied());
            for v in 0..60 {
                prop_assert_eq!(s.contains(v), m.contains(&v));
            }
            prop_assert_eq!(s.gaps(lo..=lo + n).collect::<Vec<_>>(), model_gaps(&m, lo, lo + n));
        }
    }
}
