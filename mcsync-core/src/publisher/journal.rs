//! The journal: one durable LMDB transaction per group of staged updates, then the updates
//! to the multicasters; with `Durability::Async` a writer thread does it behind the intake.

use super::database::{send_mcast, DbShared};
use super::publisher_closed;
use crate::config::ASYNC_MAX_PENDING;
use crate::net::multicaster::{McastCmd, Outgoing};
use crate::stats::{add, inc, PublisherCounters};
use crate::store::publisher::JournalEntry;
use crate::store::PublisherStore;
use crate::sync::Locked;
use crate::{Error, Result, Update};
use crossbeam_channel as chan;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// An update with its version assigned, ready to journal.
pub(super) struct Staged {
    pub(super) db: Arc<DbShared>,
    pub(super) update: Update,
    pub(super) encoded: Arc<Vec<u8>>,
}

/// Journals staged updates in one durable LMDB transaction, then marks them committed and
/// hands them to the multicasters in version order.
pub(super) fn journal(
    staged: &[Staged],
    store: &PublisherStore,
    c: &PublisherCounters,
) -> Result<()> {
    let entries: Vec<JournalEntry<'_>> = staged
        .iter()
        .map(|s| JournalEntry {
            name: &s.db.name,
            tables: s.db.tables,
            update: &s.update,
            encoded: &s.encoded,
        })
        .collect();
    store.append(&entries)?;
    crate::crash::point("journal.after_commit");
    inc(&c.journal_commits);
    add(&c.updates_committed, staged.len() as u64);
    let enc_bytes: usize = staged.iter().map(|s| s.encoded.len()).sum();
    add(&c.bytes_committed, enc_bytes as u64);
    for s in staged {
        s.db.committed.store(s.update.version, Ordering::SeqCst);
        send_mcast(
            &s.db,
            McastCmd::Update(Outgoing {
                version: s.update.version,
                encoded: s.encoded.clone(),
            }),
        );
    }
    Ok(())
}

/// What the journal writer takes, in order.
enum WriterMsg {
    Journal(Vec<Staged>),
    /// Answer once everything before is journaled.
    Flush(chan::Sender<Result<()>>),
}

/// The journal writer of `Durability::Async`: a thread that group-commits what the intake
/// staged, then multicasts it. After a journal failure it journals nothing more, and every
/// later commit fails with the failure.
pub(super) struct JournalWriter {
    tx: Option<chan::Sender<WriterMsg>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<WriterShared>,
}

/// What the intake and the writer thread share.
#[derive(Default)]
struct WriterShared {
    /// The journal failure that stopped the writer.
    failed: Mutex<Option<String>>,
    /// Updates handed over and not yet journaled.
    pending: Mutex<usize>,
    drained: Condvar,
}

impl JournalWriter {
    pub(super) fn start(
        store: Arc<PublisherStore>,
        counters: Arc<PublisherCounters>,
    ) -> Result<Self> {
        let (tx, rx) = chan::unbounded();
        let shared = Arc::new(WriterShared::default());
        let s2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("mcsync-journal".into())
            .spawn(move || writer_loop(rx, &store, &counters, &s2))
            .map_err(|e| Error::io("spawning journal writer", e))?;
        Ok(JournalWriter {
            tx: Some(tx),
            thread: Some(thread),
            shared,
        })
    }

    /// The journal failure that stopped the writer, if any.
    pub(super) fn failure(&self) -> Option<String> {
        self.shared.failed.locked().clone()
    }

    /// Hands over staged updates; waits while [`ASYNC_MAX_PENDING`] are not yet journaled.
    pub(super) fn journal(&self, staged: Vec<Staged>) {
        let mut pending = self.shared.pending.locked();
        while *pending >= ASYNC_MAX_PENDING {
            pending = self
                .shared
                .drained
                .wait(pending)
                .unwrap_or_else(|e| e.into_inner());
        }
        *pending += staged.len();
        drop(pending);
        self.send(WriterMsg::Journal(staged));
    }

    fn send(&self, msg: WriterMsg) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(msg);
        }
    }

    /// Waits until everything handed over before is journaled.
    pub(super) fn flush(&self) -> Result<()> {
        let (tx, rx) = chan::bounded(1);
        self.send(WriterMsg::Flush(tx));
        rx.recv().map_err(|_| publisher_closed())?
    }
}

impl Drop for JournalWriter {
    /// Journals what is still queued, then stops the thread.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

fn writer_loop(
    rx: chan::Receiver<WriterMsg>,
    store: &PublisherStore,
    c: &PublisherCounters,
    shared: &WriterShared,
) {
    while let Ok(first) = rx.recv() {
        // Everything waiting goes into one transaction.
        let mut group = Vec::new();
        let mut flushes = Vec::new();
        for msg in std::iter::once(first).chain(rx.try_iter()) {
            match msg {
                WriterMsg::Journal(staged) => group.extend(staged),
                WriterMsg::Flush(reply) => flushes.push(reply),
            }
        }
        // (The lock is not held while journaling: the intake reads it for every commit.)
        let mut failure = shared.failed.locked().clone();
        if failure.is_some() {
            add(&c.commits_lost, group.len() as u64);
        } else if !group.is_empty() {
            if let Err(e) = journal(&group, store, c) {
                log::error!(
                    "journal commit of {} acknowledged updates failed; they are lost, and the \
                     publisher takes no more commits: {e}",
                    group.len()
                );
                add(&c.commits_lost, group.len() as u64);
                failure = Some(e.message());
                *shared.failed.locked() = failure.clone();
            }
        }
        for reply in flushes {
            let _ = reply.send(match &failure {
                None => Ok(()),
                Some(why) => Err(Error::Storage(format!("journal commit failed: {why}"))),
            });
        }
        *shared.pending.locked() -= group.len();
        shared.drained.notify_all();
    }
}
