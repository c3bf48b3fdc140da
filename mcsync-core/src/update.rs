//! Updates: one committed master transaction, the unit that is replicated, applied and
//! called back.

/// What an operation does to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Set the key to the value.
    Put,
    /// Remove the key (a no-op if absent).
    Delete,
}

/// One put or delete inside an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Put or delete.
    pub kind: OpKind,
    /// The record key (non-empty).
    pub key: Vec<u8>,
    /// The value; empty for a delete.
    pub value: Vec<u8>,
    /// Access groups allowed to read the record; empty means everyone.
    pub groups: Vec<String>,
}

impl Op {
    /// A put of `value` at `key`, readable by everyone.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Op {
        Op {
            kind: OpKind::Put,
            key: key.into(),
            value: value.into(),
            groups: Vec::new(),
        }
    }

    /// A delete of `key`.
    pub fn delete(key: impl Into<Vec<u8>>) -> Op {
        Op {
            kind: OpKind::Delete,
            key: key.into(),
            value: Vec::new(),
            groups: Vec::new(),
        }
    }

    /// Bytes this op occupies in an encoded update (used for size limits).
    pub fn encoded_len(&self) -> usize {
        crate::wire::update::op_encoded_len(self)
    }
}

/// One committed master transaction of one database: its version and its operations,
/// in the order the host issued them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// The master version this update produces; versions of a database are 1, 2, 3, ...
    pub version: u64,
    /// When the publisher committed it, microseconds since the Unix epoch.
    pub timestamp_us: u64,
    /// The operations.
    pub ops: Vec<Op>,
    /// Only in what a subscription hands its host, never on the wire: this update
    /// **replaces the host's whole state**. `ops` are puts of every record the replica
    /// holds at `version`, each with the record's access groups; the host drops everything else it kept from this database
    /// first. Sent when the updates after the host's version can no longer be delivered
    /// one by one (the journal no longer reaches back that far) and when the master's
    /// history changed (a publisher restored from an older copy); see
    /// [`SubscribeOptions::after`](crate::SubscribeOptions::after).
    pub reset: bool,
}

impl Update {
    /// Bytes of keys and values (what batches of updates are bounded by).
    pub(crate) fn data_bytes(&self) -> usize {
        self.ops.iter().map(|o| o.key.len() + o.value.len()).sum()
    }
}
