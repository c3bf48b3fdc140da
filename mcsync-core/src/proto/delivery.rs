//! Delivery to the host: which updates a subscription still owes its host's callback, and
//! from where they come.
//!
//! Applied is not delivered. The replica is at `applied`; the host's callbacks returned up
//! to `delivered` (a durable cursor); the store keeps what the host is to see of every
//! update in between. At subscribe the host may say which version it holds itself
//! (`after`, stored in its own transaction): it then gets exactly the updates after it.
//! This module decides, without I/O, what is owed and in which order:
//!
//! 1. a reset (the whole state) when the history changed or nothing reaches back to the
//!    host's version;
//! 2. otherwise the journal's updates the local store no longer keeps, fetched from the
//!    publisher;
//! 3. then the kept updates, in version order;
//! 4. then live updates as they are applied.
//!
//! Updates at or below the host's version that the replica applies later (a host ahead of
//! its replica) are applied without a callback.

/// What the subscription knows about delivery when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryStart {
    /// Version the replica is at.
    pub applied: u64,
    /// Version up to which callbacks returned (durable cursor).
    pub delivered: u64,
    /// Whether every update in (delivered, applied] is kept locally.
    pub pending_complete: bool,
    /// A reset is owed from before (a history change whose reset was not yet handed over).
    pub reset_owed: bool,
    /// The host's own version, if it gave one.
    pub after: Option<u64>,
    /// The publisher's latest version at registration.
    pub master_version: u64,
    /// Whether a host callback exists (without one nothing is delivered).
    pub has_callback: bool,
}

/// What is owed before live updates may be called back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backlog {
    /// Nothing: live updates go to the callback as they are applied.
    Clear,
    /// Hand the host the whole state at the replica's version.
    Reset,
    /// Fetch versions `from..=through` from the publisher's journal and call them back
    /// (they are already applied), then continue with the kept updates.
    Journal {
        /// First version to fetch.
        from: u64,
        /// Last version to fetch.
        through: u64,
    },
    /// Call back the kept updates after the delivered cursor.
    Kept,
}

/// The delivery plan of one subscription: the cursor and what is owed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Version up to which the host has been called back (in memory; the store lags).
    pub delivered: u64,
    /// Updates up to this version are applied without a callback (the host has them).
    pub skip_through: u64,
    /// What is owed before live updates.
    pub backlog: Backlog,
}

impl Delivery {
    /// Decides what is owed at subscribe.
    pub fn plan(s: DeliveryStart) -> Delivery {
        if !s.has_callback {
            return Delivery {
                delivered: s.applied,
                skip_through: 0,
                backlog: Backlog::Clear,
            };
        }
        if s.reset_owed {
            return Delivery {
                delivered: s.delivered,
                skip_through: 0,
                backlog: Backlog::Reset,
            };
        }
        let host = s.after.unwrap_or(s.delivered);
        if host > s.master_version {
            // The host holds versions the master never had: another history.
            return Delivery {
                delivered: s.delivered,
                skip_through: 0,
                backlog: Backlog::Reset,
            };
        }
        if host >= s.applied {
            return Delivery {
                delivered: s.applied,
                skip_through: host,
                backlog: Backlog::Clear,
            };
        }
        let backlog = if !s.pending_complete {
            Backlog::Journal {
                from: host + 1,
                through: s.applied,
            }
        } else if host < s.delivered {
            Backlog::Journal {
                from: host + 1,
                through: s.delivered,
            }
        } else {
            Backlog::Kept
        };
        Delivery {
            delivered: host,
            skip_through: 0,
            backlog,
        }
    }

    /// Whether the update at `version` goes to the callback (false for versions the host
    /// already holds).
    pub fn wants(&self, version: u64) -> bool {
        version > self.skip_through
    }

    /// The journal answered that it no longer reaches back: only a reset can bring the
    /// host up to date.
    pub fn on_trimmed(&mut self) {
        self.backlog = Backlog::Reset;
    }

    /// The journal part was delivered up to `through`: continue with the kept updates.
    pub fn on_journal_delivered(&mut self, through: u64) {
        self.on_journal_part_delivered(through, through);
    }

    /// Versions up to `end` of a journal backlog reaching to `through` were delivered: the
    /// rest of it next, then the kept updates.
    pub fn on_journal_part_delivered(&mut self, end: u64, through: u64) {
        self.delivered = self.delivered.max(end);
        self.backlog = if end < through {
            Backlog::Journal {
                from: end + 1,
                through,
            }
        } else {
            Backlog::Kept
        };
    }

    /// The kept updates are all delivered: live updates go straight to the callback.
    pub fn on_kept_delivered(&mut self) {
        self.backlog = Backlog::Clear;
    }

    /// The host was handed the whole state at `version`.
    pub fn on_reset_delivered(&mut self, version: u64) {
        self.delivered = version;
        self.skip_through = 0;
        self.backlog = Backlog::Clear;
    }

    /// The history changed: a resync brought the replica to `version` and a reset is owed.
    pub fn on_history_changed(&mut self) {
        self.skip_through = 0;
        self.backlog = Backlog::Reset;
    }

    /// The callback for `version` returned (or was skipped).
    pub fn on_delivered(&mut self, version: u64) {
        self.delivered = self.delivered.max(version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(applied: u64, delivered: u64, after: Option<u64>) -> DeliveryStart {
        DeliveryStart {
            applied,
            delivered,
            pending_complete: true,
            reset_owed: false,
            after,
            master_version: 1_000,
            has_callback: true,
        }
    }

    #[test]
    fn a_restart_replays_what_the_callbacks_had_not_returned() {
        let d = Delivery::plan(start(50, 40, None));
        assert_eq!(d.delivered, 40);
        assert_eq!(d.backlog, Backlog::Kept);
        assert!(d.wants(41));
    }

    #[test]
    fn a_host_ahead_of_the_kept_updates_gets_exactly_those_after_it() {
        let d = Delivery::plan(start(50, 40, Some(45)));
        assert_eq!((d.delivered, d.backlog), (45, Backlog::Kept));
    }

    #[test]
    fn a_host_behind_the_cursor_is_served_from_the_journal_first() {
        let d = Delivery::plan(start(50, 40, Some(10)));
        assert_eq!(
            d.backlog,
            Backlog::Journal {
                from: 11,
                through: 40
            }
        );
        let mut d = d;
        d.on_journal_delivered(40);
        assert_eq!((d.delivered, d.backlog), (40, Backlog::Kept));
    }

    #[test]
    fn a_long_journal_backlog_is_delivered_in_parts() {
        let mut d = Delivery::plan(start(50_000, 50_000, Some(10)));
        d.on_journal_part_delivered(4_106, 50_000);
        assert_eq!(
            (d.delivered, d.backlog),
            (
                4_106,
                Backlog::Journal {
                    from: 4_107,
                    through: 50_000
                }
            )
        );
        d.on_journal_part_delivered(50_000, 50_000);
        assert_eq!((d.delivered, d.backlog), (50_000, Backlog::Kept));
    }

    #[test]
    fn incomplete_kept_updates_come_from_the_journal_entirely() {
        let mut s = start(50, 40, None);
        s.pending_complete = false;
        assert_eq!(
            Delivery::plan(s).backlog,
            Backlog::Journal {
                from: 41,
                through: 50
            }
        );
    }

    #[test]
    fn a_trimmed_journal_turns_into_a_reset() {
        let mut d = Delivery::plan(start(50, 40, Some(3)));
        d.on_trimmed();
        assert_eq!(d.backlog, Backlog::Reset);
        d.on_reset_delivered(50);
        assert_eq!((d.delivered, d.backlog), (50, Backlog::Clear));
    }

    #[test]
    fn a_host_ahead_of_its_replica_is_not_called_back_for_what_it_has() {
        let d = Delivery::plan(start(50, 50, Some(70)));
        assert_eq!(d.backlog, Backlog::Clear);
        assert!(!d.wants(70));
        assert!(d.wants(71));
    }

    #[test]
    fn a_host_ahead_of_the_master_or_an_owed_reset_gets_a_reset() {
        assert_eq!(
            Delivery::plan(start(50, 50, Some(2_000))).backlog,
            Backlog::Reset
        );
        let mut s = start(50, 50, None);
        s.reset_owed = true;
        assert_eq!(Delivery::plan(s).backlog, Backlog::Reset);
    }

    #[test]
    fn without_a_callback_nothing_is_owed() {
        let mut s = start(50, 10, Some(3));
        s.has_callback = false;
        let d = Delivery::plan(s);
        assert_eq!((d.delivered, d.backlog), (50, Backlog::Clear));
    }
}
