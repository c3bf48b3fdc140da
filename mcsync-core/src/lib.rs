//! mcsync: one-to-many database replication. A publisher sends each committed update once,
//! sealed with AES-256-GCM, over IP multicast; every subscriber applies it to its own LMDB
//! replica and repairs what it missed over a unicast channel from the publisher's journal.
//!
//! Start with [`Publisher::open`] and [`Subscriber::open`]. `docs/PROTOCOL.md` describes
//! the wire format; DESIGN section numbers in comments refer to the project design.

#![warn(missing_docs)]

pub mod auth;
pub mod config;
pub mod crypto;
mod error;
pub mod net;
pub mod proto;
mod publisher;
mod resync;
pub mod stats;
pub mod store;
mod subscriber;
mod update;
pub mod wire;

pub use auth::{Authenticator, Grant, Secret};
pub use config::{
    Authentication, LossConfig, MulticastConfig, PublisherConfig, Retention, Schedule,
    SubscriberConfig,
};
pub use crypto::Key;
pub use error::{Error, ErrorKind, Result};
pub use net::tls::{ServerIdentity, ServerTrust};
pub use publisher::{Database, Prepared, Publisher, Transaction};
pub use resync::ResyncReport;
pub use stats::{PublisherStats, SubscriptionStats};
pub use subscriber::{Subscriber, Subscription, UpdateCallback, VoteCallback};
pub use update::{Op, OpKind, Update};

/// A record: key and value.
pub type Record = (Vec<u8>, Vec<u8>);
