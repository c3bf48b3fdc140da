//! Hash resync as the process thread sees it: asked for, and what its end changes (the
//! history, the host's delivery). The control worker (`control.rs`) runs it, and the
//! other repairs (packets, journal catch-up) whose answers the engine takes directly.

use super::control::{Control, Job};
use super::driver::Driver;
use crate::proto::subscription::Input;
use crate::proto::Backlog;
use crate::resync::{HostDelivery, ResyncReport, Resynced};
use crate::stats::{add, inc, SubscriptionCounters};
use crate::{ErrorKind, Result};
use std::time::Instant;

impl Driver {
    /// Asks the control worker for a hash resync (the journal no longer reaches back, one
    /// was asked for, or the history changed). With a new history the replica adopts it,
    /// and the host is owed the whole state (a reset) instead of the changes.
    pub fn request_resync(&mut self, control: &Control, new_history: Option<u64>) {
        if let Some(new) = new_history {
            log::warn!(
                "{}: the publisher's history changed (incarnation {new:016x}, replica at \
                 version {} of {:016x}); resyncing",
                self.shared.name,
                self.engine.applied(),
                self.engine.incarnation()
            );
        }
        // A host ahead of the replica holds a state the changes are not relative to: it
        // gets the whole state too.
        let host_ahead = self.delivery.skip_through > self.engine.applied();
        let host = match (self.callback.is_some(), new_history.is_some() || host_ahead) {
            (false, _) => HostDelivery::Nobody,
            (true, false) => HostDelivery::Changes,
            (true, true) => HostDelivery::Reset,
        };
        control.send(Job::Resync {
            new_history,
            host,
            groups: self.engine.groups().to_vec(),
        });
    }

    /// A hash resync ended: the replica equals the publisher's state, and goes on from
    /// there. Only a storage failure is an error.
    pub fn resynced(
        &mut self,
        new_history: Option<u64>,
        host: HostDelivery,
        result: Result<Resynced>,
    ) -> Result<()> {
        let name = self.shared.name.clone();
        let done = match result {
            Ok(done) => done,
            Err(e) => {
                log::warn!("{name}: resync failed: {e}");
                if e.kind() == ErrorKind::Storage {
                    self.fail(&e);
                    return Err(e);
                }
                self.engine.handle(Instant::now(), Input::ResyncFailed);
                return Ok(());
            }
        };
        if let Some(new) = new_history {
            self.shared
                .store
                .set_incarnation(&name, new)
                .inspect_err(|e| self.fail(e))?;
        }
        count_resync(&self.shared.counters, &name, &done.report);
        let version = done.report.version;
        self.engine
            .handle(Instant::now(), Input::Resynced { version });
        match host {
            HostDelivery::Nobody => self.delivery.on_delivered(version),
            HostDelivery::Reset => {
                // Another history: the reset is at whatever version it reached.
                self.reset_floor = 0;
                self.delivery.on_history_changed()
            }
            // Kept in the resync's transaction; delivered now unless older ones are owed.
            HostDelivery::Changes if self.delivery.backlog == Backlog::Clear => {
                self.deliver(&done.shown);
            }
            HostDelivery::Changes => {}
        }
        self.announce();
        Ok(())
    }
}

/// Counts and logs a resync that committed.
fn count_resync(c: &SubscriptionCounters, name: &str, r: &ResyncReport) {
    inc(if r.full_copy {
        &c.catchups_full_copy
    } else {
        &c.catchups_resync
    });
    add(&c.resync_bytes, r.bytes);
    add(&c.resync_fetched, r.fetched);
    add(&c.resync_deleted, r.deleted);
    add(&c.updates_applied, r.journal_updates);
    inc(&c.apply_commits);
    log::info!(
        "{name}: resync to version {} ({} fetched, {} deleted, {} bytes)",
        r.version,
        r.fetched,
        r.deleted,
        r.bytes
    );
}
