//! The multicaster's backlog is capped (issue 14 item 5): commits far faster than the paced
//! multicast rate cost bounded memory, subscribers catch up from the journal, and
//! `close()` returns promptly instead of pacing out the whole backlog.

use mcsync::{Publisher, Subscriber};
use mcsync_tests::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Anonymous resident memory of this process (heap, not LMDB's file-backed map), bytes.
fn rss_anon() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .expect("RssAnon in /proc/self/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

const MIB: u64 = 1 << 20;

/// Commits `n` updates of 64 KiB of incompressible bytes as fast as the journal takes them,
/// checking the backlog gauge as it goes. Returns the last version and the peak anonymous
/// RSS seen.
fn flood(p: &Publisher, db: &mcsync::Database, n: u32, rng: &mut StdRng) -> (u64, u64) {
    let cap = mcsync::config::DEFAULT_MAX_BACKLOG_BYTES as u64;
    let mut value = vec![0u8; 64 << 10];
    let mut last = 0;
    let mut rss_peak = rss_anon();
    for i in 0..n {
        rng.fill(&mut value[..]);
        last = db.put(format!("blob-{:03}", i % 256), &value).unwrap();
        if i % 16 == 15 {
            rss_peak = rss_peak.max(rss_anon());
            let backlog = p.stats().backlog_bytes;
            assert!(backlog <= cap, "backlog of {backlog} bytes");
        }
    }
    let st = p.stats();
    println!(
        "backlog peak {:.2} MiB (cap {} MiB); {} of {} updates left to the journal so far",
        st.backlog_bytes_peak as f64 / MIB as f64,
        cap / MIB,
        st.updates_skipped_backlog,
        st.updates_committed
    );
    assert!(st.backlog_bytes_peak <= cap, "{st:?}");
    (last, rss_peak)
}

#[test]
fn commits_far_above_the_paced_rate_keep_memory_bounded_and_close_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = publisher_config(&dir.path().join("pub"));
    // 200 packets/s of at most 1,360 bytes: about 270 KB/s, so the 104 MiB committed below
    // would take nearly seven minutes to multicast.
    cfg.multicast.max_packets_per_sec = 200;
    let p = Publisher::open(cfg).unwrap();
    let db = p.database("flood").unwrap();
    let mut rng = StdRng::seed_from_u64(14);

    // 64 MiB with nobody subscribed, so the memory measured is the publisher's.
    db.put("warm-up", "1").unwrap();
    let rss0 = rss_anon();
    let t0 = Instant::now();
    let (_, rss_peak) = flood(&p, &db, 1_024, &mut rng);
    let growth = rss_peak.saturating_sub(rss0);
    println!(
        "committed 64 MiB in {:.2?}; anonymous RSS {:.1} MiB before, peak {:.1} MiB \
         (growth {:.1} MiB)",
        t0.elapsed(),
        rss0 as f64 / MIB as f64,
        rss_peak as f64 / MIB as f64,
        growth as f64 / MIB as f64,
    );
    assert!(
        growth < 32 * MIB,
        "memory grew by {:.1} MiB while 64 MiB were committed",
        growth as f64 / MIB as f64
    );
    assert!(p.stats().updates_skipped_backlog > 500, "{:?}", p.stats());

    // A subscriber (step by step, not compacted, so every version is called back) catches
    // up from the journal, then lives through 32 MiB more: what multicast skips, it fetches
    // from the journal as soon as a later chain or a heartbeat shows it a newer version.
    let mut sc = subscriber_config(&dir.path().join("sub"), &p, None);
    sc.compact_catch_up_after = u64::MAX;
    let s = Subscriber::open(sc).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let sub = s
        .subscribe("flood", move |u| seen2.lock().unwrap().push(u.version))
        .unwrap();
    sub.wait_for_version(db.version(), CONVERGE).unwrap();
    let skipped = p.stats().updates_skipped_backlog;
    let t1 = Instant::now();
    let (last, _) = flood(&p, &db, 512, &mut rng);
    sub.wait_for_version(last, CONVERGE).unwrap();
    println!(
        "subscriber at version {last} {:.2?} after the second flood began",
        t1.elapsed()
    );
    assert!(
        p.stats().updates_skipped_backlog > skipped,
        "{:?}",
        p.stats()
    );
    assert!(sub.iter().unwrap().collect::<Vec<_>>() == db.snapshot().unwrap());
    assert_versions(&seen.lock().unwrap(), 1..=last);
    println!("publisher {:?}", p.stats());
    println!("subscriber {:?}", sub.stats());

    // More, and close at once: what is queued (several seconds at this rate) is paced out
    // for a short while at most, the rest is in the journal. The backlog is a sawtooth (a
    // full one is skipped to the journal all at once), so commit until more than 2 MiB wait
    // rather than a fixed count that may end just after a skip.
    flood(&p, &db, 64, &mut rng);
    let mut value = vec![0u8; 64 << 10];
    for i in 0.. {
        if p.stats().backlog_bytes > 2 * MIB {
            break;
        }
        assert!(i < 1_024, "the backlog never passed 2 MiB: {:?}", p.stats());
        rng.fill(&mut value[..]);
        db.put(format!("tail-{:03}", i % 256), &value).unwrap();
    }
    let waiting = p.stats().backlog_bytes;
    println!(
        "closing with {:.2} MiB waiting to be multicast",
        waiting as f64 / MIB as f64
    );
    assert!(waiting > 2 * MIB, "{:?}", p.stats());
    let t = Instant::now();
    p.close().unwrap();
    let took = t.elapsed();
    println!("close() took {took:.2?}");
    assert!(took < Duration::from_secs(10), "close() took {took:?}");
    assert_eq!(p.stats().backlog_bytes, 0);
}
