use super::{Coverage, CoverageGap};

fn gap(expected: Option<u64>, received: Option<u64>) -> CoverageGap {
    CoverageGap { expected, received }
}

#[test]
fn journal_answer_covering_every_range_in_order_passes() {
    let mut c = Coverage::new(&[(3, 5), (9, 10)]);
    for v in [3, 4, 5, 9, 10] {
        assert_eq!(c.take(v, v), Ok(()), "version {v}");
    }
    assert_eq!(c.end(10), Ok(()));
}

#[test]
fn journal_answer_with_a_hole_is_refused_at_the_hole() {
    let mut c = Coverage::new(&[(3, 8)]);
    assert_eq!(c.take(3, 3), Ok(()));
    assert_eq!(c.take(5, 5), Err(gap(Some(4), Some(5))));
}

#[test]
fn journal_answer_starting_late_is_refused() {
    let mut c = Coverage::new(&[(3, 8)]);
    assert_eq!(c.take(4, 4), Err(gap(Some(3), Some(4))));
}

#[test]
fn journal_answer_skipping_into_the_next_range_is_refused() {
    let mut c = Coverage::new(&[(3, 5), (9, 10)]);
    assert_eq!(c.take(3, 3), Ok(()));
    assert_eq!(c.take(9, 9), Err(gap(Some(4), Some(9))));
}

#[test]
fn journal_answer_out_of_order_or_repeated_is_refused() {
    let mut c = Coverage::new(&[(3, 5)]);
    assert_eq!(c.take(3, 3), Ok(()));
    assert_eq!(c.take(3, 3), Err(gap(Some(4), Some(3))));
}

#[test]
fn journal_answer_ending_early_is_refused_unless_capped_at_the_latest() {
    let mut c = Coverage::new(&[(3, 8)]);
    assert_eq!(c.take(3, 3), Ok(()));
    assert_eq!(c.take(4, 4), Ok(()));
    // The publisher is at 8: versions 5..=8 should have come.
    assert_eq!(c.end(8), Err(gap(Some(5), None)));
    // The publisher is at 4: the range was capped there, and all of it came.
    assert_eq!(c.end(4), Ok(()));
}

#[test]
fn updates_beyond_the_ranges_are_refused() {
    let mut c = Coverage::new(&[(3, 3)]);
    assert_eq!(c.take(3, 3), Ok(()));
    assert_eq!(c.take(4, 4), Err(gap(None, Some(4))));
}

#[test]
fn compacted_chunks_must_chain_from_the_first_version() {
    let mut c = Coverage::new(&[(10, 100)]);
    assert_eq!(c.take(10, 40), Ok(()));
    assert_eq!(c.take(41, 70), Ok(()));
    assert_eq!(c.take(71, 100), Ok(()));
    assert_eq!(c.end(120), Ok(()));
}

#[test]
fn compacted_chunk_after_a_trimmed_stretch_is_refused() {
    let mut c = Coverage::new(&[(10, 100)]);
    assert_eq!(c.take(10, 40), Ok(()));
    // The journal lost 41..=50 between chunks; the next chunk starts at 51.
    assert_eq!(c.take(51, 80), Err(gap(Some(41), Some(51))));
}

#[test]
fn compacted_first_chunk_must_start_at_the_first_version_asked() {
    let mut c = Coverage::new(&[(10, 100)]);
    assert_eq!(c.take(12, 40), Err(gap(Some(10), Some(12))));
}

#[test]
fn compacted_chunk_past_the_range_or_ending_before_it_starts_is_refused() {
    let mut c = Coverage::new(&[(10, 100)]);
    assert_eq!(c.take(10, 101), Err(gap(Some(10), Some(10))));
    assert_eq!(c.take(10, 9), Err(gap(Some(10), Some(10))));
}

#[test]
fn compacted_answer_ending_short_is_refused_unless_capped_at_the_latest() {
    let mut c = Coverage::new(&[(10, 100)]);
    assert_eq!(c.take(10, 40), Ok(()));
    assert_eq!(c.end(100), Err(gap(Some(41), None)));
    assert_eq!(c.end(40), Ok(()));
}
