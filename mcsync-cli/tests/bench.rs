//! `mcsync bench --quick` runs on loopback and writes bench.json with every section, and
//! the plots.

use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

fn num(v: &Value, field: &str) -> f64 {
    v.get(field)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{field} is not a number in {v}"))
}

fn positive(v: &Value, fields: &[&str]) {
    for f in fields {
        let x = num(v, f);
        assert!(x.is_finite() && x > 0.0, "{f} = {x} is not positive in {v}");
    }
}

fn rows<'a>(j: &'a Value, section: &str, n: usize) -> &'a Vec<Value> {
    let r = j[section]
        .as_array()
        .unwrap_or_else(|| panic!("section {section} missing"));
    assert_eq!(r.len(), n, "section {section} has {} rows", r.len());
    r
}

#[test]
fn bench_quick_writes_every_section() {
    let out = tempfile::tempdir().expect("temp dir");
    let t0 = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_mcsync"))
        .args(["bench", "--quick", "--out"])
        .arg(out.path())
        .output()
        .expect("run mcsync bench");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "mcsync bench --quick failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("mcsync bench --quick took {:?}", t0.elapsed());
    assert!(
        t0.elapsed() < Duration::from_secs(120),
        "quick bench took {:?}",
        t0.elapsed()
    );
    for heading in [
        "(a) Throughput",
        "(b) Latency",
        "(c) Publisher egress",
        "(d) Repair",
        "(e) Unicast-only",
    ] {
        assert!(
            stdout.contains(heading),
            "table {heading:?} missing:\n{stdout}"
        );
    }

    let j: Value = serde_json::from_slice(
        &std::fs::read(out.path().join("bench.json")).expect("bench.json written"),
    )
    .expect("bench.json parses");
    assert_eq!(j["quick"], Value::Bool(true));
    positive(&j["machine"], &["nproc"]);

    for r in rows(&j, "throughput", 9) {
        positive(
            r,
            &[
                "subscribers",
                "value_bytes",
                "updates",
                "updates_per_s",
                "mb_per_s",
                "raw_updates_per_s",
                "raw_mb_per_s",
                "fraction_of_raw",
                "raw_same_datagram_updates_per_s",
                "fraction_of_raw_same_datagram",
                "journal_commits",
                "packets_sent",
            ],
        );
    }
    for r in rows(&j, "publisher_threads", 4) {
        positive(
            r,
            &[
                "publisher_threads",
                "updates_per_s",
                "updates_per_journal_commit",
            ],
        );
    }

    let l = &j["latency"];
    positive(
        l,
        &[
            "offered_per_s",
            "achieved_per_s",
            "samples",
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "max_us",
            "commit_p50_us",
        ],
    );
    assert!(num(l, "p50_us") <= num(l, "p99_us") && num(l, "p99_us") <= num(l, "p999_us"));
    positive(
        &l["tail_loss"],
        &[
            "heartbeat_initial_us",
            "trials",
            "lost_samples",
            "lost_p50_us",
            "lossless_samples",
            "lossless_p50_us",
            "target_us",
        ],
    );

    for r in rows(&j, "unicast", 5) {
        positive(
            r,
            &[
                "subscribers",
                "updates_per_s",
                "egress_bytes_per_update",
                "stream_bytes_per_update",
                "egress_ratio",
                "p50_us",
                "p99_us",
            ],
        );
        match r["mode"].as_str() {
            Some("unicast") => positive(r, &["unicast_bytes"]),
            Some("polling") => positive(r, &["status_polls", "repair_bytes"]),
            Some("multicast") => assert_eq!(num(r, "unicast_bytes"), 0.0, "{r}"),
            other => panic!("mode {other:?} in {r}"),
        }
    }
    for r in rows(&j, "fanout", 4) {
        positive(
            r,
            &[
                "subscribers",
                "encoded_bytes_per_update",
                "bytes_per_update",
                "multicast_bytes",
                "ratio_to_one_subscriber",
                "updates_per_s",
                "tcp_bytes_per_update",
                "tcp_updates_per_s",
            ],
        );
    }

    for r in rows(&j, "repair", 5) {
        positive(r, &["updates", "updates_per_s", "throughput_kept"]);
        // At 0.1 % a quick run may lose nothing; from 1 % on it always loses something.
        if num(r, "loss") >= 0.01 {
            positive(
                r,
                &[
                    "lost_packets",
                    "lost_bytes",
                    "repair_bytes",
                    "repair_fraction",
                ],
            );
        }
    }

    let targets = j["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 7, "targets: {targets:?}");
    for t in targets {
        assert!(t["met"].is_boolean() && t["measured"].is_string(), "{t}");
    }

    for png in ["throughput.png", "latency.png", "fanout.png", "repair.png"] {
        let b = std::fs::read(out.path().join(png)).unwrap_or_else(|e| panic!("{png}: {e}"));
        assert!(
            b.starts_with(b"\x89PNG\r\n\x1a\n") && b.len() > 1000,
            "{png} is not a PNG"
        );
    }
}
