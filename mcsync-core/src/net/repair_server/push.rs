//! Unicast push targets as registrations come and go: a HELLO that names a UDP port makes
//! the address of its control connection plus that port a target of its database (within
//! the database's limit); every way a registration ends (close, expiry, revocation, an
//! authenticator's refusal) removes its target under the registry lock.

use super::{PublishedDatabase, ServerContext, SubscriberRecord};
use crate::stats::inc;
use crate::sync::RwLocked;
use crate::wire::control::Push;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

impl ServerContext {
    /// Removes the registrations `gone` says, with their push targets; returns them.
    /// Called with the registry locked (`reg`), so a re-registration of the same id
    /// cannot add its target back between the two.
    pub(super) fn remove_where(
        &self,
        reg: &mut HashMap<u64, SubscriberRecord>,
        gone: impl Fn(&SubscriberRecord) -> bool,
    ) -> Vec<SubscriberRecord> {
        let ids: Vec<u64> = reg.values().filter(|r| gone(r)).map(|r| r.id).collect();
        let removed: Vec<SubscriberRecord> = ids.iter().filter_map(|id| reg.remove(id)).collect();
        if removed.iter().any(|r| r.push.is_some()) {
            let dbs = self.databases.read_locked();
            for r in removed.iter().filter(|r| r.push.is_some()) {
                if let Some(t) = dbs.get(&r.database).and_then(|d| d.push_targets()) {
                    t.remove(r.id);
                }
            }
            drop(dbs);
            self.count_targets();
        }
        removed
    }

    /// Sets the `unicast_targets` gauge to the targets of every database.
    pub(super) fn count_targets(&self) {
        let n: usize = self
            .databases
            .read_locked()
            .values()
            .filter_map(|d| d.push_targets())
            .map(|t| t.len())
            .sum();
        self.counters
            .unicast_targets
            .store(n as u64, Ordering::Relaxed);
    }
}

/// Registration `id` of `user` asked for push to `want` (or not, `None`): adds, moves or
/// removes its target in `db`. Returns what HELLO_OK says and the target granted.
pub(super) fn apply_push(
    ctx: &ServerContext,
    db: &dyn PublishedDatabase,
    id: u64,
    user: &str,
    want: Option<SocketAddr>,
) -> (Push, Option<SocketAddr>) {
    let targets = db.push_targets();
    let Some(addr) = want else {
        if targets.is_some_and(|t| t.remove(id)) {
            ctx.count_targets();
        }
        return (Push::NotAsked, None);
    };
    let refuse = |why: String| {
        log::warn!(
            "database {:?}: unicast push to {addr} for user {user:?} refused: {why}; it \
             catches up by polling",
            db.name()
        );
        inc(&ctx.counters.unicast_refused);
        (Push::Refused, None)
    };
    let Some(t) = targets else {
        return refuse("this publisher does not push this database".into());
    };
    match t.insert(id, addr) {
        Ok(()) => {
            ctx.count_targets();
            (Push::Pushing, Some(addr))
        }
        Err(full) => refuse(format!(
            "the database is pushed to max_unicast_targets = {} subscribers already",
            full.limit
        )),
    }
}
