//! Hostile and malformed input: counted, dropped, and replication carries on.

use mcsync::{ErrorKind, Publisher, Subscriber};
use mcsync_tests::*;
use rand::Rng;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

fn sniffer(group: SocketAddr) -> UdpSocket {
    let (s, _) = mcsync::net::socket::receiver_socket(group, Ipv4Addr::LOCALHOST, 1 << 20).unwrap();
    s
}

#[test]
fn garbage_forgeries_and_replays_are_counted_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let publisher = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = publisher.database("prices").unwrap();
    let open_sub = |name: &str, verify: bool| {
        let mut c = subscriber_config(&dir.path().join(name), &publisher, None);
        c.verify_source = verify;
        Subscriber::open(c).unwrap()
    };
    // `open_door` checks no source, so every forgery reaches the parser and the crypto;
    // `strict` checks the source, so it drops them all before parsing.
    let open_door = open_sub("open", false);
    let strict = open_sub("strict", true);
    let a = open_door.subscribe("prices", |_| {}).unwrap();
    let b = strict.subscribe("prices", |_| {}).unwrap();
    let spy = sniffer(db.group());
    spy.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let attacker = mcsync::net::socket::sender_socket(Ipv4Addr::LOCALHOST, 1, true).unwrap();

    let mut rng = rand::thread_rng();
    let mut captured = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut last = 0;
    for i in 0..400u32 {
        last = db.put(format!("p{}", i % 50), i.to_be_bytes()).unwrap();
        // Only genuine datagrams: the spy hears the attacker's junk too (empty ones
        // included), so it reads past it to the next genuine one, if any comes.
        while let Ok((n, from)) = spy.recv_from(&mut buf) {
            if from != attacker.local_addr().unwrap() {
                captured.push(buf[..n].to_vec());
                break;
            }
        }
        // Random bytes, wrong magic, bad lengths, and a valid header with a bad tag.
        let mut junk = vec![0u8; rng.gen_range(0..1500)];
        rng.fill(&mut junk[..]);
        attacker.send_to(&junk, db.group()).unwrap();
        if let Some(real) = captured.last() {
            let mut wrong_magic = real.clone();
            wrong_magic[0] ^= 0xFF;
            attacker.send_to(&wrong_magic, db.group()).unwrap();
            attacker
                .send_to(&real[..real.len() - 1], db.group())
                .unwrap();
            let mut bad_tag = real.clone();
            let n = bad_tag.len();
            bad_tag[n - 1] ^= 1;
            attacker.send_to(&bad_tag, db.group()).unwrap();
            // Replay of a genuine packet.
            attacker.send_to(real, db.group()).unwrap();
        }
    }
    assert!(captured.len() > 100, "the spy heard the stream");
    for sub in [&a, &b] {
        sub.wait_for_version(last, CONVERGE).unwrap();
        assert_eq!(
            sub.iter().unwrap().collect::<Vec<_>>(),
            db.snapshot().unwrap()
        );
    }
    let sa = a.stats();
    assert!(sa.dropped_malformed > 300, "{sa:?}");
    assert!(sa.dropped_auth > 100, "{sa:?}");
    assert!(sa.dropped_replay > 100, "{sa:?}");
    assert_eq!(sa.dropped_source, 0, "{sa:?}");
    let sb = b.stats();
    assert!(sb.dropped_source >= 1000, "{sb:?}");
    assert_eq!(
        sb.dropped_malformed + sb.dropped_auth + sb.dropped_replay,
        0,
        "{sb:?}"
    );
}

#[test]
fn repair_of_versions_that_do_not_exist_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let publisher = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = publisher.database("ledger").unwrap();
    for i in 0..10u32 {
        db.put(format!("k{i}"), b"v").unwrap();
    }
    let mut client = repair_client(&publisher, "ledger", "tester", "");
    let info = client.hello().unwrap();
    assert_eq!(info.current_version, 10);
    let err = client.catch_up(&[(1000, 2000)], |_| Ok(())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert!(
        err.to_string().contains("1000..=2000 do not exist"),
        "{err}"
    );
    // The session is still usable after reconnecting, and serves what exists.
    let mut got = Vec::new();
    let out = client
        .catch_up(&[(3, 5)], |b| {
            got.push(mcsync::wire::update::peek_version(b).unwrap());
            Ok(())
        })
        .unwrap();
    assert_eq!(got, vec![3, 4, 5]);
    assert_eq!(out.current_version, 10);
    // Unknown database.
    let mut c2 = repair_client(&publisher, "nope", "tester", "");
    let err = c2.hello().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert!(err.to_string().contains("not published"), "{err}");
    assert!(publisher.stats().repair_errors >= 2);
}

#[test]
fn garbage_on_the_control_port_does_not_hurt_the_publisher() {
    let dir = tempfile::tempdir().unwrap();
    let publisher = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = publisher.database("d").unwrap();
    db.put("a", "1").unwrap();
    for payload in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0xFF; 64][..],
        &[0, 0, 0, 3, 9, 9, 9][..],
    ] {
        let mut s = std::net::TcpStream::connect(publisher.control_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(payload).unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        assert!(
            !reply.is_empty(),
            "an error frame comes back for {payload:?}"
        );
    }
    // Still serving.
    let s = open_subscriber(&dir.path().join("sub"), &publisher, None);
    let sub = s.subscribe("d", |_| {}).unwrap();
    let v = db.put("b", "2").unwrap();
    sub.wait_for_version(v, CONVERGE).unwrap();
    assert_eq!(sub.get("b").unwrap().as_deref(), Some(&b"2"[..]));
    assert!(publisher.stats().repair_errors >= 3);
}

#[test]
fn a_publish_over_the_maximum_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = publisher_config(&dir.path().join("pub"));
    cfg.max_update_bytes = 64 * 1024;
    let publisher = Publisher::open(cfg).unwrap();
    let db = publisher.database("big").unwrap();
    db.put("small", "ok").unwrap();
    let err = db.put("huge", vec![7u8; 100 * 1024]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge);
    assert!(err.to_string().contains("maximum is 65536"), "{err}");
    let mut t = db.transaction();
    t.put("x", vec![1u8; 40 * 1024]).unwrap();
    assert_eq!(
        t.put("y", vec![1u8; 40 * 1024]).unwrap_err().kind(),
        ErrorKind::TooLarge
    );
    drop(t);
    assert_eq!(db.version(), 1);
    assert_eq!(db.get("huge").unwrap(), None);
    assert_eq!(db.get("x").unwrap(), None);
    assert_eq!(db.snapshot().unwrap().len(), 1);
    assert_eq!(publisher.stats().commits_refused, 2);
    // An empty key is invalid; a key over LMDB's limit is too large, like a value.
    assert_eq!(db.put("", "v").unwrap_err().kind(), ErrorKind::Config);
    let err = db.put(vec![b'k'; 600], "v").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
    assert!(
        err.to_string().contains("key of 600 bytes exceeds 511"),
        "{err}"
    );
}

#[test]
fn one_sealed_packet_far_ahead_does_not_stop_reception() {
    use mcsync::wire::packet::PacketHeader;
    let dir = tempfile::tempdir().unwrap();
    let publisher = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = publisher.database("prices").unwrap();
    // SECURITY.md assumes a key holder may spoof the publisher's source: no source check.
    let mut c = subscriber_config(&dir.path().join("sub"), &publisher, None);
    c.verify_source = false;
    let s = Subscriber::open(c).unwrap();
    let sub = s.subscribe("prices", |_| {}).unwrap();
    let spy = sniffer(db.group());
    spy.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut v = db.put("p", "0").unwrap();
    let mut buf = vec![0u8; 65536];
    let n = spy.recv(&mut buf).unwrap();
    let (genuine, _) = PacketHeader::parse(&buf[..n]).unwrap();
    sub.wait_for_version(v, CONVERGE).unwrap();
    // A registered user holds the key and seals one packet 2^40 ahead of the stream.
    let info = repair_client(&publisher, "prices", "mallory", "")
        .hello()
        .unwrap();
    let mut keyring = mcsync::crypto::Keyring::default();
    for (epoch, key) in &info.keys {
        keyring.insert(*epoch, key);
    }
    let mut forged = genuine;
    forged.seq = genuine.seq + (1 << 40);
    let mut datagram = Vec::new();
    assert!(keyring.seal(forged, b"anything at all", &mut datagram));
    let attacker = mcsync::net::socket::sender_socket(Ipv4Addr::LOCALHOST, 1, true).unwrap();
    attacker.send_to(&datagram, db.group()).unwrap();
    wait_until(CONVERGE, || sub.stats().dropped_far >= 1);
    let before = sub.stats();
    for i in 0..300u32 {
        v = db.put(format!("p{}", i % 20), i.to_be_bytes()).unwrap();
    }
    sub.wait_for_version(v, CONVERGE).unwrap();
    assert_eq!(
        sub.iter().unwrap().collect::<Vec<_>>(),
        db.snapshot().unwrap()
    );
    let after = sub.stats();
    // The genuine stream was still taken from multicast, not dropped as too old: nothing
    // was dropped as a replay, and nothing had to be repaired or caught up. (How many
    // datagrams carried the 300 updates depends on how many commits queued up behind one
    // another and were bundled.)
    assert_eq!(after.dropped_replay, before.dropped_replay, "{after:?}");
    assert!(after.chains_received > before.chains_received, "{after:?}");
    assert_eq!(
        (
            after.packets_repaired,
            after.repair_updates,
            after.catchups_journal,
            after.catchups_compacted
        ),
        (
            before.packets_repaired,
            before.repair_updates,
            before.catchups_journal,
            before.catchups_compacted
        ),
        "{after:?}"
    );
}
