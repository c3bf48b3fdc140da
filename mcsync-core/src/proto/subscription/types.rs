//! The engine's vocabulary: its configuration, inputs, outputs, timers and counters.

use crate::proto::receiver::{ReceiverConfig, RepairRanges};
use crate::proto::reorder::{OpenPacket, ReorderConfig};
use crate::update::Update;
use crate::wire::control::{DatabaseInfo, Outcome, SubscriberReport};
use crate::wire::update::Limits;
use std::time::Duration;

/// What an engine is configured with (from `SubscriberConfig`).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Version order, gap detection and repair timing.
    pub receiver: ReceiverConfig,
    /// Packet order and packet repair timing.
    pub reorder: ReorderConfig,
    /// Largest update accepted.
    pub limits: Limits,
    /// A first missing range longer than this is fetched compacted (latest value per
    /// changed key); `None` never compacts.
    pub compact_after: Option<u64>,
    /// Silence after which the subscriber registers again.
    pub silence_timeout: Duration,
    /// How often loss is measured and reported.
    pub report_interval: Duration,
    /// Loss rate above which the error policy acts.
    pub error_threshold: f64,
    /// How long a subscriber losing too much stays off multicast.
    pub unicast_backoff: Duration,
}

/// What a subscription starts from.
#[derive(Debug, Clone)]
pub struct EngineStart {
    /// The replica's version.
    pub applied: u64,
    /// The history the replica belongs to (0: none recorded yet).
    pub incarnation: u64,
    /// The registration the subscription starts with.
    pub registration: DatabaseInfo,
    /// Whether it votes on two-phase updates.
    pub participant: bool,
    /// A prepared two-phase update kept from before a restart and still pending.
    pub held: Option<Update>,
}

/// Counts the receive side keeps (cumulative), fed with [`Input::Traffic`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Authentic packets received by multicast.
    pub received: u64,
    /// Of those, dropped by the configured loss generator (they never arrived).
    pub injected_drops: u64,
    /// Packets of a key epoch not yet known: repaired later, but not lost by the network.
    pub unknown_epoch_drops: u64,
    /// Packets from an unexpected source (the publisher may have moved).
    pub foreign_source: u64,
    /// Whether a packet of a key epoch not yet known arrived since the last registration.
    pub unknown_epoch: bool,
}

/// How a catch-up ([`Output::CatchUp`] or [`Output::Compact`]) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairEnd {
    /// Everything asked for was sent; the publisher is at `current_version`.
    Done {
        /// The publisher's latest version when it finished.
        current_version: u64,
    },
    /// The journal no longer reaches back that far.
    Trimmed,
    /// The publisher refused (the versions may not exist).
    Refused,
    /// The connection failed part-way.
    Failed,
}

/// Something that happened, fed to [`Engine::handle`].
#[derive(Debug)]
pub enum Input {
    /// An authenticated, replay-checked packet from multicast.
    Packet(OpenPacket),
    /// The receive side's counts.
    Traffic(Traffic),
    /// A registration (answer to [`Output::Hello`]).
    Registered(Box<DatabaseInfo>),
    /// A registration failed (`auth`: the publisher refused the credentials).
    RegisterFailed {
        /// Whether it was an authentication refusal.
        auth: bool,
    },
    /// The publisher's latest version (answer to [`Output::Status`]).
    Current(u64),
    /// Packets fetched from the retransmit buffer (answer to [`Output::FetchPackets`]);
    /// `ok` is false when the fetch failed part-way.
    PacketsRepaired {
        /// The packets that came back, authenticated.
        packets: Vec<OpenPacket>,
        /// Whether the fetch completed.
        ok: bool,
    },
    /// One update of a catch-up or compacted catch-up, in order.
    Repaired(Update),
    /// The catch-up ended.
    RepairDone(RepairEnd),
    /// A hash resync (answer to [`Output::Resync`]) made the replica equal to the
    /// publisher at this version.
    Resynced {
        /// The version the replica is now at.
        version: u64,
    },
    /// A hash resync failed (other than by a storage failure, which stops the driver).
    ResyncFailed,
    /// The publisher's history changed (another incarnation).
    HistoryChanged(u64),
    /// The host asked for a resync.
    ResyncRequested,
    /// The durable prepared copy is deleted (answer to [`Output::Forget`]).
    Forgotten,
    /// The host's vote on a prepared update (answer to [`Output::Check`]).
    Checked {
        /// The prepared version.
        version: u64,
        /// Agreed, or why not.
        verdict: Result<(), String>,
    },
    /// The coordinator took the vote on this round (answer to [`Output::Vote`]). It may
    /// arrive after a later round of the same version was prepared, so it names its round
    /// and what the vote said.
    VoteSent {
        /// The prepared version.
        version: u64,
        /// The round (the PREPARE's timestamp).
        round: u64,
        /// Whether the vote was PREPARED.
        prepared: bool,
    },
    /// What became of a round whose vote was not taken.
    Outcome {
        /// The prepared version.
        version: u64,
        /// The round.
        round: u64,
        /// What became of it.
        state: Outcome,
    },
}

/// Something the driver must do, from [`Engine::poll`].
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Apply these updates, in order, in one transaction (and deliver them to the host).
    Apply(Vec<Update>),
    /// Register again; answer with [`Input::Registered`] or [`Input::RegisterFailed`].
    Hello,
    /// Send this report (the driver fills in the latency figures).
    Report(SubscriberReport),
    /// Ask the publisher's latest version; answer with [`Input::Current`] (or nothing).
    Status,
    /// Leave (or rejoin) the multicast group; `loss` is the loss rate that decided it.
    Membership {
        /// Leave (`true`) or rejoin.
        leave: bool,
        /// The loss rate measured.
        loss: f64,
    },
    /// Fetch these packets from the publisher's retransmit buffer; answer with
    /// [`Input::PacketsRepaired`].
    FetchPackets {
        /// The stream they belong to.
        stream: u32,
        /// Inclusive sequence ranges.
        ranges: Vec<(u64, u64)>,
    },
    /// Fetch these versions from the journal; answer with [`Input::Repaired`] per update,
    /// then [`Input::RepairDone`].
    CatchUp(RepairRanges),
    /// Fetch versions `from..=through` compacted; answered like [`Output::CatchUp`].
    Compact {
        /// First version.
        from: u64,
        /// Last version.
        through: u64,
    },
    /// Resync by content hashes; answer with [`Input::Resynced`] or
    /// [`Input::ResyncFailed`]. With `new_history`, the replica adopts that history: the
    /// driver resyncs against it, records it, and owes the host the whole state.
    Resync {
        /// The history to adopt, if it changed.
        new_history: Option<u64>,
    },
    /// Delete the durable prepared copy; answer with [`Input::Forgotten`].
    Forget,
    /// Acknowledge a two-phase decision.
    Ack {
        /// The decided version.
        version: u64,
        /// The round.
        round: u64,
    },
    /// Ask the host's vote on this prepared update and keep it durably if it agrees;
    /// answer with [`Input::Checked`].
    Check {
        /// The prepared version.
        version: u64,
        /// The prepared update (as received; the driver applies access groups).
        update: Update,
    },
    /// Send a vote; answer with [`Input::VoteSent`], or with [`Input::Outcome`] if it was
    /// not taken.
    Vote {
        /// The prepared version.
        version: u64,
        /// The round.
        round: u64,
        /// PREPARED or REFUSED.
        prepared: bool,
        /// Why it was refused.
        reason: String,
    },
}

/// The engine's timers; [`Engine::poll_timeout`] is the earliest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// A packet hole waits for its repair delay.
    PacketRepair,
    /// A version gap waits for its repair delay or retry.
    Repair,
    /// A two-phase vote waits to be sent again.
    TwoPhase,
    /// Registering again is due (silence, rotated key, moved source).
    Hello,
    /// The next loss measurement and report.
    Report,
    /// The next STATUS poll while off multicast.
    StatusPoll,
    /// The next attempt to resync against a changed history.
    History,
}

/// Counters the engine keeps (cumulative).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineCounters {
    /// Packets of a stream the registration did not name.
    pub dropped_stream: u64,
    /// Heartbeats taken in order.
    pub heartbeats_received: u64,
    /// Packets with no chain to belong to.
    pub orphan_packets: u64,
    /// Chains dropped incomplete.
    pub chains_dropped: u64,
    /// Chains complete and decoded.
    pub chains_received: u64,
    /// Chains complete but undecodable.
    pub chains_invalid: u64,
    /// Registrations asked for after the first.
    pub resubscriptions: u64,
    /// Returns to multicast after a back-off.
    pub rejoins: u64,
    /// Back-offs to unicast.
    pub unicast_backoffs: u64,
    /// Report intervals in which nothing arrived by multicast while versions committed
    /// since joining the group came only by repair (counted as total loss: the group
    /// does not reach this subscriber's interface).
    pub multicast_silent_intervals: u64,
    /// Loss rate of the last interval, per million.
    pub loss_ppm: u64,
    /// Packets fetched back from the retransmit buffer.
    pub packets_repaired: u64,
    /// Packet repairs asked for.
    pub packet_repairs_requested: u64,
    /// Version repairs asked for.
    pub repairs_requested: u64,
    /// Catch-ups from the journal that completed.
    pub catchups_journal: u64,
    /// Compacted catch-ups that completed.
    pub catchups_compacted: u64,
    /// Repairs and resyncs that failed.
    pub repair_failures: u64,
    /// Histories adopted.
    pub history_changes: u64,
    /// Reports produced.
    pub reports: u64,
}
