//! mcsync: one-to-many database replication. A publisher sends each committed update once,
//! sealed with AES-256-GCM, over IP multicast; every subscriber applies it to its own LMDB
//! replica and repairs what it missed over a unicast channel from the publisher's journal.
//!
//! Start with [`Publisher::open`] and [`Subscriber::open`]. `docs/PROTOCOL.md` describes
//! the wire format; DESIGN section numbers in comments refer to the project design.
//!
//! # Example
//!
//! The same as in `README.md` (not run here: it needs writable directories and loopback
//! multicast).
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use mcsync::{Authentication, Grant, Publisher, PublisherConfig, ServerTrust, Subscriber,
//!              SubscriberConfig};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! // Publisher. Who may subscribe: by default the users file `<data_dir>/users` that
//! // `mcsync users add` writes; here an authenticator of the host's own.
//! let mut config = PublisherConfig::new("/var/lib/mcsync/pub");
//! config.authentication = Authentication::Custom(Arc::new(
//!     |user: &str, secret: &str, _peer: std::net::SocketAddr| match (user, secret) {
//!         ("reader", "s3cret") => Ok(Grant::all(&[])), // every database, no access groups
//!         _ => Err("unknown user or wrong password".to_string()),
//!     },
//! ));
//! let publisher = Publisher::open(config)?;
//! let fingerprint = publisher.fingerprint().unwrap().to_owned(); // give it to subscribers
//! let db = publisher.database("inventory")?;
//! let v = db.put("sku-1", "12 in stock")?; // durable in the journal, then multicast
//! // (`config.durability = Durability::Async` returns before the fsync: for update hooks)
//!
//! // Subscriber: pins the publisher's certificate and logs in.
//! let mut config = SubscriberConfig::new(
//!     "/var/lib/mcsync/sub",
//!     publisher.control_addr(),
//!     ServerTrust::Fingerprint(fingerprint),
//! );
//! config.user = "reader".into();
//! config.secret = "s3cret".into();
//! let subscriber = Subscriber::open(config)?;
//! let sub = subscriber.subscribe("inventory", |u| println!("applied version {}", u.version))?;
//! sub.wait_for_version(v, Duration::from_secs(5))?;
//! assert_eq!(sub.get("sku-1")?.as_deref(), Some(&b"12 in stock"[..]));
//!
//! // Two-phase: PREPARE, wait up to 5 s for every participant's vote, then COMMIT.
//! let mut t = db.transaction();
//! t.put("sku-1", "11 in stock")?;
//! let v2 = t.commit_two_phase(Duration::from_secs(5))?;
//! # let _ = v2;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod auth;
pub mod config;
pub mod crash;
pub mod crypto;
mod error;
pub mod metrics;
pub mod net;
pub mod proto;
mod publisher;
mod relay;
mod resync;
pub mod stats;
pub mod store;
mod subscriber;
pub mod sync;
mod update;
pub mod wire;

pub use auth::{Authenticator, Grant, Secret};
pub use config::{
    Authentication, Durability, LossConfig, MulticastConfig, PublisherConfig, ReplicaDurability,
    Retention, Schedule, SubscriberConfig, ASYNC_MAX_PENDING,
};
pub use crypto::Key;
pub use error::{Error, ErrorKind, Result};
pub use net::tls::{ServerIdentity, ServerTrust};
pub use publisher::{Database, Pending, PendingPrepare, Prepared, Publisher, Transaction};
pub use relay::{Relay, RelayConfig, RelayStats};
pub use resync::ResyncReport;
pub use stats::{PublisherStats, SubscriptionStats};
pub use subscriber::{SubscribeOptions, Subscriber, Subscription, UpdateCallback, VoteCallback};
pub use update::{Op, OpKind, Update};

/// A record: key and value.
pub type Record = (Vec<u8>, Vec<u8>);
