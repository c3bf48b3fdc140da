//! Key epochs under races: a HELLO in flight during a revocation, the previous epoch's
//! bounded grace, and rotations from many threads at once.

use mcsync::auth::{Authenticator, Grant};
use mcsync::crypto::Keyring;
use mcsync::proto::ChainBuilder;
use mcsync::wire::packet::{Compression, PacketHeader, PacketKind};
use mcsync::wire::update::{encode_bundle, encode_update};
use mcsync::{Authentication, ErrorKind, Op, Publisher, Subscriber, Update};
use mcsync_tests::*;
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const DB: &str = "prices";

/// An authenticator that grants everyone, but holds "mallory" until the test lets go.
struct Gate {
    entered: mpsc::Sender<()>,
    go: Mutex<mpsc::Receiver<()>>,
}

impl Authenticator for Gate {
    fn authenticate(&self, user: &str, _: &str, _: SocketAddr) -> Result<Grant, String> {
        if user == "mallory" {
            let _ = self.entered.send(());
            let _ = self
                .go
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(60));
        }
        Ok(Grant {
            databases: None,
            groups: Vec::new(),
            participant: false,
        })
    }
}

#[test]
fn a_hello_in_flight_during_revocation_gets_no_key_and_no_registration() {
    let dir = tempfile::tempdir().unwrap();
    let (entered_tx, entered) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    let mut cfg = publisher_config(&dir.path().join("pub"));
    cfg.authentication = Authentication::Custom(Arc::new(Gate {
        entered: entered_tx,
        go: Mutex::new(go_rx),
    }));
    let p = Publisher::open(cfg).unwrap();
    let db = p.database(DB).unwrap();
    db.put("k", "v").unwrap();
    let before = db.key_epoch();
    let mut client = repair_client(&p, DB, "mallory", "pw");
    let hello = std::thread::spawn(move || client.hello());
    // Mallory's password is being checked (slowly) when the revocation lands.
    entered.recv_timeout(CONVERGE).unwrap();
    p.revoke("mallory").unwrap();
    assert!(db.key_epoch() > before);
    go.send(()).unwrap();
    match hello.join().unwrap() {
        Err(e) => assert_eq!(e.kind(), ErrorKind::Auth, "{e}"),
        Ok(info) => panic!(
            "a revoked user registered and got key epochs {:?} (rotated to {})",
            info.keys.iter().map(|k| k.0).collect::<Vec<_>>(),
            db.key_epoch()
        ),
    }
    assert!(p.subscribers().iter().all(|r| r.user != "mallory"));
    assert!(p.stats().auth_failures >= 1);
}

fn sniffer(group: SocketAddr) -> UdpSocket {
    let (s, _) = mcsync::net::socket::receiver_socket(group, Ipv4Addr::LOCALHOST, 1 << 20).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// The next data packet on `spy` sealed under `epoch`.
fn data_packet_of_epoch(spy: &UdpSocket, epoch: u32, mut nudge: impl FnMut()) -> PacketHeader {
    let mut buf = vec![0u8; 65_536];
    let deadline = Instant::now() + CONVERGE;
    loop {
        assert!(
            Instant::now() < deadline,
            "no data packet under epoch {epoch}"
        );
        nudge();
        while let Ok(n) = spy.recv(&mut buf) {
            let (h, _) = PacketHeader::parse(&buf[..n]).unwrap();
            if h.kind == PacketKind::Data && h.key_epoch == epoch {
                return h;
            }
        }
    }
}

#[test]
fn a_revoked_users_old_key_no_longer_seals_packets_replicas_accept() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = p.database(DB).unwrap();
    // SECURITY.md assumes a key holder may spoof the publisher's source: no source check.
    let mut c = subscriber_config(&dir.path().join("sub"), &p, None);
    c.verify_source = false;
    let s = Subscriber::open(c).unwrap();
    let sub = s.subscribe(DB, |_| {}).unwrap();
    let mut v = db.put("p", "genuine 0").unwrap();
    sub.wait_for_version(v, CONVERGE).unwrap();
    // Mallory registers, keeps the key, and is revoked.
    let info = repair_client(&p, DB, "mallory", "").hello().unwrap();
    let mut stolen = Keyring::default();
    for (epoch, key) in &info.keys {
        stolen.insert(*epoch, key);
    }
    let old = info.key_epoch();
    let spy = sniffer(db.group());
    p.revoke("mallory").unwrap();
    let new = db.key_epoch();
    assert!(new > old);
    // The replica follows the rotation (it re-registers and holds both epochs).
    let genuine = data_packet_of_epoch(&spy, new, || {
        v = db.put("p", format!("genuine {}", v + 1)).unwrap();
    });
    sub.wait_for_version(v, CONVERGE).unwrap();
    wait_until(CONVERGE, || sub.stats().key_epoch == u64::from(new));
    // Mallory seals the next version under the old epoch, a little ahead of the stream.
    let forged_version = db.version() + 1;
    let mut encoded = Vec::new();
    encode_update(
        &Update {
            version: forged_version,
            timestamp_us: 1,
            ops: vec![Op::put("mallory", "was here")],
            reset: false,
        },
        &mut encoded,
    );
    let mut chain = Vec::new();
    encode_bundle(std::iter::once(encoded.as_slice()), &mut chain);
    let mut packets = Vec::new();
    ChainBuilder::new(genuine.stream_id, old, 1_400).build(&chain, Compression::None, &mut packets);
    let mut forged = packets.remove(0);
    forged.header.seq = genuine.seq + 40;
    let mut datagram = Vec::new();
    assert!(stolen.seal(forged.header, &forged.payload, &mut datagram));
    let attacker = mcsync::net::socket::sender_socket(Ipv4Addr::LOCALHOST, 1, true).unwrap();
    let dropped = sub.stats().dropped_retired_key;
    attacker.send_to(&datagram, db.group()).unwrap();
    wait_until(CONVERGE, || {
        sub.stats().dropped_retired_key > dropped || sub.version() >= forged_version
    });
    for i in 0..50u32 {
        v = db.put("p", format!("genuine after {i}")).unwrap();
    }
    db.put("q", "last").unwrap();
    v += 1;
    sub.wait_for_version(v, CONVERGE).unwrap();
    assert_eq!(
        sub.iter().unwrap().collect::<Vec<_>>(),
        db.snapshot().unwrap(),
        "the replica took a packet sealed under a revoked key"
    );
    assert!(
        sub.stats().dropped_retired_key > dropped,
        "{:?}",
        sub.stats()
    );
}

#[test]
fn concurrent_rotations_move_one_way_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = Arc::new(Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap());
    let db = p.database(DB).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = open_subscriber(&dir.path().join("sub"), &p, None);
    let log = seen.clone();
    let sub = s
        .subscribe(DB, move |u| log.lock().unwrap().push(u.version))
        .unwrap();
    let start = db.key_epoch();
    let rotators: Vec<_> = (0..4)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                let db = p.database(DB).unwrap();
                let mut epochs = Vec::new();
                for i in 0..40 {
                    if t == 0 && i % 10 == 0 {
                        p.revoke(&format!("nobody-{i}")).unwrap();
                    } else {
                        epochs.push(db.rotate_key().unwrap());
                    }
                }
                epochs
            })
        })
        .collect();
    let mut v = 0;
    for i in 0..600u32 {
        v = db.put(format!("k{}", i % 50), i.to_be_bytes()).unwrap();
    }
    let epochs: Vec<u32> = rotators
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    for i in 0..100u32 {
        v = db.put(format!("k{}", i % 50), i.to_be_bytes()).unwrap();
    }
    let distinct: HashSet<_> = epochs.iter().collect();
    assert_eq!(distinct.len(), epochs.len(), "an epoch was drawn twice");
    let newest = *epochs.iter().max().unwrap();
    assert!(newest > start);
    assert!(
        db.key_epoch() >= newest,
        "the current epoch went back: {} < {newest}",
        db.key_epoch()
    );
    sub.wait_for_version(v, CONVERGE).unwrap();
    assert_eq!(
        sub.iter().unwrap().collect::<Vec<_>>(),
        db.snapshot().unwrap()
    );
    let versions = seen.lock().unwrap().clone();
    assert_eq!(
        versions,
        (1..=v).collect::<Vec<_>>(),
        "each version once, in order"
    );
    // The multicaster sealed under every epoch it was asked to, never without a key.
    assert_eq!(p.stats().send_errors, 0, "{:?}", p.stats());
    let last = db.key_epoch();
    wait_until(CONVERGE, || {
        db.put("tick", "x").unwrap();
        sub.stats().key_epoch == u64::from(last)
    });
}
