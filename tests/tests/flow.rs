//! Pacing, the subscriber error policy, reports and adaptation, latency statistics.

use mcsync::{Publisher, Subscriber};
use mcsync_tests::*;
use rand::Rng;
use std::time::{Duration, Instant};

/// Commits 8 MB of incompressible data to a publisher configured by `configure`, waits
/// until `sent` (a counter of `PublisherStats`) grew by `target`, and returns its rate per
/// second over that time.
fn paced_rate(
    configure: impl FnOnce(&mut mcsync::MulticastConfig),
    sent: fn(&mcsync::PublisherStats) -> u64,
    target: u64,
) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = publisher_config(&dir.path().join("pub"));
    configure(&mut cfg.multicast);
    let p = Publisher::open(cfg).unwrap();
    let db = p.database("paced").unwrap();
    let mut rng = rand::thread_rng();
    let t0 = Instant::now();
    let before = sent(&p.stats());
    let mut t = db.transaction();
    for i in 0..80 {
        let mut v = vec![0u8; 100_000];
        rng.fill(&mut v[..]);
        t.put(format!("blob-{i}"), v).unwrap();
    }
    t.commit().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent(&p.stats()) < before + target {
        assert!(Instant::now() < deadline, "{:?}", p.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
    (sent(&p.stats()) - before) as f64 / t0.elapsed().as_secs_f64()
}

// The property of both pacing tests: never faster than configured (the pacer's burst is
// small). How close it comes from below depends on the CPU it gets on a shared machine;
// `mcsync bench` measures that, not these tests (they only require that everything went
// out).

#[test]
fn pacing_holds_the_configured_packet_rate() {
    // About 6,000 packets: three seconds at 2,000 packets/s.
    let rate = paced_rate(
        |m| {
            m.max_packets_per_sec = 2_000;
            m.max_bytes_per_sec = 0;
        },
        |s| s.packets_sent,
        5_000,
    );
    println!("paced at {rate:.0} packets/s (configured 2,000)");
    assert!(rate <= 2_200.0, "rate {rate:.0} packets/s");
}

#[test]
fn pacing_holds_the_configured_byte_rate() {
    // 8 MB: four seconds at 2 MB/s. `bytes_sent` counts whole datagrams, the pacer payload
    // bytes: headers and tags add about 3 % at 1,400-byte datagrams.
    let rate = paced_rate(
        |m| {
            m.max_packets_per_sec = 0;
            m.max_bytes_per_sec = 2_000_000;
        },
        |s| s.bytes_sent,
        6_000_000,
    );
    println!("paced at {rate:.0} bytes/s (configured 2,000,000 payload bytes/s)");
    assert!(rate <= 2_300_000.0, "rate {rate:.0} bytes/s");
}

#[test]
fn a_lossy_subscriber_reregisters_backs_off_to_unicast_and_rejoins_without_losing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = p.database("policy").unwrap();
    let mut c = subscriber_config(&dir.path().join("lossy"), &p, Some((0.5, 11)));
    c.report_interval = Duration::from_millis(200);
    c.unicast_backoff = Duration::from_millis(1_500);
    let lossy = Subscriber::open(c).unwrap();
    let sub = lossy.subscribe("policy", |_| {}).unwrap();
    let clean = open_subscriber(&dir.path().join("clean"), &p, None);
    let csub = clean.subscribe("policy", |_| {}).unwrap();
    let t0 = Instant::now();
    let mut last = 0;
    let mut i = 0u32;
    // While backed off it receives nothing by multicast, although another subscriber of
    // the same process is still in the group. Checked in whichever back-off this loop
    // happens to observe for long enough (it backs off again after each rejoin, so a
    // loaded machine that skips through one gets another).
    let mut episode: Option<(u64, Instant, Option<u64>)> = None;
    let mut checked_silence = false;
    while t0.elapsed() < Duration::from_secs(4) || sub.stats().rejoins == 0 || !checked_silence {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "never observed a back-off long enough: {:?}",
            sub.stats()
        );
        let st = sub.stats();
        let backed_off = st.unicast_backoffs > st.rejoins;
        match &mut episode {
            Some((n, since, first)) if backed_off && *n == st.unicast_backoffs => {
                let waited = since.elapsed();
                if first.is_none() && waited >= Duration::from_millis(300) {
                    *first = Some(st.packets_received);
                } else if let Some(first) = *first {
                    if waited >= Duration::from_millis(900) && !checked_silence {
                        // Still the same back-off (counted after reading the counter).
                        if sub.stats().rejoins == st.rejoins {
                            assert_eq!(st.packets_received, first, "{st:?}");
                            checked_silence = true;
                        }
                    }
                }
            }
            _ if backed_off => episode = Some((st.unicast_backoffs, Instant::now(), None)),
            _ => episode = None,
        }
        last = db
            .put(format!("k{}", i % 500), format!("value {i}"))
            .unwrap();
        i += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    sub.wait_for_version(last, CONVERGE).unwrap();
    csub.wait_for_version(last, CONVERGE).unwrap();
    assert_eq!(
        sub.iter().unwrap().collect::<Vec<_>>(),
        db.snapshot().unwrap()
    );
    let st = sub.stats();
    println!("{st:?}");
    assert!(
        st.resubscriptions >= 1 && st.unicast_backoffs >= 1 && st.rejoins >= 1,
        "{st:?}"
    );
    assert!(st.reports_sent >= 5, "{st:?}");
    assert!(
        checked_silence,
        "never observed the back-off long enough: {st:?}"
    );
    let ps = p.stats();
    assert!(ps.reports_received >= 5, "{ps:?}");
    // The clean subscriber's reports keep the publisher from quiescing, and latency is
    // measured from commit to apply.
    let cs = csub.stats();
    assert!(
        cs.latency_p50_us > 0 && cs.latency_p99_us >= cs.latency_p50_us,
        "{cs:?}"
    );
}
