//! The intake's decisions, sans-IO: which version each commit gets, what waits behind an
//! open two-phase round, and how many commits go into one journal transaction. The intake
//! thread (`intake.rs`) feeds it and does the I/O; no channel, thread or clock here.

use std::collections::{HashMap, HashSet, VecDeque};

/// Most commits grouped into one LMDB transaction.
pub(super) const MAX_GROUP: usize = 1024;
/// Most encoded bytes grouped into one LMDB transaction.
pub(super) const MAX_GROUP_BYTES: usize = 64 << 20;

/// What kind of request an intake item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A one-phase commit of this many encoded bytes.
    Commit { bytes: usize },
    /// A two-phase update asking to open a round.
    Prepare,
    /// A request answered once every commit before it is journaled.
    Flush,
}

/// An item the sequencer orders: its database (none for a flush) and its kind.
pub(super) trait Sequenced {
    /// The database it belongs to; `None` for items of no database.
    fn database(&self) -> Option<&str>;
    /// What it asks for.
    fn kind(&self) -> Kind;
}

/// What to do next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step<T> {
    /// One-phase commits to journal in one transaction, in order.
    Batch(Vec<T>),
    /// A two-phase update or a flush, after every commit taken before it.
    Alone(T),
}

/// Versions per database, items held behind open rounds, and batching.
#[derive(Debug)]
pub(super) struct Sequencer<T> {
    /// The latest version taken per database (absent: the committed version).
    taken: HashMap<String, u64>,
    /// Two-phase rounds are told apart by their PREPARE's timestamp, kept strictly rising.
    last_round: u64,
    /// Databases with an open two-phase round.
    rounds: HashSet<String>,
    /// What arrived for a database with an open round, in order.
    held: HashMap<String, VecDeque<T>>,
    /// Taken from the intake (or released by a decision), not yet handled.
    ready: VecDeque<T>,
}

impl<T> Default for Sequencer<T> {
    fn default() -> Self {
        Sequencer {
            taken: HashMap::new(),
            last_round: 0,
            rounds: HashSet::new(),
            held: HashMap::new(),
            ready: VecDeque::new(),
        }
    }
}

impl<T> Sequencer<T> {
    /// Whether something waits to be handled without pulling more.
    pub(super) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Queues an item that arrived.
    pub(super) fn push(&mut self, item: T) {
        self.ready.push_back(item);
    }

    /// The next version of `database` (not yet taken); `committed` is its latest committed
    /// version, used until the sequencer took one.
    pub(super) fn next_version(&self, database: &str, committed: u64) -> u64 {
        self.taken.get(database).copied().unwrap_or(committed) + 1
    }

    /// Takes the next version of `database`.
    pub(super) fn take_version(&mut self, database: &str, committed: u64) -> u64 {
        let v = self.next_version(database, committed);
        self.taken.insert(database.to_owned(), v);
        v
    }

    /// Forgets every version taken: after a failed journal commit the versions go back, and
    /// the next ones continue from what is committed.
    pub(super) fn give_back_versions(&mut self) {
        self.taken.clear();
    }

    /// A round timestamp for a PREPARE at wall-clock `now_us`, strictly above the last.
    pub(super) fn round_timestamp(&mut self, now_us: u64) -> u64 {
        self.last_round = now_us.max(self.last_round + 1);
        self.last_round
    }

    /// Holds what comes for `database` until [`close_round`](Self::close_round).
    pub(super) fn open_round(&mut self, database: &str) {
        self.rounds.insert(database.to_owned());
    }

    /// Ends the round of `database`: `committed` is its version if it committed (taken
    /// then), `None` if aborted (the version goes back). What waited behind it comes first.
    pub(super) fn close_round(&mut self, database: &str, committed: Option<u64>) {
        self.rounds.remove(database);
        if let Some(v) = committed {
            self.taken.insert(database.to_owned(), v);
        }
        for item in self.held.remove(database).into_iter().flatten().rev() {
            self.ready.push_front(item);
        }
    }

    /// Whether any round is open.
    pub(super) fn has_open_rounds(&self) -> bool {
        !self.rounds.is_empty()
    }

    /// The next step: what is ready, then what `pull` yields (until it yields `None`),
    /// grouped into at most [`MAX_GROUP`] commits or [`MAX_GROUP_BYTES`]. Items of a database
    /// with an open round are held back. `None` when nothing is to be done.
    pub(super) fn poll(&mut self, mut pull: impl FnMut() -> Option<T>) -> Option<Step<T>>
    where
        T: Sequenced,
    {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while batch.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
            let Some(item) = self.ready.pop_front().or_else(&mut pull) else {
                break;
            };
            if let Some(db) = item.database().filter(|d| self.rounds.contains(*d)) {
                self.held.entry(db.to_owned()).or_default().push_back(item);
                continue;
            }
            match item.kind() {
                Kind::Commit { bytes: b } => {
                    bytes += b;
                    batch.push(item);
                }
                // A two-phase update or a flush waits for the commits taken before it.
                Kind::Prepare | Kind::Flush if !batch.is_empty() => {
                    self.ready.push_front(item);
                    break;
                }
                Kind::Prepare | Kind::Flush => return Some(Step::Alone(item)),
            }
        }
        (!batch.is_empty()).then_some(Step::Batch(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    struct Item(Option<&'static str>, Kind, u32);

    impl Sequenced for Item {
        fn database(&self) -> Option<&str> {
            self.0
        }
        fn kind(&self) -> Kind {
            self.1
        }
    }

    fn commit(db: &'static str, id: u32) -> Item {
        Item(Some(db), Kind::Commit { bytes: 10 }, id)
    }

    fn ids(step: Option<Step<Item>>) -> Vec<u32> {
        match step {
            Some(Step::Batch(v)) => v.into_iter().map(|i| i.2).collect(),
            Some(Step::Alone(i)) => vec![i.2],
            None => vec![],
        }
    }

    #[test]
    fn versions_continue_from_the_committed_one_and_go_back_after_a_failure() {
        let mut s = Sequencer::<Item>::default();
        assert_eq!(s.take_version("a", 7), 8);
        assert_eq!(s.take_version("a", 7), 9);
        assert_eq!(s.take_version("b", 0), 1);
        assert_eq!(s.next_version("a", 7), 10, "next_version takes nothing");
        s.give_back_versions();
        assert_eq!(s.take_version("a", 7), 8);
    }

    #[test]
    fn round_timestamps_rise_strictly_even_when_the_clock_does_not() {
        let mut s = Sequencer::<Item>::default();
        assert_eq!(s.round_timestamp(100), 100);
        assert_eq!(s.round_timestamp(100), 101);
        assert_eq!(s.round_timestamp(50), 102);
        assert_eq!(s.round_timestamp(500), 500);
    }

    #[test]
    fn a_prepare_or_flush_ends_the_batch_before_it_and_comes_alone() {
        let mut s = Sequencer::default();
        s.push(commit("a", 1));
        s.push(commit("b", 2));
        s.push(Item(Some("a"), Kind::Prepare, 3));
        s.push(commit("b", 4));
        s.push(Item(None, Kind::Flush, 5));
        assert_eq!(ids(s.poll(|| None)), vec![1, 2]);
        assert_eq!(ids(s.poll(|| None)), vec![3]);
        assert_eq!(ids(s.poll(|| None)), vec![4]);
        assert_eq!(ids(s.poll(|| None)), vec![5]);
        assert_eq!(ids(s.poll(|| None)), Vec::<u32>::new());
    }

    #[test]
    fn an_open_round_holds_its_database_only_until_it_closes() {
        let mut s = Sequencer::default();
        s.open_round("a");
        s.push(commit("a", 1));
        s.push(commit("b", 2));
        s.push(commit("a", 3));
        assert_eq!(ids(s.poll(|| None)), vec![2]);
        assert!(!s.has_ready() && s.has_open_rounds());
        s.push(commit("b", 4));
        s.close_round("a", Some(5));
        assert_eq!(
            s.take_version("a", 0),
            6,
            "the committed round's version is taken"
        );
        assert_eq!(ids(s.poll(|| None)), vec![1, 3, 4], "held ones first");
    }

    #[test]
    fn an_aborted_round_gives_its_version_back() {
        let mut s = Sequencer::<Item>::default();
        s.open_round("a");
        assert_eq!(s.next_version("a", 3), 4);
        s.close_round("a", None);
        assert_eq!(s.take_version("a", 3), 4);
    }

    #[test]
    fn batches_stop_at_the_group_limit_and_pull_only_what_fits() {
        let mut s = Sequencer::default();
        let mut source = (0..MAX_GROUP as u32 + 5).map(|i| commit("a", i));
        let first = ids(s.poll(|| source.next()));
        assert_eq!(first.len(), MAX_GROUP);
        assert_eq!(source.len(), 5, "nothing pulled beyond the group");
        assert_eq!(ids(s.poll(|| source.next())).len(), 5);
        let mut s = Sequencer::default();
        s.push(Item(
            Some("a"),
            Kind::Commit {
                bytes: MAX_GROUP_BYTES,
            },
            1,
        ));
        s.push(commit("a", 2));
        assert_eq!(ids(s.poll(|| None)), vec![1], "the byte limit ends a group");
        assert_eq!(ids(s.poll(|| None)), vec![2]);
    }
}
