//! Sans-IO state machines: no sockets, clocks, threads or files. Time and input are passed
//! in; output is returned. The `net` module drives them; the simulation tests drive them
//! with a virtual clock and a seeded lossy network.

pub mod adapt;
pub mod assembler;
pub mod chain;
pub mod delivery;
pub mod heartbeat;
pub mod loss;
pub mod pacer;
pub mod range_set;
pub mod receiver;
pub mod reorder;
pub mod replay;
pub mod resync;
pub mod retransmit;
pub mod sender;
pub mod subscription;
pub mod two_phase;

pub use assembler::{Assembled, Chain, ChainAssembler, ChainDrop};
pub use chain::{ChainBuilder, PlainPacket};
pub use delivery::{Backlog, Delivery, DeliveryStart};
pub use heartbeat::HeartbeatTimer;
pub use loss::LossGenerator;
pub use pacer::Pacer;
pub use range_set::RangeSet;
pub use receiver::{Receiver, ReceiverConfig, ReceiverCounters, RepairRanges};
pub use reorder::{OpenPacket, PacketReorder, ReorderConfig, ReorderCounters};
pub use replay::ReplayWindow;
pub use resync::{HashIndex, Range, ResyncPlanner, ResyncStep};
pub use retransmit::RetransmitBuffer;
pub use sender::{decode_chain, decode_chain_records, Sender, SenderConfig, SenderCounters};
pub use two_phase::{
    Action as TwoPhaseAction, DecisionRepeat, Participant, ParticipantCounters, Round, Route,
    VoteFailure,
};
