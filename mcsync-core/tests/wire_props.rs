//! Property tests of the wire formats: encode → parse round trips, parsers that never
//! panic on random or truncated input, and sealed packets that fail to open after any
//! single bit flip.

use mcsync::crypto::{Key, Keyring, OpenError};
use mcsync::proto::resync::{Digest, Range};
use mcsync::proto::{decode_chain, Chain, ChainAssembler};
use mcsync::wire::control::{
    DatabaseInfo, ErrorCode, Message, Outcome, Push, SubscriberReport, HELLO_UNICAST, MAX_KEYS,
    MAX_RANGES,
};
use mcsync::wire::packet::{
    Compression, Heartbeat, PacketHeader, PacketKind, CHANGEKEY, FIC, HEADER_LEN, LIC, TAG_LEN,
};
use mcsync::wire::update::{
    decode_bundle, decode_update, encode_bundle, peek_version, update_encoded_len, update_to_vec,
    validate_op, Limits, MAX_KEY_LEN,
};
use mcsync::{Op, OpKind, Secret, Update};
use proptest::prelude::*;
use proptest::sample::Index;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

// ---------------------------------------------------------------------------------------
// Strategies

fn arb_kind() -> impl Strategy<Value = PacketKind> {
    prop_oneof![Just(PacketKind::Data), Just(PacketKind::Heartbeat)]
}

fn arb_compression() -> impl Strategy<Value = Compression> {
    prop_oneof![Just(Compression::None), Just(Compression::Lz4)]
}

fn arb_header() -> impl Strategy<Value = PacketHeader> {
    (
        arb_kind(),
        any::<u8>().prop_map(|f| f & (FIC | LIC | CHANGEKEY)),
        arb_compression(),
        (TAG_LEN as u16)..=2_000,
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(
            |(kind, flags, compression, length, stream_id, key_epoch, seq)| PacketHeader {
                kind,
                flags,
                compression,
                length,
                stream_id,
                key_epoch,
                seq,
            },
        )
}

fn arb_group() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_é✓-]{1,20}"
}

fn arb_op_sized(max_key: usize, max_value: usize) -> impl Strategy<Value = Op> {
    (
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 1..=max_key),
        prop::collection::vec(any::<u8>(), 0..max_value),
        prop::collection::vec(arb_group(), 0..3),
    )
        .prop_map(|(put, key, value, groups)| Op {
            kind: if put { OpKind::Put } else { OpKind::Delete },
            key,
            value: if put { value } else { Vec::new() },
            groups,
        })
}

fn arb_update_sized(max_key: usize, max_value: usize) -> impl Strategy<Value = Update> {
    (
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(arb_op_sized(max_key, max_value), 0..5),
    )
        .prop_map(|(version, timestamp_us, ops)| Update {
            version,
            timestamp_us,
            ops,
            reset: false,
        })
}

fn arb_update() -> impl Strategy<Value = Update> {
    arb_update_sized(MAX_KEY_LEN, 600)
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

fn arb_ranges() -> impl Strategy<Value = Vec<(u64, u64)>> {
    // Ascending, non-overlapping, starting at 1 or later: built from gaps and lengths.
    prop::collection::vec((1u64..1_000, 0u64..1_000), 1..=MAX_RANGES).prop_map(|steps| {
        let mut next = 0u64;
        steps
            .into_iter()
            .map(|(gap, len)| {
                let a = next + gap;
                next = a + len + 1;
                (a, a + len)
            })
            .collect()
    })
}

fn arb_error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(vec![
        ErrorCode::BadRequest,
        ErrorCode::UnknownDatabase,
        ErrorCode::NoSuchVersion,
        ErrorCode::Trimmed,
        ErrorCode::Internal,
        ErrorCode::Auth,
        ErrorCode::Version,
    ])
}

fn arb_key() -> impl Strategy<Value = (u32, Key)> {
    (any::<u32>(), any::<[u8; 32]>()).prop_map(|(e, k)| (e, Key::from_bytes(k)))
}

fn arb_info() -> impl Strategy<Value = DatabaseInfo> {
    (
        (arb_addr(), arb_addr(), any::<bool>()),
        prop::collection::vec(arb_key(), 0..=MAX_KEYS),
        prop::collection::vec(arb_group(), 0..5),
        (any::<u64>(), any::<u64>(), any::<u64>()),
        (any::<u64>(), any::<u32>(), 0u8..3),
    )
        .prop_map(
            |(
                (group, source, encrypted),
                keys,
                groups,
                (current, oldest, id),
                (incarnation, stream_id, push),
            )| DatabaseInfo {
                group,
                source,
                encrypted,
                keys,
                older_keys_below: current ^ oldest,
                groups,
                current_version: current,
                oldest_version: oldest,
                subscriber_id: id,
                incarnation,
                stream_id,
                push: [Push::NotAsked, Push::Pushing, Push::Refused][usize::from(push)],
            },
        )
}

/// A node of the resync range tree: `lo` aligned to its level.
fn arb_tree_range() -> impl Strategy<Value = Range> {
    (0u8..=16, any::<u64>()).prop_map(|(level, x)| match level {
        0 => Range::ROOT,
        l => {
            let width = 1u64 << (64 - 4 * u32::from(l));
            Range {
                lo: x & !(width - 1),
                level: l,
            }
        }
    })
}

/// Every control message variant.
fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            (any::<u8>(), ".{0,64}", ".{0,64}"),
            (".{0,32}", ".{0,32}", any::<u64>(), any::<u8>()),
            proptest::option::of(any::<u16>()),
        )
            .prop_map(
                |((version, database, client), (user, secret, subscriber_id, flags), port)| {
                    Message::Hello {
                        version,
                        database,
                        client,
                        user,
                        secret: Secret::new(secret),
                        subscriber_id,
                        // The unicast bit travels as `unicast_port`.
                        flags: flags & !HELLO_UNICAST,
                        unicast_port: port,
                    }
                }
            ),
        arb_info().prop_map(Message::HelloOk),
        arb_ranges().prop_map(|ranges| Message::CatchupRequest { ranges }),
        prop::collection::vec(any::<u8>(), 0..2_000).prop_map(Message::CatchupUpdate),
        any::<u64>().prop_map(|current_version| Message::CatchupEnd { current_version }),
        (any::<u32>(), arb_ranges())
            .prop_map(|(stream_id, ranges)| Message::PacketRequest { stream_id, ranges }),
        prop::collection::vec(any::<u8>(), 0..2_000).prop_map(Message::PacketData),
        any::<u64>().prop_map(|missing| Message::PacketEnd { missing }),
        any::<u64>().prop_map(|subscriber_id| Message::CloseSubscription { subscriber_id }),
        Just(Message::Ok),
        (arb_error_code(), ".{0,200}").prop_map(|(code, message)| Message::Error { code, message }),
        (any::<u64>(), any::<u64>(), any::<bool>(), ".{0,100}").prop_map(
            |(version, round, prepared, reason)| Message::Vote {
                version,
                round,
                prepared,
                reason,
            }
        ),
        (any::<u64>(), any::<u64>()).prop_map(|(version, round)| Message::Ack { version, round }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(version, round)| Message::OutcomeRequest { version, round }),
        (
            any::<u64>(),
            prop_oneof![
                Just(Outcome::Committed),
                Just(Outcome::Aborted),
                Just(Outcome::Pending)
            ]
        )
            .prop_map(|(version, state)| Message::Outcome { version, state }),
        (1u64..1_000, 0u64..1_000).prop_map(|(first, n)| Message::CompactRequest {
            first,
            last: first + n
        }),
        (
            (0u32..=1_000_000, any::<u64>(), any::<u64>(), any::<u64>()),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<bool>()
            ),
        )
            .prop_map(
                |((loss_ppm, packets_received, packets_lost, applied_version), rest)| {
                    let (latency_p50_us, latency_p99_us, repairs, resubscriptions, unicast_only) =
                        rest;
                    Message::Report(SubscriberReport {
                        loss_ppm,
                        packets_received,
                        packets_lost,
                        applied_version,
                        latency_p50_us,
                        latency_p99_us,
                        repairs,
                        resubscriptions,
                        unicast_only,
                    })
                }
            ),
        Just(Message::StatusRequest),
        Just(Message::ResyncBegin),
        (any::<u64>(), any::<u32>(), any::<u64>()).prop_map(|(version, count, sum)| {
            Message::ResyncSnapshot {
                version,
                count,
                sum,
            }
        }),
        (prop::collection::vec(arb_tree_range(), 1..20), 3u8..=8)
            .prop_map(|(ranges, sum_bytes)| Message::DigestRequest { ranges, sum_bytes }),
        (
            prop::collection::vec((any::<u32>(), any::<u64>()), 0..40),
            3u8..=8
        )
            .prop_map(|(d, sum_bytes)| Message::DigestReply {
                sum_bytes,
                digests: d
                    .into_iter()
                    // An empty range's sum is not sent (it is 0).
                    .map(|(count, sum)| Digest {
                        count,
                        sum: if count == 0 { 0 } else { sum }
                    }
                    .truncated(sum_bytes))
                    .collect(),
            }),
        prop::collection::vec(arb_tree_range(), 1..20)
            .prop_map(|ranges| Message::ListRequest { ranges }),
        prop::collection::vec((any::<u64>(), any::<u64>()), 0..40)
            .prop_map(|entries| Message::ListReply { entries }),
        prop::collection::vec(any::<u64>(), 1..40)
            .prop_map(|key_hashes| Message::FetchRequest { key_hashes }),
        (
            prop::collection::vec(any::<u8>(), 0..64),
            prop::collection::vec(any::<u8>(), 0..200),
            prop::collection::vec(arb_group(), 0..=32)
        )
            .prop_map(|(key, value, groups)| Message::FetchRecord { key, value, groups }),
        any::<u64>().prop_map(|missing| Message::FetchEnd { missing }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(current_version, oldest_version, incarnation)| Message::Status {
                current_version,
                oldest_version,
                incarnation,
            }
        ),
        (1u64.., prop::collection::vec(any::<u8>(), 0..2_000))
            .prop_map(|(first, update)| Message::CompactUpdate { first, update }),
    ]
}

/// Free text longer than its length field is cut at a character boundary: the frame still
/// parses, and the reason is a prefix of what the host gave.
#[test]
fn overlong_text_is_cut_on_a_character_boundary() {
    let reason = "é".repeat(40_000); // 80,000 bytes, two per character
    let frame = Message::Vote {
        version: 3,
        round: 9,
        prepared: false,
        reason: reason.clone(),
    }
    .to_vec();
    match Message::parse(&frame[4..]).expect("parses") {
        Message::Vote { reason: r, .. } => {
            assert_eq!(r.len(), 65_534);
            assert!(reason.starts_with(&r));
        }
        other => panic!("{other:?}"),
    }
}

/// Messages whose last field is "the rest of the frame", so their prefixes parse too.
fn open_ended(m: &Message) -> bool {
    matches!(
        m,
        Message::CatchupUpdate(_) | Message::PacketData(_) | Message::CompactUpdate { .. }
    )
}

/// An encoded bundle of valid updates.
fn arb_bundle() -> impl Strategy<Value = (Vec<Update>, Vec<u8>)> {
    bundle_of(arb_update())
}

/// A bundle small enough to parse at every truncation quickly.
fn arb_small_bundle() -> impl Strategy<Value = (Vec<Update>, Vec<u8>)> {
    bundle_of(arb_update_sized(24, 64))
}

fn bundle_of(u: impl Strategy<Value = Update>) -> impl Strategy<Value = (Vec<Update>, Vec<u8>)> {
    prop::collection::vec(u, 1..5).prop_map(|ups| {
        let encoded: Vec<Vec<u8>> = ups.iter().map(update_to_vec).collect();
        let mut out = Vec::new();
        encode_bundle(encoded.iter().map(|e| e.as_slice()), &mut out);
        (ups, out)
    })
}

fn limits() -> Limits {
    Limits {
        max_update_bytes: 1 << 20,
    }
}

/// Parses with every parser; none may panic, whatever the bytes.
fn parse_everything(bytes: &[u8]) {
    let l = limits();
    let _ = PacketHeader::parse(bytes);
    let _ = Heartbeat::parse(bytes);
    let _ = decode_update(bytes, &l);
    let _ = decode_bundle(bytes, &l);
    let _ = peek_version(bytes);
    let _ = Message::parse(bytes);
    for compression in [Compression::None, Compression::Lz4] {
        let chain = Chain {
            bytes: bytes.to_vec(),
            compression,
        };
        let _ = decode_chain(&chain, &l, 1 << 20);
    }
}

// ---------------------------------------------------------------------------------------
// Round trips

proptest! {
    #[test]
    fn packet_header_round_trips(h in arb_header(), fill in any::<u8>()) {
        let mut dg = Vec::new();
        h.encode(&mut dg);
        prop_assert_eq!(dg.len(), HEADER_LEN);
        prop_assert_eq!(&dg[..], &h.to_bytes()[..]);
        dg.resize(HEADER_LEN + h.length as usize, fill);
        let (parsed, sealed) = PacketHeader::parse(&dg).unwrap();
        prop_assert_eq!(parsed, h);
        prop_assert_eq!(sealed.len(), h.length as usize);
        // One byte more or less than announced is refused.
        prop_assert!(PacketHeader::parse(&dg[..dg.len() - 1]).is_err());
        dg.push(fill);
        prop_assert!(PacketHeader::parse(&dg).is_err());
    }

    #[test]
    fn heartbeat_round_trips(latest in any::<u64>(), oldest in any::<u64>(), ts in any::<u64>()) {
        let hb = Heartbeat { latest_version: latest, oldest_version: oldest, timestamp_us: ts };
        let mut b = Vec::new();
        hb.encode(&mut b);
        prop_assert_eq!(b.len(), Heartbeat::LEN);
        prop_assert_eq!(Heartbeat::parse(&b).unwrap(), hb);
        for n in 0..b.len() {
            prop_assert!(Heartbeat::parse(&b[..n]).is_err());
        }
        b.push(0);
        prop_assert!(Heartbeat::parse(&b).is_err());
    }

    #[test]
    fn update_round_trips(u in arb_update()) {
        for op in &u.ops {
            prop_assert!(validate_op(op).is_ok());
        }
        let b = update_to_vec(&u);
        prop_assert_eq!(b.len(), update_encoded_len(&u.ops));
        prop_assert_eq!(peek_version(&b).unwrap(), u.version);
        prop_assert_eq!(decode_update(&b, &limits()).unwrap(), u);
    }

    #[test]
    fn update_truncations_are_refused(u in arb_update()) {
        let b = update_to_vec(&u);
        for n in 0..b.len() {
            prop_assert!(decode_update(&b[..n], &limits()).is_err(), "prefix of {}", n);
        }
        let mut longer = b.clone();
        longer.push(0);
        prop_assert!(decode_update(&longer, &limits()).is_err());
    }

    #[test]
    fn update_larger_than_the_limit_is_refused(u in arb_update()) {
        let b = update_to_vec(&u);
        let tight = Limits { max_update_bytes: b.len() - 1 };
        prop_assert!(decode_update(&b, &tight).is_err());
        let exact = Limits { max_update_bytes: b.len() };
        prop_assert_eq!(decode_update(&b, &exact).unwrap(), u);
    }

    #[test]
    fn bundle_round_trips((ups, b) in arb_bundle()) {
        prop_assert_eq!(decode_bundle(&b, &limits()).unwrap(), ups);
        for n in 0..b.len() {
            prop_assert!(decode_bundle(&b[..n], &limits()).is_err(), "prefix of {}", n);
        }
    }

    #[test]
    fn message_round_trips(m in arb_message()) {
        let frame = m.to_vec();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(len, frame.len() - 4);
        prop_assert_eq!(Message::parse(&frame[4..]).unwrap(), m.clone());
        if !open_ended(&m) {
            for n in 4..frame.len() {
                prop_assert!(Message::parse(&frame[4..n]).is_err(), "prefix of {}", n);
            }
        }
        let mut longer = frame[4..].to_vec();
        longer.push(0);
        if !open_ended(&m) {
            prop_assert!(Message::parse(&longer).is_err());
        }
    }

    /// COMPACT_UPDATE's update is open-ended, but its type and `first` are not: shorter
    /// frames fail, and `first` = 0 (no version is 0) fails.
    #[test]
    fn compact_update_needs_its_first_version(
        first in 1u64..,
        update in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let frame = Message::CompactUpdate { first, update }.to_vec();
        for n in 4..4 + 9 {
            prop_assert!(Message::parse(&frame[4..n]).is_err(), "prefix of {}", n);
        }
        let mut zero = frame[4..].to_vec();
        zero[1..9].copy_from_slice(&0u64.to_be_bytes());
        prop_assert!(Message::parse(&zero).is_err());
    }

    #[test]
    fn chain_round_trips_with_both_compressions((ups, b) in arb_bundle(), lz4 in any::<bool>()) {
        let chain = if lz4 {
            Chain {
                bytes: lz4_flex::block::compress_prepend_size(&b),
                compression: Compression::Lz4,
            }
        } else {
            Chain { bytes: b, compression: Compression::None }
        };
        prop_assert_eq!(decode_chain(&chain, &limits(), 1 << 20).unwrap(), ups);
    }
}

// ---------------------------------------------------------------------------------------
// Parsers never panic

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4_096)) {
        parse_everything(&bytes);
    }

    #[test]
    fn random_bytes_behind_valid_prefixes_never_panic(
        prefix in prop_oneof![
            Just(vec![0x4D, 0x53, 1]),
            (1u8..=12).prop_map(|t| vec![t]),
            Just(vec![0, 1]),
            Just(vec![0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
        ],
        rest in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        // Prefixes that get past the first checks: packet magic, message types, a bundle
        // count, an update header. Then garbage.
        let mut b = prefix;
        b.extend_from_slice(&rest);
        parse_everything(&b);
    }

    #[test]
    fn truncated_and_mutated_valid_encodings_never_panic(
        (_, bundle) in arb_small_bundle(),
        m in arb_message(),
        h in arb_header(),
        flips in prop::collection::vec((any::<Index>(), any::<u8>()), 1..8),
    ) {
        let mut packet = h.to_bytes().to_vec();
        packet.resize(HEADER_LEN + h.length as usize, 0xAB);
        let frame = m.to_vec();
        let lz4 = lz4_flex::block::compress_prepend_size(&bundle);
        for valid in [&bundle, &frame[4..].to_vec(), &packet, &lz4] {
            for n in 0..=valid.len() {
                parse_everything(&valid[..n]);
            }
            let mut bad = valid.clone();
            if !bad.is_empty() {
                for (i, x) in &flips {
                    let i = i.index(bad.len());
                    bad[i] ^= x | 1;
                }
            }
            parse_everything(&bad);
        }
    }

    #[test]
    fn lz4_chains_with_any_size_field_never_panic(
        (_, bundle) in arb_bundle(),
        size in prop_oneof![0u32..64, any::<u32>()],
        cut in any::<Index>(),
    ) {
        let mut c = lz4_flex::block::compress_prepend_size(&bundle);
        c[..4].copy_from_slice(&size.to_le_bytes());
        let n = cut.index(c.len() + 1);
        for bytes in [c.clone(), c[..n].to_vec()] {
            let chain = Chain { bytes, compression: Compression::Lz4 };
            let r = decode_chain(&chain, &limits(), 1 << 20);
            if size as usize > 1 << 20 {
                prop_assert!(r.is_err());
            }
        }
    }

    #[test]
    fn assembler_survives_any_packet_sequence(
        packets in prop::collection::vec(
            (
                any::<u8>(),
                0u64..12,
                arb_compression(),
                prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..80),
                    // A plausible first packet: a small length prefix then bytes.
                    (0u32..200, prop::collection::vec(any::<u8>(), 0..80)).prop_map(|(t, b)| {
                        let mut v = t.to_be_bytes().to_vec();
                        v.extend(b);
                        v
                    }),
                ],
            ),
            0..60,
        ),
    ) {
        let max_chain = 150;
        let mut a = ChainAssembler::new(max_chain);
        let mut fed = 0usize;
        for (flags, seq, compression, payload) in packets {
            let h = PacketHeader {
                kind: PacketKind::Data,
                flags: flags & (FIC | LIC | CHANGEKEY),
                compression,
                length: 0,
                stream_id: 1,
                key_epoch: 1,
                seq,
            };
            fed += payload.len();
            let out = a.on_packet(&h, &payload);
            if let Some(c) = out.chain {
                prop_assert!(c.bytes.len() <= max_chain);
                prop_assert!(c.bytes.len() <= fed);
                prop_assert_eq!(c.compression, compression);
                fed = 0;
                let _ = decode_chain(&c, &limits(), 1 << 20);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Sealing

fn keyring() -> Keyring {
    Keyring::with_key(3, &Key::from_bytes([0x5A; 32]))
}

fn sealed(h: PacketHeader, payload: &[u8]) -> Vec<u8> {
    let mut dg = Vec::new();
    assert!(keyring().seal(h, payload, &mut dg));
    dg
}

/// Whether a datagram is accepted: parses and opens.
fn opens(ring: &Keyring, dg: &[u8]) -> Option<Vec<u8>> {
    let (h, s) = PacketHeader::parse(dg).ok()?;
    ring.open(&h, s).ok()
}

proptest! {
    #[test]
    fn seal_then_open_round_trips(
        h in arb_header(),
        payload in prop::collection::vec(any::<u8>(), 0..1_500),
    ) {
        let h = PacketHeader { key_epoch: 3, ..h };
        let dg = sealed(h, &payload);
        prop_assert_eq!(dg.len(), HEADER_LEN + payload.len() + TAG_LEN);
        let (parsed, s) = PacketHeader::parse(&dg).unwrap();
        prop_assert_eq!(parsed.length as usize, payload.len() + TAG_LEN);
        prop_assert_eq!(keyring().open(&parsed, s).unwrap(), payload);
        let other = Keyring::with_key(3, &Key::from_bytes([0x5B; 32]));
        prop_assert_eq!(other.open(&parsed, s), Err(OpenError::BadTag));
        let unknown = Keyring::with_key(4, &Key::from_bytes([0x5A; 32]));
        prop_assert_eq!(unknown.open(&parsed, s), Err(OpenError::UnknownEpoch(3)));
    }

    #[test]
    fn any_single_bit_flip_is_rejected(
        h in arb_header(),
        payload in prop::collection::vec(any::<u8>(), 0..300),
        bit in any::<Index>(),
    ) {
        let h = PacketHeader { key_epoch: 3, ..h };
        let mut dg = sealed(h, &payload);
        let bit = bit.index(dg.len() * 8);
        dg[bit / 8] ^= 1 << (bit % 8);
        prop_assert_eq!(opens(&keyring(), &dg), None, "bit {} flipped", bit);
    }
}

#[test]
fn every_single_bit_flip_of_one_packet_is_rejected() {
    let ring = keyring();
    for (kind, flags, payload) in [
        (PacketKind::Data, FIC | LIC, b"\0\0\0\x05hello".to_vec()),
        (PacketKind::Heartbeat, 0, vec![0; Heartbeat::LEN]),
        (PacketKind::Data, 0, Vec::new()),
    ] {
        let h = PacketHeader {
            kind,
            flags,
            compression: Compression::None,
            length: 0,
            stream_id: 0xDEAD_BEEF,
            key_epoch: 3,
            seq: 77,
        };
        let dg = sealed(h, &payload);
        assert_eq!(opens(&ring, &dg), Some(payload.clone()));
        for bit in 0..dg.len() * 8 {
            let mut bad = dg.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(opens(&ring, &bad), None, "bit {bit} of {kind:?}");
        }
        // Truncated or extended datagrams are refused as well.
        for n in 0..dg.len() {
            assert_eq!(opens(&ring, &dg[..n]), None, "prefix of {n}");
        }
        let mut longer = dg.clone();
        longer.push(0);
        assert_eq!(opens(&ring, &longer), None);
    }
}

#[test]
fn a_packet_sealed_for_another_sequence_or_stream_does_not_open() {
    let ring = keyring();
    let h = PacketHeader {
        kind: PacketKind::Data,
        flags: FIC | LIC,
        compression: Compression::None,
        length: 0,
        stream_id: 9,
        key_epoch: 3,
        seq: 1,
    };
    let dg = sealed(h, b"\0\0\0\x01x");
    let (parsed, s) = PacketHeader::parse(&dg).unwrap();
    assert!(ring.open(&parsed, s).is_ok());
    for moved in [
        PacketHeader { seq: 2, ..parsed },
        PacketHeader {
            stream_id: 10,
            ..parsed
        },
        PacketHeader {
            flags: FIC,
            ..parsed
        },
    ] {
        assert_eq!(ring.open(&moved, s), Err(OpenError::BadTag));
    }
}

#[test]
fn a_fetch_record_with_too_many_or_empty_group_names_fails_the_parse() {
    let record = |groups: Vec<String>| {
        Message::FetchRecord {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            groups,
        }
        .to_vec()
    };
    let ok = record(vec!["g".into(); 32]);
    assert!(Message::parse(&ok[4..]).is_ok());
    for bad in [vec!["g".to_string(); 33], vec!["g".into(), String::new()]] {
        let frame = record(bad.clone());
        assert!(Message::parse(&frame[4..]).is_err(), "{} groups", bad.len());
    }
}
