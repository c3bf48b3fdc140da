//! Journal answers against a real LMDB store, with retention trimming the journal
//! between two reads of one answer (the `before_read` hook), as it may on a live
//! publisher while a long catch-up is being streamed.
use super::journal::*;
use super::*;
use crate::config::Retention;
use crate::net::frame::read_message;
use crate::store::publisher::journal_ops;
use crate::wire::control::{ErrorCode, Message};
use crate::wire::update::peek_version;
use crate::Op;

const DB: &str = "db";

/// A store holding versions `1..=n` of `DB`, each putting one ~100-byte record.
fn journal(n: u64) -> (tempfile::TempDir, PublisherStore, DbTables) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = PublisherStore::open(dir.path(), 16 << 20).expect("store");
    journal_ops(&store, DB, 1..=n, |v| {
        Op::put(format!("k{}", v % 4), vec![v as u8; 100])
    });
    let tables = store.tables(DB).expect("tables");
    // Retention never trims past the state's version: let the state catch up first.
    store.apply_journal().expect("apply");
    (dir, store, tables)
}

/// Trims the journal so that it keeps only its newest `keep` versions.
fn trim_to(store: &PublisherStore, tables: DbTables, keep: u64) {
    let policy = Retention {
        max_bytes: 0,
        max_age: Duration::from_secs(3600),
        min_count: keep,
        min_free_disk_bytes: 0,
    };
    store
        .trim_journal(DB, tables, &policy, 0, usize::MAX)
        .expect("trim");
}

/// The frames written, parsed.
fn frames(mut bytes: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some((m, _)) = read_message(&mut bytes, 1 << 20).expect("frame") {
        out.push(m);
    }
    out
}

/// Runs `f` with a journal source reading `batch_updates` per read (or chunks of about
/// three updates when compacting), trimming the journal to its newest `keep` versions
/// just before the read that starts at `trim_at`.
fn with_source<T>(
    store: &PublisherStore,
    tables: DbTables,
    batch_updates: usize,
    trim_at: Option<(u64, u64)>,
    f: impl FnOnce(&mut JournalSource<'_>) -> T,
) -> T {
    let counters = PublisherCounters::default();
    // Every update of `journal` encodes to the same size: three fit a read, four do not.
    let one = store
        .read_journal(tables, 1, 1, 1, usize::MAX)
        .expect("read")[0]
        .1
        .len();
    let mut hook = |next: u64| {
        if let Some((at, keep)) = trim_at {
            if next == at {
                trim_to(store, tables, keep);
            }
        }
    };
    let mut src = JournalSource {
        store,
        tables,
        counters: &counters,
        batch_updates,
        batch_bytes: 3 * one + one / 2,
        before_read: &mut hook,
    };
    f(&mut src)
}

fn is_trimmed(r: &std::result::Result<Message, Message>) -> bool {
    matches!(
        r,
        Err(Message::Error {
            code: ErrorCode::Trimmed,
            ..
        })
    )
}

#[test]
fn connection_deadlines_follow_the_phase() {
    let t = Instant::now();
    let c = ConnState::new(t);
    // Before HELLO the deadline counts from the accept, whatever the client sends.
    assert_eq!(c.deadline(), Some(t + HELLO_DEADLINE));
    c.enter(CHECKING, t + Duration::from_secs(3));
    assert_eq!(
        c.deadline(),
        None,
        "checking a HELLO is the server's own work"
    );
    c.enter(WAITING_HELLO, t + Duration::from_secs(4));
    assert_eq!(
        c.deadline(),
        Some(t + HELLO_DEADLINE),
        "a refused HELLO gains nothing"
    );
    // Authenticated: idle for IDLE_TIMEOUT in all after the last answer.
    c.enter(IDLE, t + Duration::from_secs(5));
    assert_eq!(
        c.deadline(),
        Some(t + Duration::from_secs(5) + IDLE_TIMEOUT)
    );
    c.enter(BUSY, t + Duration::from_secs(6));
    assert_eq!(
        c.deadline(),
        None,
        "a request being served is bounded by its writes"
    );
    c.enter(IDLE, t + Duration::from_secs(100));
    assert_eq!(
        c.deadline(),
        Some(t + Duration::from_secs(100) + IDLE_TIMEOUT)
    );
}

#[test]
fn eviction_takes_connections_waiting_for_hello_first_oldest_first() {
    let t = Instant::now();
    let at = |s: u64, phase: u8| {
        let c = ConnState::new(t + Duration::from_secs(s));
        c.enter(phase, t + Duration::from_secs(s + 1));
        c
    };
    let conns = [
        at(0, IDLE),
        at(1, CHECKING),
        at(2, WAITING_HELLO),
        at(3, BUSY),
        at(4, WAITING_HELLO),
    ];
    let order = |cs: &[ConnState]| {
        let mut ranked: Vec<(usize, (u8, Instant))> = cs
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Some((i, c.eviction_rank()?)))
            .collect();
        ranked.sort_by_key(|&(_, r)| r);
        ranked.into_iter().map(|(i, _)| i).collect::<Vec<_>>()
    };
    assert_eq!(order(&conns), vec![2, 4, 1]);
}

#[test]
fn compacted_chunks_name_their_first_version_and_cover_the_range() {
    let (_dir, store, tables) = journal(10);
    let mut out = Vec::new();
    let r = with_source(&store, tables, usize::MAX, None, |src| {
        compact_from(src, 10, 1, 10, &mut out)
    });
    assert_eq!(
        r,
        Ok(Message::CatchupEnd {
            current_version: 10
        })
    );
    let chunks: Vec<(u64, u64)> = frames(&out)
        .into_iter()
        .map(|m| match m {
            Message::CompactUpdate { first, update } => {
                (first, peek_version(&update).expect("version"))
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(chunks, vec![(1, 3), (4, 6), (7, 9), (10, 10)]);
}

#[test]
fn compaction_trimmed_between_chunks_answers_trimmed() {
    let (_dir, store, tables) = journal(10);
    let mut out = Vec::new();
    // Versions 1..=5 go just before the second chunk (4..) is read: before the fix
    // the second chunk started at 6 and claimed to cover 4..=8.
    let r = with_source(&store, tables, usize::MAX, Some((4, 5)), |src| {
        compact_from(src, 10, 1, 10, &mut out)
    });
    assert!(is_trimmed(&r), "{r:?}");
    let sent = frames(&out);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        matches!(&sent[0], Message::CompactUpdate { first: 1, update }
        if peek_version(update).ok() == Some(3))
    );
}

#[test]
fn catch_up_trimmed_between_reads_answers_trimmed() {
    let (_dir, store, tables) = journal(10);
    let mut out = Vec::new();
    let r = with_source(&store, tables, 3, Some((4, 5)), |src| {
        catch_up_from(src, 10, &[(1, 10)], &mut out)
    });
    assert!(is_trimmed(&r), "{r:?}");
    let versions: Vec<u64> = frames(&out)
        .into_iter()
        .map(|m| match m {
            Message::CatchupUpdate(b) => peek_version(&b).expect("version"),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(versions, vec![1, 2, 3], "nothing after the trimmed version");
}

#[test]
fn a_later_range_trimmed_meanwhile_answers_trimmed() {
    let (_dir, store, tables) = journal(10);
    let mut out = Vec::new();
    // The second range (5..=6) loses version 5 while the first is being sent.
    let r = with_source(&store, tables, 512, Some((5, 5)), |src| {
        catch_up_from(src, 10, &[(1, 2), (5, 6)], &mut out)
    });
    assert!(is_trimmed(&r), "{r:?}");
    assert_eq!(frames(&out).len(), 2, "versions 1 and 2 only");
}

#[test]
fn catch_up_untouched_sends_every_version_of_every_range() {
    let (_dir, store, tables) = journal(10);
    let mut out = Vec::new();
    let r = with_source(&store, tables, 3, None, |src| {
        catch_up_from(src, 10, &[(2, 4), (6, 12)], &mut out)
    });
    assert_eq!(
        r,
        Ok(Message::CatchupEnd {
            current_version: 10
        })
    );
    let versions: Vec<u64> = frames(&out)
        .into_iter()
        .map(|m| match m {
            Message::CatchupUpdate(b) => peek_version(&b).expect("version"),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(versions, vec![2, 3, 4, 6, 7, 8, 9, 10]);
}
