//! What each engine was given, chain by chain: the simulation counts how the two-phase
//! records it took should be routed (a COMMIT_PREPARED of the held round applies the held
//! copy; one whose PREPARE never arrived is caught up from the journal; a PREPARE of a held
//! version replaces it), so the suite can show these paths ran. It only counts: whether the
//! engine routed them right shows in what the replicas apply.

use mcsync::wire::update::RecordKind;
use std::collections::HashSet;

/// One chain the publisher sent: its packets and its records (kind, version, round).
#[derive(Debug)]
pub struct ChainRecord {
    pub stream: u32,
    pub first: u64,
    pub last: u64,
    pub records: Vec<(RecordKind, u64, u64)>,
}

/// Routing counts of the chains taken.
#[derive(Debug, Default)]
pub struct Counts {
    pub applied_prepared: u64,
    pub commit_without_prepare: u64,
    pub prepare_replaced: u64,
}

/// One engine's view, in stream order: a chain is taken once all its packets were fed,
/// and given up once one of them is gone for good.
pub struct Shadow {
    stream: u32,
    /// First packet fed on `stream` (the engine's packet order starts there).
    start: Option<u64>,
    fed: HashSet<u64>,
    /// Next chain to look at.
    cursor: usize,
    /// The round held: (version, round).
    held: Option<(u64, u64)>,
}

impl Shadow {
    pub fn new(stream: u32, held: Option<(u64, u64)>) -> Shadow {
        Shadow {
            stream,
            start: None,
            fed: HashSet::new(),
            cursor: 0,
            held,
        }
    }

    /// A packet of `stream` (the engine's) was fed; `applied` is the replica's version.
    pub fn on_fed(
        &mut self,
        stream: u32,
        seq: u64,
        chains: &[ChainRecord],
        gone: &HashSet<(u32, u64)>,
        applied: u64,
    ) -> Counts {
        if stream != self.stream {
            // Registered again on a new stream: its packet order starts afresh.
            self.stream = stream;
            self.start = None;
            self.fed.clear();
        }
        let start = *self.start.get_or_insert(seq);
        self.fed.insert(seq);
        let mut counts = Counts::default();
        while let Some(c) = chains.get(self.cursor) {
            if c.stream != stream || c.first < start {
                self.cursor += 1;
                continue;
            }
            if (c.first..=c.last).all(|s| self.fed.contains(&s)) {
                for &(kind, v, round) in &c.records {
                    self.take(kind, v, round, applied, &mut counts);
                }
            } else if !(c.first..=c.last).any(|s| gone.contains(&(stream, s))) {
                // Still coming (or its repair failed: counted no further).
                break;
            }
            self.cursor += 1;
        }
        counts
    }

    fn take(&mut self, kind: RecordKind, v: u64, round: u64, applied: u64, n: &mut Counts) {
        let same = self.held == Some((v, round));
        match kind {
            RecordKind::Commit if self.held.is_some_and(|h| h.0 == v) => self.held = None,
            RecordKind::Commit => {}
            RecordKind::Prepare if v > applied && !same => {
                if self.held.is_some_and(|h| h.0 == v) {
                    n.prepare_replaced += 1;
                }
                self.held = Some((v, round));
            }
            RecordKind::Prepare => {}
            RecordKind::CommitPrepared if same => {
                self.held = None;
                n.applied_prepared += 1;
            }
            RecordKind::CommitPrepared if v > applied => n.commit_without_prepare += 1,
            RecordKind::CommitPrepared => {}
            RecordKind::Abort if same => self.held = None,
            RecordKind::Abort => {}
        }
    }
}
