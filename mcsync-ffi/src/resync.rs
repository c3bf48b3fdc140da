//! Reports of hash resyncs and verifications (`mcsync_subscriber_verify`,
//! `mcsync_subscriber_resync`): a struct C reads directly, allocated by mcsync so that the
//! list of differing ranges fits and fields can be added at the end without an ABI break.

use mcsync_core::ResyncReport;

/// A range of the key-hash space (keys are placed by a 64-bit hash of their bytes) whose
/// records differed between the replica and the publisher.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct mcsync_range {
    /// First key hash covered.
    pub lo: u64,
    /// Last key hash covered (inclusive).
    pub hi: u64,
    /// Depth in the range tree: 0 is the whole space; each level splits a range in 16.
    pub level: u8,
}

/// What a verification or resync found and did. Created by `mcsync_subscriber_verify` or
/// `mcsync_subscriber_resync`, freed by `mcsync_resync_report_free`. Read its fields
/// directly; do not modify them. Immutable, so thread-safe. New fields are only ever added
/// at the end.
#[repr(C)]
pub struct mcsync_resync_report {
    /// After a resync, the version the replica is at; after a verification, the version
    /// of the publisher's snapshot it was compared with.
    pub version: u64,
    /// The replica's version before (for a verification, when it was compared).
    pub previous_version: u64,
    /// The replica was empty: a resync was a full copy.
    pub full_copy: bool,
    /// The replica and the publisher held the same records when compared (no differing
    /// range). For a verification this is the answer; a resync made them equal either way.
    pub in_agreement: bool,
    /// Records fetched from the publisher (changed or missing in the replica); 0 for a
    /// verification.
    pub fetched: u64,
    /// Records deleted from the replica (absent at the publisher); 0 for a verification.
    pub deleted: u64,
    /// Journal updates applied after the publisher's snapshot; 0 for a verification.
    pub journal_updates: u64,
    /// Control-channel bytes exchanged, both directions.
    pub bytes: u64,
    /// Records in the replica when compared.
    pub local_records: u64,
    /// Records at the publisher visible to this subscriber's user, in the snapshot.
    pub remote_records: u64,
    /// The smallest key-hash ranges found to differ (`differing_ranges_len` entries; NULL
    /// when it is 0). Borrowed from the report: valid until `mcsync_resync_report_free`.
    pub differing_ranges: *const mcsync_range,
    /// Number of entries in `differing_ranges`.
    pub differing_ranges_len: usize,
}

/// The report C sees, followed by what its pointers point into.
#[repr(C)]
struct OwnedReport {
    report: mcsync_resync_report,
    ranges: Vec<mcsync_range>,
}

/// A new report for C to free with `mcsync_resync_report_free`.
pub(crate) fn report_to_c(r: &ResyncReport) -> *mut mcsync_resync_report {
    let ranges: Vec<mcsync_range> = r
        .differing_ranges
        .iter()
        .map(|d| mcsync_range {
            lo: d.lo,
            hi: d.hi(),
            level: d.level,
        })
        .collect();
    let owned = Box::new(OwnedReport {
        report: mcsync_resync_report {
            version: r.version,
            previous_version: r.previous_version,
            full_copy: r.full_copy,
            in_agreement: r.in_agreement(),
            fetched: r.fetched,
            deleted: r.deleted,
            journal_updates: r.journal_updates,
            bytes: r.bytes,
            local_records: r.local_records,
            remote_records: r.remote_records,
            differing_ranges: if ranges.is_empty() {
                std::ptr::null()
            } else {
                ranges.as_ptr()
            },
            differing_ranges_len: ranges.len(),
        },
        // Moving the Vec keeps its heap buffer where `differing_ranges` points.
        ranges,
    });
    // `report` is the first field of a repr(C) struct: the pointers are the same.
    Box::into_raw(owned).cast::<mcsync_resync_report>()
}

/// Frees a report (and its ranges). NULL is a no-op. Free each report exactly once.
#[no_mangle]
pub unsafe extern "C" fn mcsync_resync_report_free(report: *mut mcsync_resync_report) {
    ffi_panic_boundary! { on_panic = ();
        if !report.is_null() {
            // SAFETY: every report handed to C came from `report_to_c`.
            drop(Box::from_raw(report.cast::<OwnedReport>()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcsync_core::proto::Range;

    #[test]
    fn ranges_survive_the_move_and_free() {
        let r = ResyncReport {
            version: 9,
            previous_version: 4,
            differing_ranges: vec![Range { lo: 0, level: 1 }, Range::ROOT],
            ..ResyncReport::default()
        };
        let p = report_to_c(&r);
        let c = unsafe { &*p };
        assert_eq!((c.version, c.previous_version), (9, 4));
        assert!(!c.in_agreement);
        let ranges = unsafe { std::slice::from_raw_parts(c.differing_ranges, 2) };
        assert_eq!(ranges[0].hi, (1u64 << 60) - 1);
        assert_eq!(
            (ranges[1].lo, ranges[1].hi, ranges[1].level),
            (0, u64::MAX, 0)
        );
        unsafe { mcsync_resync_report_free(p) };

        let agreeing = report_to_c(&ResyncReport::default());
        let c = unsafe { &*agreeing };
        assert!(c.in_agreement && c.differing_ranges.is_null() && c.differing_ranges_len == 0);
        unsafe { mcsync_resync_report_free(agreeing) };
        unsafe { mcsync_resync_report_free(std::ptr::null_mut()) };
    }
}
