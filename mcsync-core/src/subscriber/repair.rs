//! The repairs the engine asks for, over the control channel: packets from the
//! retransmit buffer, versions from the journal (plain or compacted), and hash resync.

use super::driver::Driver;
use super::filter_updates;
use crate::net::repair_client::RepairClient;
use crate::proto::subscription::{Input, RepairEnd, APPLY_BATCH_BYTES};
use crate::proto::{Backlog, OpenPacket};
use crate::resync::{HostDelivery, ResyncReport};
use crate::stats::{add, inc, SubscriptionCounters};
use crate::sync::RwLocked;
use crate::wire::control::ErrorCode;
use crate::wire::packet::PacketHeader;
use crate::wire::update::decode_update;
use crate::{Error, ErrorKind, Result};
use std::time::Instant;

impl Driver {
    /// Fetches lost packets one by one from the publisher's retransmit buffer; whatever it
    /// no longer has is skipped, and the journal repairs those versions.
    pub fn fetch_packets(&mut self, client: &mut RepairClient, stream: u32, ranges: &[(u64, u64)]) {
        let c = self.shared.counters.clone();
        let mut datagrams = Vec::new();
        let ok = match client.fetch_packets(stream, ranges, |d| datagrams.push(d.to_vec())) {
            Ok((_got, _missing, bytes)) => {
                add(&c.packet_repair_bytes, bytes);
                true
            }
            Err(e) => {
                log::warn!("{}: packet repair failed: {e}", self.shared.name);
                false
            }
        };
        let mut packets = Vec::with_capacity(datagrams.len());
        let keyring = self.keyring.read_locked();
        for d in datagrams {
            let Ok((header, sealed)) = PacketHeader::parse(&d) else {
                inc(&c.dropped_malformed);
                continue;
            };
            match keyring.open(&header, sealed) {
                Ok(payload) if header.stream_id == stream => {
                    packets.push(OpenPacket { header, payload })
                }
                Ok(_) => inc(&c.dropped_malformed),
                Err(_) => inc(&c.dropped_auth),
            }
        }
        drop(keyring);
        let input = Input::PacketsRepaired { packets, ok };
        self.engine.handle(Instant::now(), input);
    }

    /// Fetches versions from the journal (`compacted`: that one range, latest value per
    /// changed key), applying as they arrive so a long catch-up neither holds everything in
    /// memory nor delays callbacks until the end. Only a storage failure is an error.
    pub fn catch_up(
        &mut self,
        client: &mut RepairClient,
        ranges: &[(u64, u64)],
        compacted: Option<(u64, u64)>,
    ) -> Result<()> {
        let limits = self.limits;
        let mut failed_apply = None;
        let mut on_bytes = |bytes: &[u8]| -> Result<()> {
            let u = decode_update(bytes, &limits)?;
            self.engine.handle(Instant::now(), Input::Repaired(u));
            if self.engine.buffered_bytes() > APPLY_BATCH_BYTES / 2
                || bytes.len() > APPLY_BATCH_BYTES / 2
            {
                while let Some(batch) = self.engine.poll_apply() {
                    if let Err(e) = self.apply(batch) {
                        failed_apply = Some(e.to_string());
                        return Err(e);
                    }
                }
            }
            Ok(())
        };
        let result = match compacted {
            Some((a, b)) => client.compact(a, b, &mut on_bytes),
            None => client.catch_up(ranges, &mut on_bytes),
        };
        if let Some(e) = failed_apply {
            return Err(Error::Storage(e));
        }
        let c = &self.shared.counters;
        let end = match result {
            Ok(out) => {
                add(&c.repair_updates, out.updates);
                add(&c.repair_bytes, out.bytes);
                RepairEnd::Done {
                    current_version: out.current_version,
                }
            }
            Err(_) if client.last_refusal() == Some(ErrorCode::Trimmed) => RepairEnd::Trimmed,
            Err(e) => {
                log::warn!("{}: repair of {ranges:?} failed: {e}", self.shared.name);
                if e.kind() == ErrorKind::Refused {
                    RepairEnd::Refused
                } else {
                    RepairEnd::Failed
                }
            }
        };
        self.engine.handle(Instant::now(), Input::RepairDone(end));
        Ok(())
    }

    /// Hash resync (the journal no longer reaches back, one was asked for, or the history
    /// changed): makes the replica equal to the publisher's state, then continues from
    /// there. With a new history the replica adopts it, and the host is owed the whole
    /// state (a reset) instead of the changes. Only a storage failure is an error.
    pub fn resync(&mut self, client: &mut RepairClient, new_history: Option<u64>) -> Result<()> {
        let name = self.shared.name.clone();
        if let Some(new) = new_history {
            log::warn!(
                "{name}: the publisher's history changed (incarnation {new:016x}, replica at \
                 version {} of {:016x}); resyncing",
                self.engine.applied(),
                self.engine.incarnation()
            );
            client.expect_incarnation(new);
        }
        let c = self.shared.counters.clone();
        let groups = self.engine.groups().to_vec();
        let filter = |b: &mut [crate::Update]| filter_updates(&groups, &c, b);
        // A host ahead of the replica holds a state the changes are not relative to: it
        // gets the whole state too.
        let host_ahead = self.delivery.skip_through > self.engine.applied();
        let host = match (self.callback.is_some(), new_history.is_some() || host_ahead) {
            (false, _) => HostDelivery::Nobody,
            (true, false) => HostDelivery::Changes,
            (true, true) => HostDelivery::Reset,
        };
        let out = crate::resync::run(
            &self.shared.store,
            &name,
            self.shared.tables,
            client,
            &self.limits,
            Some(host),
            &filter,
        );
        let done = match out {
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
        count_resync(&c, &name, &done.report);
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
