//! The subscriber's hash resync: used when the journal no longer reaches back to the
//! replica's version, and on demand (a store restored from a backup, copied from another
//! replica, or edited behind mcsync's back).
//!
//! 1. The publisher snapshots the content hashes of what this user may read (version `V`).
//! 2. The subscriber recomputes its own from the data itself and compares range digests,
//!    descending only where they differ ([`ResyncPlanner`]).
//! 3. It fetches the records that differ or are missing, and deletes the ones the
//!    publisher does not have (absence, never tombstones, marks a deletion).
//! 4. It fetches the journal after `V`, and applies everything in one LMDB transaction,
//!    so readers see the old consistent state until the new one commits, and the replica
//!    then equals the master at the last version applied.

use crate::net::repair_client::RepairClient;
use crate::proto::resync::{
    key_hash, HashIndex, Range, ResyncPlanner, ResyncStep, FULL_SUM_BYTES, MAX_FETCH_PER_REQUEST,
    SHORT_SUM_BYTES,
};
use crate::store::subscriber::ReplicaTables;
use crate::store::subscriber::ResyncDelivery;
use crate::store::SubscriberStore;
use crate::wire::update::{decode_update, Limits};
use crate::{Error, Op, Result, Update};
use std::collections::HashMap;

/// What a resync found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResyncReport {
    /// Version the replica is at afterwards (or, for a check, the publisher's snapshot).
    pub version: u64,
    /// The replica's version before.
    pub previous_version: u64,
    /// The replica was empty: this was a full copy.
    pub full_copy: bool,
    /// Records fetched (changed or added at the publisher).
    pub fetched: u64,
    /// Records deleted (absent at the publisher).
    pub deleted: u64,
    /// Journal updates applied after the snapshot.
    pub journal_updates: u64,
    /// Smallest key-hash ranges found to differ.
    pub differing_ranges: Vec<Range>,
    /// Control-channel bytes exchanged (both directions, digests, lists, records, journal).
    pub bytes: u64,
    /// Records in the replica and at the publisher when compared.
    pub local_records: u64,
    /// Records at the publisher (visible to this user) in the snapshot.
    pub remote_records: u64,
}

impl ResyncReport {
    /// Whether replica and publisher held the same records when compared.
    pub fn in_agreement(&self) -> bool {
        self.differing_ranges.is_empty()
    }
}

/// The outcome of [`run`]: the report and, when applied, what the callback should see.
pub(crate) struct Resynced {
    pub report: ResyncReport,
    /// What the host sees, already kept as pending in the resync's transaction: one update
    /// at the version the resync reached, holding the changes and then the operations of
    /// the journal updates after the snapshot (or, when nothing differed, those journal
    /// updates one by one). Empty unless [`HostDelivery::Changes`].
    pub shown: Vec<Update>,
}

/// What a resync hands the host of the subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostDelivery {
    /// No host is listening (a one-shot resync): the next subscribe finds the delivery
    /// log incomplete and catches its host up from the journal, or resets it.
    Nobody,
    /// The changes and the journal tail, kept for delivery like applied updates.
    Changes,
    /// The whole state (the history changed): the caller hands the host a reset.
    Reset,
}

/// Compares the replica with the publisher and, if `apply` says how to tell the host,
/// makes it equal.
/// `filter` enforces access groups on journal updates (as the live path does).
pub(crate) fn run(
    store: &SubscriberStore,
    name: &str,
    tables: ReplicaTables,
    client: &mut RepairClient,
    limits: &Limits,
    apply: Option<HostDelivery>,
    filter: &dyn Fn(&mut [Update]) -> Vec<Update>,
) -> Result<Resynced> {
    let (sent0, recv0) = client.bytes();
    let (planner, mut report, by_hash) = compare(store, name, tables, client)?;
    let version = report.version;
    let Some(delivery) = apply else {
        let (s, r) = client.bytes();
        report.bytes = (s - sent0) + (r - recv0);
        return Ok(Resynced {
            report,
            shown: Vec::new(),
        });
    };
    let mut puts = Vec::new();
    for chunk in planner.to_fetch().chunks(MAX_FETCH_PER_REQUEST) {
        client.fetch(chunk, |op| puts.push(op))?;
    }
    let deletes: Vec<Vec<u8>> = planner
        .to_delete()
        .iter()
        .filter_map(|kh| by_hash.get(kh).cloned())
        .collect();
    let mut journal = journal_tail(client, version, limits)?;
    let shown_journal = filter(&mut journal);
    let new_version = journal.last().map_or(version, |u| u.version.max(version));
    let shown = shown_updates(&deletes, &puts, shown_journal, new_version);
    let keep = match delivery {
        HostDelivery::Nobody => ResyncDelivery::Keep(&[]),
        HostDelivery::Changes => ResyncDelivery::Keep(&shown),
        HostDelivery::Reset => ResyncDelivery::Reset,
    };
    store.apply_resync(name, tables, &deletes, &puts, &journal, new_version, keep)?;
    report.fetched = puts.len() as u64;
    report.deleted = deletes.len() as u64;
    report.journal_updates = journal.len() as u64;
    report.version = new_version;
    let (s, r) = client.bytes();
    report.bytes = (s - sent0) + (r - recv0);
    Ok(Resynced { report, shown })
}

/// Walks the publisher's hash tree against the replica's content hashes: what differs,
/// and the report so far (at the snapshot's version).
fn compare(
    store: &SubscriberStore,
    name: &str,
    tables: ReplicaTables,
    client: &mut RepairClient,
) -> Result<(ResyncPlanner, ResyncReport, HashMap<u64, Vec<u8>>)> {
    let (previous_version, local) = store.content_hashes(name, tables)?;
    let mut by_hash: HashMap<u64, Vec<u8>> = HashMap::with_capacity(local.len());
    let mut entries = Vec::with_capacity(local.len());
    for (k, h) in local {
        let kh = key_hash(&k);
        entries.push((kh, h));
        by_hash.insert(kh, k);
    }
    let local_records = entries.len() as u64;
    let (version, root) = client.resync_begin()?;
    let index = HashIndex::new(entries);
    let mut planner = walk(client, &index, root, SHORT_SUM_BYTES)?;
    if !planner.verified() {
        // Short sums hid a difference (odds about 2^-24 per range compared): the whole
        // comparison again, with full sums.
        log::warn!(
            "resync of {name:?}: short digests missed a difference; comparing again with full digests"
        );
        planner = walk(client, &index, root, FULL_SUM_BYTES)?;
        if !planner.verified() {
            return Err(Error::Protocol(
                "resync: the publisher's digests and lists contradict its root digest".into(),
            ));
        }
    }
    let report = ResyncReport {
        version,
        previous_version,
        full_copy: local_records == 0,
        differing_ranges: planner.differing_ranges().to_vec(),
        local_records,
        remote_records: u64::from(root.count),
        ..ResyncReport::default()
    };
    Ok((planner, report, by_hash))
}

/// One comparison of the replica's `index` against the publisher's tree, with sums of
/// `sum_bytes` bytes.
fn walk(
    client: &mut RepairClient,
    index: &HashIndex,
    root: crate::proto::resync::Digest,
    sum_bytes: u8,
) -> Result<ResyncPlanner> {
    let mut planner = ResyncPlanner::new(index.clone(), root, sum_bytes);
    while let Some(step) = planner.poll() {
        match step {
            ResyncStep::Digests(ranges) => {
                let d = client.digests(&ranges, sum_bytes)?;
                planner.on_digests(&ranges, &d).map_err(Error::Protocol)?;
            }
            ResyncStep::List(ranges) => {
                let entries = client.list(&ranges)?;
                planner.on_list(&ranges, &entries);
            }
        }
    }
    Ok(planner)
}

/// Whatever was published since the snapshot, from the journal: applied in the same
/// transaction (keys fetched may already hold newer values; replaying the journal after
/// them leaves every key at its value of the last version).
fn journal_tail(client: &mut RepairClient, version: u64, limits: &Limits) -> Result<Vec<Update>> {
    let current = client.hello()?.current_version;
    let mut journal = Vec::new();
    if current > version {
        client.catch_up(&[(version + 1, current)], |bytes| {
            journal.push(decode_update(bytes, limits)?);
            Ok(())
        })?;
    }
    // The tail must continue the snapshot without a hole (the client checked the answer
    // against the range asked for; this holds the applied list to the same rule): a
    // skipped version would leave the replica claiming a version whose changes it lacks.
    if let Some((i, u)) = journal
        .iter()
        .enumerate()
        .find(|&(i, u)| u.version != version + 1 + i as u64)
    {
        return Err(Error::Protocol(format!(
            "resync journal tail after snapshot version {version} is not contiguous: \
             expected version {}, received {}",
            version + 1 + i as u64,
            u.version
        )));
    }
    Ok(journal)
}

/// What the host is shown of a resync. Fetched puts keep their access groups, so a host
/// (or a relay re-publishing them) keeps each record's restriction.
fn shown_updates(
    deletes: &[Vec<u8>],
    puts: &[Op],
    shown_journal: Vec<Update>,
    new_version: u64,
) -> Vec<Update> {
    let mut ops: Vec<Op> = deletes.iter().cloned().map(Op::delete).collect();
    ops.extend(puts.iter().cloned());
    // The fetched values are the publisher's current ones, possibly newer than the
    // snapshot: the changes alone are no master state, only together with the journal
    // after the snapshot. So the host gets them as one update at the version reached (as
    // a compacted catch-up does), and a host that records each update's version with it
    // never holds a table the master did not have at that version.
    if ops.is_empty() {
        shown_journal
    } else {
        ops.extend(shown_journal.into_iter().flat_map(|u| u.ops));
        vec![Update {
            version: new_version,
            timestamp_us: 0,
            ops,
            reset: false,
        }]
    }
}
