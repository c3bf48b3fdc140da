//! Starting a subscription: registration, the stored history and delivery state, the
//! receive thread and the process thread with its engine.

use super::driver::{self, Driver};
use super::{keyring_from, SubShared, UpdateCallback, VoteCallback};
use crate::config::SubscriberConfig;
use crate::net::receive::{self, Inbound, ReceiveParts};
use crate::net::repair_client::{ClientIdentity, RepairClient};
use crate::net::tls::ClientTls;
use crate::net::{socket, StopFlag};
use crate::proto::subscription::{history_changed, Engine, EngineConfig, EngineStart};
use crate::proto::{Delivery, DeliveryStart, LossGenerator, ReceiverConfig, ReorderConfig};
use crate::stats::SubscriptionCounters;
use crate::store::SubscriberStore;
use crate::sync::Locked;
use crate::wire::control::DatabaseInfo;
use crate::wire::control::Outcome;
use crate::wire::update::Limits;
use crate::{Error, Result, Update};
use crossbeam_channel as chan;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::Instant;

/// Who a control-channel client is, as `cfg` says.
pub(super) fn identity(cfg: &SubscriberConfig) -> Result<ClientIdentity> {
    Ok(ClientIdentity {
        server: cfg.server,
        tls: ClientTls::new(&cfg.trust, cfg.server, cfg.server_name.as_deref())?,
        user: cfg.user.clone(),
        secret: cfg.secret.clone(),
        client_name: cfg.client_name.clone(),
    })
}

/// A control-channel client for database `name` as `cfg` says.
pub(super) fn client_for(cfg: &SubscriberConfig, name: &str) -> Result<RepairClient> {
    let identity = identity(cfg)?;
    let max_frame =
        (cfg.max_update_bytes + 1024).max(crate::wire::control::MAX_LIST_ENTRIES * 16 + 64);
    Ok(RepairClient::new(
        identity,
        name,
        cfg.repair_io_timeout,
        max_frame,
    ))
}

/// A registration made by HELLO, closed (CLOSE SUBSCRIPTION) if it is dropped before the
/// process thread takes its client.
struct Registration(Option<RepairClient>);

impl Registration {
    fn client(&mut self) -> &mut RepairClient {
        self.0.as_mut().expect("the client stays until taken")
    }

    fn take(mut self) -> RepairClient {
        self.0.take().expect("taken once")
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            if let Err(e) = c.close_subscription() {
                log::debug!("closing a registration after a failed subscribe: {e}");
            }
        }
    }
}

/// Starts a subscription: registers, plans what the host is owed, and starts the receive
/// and process threads. (Long: it assembles the parts the two threads share, in order.)
pub(super) fn start(
    cfg: &SubscriberConfig,
    store: &Arc<SubscriberStore>,
    name: &str,
    callback: Option<UpdateCallback>,
    participant: Option<Option<VoteCallback>>,
    after: Option<u64>,
) -> Result<Arc<SubShared>> {
    let tables = store.tables(name)?;
    let applied = store.applied_version(name)?;
    let kept = store.delivery_state(name)?;
    let (mut reg, info, stored_incarnation) =
        register(cfg, store, name, applied, participant.is_some())?;
    let held = restore_prepared(store, name, applied, reg.client())?;
    let delivery = Delivery::plan(DeliveryStart {
        applied: kept.applied,
        delivered: kept.delivered,
        pending_complete: kept.pending_complete,
        reset_owed: kept.reset_owed,
        after,
        master_version: info.current_version,
        has_callback: callback.is_some(),
    });
    let counters = Arc::new(SubscriptionCounters::default());
    counters
        .key_epoch
        .store(u64::from(info.key_epoch()), Ordering::Relaxed);
    let shared = Arc::new(SubShared {
        name: name.to_owned(),
        store: store.clone(),
        tables,
        counters: counters.clone(),
        version: Mutex::new(applied.min(delivery.delivered)),
        registered_version: info.current_version,
        auth_error: Mutex::new(None),
        latency: Default::default(),
        force_resync: AtomicBool::new(false),
        advanced: Condvar::new(),
        failure: Mutex::new(None),
        stop: StopFlag::default(),
        threads: Mutex::new(Vec::new()),
        process_thread: OnceLock::new(),
    });
    driver::note_push(name, &info, &counters);
    let (tx, rx) = chan::bounded(cfg.channel_capacity);
    // Unicast-only: the push socket the HELLO named, instead of joining the group.
    let (sock, granted) = match reg.client().take_push_socket() {
        Some(s) => s,
        None => socket::receiver_socket(info.group, cfg.interface, cfg.recv_buffer_bytes)?,
    };
    let push = if cfg.unicast {
        Some(
            sock.local_addr()
                .map_err(|e| Error::io("push socket address", e))?,
        )
    } else {
        None
    };
    counters
        .recv_buffer_bytes
        .store(granted as u64, Ordering::Relaxed);
    let parts = ReceiveParts {
        database: name.to_owned(),
        socket: sock,
        source: Arc::new(Mutex::new(cfg.verify_source.then_some(info.source))),
        keyring: Arc::new(RwLock::new(keyring_from(&info))),
        rekey: Arc::new(AtomicBool::new(false)),
        leave: Arc::new(AtomicBool::new(false)),
        group: info.group,
        interface: cfg.interface,
        unicast: cfg.unicast,
        loss: cfg.loss.as_ref().map(LossGenerator::new),
        counters,
        stop: shared.stop.clone(),
    };
    let reset_floor = if kept.rebuilt {
        after.unwrap_or(kept.delivered).min(info.current_version)
    } else {
        0
    };
    let now = Instant::now();
    let driver = Driver {
        engine: Engine::new(
            now,
            engine_config(cfg),
            EngineStart {
                applied,
                incarnation: stored_incarnation,
                registration: info,
                participant: participant.is_some(),
                held,
            },
        ),
        shared: shared.clone(),
        leave: parts.leave.clone(),
        vote: participant.flatten(),
        source: parts.source.clone(),
        keyring: parts.keyring.clone(),
        rekey: parts.rekey.clone(),
        callback,
        delivered_durable: delivery.delivered,
        reset_floor,
        delivery,
        last_flush: now,
        limits: Limits {
            max_update_bytes: cfg.max_update_bytes,
        },
        interface: cfg.interface,
        warned_silent: false,
        push,
        journal_in_flight: false,
        journal_retry_at: now,
    };
    spawn_threads(&shared, parts, tx, driver, reg.take(), rx)?;
    Ok(shared)
}

/// Starts the receive thread and the process thread (stopping the first if the second
/// cannot start).
fn spawn_threads(
    shared: &Arc<SubShared>,
    parts: ReceiveParts,
    tx: chan::Sender<Inbound>,
    driver: Driver,
    client: RepairClient,
    rx: chan::Receiver<Inbound>,
) -> Result<()> {
    let recv = receive::spawn(parts, tx).map_err(|e| Error::io("spawning receive thread", e))?;
    let s2 = shared.clone();
    let process = std::thread::Builder::new()
        .name(format!("mcsync-proc-{}", shared.name))
        .spawn(move || {
            let _ = s2.process_thread.set(std::thread::current().id());
            driver::run(driver, client, rx)
        });
    let process = match process {
        Ok(h) => h,
        Err(e) => {
            shared.stop.stop();
            let _ = recv.join();
            return Err(Error::io("spawning process thread", e));
        }
    };
    shared.threads.locked().extend([recv, process]);
    Ok(())
}

/// Registers with the publisher, records the registration's id, and joins its history if
/// the replica has none yet. Returns the registration (closed again if the start fails),
/// what it said, and the history the replica had.
fn register(
    cfg: &SubscriberConfig,
    store: &SubscriberStore,
    name: &str,
    applied: u64,
    participant: bool,
) -> Result<(Registration, DatabaseInfo, u64)> {
    let mut client = client_for(cfg, name)?;
    client.set_participant(participant);
    if cfg.unicast {
        client.set_unicast(cfg.recv_buffer_bytes);
    }
    client.set_subscriber_id(store.subscriber_id(name)?);
    let info = client.hello()?;
    // From here on a failure must not leave the registration behind at the publisher (a
    // participant's would stall every two-phase round until its timeout).
    let mut reg = Registration(Some(client));
    if info.subscriber_id != store.subscriber_id(name)? {
        store.set_subscriber_id(name, info.subscriber_id)?;
    }
    let stored_incarnation = store.incarnation(name)?;
    if stored_incarnation == 0 && history_changed(0, applied, &info).is_none() {
        // A new replica (or one from before incarnations) joins this history.
        store.set_incarnation(name, info.incarnation)?;
    }
    // Requests go to the history registered with; a changed one is resynced against first.
    reg.client().expect_incarnation(info.incarnation);
    Ok((reg, info, stored_incarnation))
}

/// A prepared two-phase update kept from before a restart: held again if its round is
/// still pending, forgotten otherwise.
fn restore_prepared(
    store: &SubscriberStore,
    name: &str,
    applied: u64,
    client: &mut RepairClient,
) -> Result<Option<Update>> {
    let Some(p) = store.prepared(name)? else {
        return Ok(None);
    };
    if p.version > applied && client.outcome(p.version, p.timestamp_us)? == Outcome::Pending {
        return Ok(Some(p));
    }
    store.clear_prepared(name)?;
    Ok(None)
}

/// The engine's configuration from the subscriber's.
fn engine_config(cfg: &SubscriberConfig) -> EngineConfig {
    let limits = Limits {
        max_update_bytes: cfg.max_update_bytes,
    };
    // A compacted chunk must fit in one update.
    let compactable = limits.max_update_bytes >= 2 * crate::net::repair_server::COMPACT_CHUNK_BYTES;
    EngineConfig {
        receiver: ReceiverConfig {
            buffer_bytes: cfg.reorder_buffer_bytes,
            repair_delay: cfg.repair_delay,
            repair_retry: cfg.repair_retry,
            max_ranges: 64,
        },
        reorder: ReorderConfig {
            repair_delay: cfg.repair_delay,
            max_bytes: cfg.reorder_buffer_bytes,
            max_ranges: 64,
        },
        limits,
        compact_after: compactable.then_some(cfg.compact_catch_up_after),
        silence_timeout: cfg.silence_timeout,
        report_interval: cfg.report_interval,
        error_threshold: cfg.error_threshold,
        unicast_backoff: cfg.unicast_backoff,
    }
}
