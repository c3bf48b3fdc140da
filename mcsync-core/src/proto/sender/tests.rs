use super::*;
use crate::proto::ChainAssembler;
use crate::update::{Op, Update};
use crate::wire::packet::{PacketKind, OIC};
use crate::wire::update::{update_to_vec, Limits};

const MS: Duration = Duration::from_millis(1);

fn config() -> SenderConfig {
    SenderConfig {
        datagram_bytes: 1_400,
        max_bundle_bytes: 8_192,
        heartbeat_initial: 2 * MS,
        heartbeat_max: 16 * MS,
        packets_per_sec: 0,
        bytes_per_sec: 0,
        compress: true,
        max_backlog_bytes: 8 << 20,
    }
}

fn update(v: u64, value: Vec<u8>) -> Update {
    Update {
        version: v,
        timestamp_us: v,
        ops: vec![Op::put(format!("key-{v}"), value)],
        reset: false,
    }
}

fn push(s: &mut Sender, u: &Update) {
    s.push(u.version, Arc::new(update_to_vec(u)));
}

/// Every packet `poll_transmit` hands out at `now`.
fn drain(s: &mut Sender, now: Instant) -> Vec<PlainPacket> {
    std::iter::from_fn(|| s.poll_transmit(now, 0)).collect()
}

fn decode(pkts: &[PlainPacket]) -> Vec<Update> {
    let mut a = ChainAssembler::new(1 << 24);
    let mut out = Vec::new();
    for p in pkts.iter().filter(|p| p.header.kind == PacketKind::Data) {
        let r = a.on_packet(&p.header, &p.payload);
        assert_eq!(r.dropped, None);
        if let Some(c) = r.chain {
            out.extend(decode_chain(&c, &Limits::default(), 1 << 24).unwrap());
        }
    }
    out
}

#[test]
fn queued_updates_share_one_chain() {
    let t = Instant::now();
    let mut s = Sender::new(t, 1, 1, 0, config());
    let ups: Vec<_> = (1..=3).map(|v| update(v, vec![v as u8; 20])).collect();
    ups.iter().for_each(|u| push(&mut s, u));
    let pkts = drain(&mut s, t);
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].header.flags, OIC);
    assert_eq!(decode(&pkts), ups);
    assert_eq!(s.sent_version(), 3);
    assert!(!s.is_busy());
    let c = s.counters();
    assert_eq!((c.chains, c.updates, c.data_packets), (1, 3, 1));
}

#[test]
fn bundles_respect_the_size_limit_and_big_updates_go_alone() {
    let t = Instant::now();
    let mut s = Sender::new(
        t,
        1,
        1,
        0,
        SenderConfig {
            max_bundle_bytes: 1_000,
            compress: false,
            ..config()
        },
    );
    let ups = vec![
        update(1, vec![1; 400]),
        update(2, vec![2; 400]),
        update(3, vec![3; 400]),
        update(4, vec![4; 20_000]),
        update(5, vec![5; 10]),
    ];
    ups.iter().for_each(|u| push(&mut s, u));
    let pkts = drain(&mut s, t);
    assert_eq!(decode(&pkts), ups);
    // {1, 2}, {3}, {4} alone across several packets, {5}.
    assert_eq!(s.counters().chains, 4);
    assert!(pkts.len() > 15);
}

#[test]
fn compresses_only_when_it_shrinks() {
    let t = Instant::now();
    let mut s = Sender::new(t, 1, 1, 0, config());
    let text = update(1, b"the same words again and again ".repeat(100));
    push(&mut s, &text);
    let pkts = drain(&mut s, t);
    assert_eq!(pkts[0].header.compression, Compression::Lz4);
    assert!(pkts.iter().map(|p| p.payload.len()).sum::<usize>() < 1_000);
    assert_eq!(decode(&pkts), [text]);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..3_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let noise = update(2, noise);
    push(&mut s, &noise);
    let pkts = drain(&mut s, t);
    assert_eq!(pkts[0].header.compression, Compression::None);
    assert_eq!(decode(&pkts), [noise]);
    assert_eq!(s.counters().compressed_chains, 1);
}

#[test]
fn heartbeats_announce_the_sent_version_and_back_off_while_idle() {
    let t = Instant::now();
    let mut s = Sender::new(t, 1, 1, 7, config());
    s.set_oldest_version(3);
    push(&mut s, &update(8, vec![0; 10]));
    assert_eq!(drain(&mut s, t).len(), 1);
    assert_eq!(s.next_timeout(t), t + 2 * MS);
    assert!(drain(&mut s, t + MS).is_empty());
    let mut at = Vec::new();
    let mut now = t;
    while now < t + 100 * MS {
        now = s.next_timeout(now);
        for p in drain(&mut s, now) {
            assert_eq!(p.header.kind, PacketKind::Heartbeat);
            let hb = Heartbeat::parse(&p.payload).unwrap();
            assert_eq!((hb.latest_version, hb.oldest_version), (8, 3));
            at.push((now - t).as_millis());
        }
    }
    assert_eq!(at[..6], [2, 6, 14, 30, 46, 62]);
}

#[test]
fn next_timeout_is_never_in_the_past_while_pacing_holds_a_heartbeat() {
    let t = Instant::now();
    let mut s = Sender::new(
        t,
        1,
        1,
        0,
        SenderConfig {
            packets_per_sec: 100,
            heartbeat_initial: MS,
            ..config()
        },
    );
    // 64 packets use up the burst; each later packet waits 10 ms.
    for v in 1..=64 {
        push(&mut s, &update(v, vec![v as u8; 1_300]));
        assert_eq!(drain(&mut s, t).len(), 1, "version {v}");
    }
    let mut now = t;
    let mut polls = 0;
    while now < t + 100 * MS {
        polls += 1;
        assert!(polls < 1_000, "the sender asks to be polled in a busy loop");
        if s.poll_transmit(now, 0).is_none() {
            let next = s.next_timeout(now);
            assert!(next > now, "next timeout {next:?} is not after {now:?}");
            now = next;
        }
    }
    assert!(s.counters().heartbeats >= 5);
}

/// Every record the packets carry, with its kind, in order.
fn decode_records(pkts: &[PlainPacket]) -> Vec<(RecordKind, Update)> {
    let mut a = ChainAssembler::new(1 << 24);
    let mut out = Vec::new();
    for p in pkts.iter().filter(|p| p.header.kind == PacketKind::Data) {
        if let Some(c) = a.on_packet(&p.header, &p.payload).chain {
            out.extend(decode_chain_records(&c, &Limits::default(), 1 << 24).unwrap());
        }
    }
    out
}

/// A sender capped at `cap` backlog bytes that sends 10 packets a second.
fn slow(t: Instant, cap: usize) -> Sender {
    Sender::new(
        t,
        1,
        1,
        0,
        SenderConfig {
            packets_per_sec: 10,
            max_backlog_bytes: cap,
            compress: false,
            ..config()
        },
    )
}

/// Polls until idle, stepping the clock to each timeout; returns every packet.
fn run_until_idle(s: &mut Sender, mut now: Instant) -> (Vec<PlainPacket>, Instant) {
    let mut out = Vec::new();
    while s.is_busy() {
        match s.poll_transmit(now, 0) {
            Some(p) => out.push(p),
            None => now = s.next_timeout(now).max(now + MS),
        }
    }
    (out, now)
}

#[test]
fn the_backlog_never_exceeds_the_cap_and_skipped_versions_are_announced() {
    let t = Instant::now();
    let cap = 20_000;
    let mut s = slow(t, cap);
    let mut now = t;
    let mut sent = Vec::new();
    // 300 updates of about 1 KiB, 100 a second: ten times what 10 packets/s carry.
    for v in 1..=300 {
        push(&mut s, &update(v, vec![v as u8; 1_000]));
        assert!(
            s.backlog_bytes() <= cap,
            "{} bytes after {v}",
            s.backlog_bytes()
        );
        now += 10 * MS;
        sent.extend(std::iter::from_fn(|| s.poll_transmit(now, 0)));
    }
    let (rest, end) = run_until_idle(&mut s, now);
    sent.extend(rest);
    assert!(s.counters().backlog_peak_bytes <= cap as u64);
    assert!(s.counters().backlog_peak_bytes > cap as u64 / 2);
    // What was multicast is in order and everything else was counted as skipped.
    let got: Vec<u64> = decode(&sent).iter().map(|u| u.version).collect();
    assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
    assert_eq!(*got.last().unwrap(), 300);
    let c = s.counters();
    assert!(c.skipped_backlog > 100, "{c:?}");
    assert_eq!(c.skipped_backlog + got.len() as u64, 300, "{c:?}");
    assert_eq!(s.backlog_bytes(), 0);
    // The next heartbeat announces the latest version.
    assert_eq!(next_heartbeat(&mut s, end).latest_version, 300);
}

fn next_heartbeat(s: &mut Sender, mut now: Instant) -> Heartbeat {
    loop {
        match s.poll_transmit(now, 0) {
            Some(p) => {
                assert_eq!(p.header.kind, PacketKind::Heartbeat);
                return Heartbeat::parse(&p.payload).unwrap();
            }
            None => now = s.next_timeout(now).max(now + MS),
        }
    }
}

#[test]
fn a_heartbeat_after_skipping_announces_the_skipped_versions() {
    let t = Instant::now();
    let mut s = slow(t, 10_000);
    // A large update is cut into packets that take seconds to send; the updates that
    // queue behind it overflow the cap and are skipped, the last one stays.
    push(&mut s, &update(1, vec![1; 8_000]));
    let mut pkts = vec![s.poll_transmit(t, 0).unwrap()];
    for v in 2..=10 {
        push(&mut s, &update(v, vec![v as u8; 1_000]));
        assert!(s.backlog_bytes() <= 10_000);
    }
    assert!(s.counters().skipped_backlog > 0);
    let (rest, end) = run_until_idle(&mut s, t);
    pkts.extend(rest);
    let got: Vec<u64> = decode(&pkts).iter().map(|u| u.version).collect();
    assert_eq!((got[0], *got.last().unwrap()), (1, 10), "{got:?}");
    assert_eq!(s.counters().skipped_backlog + got.len() as u64, 10);
    assert_eq!(s.sent_version(), 10);
    assert_eq!(next_heartbeat(&mut s, end).latest_version, 10);
    // The same when the skipped updates were all that was queued.
    push(&mut s, &update(11, vec![0; 9_000]));
    push(&mut s, &update(12, vec![0; 9_000]));
    let (pkts, end) = run_until_idle(&mut s, end);
    let got: Vec<u64> = decode(&pkts).iter().map(|u| u.version).collect();
    assert_eq!(got, [12]);
    assert_eq!(next_heartbeat(&mut s, end).latest_version, 12);
}

#[test]
fn an_update_larger_than_the_cap_still_goes_alone() {
    let t = Instant::now();
    let mut s = slow(t, 1_000);
    let big = update(1, vec![7; 5_000]);
    push(&mut s, &big);
    let (pkts, _) = run_until_idle(&mut s, t);
    assert_eq!(decode(&pkts), [big]);
    assert_eq!(s.counters().skipped_backlog, 0);
}

#[test]
fn updates_skipped_while_multicast_is_off_are_not_counted_as_backlog() {
    let t = Instant::now();
    let mut s = slow(t, 2_000);
    s.set_multicast(false);
    for v in 1..=10 {
        push(&mut s, &update(v, vec![0; 1_000]));
        assert!(s.backlog_bytes() <= 2_000);
    }
    assert!(drain(&mut s, t).is_empty());
    assert_eq!((s.sent_version(), s.counters().skipped_backlog), (10, 0));
}

#[test]
fn two_phase_records_are_never_skipped() {
    use crate::wire::update::encode_record;
    let t = Instant::now();
    let mut s = slow(t, 5_000);
    let record = |kind, v| {
        let mut b = Vec::new();
        encode_record(kind, &update(v, vec![0; 100]), &mut b);
        Arc::new(b)
    };
    push(&mut s, &update(1, vec![1; 1_000]));
    push(&mut s, &update(2, vec![2; 1_000]));
    s.push_control(record(RecordKind::Prepare, 3));
    s.push_control(record(RecordKind::CommitPrepared, 3));
    s.advance_to(3);
    for v in 4..=20 {
        push(&mut s, &update(v, vec![v as u8; 1_000]));
    }
    assert!(s.counters().skipped_backlog > 0);
    let (pkts, _) = run_until_idle(&mut s, t);
    let recs: Vec<(RecordKind, u64)> = decode_records(&pkts)
        .into_iter()
        .map(|(k, u)| (k, u.version))
        .collect();
    let at = |r| recs.iter().position(|x| *x == r);
    let prepare = at((RecordKind::Prepare, 3)).expect("the PREPARE was sent");
    let commit = at((RecordKind::CommitPrepared, 3)).expect("the decision was sent");
    assert!(prepare < commit, "{recs:?}");
    assert_eq!(recs.last(), Some(&(RecordKind::Commit, 20)), "{recs:?}");
}
