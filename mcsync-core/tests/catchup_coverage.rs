//! The subscriber's control client against a scripted publisher (plaintext loopback): a
//! catch-up or compacted catch-up answer that skips versions is refused with a protocol
//! error naming the versions, the updates before the hole are handed on and nothing after
//! it, and `last_gap` says where; HELLO_OK and STATUS carry the incarnation.

use mcsync::net::repair_client::{ClientIdentity, CoverageGap, RepairClient, StatusInfo};
use mcsync::net::tls::ClientTls;
use mcsync::wire::control::{DatabaseInfo, Message};
use mcsync::wire::update::{peek_version, update_to_vec};
use mcsync::{ErrorKind, Op, Secret, ServerTrust, Update};
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

const INCARNATION: u64 = 0x1234_5678_9abc_def0;
const STREAM: u32 = 77;
const CURRENT: u64 = 10;

/// An encoded update at `version`.
fn update(version: u64) -> Vec<u8> {
    update_to_vec(&Update {
        version,
        timestamp_us: version,
        ops: vec![Op::put(format!("k{version}"), "v")],
        reset: false,
    })
}

fn journal(versions: &[u64]) -> Vec<Message> {
    versions
        .iter()
        .map(|&v| Message::CatchupUpdate(update(v)))
        .collect()
}

fn chunk(first: u64, last: u64) -> Message {
    Message::CompactUpdate {
        first,
        update: update(last),
    }
}

fn end() -> Message {
    Message::CatchupEnd {
        current_version: CURRENT,
    }
}

/// A publisher that answers HELLO and STATUS, and each catch-up request with the next of
/// `answers` (frames sent as they are). It serves one connection after another (the
/// client drops its connection after a refused answer and opens a new one).
fn scripted_publisher(answers: Vec<Vec<Message>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        let mut answers = answers.into_iter();
        for conn in listener.incoming() {
            let Ok(tcp) = conn else { return };
            let mut w = tcp.try_clone().expect("clone");
            let mut r = BufReader::new(tcp);
            while let Ok(Some((m, _))) = mcsync::net::frame::read_message(&mut r, 1 << 20) {
                let reply = match m {
                    Message::Hello { .. } => vec![Message::HelloOk(DatabaseInfo {
                        group: "239.1.2.3:4000".parse().expect("group"),
                        source: "127.0.0.1:5000".parse().expect("source"),
                        encrypted: true,
                        keys: Vec::new(),
                        older_keys_below: u64::MAX,
                        groups: Vec::new(),
                        current_version: CURRENT,
                        oldest_version: 1,
                        subscriber_id: 1,
                        incarnation: INCARNATION,
                        stream_id: STREAM,
                        push: Default::default(),
                    })],
                    Message::StatusRequest => vec![Message::Status {
                        current_version: CURRENT,
                        oldest_version: 1,
                        incarnation: INCARNATION,
                    }],
                    Message::CatchupRequest { .. } | Message::CompactRequest { .. } => {
                        answers.next().expect("a scripted answer")
                    }
                    other => panic!("unexpected request {other:?}"),
                };
                for m in reply {
                    if mcsync::net::frame::write_message(&mut w, &m).is_err() {
                        break;
                    }
                }
                let _ = w.flush();
            }
        }
    });
    addr
}

fn client(addr: SocketAddr) -> RepairClient {
    let id = ClientIdentity {
        server: addr,
        tls: ClientTls::new(&ServerTrust::InsecureLoopback, addr, None).expect("tls"),
        user: "u".into(),
        secret: Secret::new("s"),
        client_name: "coverage-test".into(),
    };
    RepairClient::new(id, "db", Duration::from_secs(30), 1 << 20)
}

/// Runs a catch-up (`ranges`) or, if `compact`, a compacted catch-up of the one range;
/// returns the result and the versions handed on.
fn run(
    c: &mut RepairClient,
    compact: Option<(u64, u64)>,
    ranges: &[(u64, u64)],
) -> (mcsync::Result<u64>, Vec<u64>) {
    let mut seen = Vec::new();
    let on = |b: &[u8]| {
        seen.push(peek_version(b).expect("version"));
        Ok(())
    };
    let r = match compact {
        Some((a, b)) => c.compact(a, b, on),
        None => c.catch_up(ranges, on),
    };
    (r.map(|o| o.current_version), seen)
}

#[test]
fn hello_ok_and_status_carry_the_incarnation_and_stream() {
    let mut c = client(scripted_publisher(Vec::new()));
    let info = c.hello().expect("hello");
    assert_eq!((info.incarnation, info.stream_id), (INCARNATION, STREAM));
    assert_eq!(
        c.status().expect("status"),
        StatusInfo {
            current_version: CURRENT,
            oldest_version: 1,
            incarnation: INCARNATION,
        }
    );
}

#[test]
fn compacted_answer_that_skips_a_trimmed_stretch_is_refused() {
    let addr = scripted_publisher(vec![
        vec![chunk(1, 3), chunk(6, 8), chunk(9, 10), end()],
        vec![chunk(1, 3), chunk(4, 8), chunk(9, 10), end()],
    ]);
    let mut c = client(addr);
    let (r, seen) = run(&mut c, Some((1, 10)), &[]);
    let e = r.expect_err("a skipping answer is refused");
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(e.to_string().contains("expected version 4"), "{e}");
    assert!(e.to_string().contains("received version 6"), "{e}");
    assert_eq!(
        seen,
        vec![3],
        "only the chunk before the hole was handed on"
    );
    assert_eq!(
        c.last_gap(),
        Some(CoverageGap {
            expected: Some(4),
            received: Some(6),
        })
    );
    assert_eq!(
        c.last_refusal(),
        None,
        "not an ERROR frame from the publisher"
    );
    // The next request starts clean (a new connection, no gap).
    let (r, seen) = run(&mut c, Some((1, 10)), &[]);
    assert_eq!(r.expect("contiguous answer"), CURRENT);
    assert_eq!(seen, vec![3, 8, 10]);
    assert_eq!(c.last_gap(), None);
}

#[test]
fn compacted_answer_not_starting_at_the_first_version_is_refused() {
    let mut c = client(scripted_publisher(vec![vec![chunk(2, 5), end()]]));
    let (r, seen) = run(&mut c, Some((1, 10)), &[]);
    assert_eq!(r.expect_err("refused").kind(), ErrorKind::Protocol);
    assert!(seen.is_empty());
    assert_eq!(
        c.last_gap(),
        Some(CoverageGap {
            expected: Some(1),
            received: Some(2),
        })
    );
}

#[test]
fn compacted_answer_ending_short_of_the_latest_is_refused() {
    let mut c = client(scripted_publisher(vec![vec![chunk(1, 7), end()]]));
    let (r, seen) = run(&mut c, Some((1, 10)), &[]);
    assert_eq!(r.expect_err("refused").kind(), ErrorKind::Protocol);
    assert_eq!(seen, vec![7]);
    assert_eq!(
        c.last_gap(),
        Some(CoverageGap {
            expected: Some(8),
            received: None,
        })
    );
}

#[test]
fn compacted_answer_of_unchunked_updates_is_refused() {
    // CATCHUP_UPDATE names no first version: a compacted answer must not use it.
    let mut c = client(scripted_publisher(vec![vec![
        Message::CatchupUpdate(update(10)),
        end(),
    ]]));
    let (r, seen) = run(&mut c, Some((1, 10)), &[]);
    assert_eq!(r.expect_err("refused").kind(), ErrorKind::Protocol);
    assert!(seen.is_empty());
}

#[test]
fn catch_up_with_a_hole_is_refused_at_the_hole() {
    let mut c = client(scripted_publisher(vec![journal(&[2, 3, 5, 6])]));
    let (r, seen) = run(&mut c, None, &[(2, 6)]);
    let e = r.expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert_eq!(seen, vec![2, 3]);
    assert_eq!(
        c.last_gap(),
        Some(CoverageGap {
            expected: Some(4),
            received: Some(5),
        })
    );
}

#[test]
fn catch_up_starting_late_is_refused() {
    // The resync journal tail is such a catch-up (snapshot version + 1 onwards).
    let mut c = client(scripted_publisher(vec![journal(&[6, 7, 8, 9, 10])]));
    let (r, seen) = run(&mut c, None, &[(5, 10)]);
    assert_eq!(r.expect_err("refused").kind(), ErrorKind::Protocol);
    assert!(seen.is_empty());
    assert_eq!(
        c.last_gap(),
        Some(CoverageGap {
            expected: Some(5),
            received: Some(6),
        })
    );
}

#[test]
fn catch_up_ending_before_the_range_is_covered_is_refused() {
    let mut c = client(scripted_publisher(vec![{
        let mut m = journal(&[3, 4]);
        m.push(end());
        m
    }]));
    let (r, seen) = run(&mut c, None, &[(3, 6)]);
    assert_eq!(r.expect_err("refused").kind(), ErrorKind::Protocol);
    assert_eq!(seen, vec![3, 4]);
    assert_eq!(
        c.last_gap(),
        Some(CoverageGap {
            expected: Some(5),
            received: None,
        })
    );
}

#[test]
fn catch_up_of_several_ranges_capped_at_the_latest_passes() {
    let mut c = client(scripted_publisher(vec![{
        let mut m = journal(&[2, 3, 7, 8, 9, 10]);
        m.push(end());
        m
    }]));
    let (r, seen) = run(&mut c, None, &[(2, 3), (7, 20)]);
    assert_eq!(r.expect("covered"), CURRENT);
    assert_eq!(seen, vec![2, 3, 7, 8, 9, 10]);
    assert_eq!(c.last_gap(), None);
}
