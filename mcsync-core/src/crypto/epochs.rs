//! The publisher's keys of one database across rotations: the current epoch, and the
//! previous one for a bounded grace. Sans-IO: the time is passed in.

use super::Key;
use std::time::{Duration, Instant};

/// How long the previous epoch's key is still handed out after the multicaster sealed its
/// last packet under it. A replica that registers in this window can still open those
/// packets (late on the network, or repaired from the retransmit buffer); one that
/// registers later repairs them from the journal instead.
pub const PREVIOUS_KEY_GRACE: Duration = Duration::from_secs(10);

/// The previous epoch, kept while packets sealed under it may still be in flight.
#[derive(Debug)]
struct Previous {
    epoch: u32,
    key: Key,
    /// First sequence number sealed under the current epoch (`None` until the multicaster
    /// switched): every packet under this epoch is below it.
    below: Option<u64>,
    /// When the multicaster sealed its last packet under this epoch.
    drained_at: Option<Instant>,
}

/// What a registration is given.
#[derive(Debug, Clone)]
pub struct KeyHandout {
    /// `(epoch, key)`, oldest first; the last is current.
    pub keys: Vec<(u32, Key)>,
    /// Keys older than the current one open only packets below this sequence number
    /// (`u64::MAX`: the multicaster has not switched yet).
    pub older_below: u64,
}

/// One database's keys at the publisher.
#[derive(Debug)]
pub struct EpochKeys {
    current: (u32, Key),
    previous: Option<Previous>,
}

impl EpochKeys {
    /// Keys starting at `epoch`.
    pub fn new(epoch: u32, key: Key) -> EpochKeys {
        EpochKeys {
            current: (epoch, key),
            previous: None,
        }
    }

    /// The current (newest) epoch.
    pub fn current_epoch(&self) -> u32 {
        self.current.0
    }

    /// Makes `epoch` current; the current one becomes the previous, with no bound until the
    /// multicaster reports its switch. Epochs only go forward: an older or equal one is
    /// ignored (returns false).
    pub fn rotate(&mut self, epoch: u32, key: Key) -> bool {
        if epoch <= self.current.0 {
            return false;
        }
        let (old_epoch, old_key) = std::mem::replace(&mut self.current, (epoch, key));
        self.previous = Some(Previous {
            epoch: old_epoch,
            key: old_key,
            below: None,
            drained_at: None,
        });
        true
    }

    /// The multicaster seals under `epoch` from sequence number `first_seq` on.
    pub fn switched(&mut self, epoch: u32, first_seq: u64) {
        if epoch == self.current.0 {
            if let Some(p) = &mut self.previous {
                p.below.get_or_insert(first_seq);
            }
        }
    }

    /// The multicaster sealed its last packet under the epochs older than `epoch` at `now`.
    pub fn drained(&mut self, epoch: u32, now: Instant) {
        if epoch == self.current.0 {
            if let Some(p) = &mut self.previous {
                if p.below.is_some() {
                    p.drained_at.get_or_insert(now);
                }
            }
        }
    }

    /// The keys a registration at `now` gets: the current one, and the previous one until
    /// [`PREVIOUS_KEY_GRACE`] after its last packet, with its bound.
    pub fn handout(&self, now: Instant) -> KeyHandout {
        let mut keys = Vec::with_capacity(2);
        let mut older_below = u64::MAX;
        if let Some(p) = &self.previous {
            let expired = p
                .drained_at
                .is_some_and(|at| now.saturating_duration_since(at) >= PREVIOUS_KEY_GRACE);
            if !expired {
                keys.push((p.epoch, p.key.clone()));
                older_below = p.below.unwrap_or(u64::MAX);
            }
        }
        keys.push(self.current.clone());
        KeyHandout { keys, older_below }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epochs(h: &KeyHandout) -> Vec<u32> {
        h.keys.iter().map(|k| k.0).collect()
    }

    #[test]
    fn the_previous_key_is_handed_out_with_its_bound_for_a_bounded_grace() {
        let t0 = Instant::now();
        let mut k = EpochKeys::new(3, Key::generate());
        assert_eq!(epochs(&k.handout(t0)), vec![3]);
        assert!(k.rotate(4, Key::generate()));
        // Not switched yet: both keys, no bound.
        let h = k.handout(t0);
        assert_eq!((epochs(&h), h.older_below), (vec![3, 4], u64::MAX));
        k.switched(4, 120);
        k.drained(4, t0 + Duration::from_secs(1));
        let h = k.handout(t0 + Duration::from_secs(5));
        assert_eq!((epochs(&h), h.older_below), (vec![3, 4], 120));
        let h = k.handout(t0 + Duration::from_secs(1) + PREVIOUS_KEY_GRACE);
        assert_eq!((epochs(&h), h.older_below), (vec![4], u64::MAX));
    }

    #[test]
    fn epochs_never_go_back_and_stale_reports_are_ignored() {
        let t0 = Instant::now();
        let mut k = EpochKeys::new(3, Key::generate());
        assert!(k.rotate(5, Key::generate()));
        assert!(!k.rotate(4, Key::generate()));
        assert!(!k.rotate(5, Key::generate()));
        assert_eq!(k.current_epoch(), 5);
        // A report about an epoch that is no longer current changes nothing.
        k.switched(4, 10);
        k.drained(4, t0);
        let h = k.handout(t0 + PREVIOUS_KEY_GRACE * 2);
        assert_eq!((epochs(&h), h.older_below), (vec![3, 5], u64::MAX));
        // A drain before the switch is not a drain.
        k.drained(5, t0);
        k.switched(5, 40);
        let h = k.handout(t0 + PREVIOUS_KEY_GRACE * 2);
        assert_eq!((epochs(&h), h.older_below), (vec![3, 5], 40));
    }
}
