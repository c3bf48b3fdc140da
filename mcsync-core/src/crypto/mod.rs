//! AES-256-GCM sealing of multicast packets.
//!
//! The packet header is the associated data, so nothing in it can be altered without the
//! tag failing. The 96-bit nonce is `(stream id XOR key epoch) ‖ packet sequence`: under one
//! key the epoch is fixed, so the nonce is unique as long as a (stream id, sequence) pair is
//! never reused, which the publisher guarantees by drawing a fresh stream id every time a
//! database's multicaster starts and never wrapping the 64-bit sequence.

mod epochs;

pub use epochs::{EpochKeys, KeyHandout, PREVIOUS_KEY_GRACE};

use crate::wire::packet::{PacketHeader, HEADER_LEN, TAG_LEN};
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use zeroize::Zeroizing;

/// A 256-bit AES key. Its `Debug` output never shows the bytes, and it is wiped on drop.
#[derive(Clone)]
pub struct Key(Zeroizing<[u8; 32]>);

impl Key {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(Zeroizing::new(bytes))
    }

    /// A fresh random key from the operating system's RNG.
    pub fn generate() -> Key {
        let mut b = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
        Key::from_bytes(b)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> crate::Result<Key> {
        let s = s.trim();
        if s.len() != 64 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(crate::Error::Config(
                "a key is 64 hexadecimal digits (32 bytes)".into(),
            ));
        }
        let mut b = [0u8; 32];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
                .map_err(|_| crate::Error::Config("bad hex in key".into()))?;
        }
        Ok(Key::from_bytes(b))
    }

    /// The key as 64 hex digits (for handing to a subscriber's configuration).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Eq for Key {}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        // Not constant-time; keys are compared only in configuration checks.
        self.0[..] == other.0[..]
    }
}

/// Why a packet failed to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// No key for the packet's epoch.
    UnknownEpoch(u32),
    /// The tag did not verify: forged, tampered, or sealed under another key.
    BadTag,
    /// The epoch's key is retired for this sequence number: the publisher sealed every
    /// packet from here on under a newer epoch, so a packet this far under the old key is
    /// forged by someone who kept it (a revoked user, say).
    Retired(u32),
}

fn nonce(stream_id: u32, key_epoch: u32, seq: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&(stream_id ^ key_epoch).to_be_bytes());
    n[4..].copy_from_slice(&seq.to_be_bytes());
    n
}

/// One epoch's cipher, and the sequence number from which it no longer opens anything.
struct EpochKey {
    cipher: Aes256Gcm,
    /// Packets at or past this sequence number are refused ([`OpenError::Retired`]).
    below: AtomicU64,
}

impl Clone for EpochKey {
    fn clone(&self) -> EpochKey {
        EpochKey {
            cipher: self.cipher.clone(),
            below: AtomicU64::new(self.below.load(Ordering::Relaxed)),
        }
    }
}

/// Seals and opens packets with the key of each epoch it holds.
///
/// An older epoch's key is accepted only for a bounded grace: the publisher switches epochs
/// at one sequence number, so once a packet of a newer epoch opened at sequence `s`, every
/// genuine packet under an older epoch has a sequence number below `s`. [`Keyring::open`]
/// lowers the older epochs' bounds as newer packets arrive, and the publisher hands out the
/// exact bound at registration ([`Keyring::retire_below`]). A packet sealed under the old
/// key past the bound is refused: whoever still holds that key (a revoked user) can no
/// longer seal packets the replica accepts.
#[derive(Default, Clone)]
pub struct Keyring {
    keys: BTreeMap<u32, EpochKey>,
}

impl Keyring {
    /// A keyring holding one key at `epoch`.
    pub fn with_key(epoch: u32, key: &Key) -> Keyring {
        let mut k = Keyring::default();
        k.insert(epoch, key);
        k
    }

    /// Adds (or replaces) the key of an epoch, with no bound yet.
    pub fn insert(&mut self, epoch: u32, key: &Key) {
        self.keys.insert(
            epoch,
            EpochKey {
                cipher: Aes256Gcm::new_from_slice(key.as_bytes()).expect("32-byte key"),
                below: AtomicU64::new(u64::MAX),
            },
        );
    }

    /// Refuses packets under every epoch older than `epoch` from sequence number `seq` on
    /// (bounds only ever tighten).
    pub fn retire_below(&self, epoch: u32, seq: u64) {
        for k in self.keys.range(..epoch).map(|(_, k)| k) {
            k.below.fetch_min(seq, Ordering::Relaxed);
        }
    }

    /// Forgets every epoch older than `epoch`.
    pub fn retain_from(&mut self, epoch: u32) {
        self.keys = self.keys.split_off(&epoch);
    }

    /// The newest epoch held.
    pub fn newest_epoch(&self) -> Option<u32> {
        self.keys.keys().next_back().copied()
    }

    /// Whether the keyring has a key for `epoch`.
    pub fn has_epoch(&self, epoch: u32) -> bool {
        self.keys.contains_key(&epoch)
    }

    /// Builds a whole datagram: header (with `length` filled in), sealed payload, tag.
    /// `header.key_epoch` selects the key.
    pub fn seal(&self, mut header: PacketHeader, payload: &[u8], out: &mut Vec<u8>) -> bool {
        let Some(EpochKey { cipher, .. }) = self.keys.get(&header.key_epoch) else {
            return false;
        };
        header.length = (payload.len() + TAG_LEN) as u16;
        let aad = header.to_bytes();
        out.clear();
        out.reserve(HEADER_LEN + payload.len() + TAG_LEN);
        out.extend_from_slice(&aad);
        out.extend_from_slice(payload);
        let n = nonce(header.stream_id, header.key_epoch, header.seq);
        let tag = cipher
            .encrypt_in_place_detached(Nonce::from_slice(&n), &aad, &mut out[HEADER_LEN..])
            .expect("payload within AES-GCM limits");
        out.extend_from_slice(&tag);
        true
    }

    /// Verifies and decrypts the sealed part of a datagram whose header was parsed. A
    /// packet that opens bounds the older epochs' keys below its sequence number.
    pub fn open(&self, header: &PacketHeader, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        let epoch = self
            .keys
            .get(&header.key_epoch)
            .ok_or(OpenError::UnknownEpoch(header.key_epoch))?;
        if header.seq >= epoch.below.load(Ordering::Relaxed) {
            return Err(OpenError::Retired(header.key_epoch));
        }
        let cipher = &epoch.cipher;
        if sealed.len() < TAG_LEN {
            return Err(OpenError::BadTag);
        }
        let (ct, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let mut buf = ct.to_vec();
        let n = nonce(header.stream_id, header.key_epoch, header.seq);
        cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&n),
                &header.to_bytes(),
                &mut buf,
                Tag::from_slice(tag),
            )
            .map_err(|_| OpenError::BadTag)?;
        self.retire_below(header.key_epoch, header.seq);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::packet::{Compression, PacketKind};

    fn header(epoch: u32, seq: u64) -> PacketHeader {
        PacketHeader {
            kind: PacketKind::Data,
            flags: 0,
            compression: Compression::None,
            length: 0,
            stream_id: 7,
            key_epoch: epoch,
            seq,
        }
    }

    /// Seals under `ring` and opens under `with`.
    fn round_trip(
        ring: &Keyring,
        with: &Keyring,
        epoch: u32,
        seq: u64,
    ) -> Result<Vec<u8>, OpenError> {
        let mut d = Vec::new();
        assert!(ring.seal(header(epoch, seq), b"payload", &mut d));
        let (h, sealed) = PacketHeader::parse(&d).unwrap();
        with.open(&h, sealed)
    }

    #[test]
    fn an_older_epoch_opens_only_below_the_first_packet_of_the_newer_one() {
        let (old, new) = (Key::generate(), Key::generate());
        let mut publisher = Keyring::with_key(4, &old);
        publisher.insert(5, &new);
        let replica = publisher.clone();
        // Before any packet of epoch 5 arrived, epoch 4 opens anything.
        assert!(round_trip(&publisher, &replica, 4, 1_000).is_ok());
        // Epoch 5 starts at 100 (the replica sees 120 first, then 100).
        assert!(round_trip(&publisher, &replica, 5, 120).is_ok());
        assert!(round_trip(&publisher, &replica, 4, 99).is_ok());
        assert_eq!(
            round_trip(&publisher, &replica, 4, 120),
            Err(OpenError::Retired(4))
        );
        assert!(round_trip(&publisher, &replica, 5, 100).is_ok());
        assert_eq!(
            round_trip(&publisher, &replica, 4, 100),
            Err(OpenError::Retired(4))
        );
        assert!(round_trip(&publisher, &replica, 4, 99).is_ok());
        // The newest epoch is never bounded by itself.
        assert!(round_trip(&publisher, &replica, 5, 1 << 40).is_ok());
    }

    #[test]
    fn a_bound_handed_out_at_registration_applies_before_any_newer_packet() {
        let (old, new) = (Key::generate(), Key::generate());
        let mut publisher = Keyring::with_key(4, &old);
        publisher.insert(5, &new);
        let replica = publisher.clone();
        replica.retire_below(5, 50);
        assert_eq!(
            round_trip(&publisher, &replica, 4, 50),
            Err(OpenError::Retired(4))
        );
        assert!(round_trip(&publisher, &replica, 4, 49).is_ok());
        // Bounds only tighten.
        replica.retire_below(5, 80);
        assert!(round_trip(&publisher, &replica, 4, 60).is_err());
    }

    #[test]
    fn a_forged_or_unknown_packet_moves_no_bound() {
        let (old, new) = (Key::generate(), Key::generate());
        let mut publisher = Keyring::with_key(4, &old);
        publisher.insert(5, &new);
        let replica = publisher.clone();
        let attacker = Keyring::with_key(5, &Key::generate());
        assert_eq!(
            round_trip(&attacker, &replica, 5, 10),
            Err(OpenError::BadTag)
        );
        assert!(round_trip(&publisher, &replica, 4, 500).is_ok());
        assert_eq!(
            round_trip(&publisher, &Keyring::with_key(5, &new), 4, 1),
            Err(OpenError::UnknownEpoch(4))
        );
    }
}
