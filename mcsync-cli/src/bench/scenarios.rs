//! The measured sections: throughput and the publisher-thread sweep, latency and the
//! recovery of a lost last update, egress beside TCP fan-out, repair cost under loss.

use super::*;
use mcsync::sync::Locked;

/// How much a publisher counter of a [`Load`] grew during the load.
macro_rules! pd {
    ($l:expr, $f:ident) => {
        $l.p1.$f.saturating_sub($l.p0.$f)
    };
}

/// Runs `f` `n` times; returns the runs sorted by `key` and the median's index.
pub(super) fn repeat<T>(
    n: usize,
    mut f: impl FnMut() -> BenchResult<T>,
    key: impl Fn(&T) -> f64,
) -> BenchResult<(Vec<T>, usize)> {
    let mut runs = (0..n.max(1))
        .map(|_| f())
        .collect::<BenchResult<Vec<_>>>()?;
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let mid = runs.len() / 2;
    Ok((runs, mid))
}

pub(super) fn throughput(
    ctx: &mut Ctx,
    counts: &Counts,
    ttl: u32,
) -> BenchResult<Vec<ThroughputRow>> {
    let mut rows = Vec::new();
    let reps = counts.repeats;
    for (si, &size) in SIZES.iter().enumerate() {
        let count = counts.throughput[si];
        for &n in &THROUGHPUT_SUBS {
            ctx.bar.set_message(format!(
                "(a) throughput: {n} subscriber(s), {size} B values, {reps} × {count} updates"
            ));
            let (runs, mid) = repeat(
                reps,
                || Ok(run_load(ctx, n, size, count, None, "t")?.0),
                Load::updates_per_s,
            )?;
            ctx.bar.inc(1);
            ctx.bar
                .set_message(format!("(a) raw multicast: {n} receiver(s), {size} B"));
            let (raws, rmid) = repeat(
                reps,
                || baseline::raw_multicast(ctx.endpoint(), n, size, size, count, ttl),
                |r| r.updates_per_s,
            )?;
            let raw = raws[rmid];
            let split = if size > ctx.datagram_bytes {
                let (s, m) = repeat(
                    reps,
                    || {
                        baseline::raw_multicast(
                            ctx.endpoint(),
                            n,
                            size,
                            ctx.datagram_bytes,
                            count,
                            ttl,
                        )
                    },
                    |r| r.updates_per_s,
                )?;
                s[m]
            } else {
                raw
            };
            ctx.bar.inc(1);
            let l = &runs[mid];
            let ups = l.updates_per_s();
            let commits = pd!(l, journal_commits);
            rows.push(ThroughputRow {
                subscribers: n,
                value_bytes: size,
                updates: count,
                seconds: l.secs,
                updates_per_s: ups,
                updates_per_s_runs: runs.iter().map(Load::updates_per_s).collect(),
                mb_per_s: ups * size as f64 / 1e6,
                raw_updates_per_s: raw.updates_per_s,
                raw_mb_per_s: raw.updates_per_s * size as f64 / 1e6,
                raw_loss: raw.loss,
                raw_updates_per_s_runs: raws.iter().map(|r| r.updates_per_s).collect(),
                fraction_of_raw: ups / raw.updates_per_s,
                raw_same_datagram_updates_per_s: split.updates_per_s,
                raw_same_datagram_loss: split.loss,
                fraction_of_raw_same_datagram: ups / split.updates_per_s,
                raw_datagrams_per_update: split.datagrams_per_update,
                journal_commits: commits,
                updates_per_journal_commit: pd!(l, updates_committed) as f64
                    / commits.max(1) as f64,
                updates_per_apply_commit: l.sub_sum(|s| s.updates_applied) as f64
                    / l.sub_sum(|s| s.apply_commits).max(1) as f64,
                packets_sent: pd!(l, packets_sent),
                chains_sent: pd!(l, chains_sent),
                chains_compressed: pd!(l, chains_compressed),
                chains_dropped: l.sub_sum(|s| s.chains_dropped),
                channel_full: l.sub_sum(|s| s.channel_full),
                repair_bytes: l.sub_sum(|s| s.repair_bytes + s.packet_repair_bytes),
            });
        }
    }
    Ok(rows)
}

/// Throughput at 8 subscribers, 1 KiB, against the number of publisher threads.
pub(super) fn thread_sweep(ctx: &mut Ctx, counts: &Counts) -> BenchResult<Vec<ThreadsRow>> {
    let mut rows = Vec::new();
    let count = counts.throughput[1];
    let saved = ctx.publishers;
    for &t in &SWEEP_THREADS {
        ctx.bar.set_message(format!(
            "(a) group commit: {t} publisher threads, 8 subscribers, {count} updates of 1 KiB"
        ));
        ctx.publishers = t;
        let r = run_load(ctx, 8, 1024, count, None, "s");
        ctx.publishers = saved;
        let (l, _) = r?;
        ctx.bar.inc(1);
        let commits = pd!(l, journal_commits);
        rows.push(ThreadsRow {
            publisher_threads: t,
            subscribers: 8,
            value_bytes: 1024,
            updates: count,
            updates_per_s: l.updates_per_s(),
            updates_per_journal_commit: pd!(l, updates_committed) as f64 / commits.max(1) as f64,
            journal_commits_per_s: commits as f64 / l.secs.max(1e-9),
        });
    }
    Ok(rows)
}

/// The `q` quantile of sorted samples.
pub(super) fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// (b): latency at a fixed offered rate; returns the summary and every sample (µs).
// Longer than 80 lines: the paced publisher threads and the sample collection share the
// cluster and the clock of one measurement; split, they would need a struct of borrowed state.
pub(super) fn latency(
    ctx: &mut Ctx,
    counts: &Counts,
    a: &BenchArgs,
) -> BenchResult<(Latency, Vec<u64>)> {
    let rate = a.rate.max(1);
    let total = ((rate as f64 * counts.latency_secs).round() as usize).max(100);
    let n = a.subscribers.max(1);
    ctx.bar.set_message(format!(
        "(b) latency: {total} updates of 1 KiB at {rate}/s to {n} subscribers"
    ));
    let vals = values(total, 1024, ctx.seed ^ 0x1a7);
    let c = Cluster::open(ctx, n, None, 0)?;
    let p0 = c.publisher.stats();
    c.record.store(true, Ordering::SeqCst);
    let start = Instant::now() + Duration::from_millis(20);
    let period_ns = 1e9 / rate as f64;
    let next = AtomicUsize::new(0);
    let commit_lat = Mutex::new(Vec::with_capacity(total));
    let threads = a.latency_publishers.max(1);
    let db = &c.db;
    let (last, end) = std::thread::scope(|s| -> BenchResult<(u64, Instant)> {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (next, vals, commit_lat) = (&next, &vals, &commit_lat);
                s.spawn(move || -> mcsync::Result<(u64, Instant)> {
                    let (mut last, mut end) = (0, start);
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= vals.len() {
                            break;
                        }
                        let at = start + Duration::from_nanos((i as f64 * period_ns) as u64);
                        let now = Instant::now();
                        if at > now {
                            std::thread::sleep(at - now);
                        }
                        let t = Instant::now();
                        last = last.max(db.put(key("l", i), &vals[i])?);
                        end = Instant::now();
                        mine.push((end - t).as_micros() as u64);
                    }
                    commit_lat.locked().extend(mine);
                    Ok((last, end))
                })
            })
            .collect();
        let mut out = (0, start);
        for h in handles {
            let (l, e) = h.join().expect("publisher thread")?;
            out = (out.0.max(l), out.1.max(e));
        }
        Ok(out)
    })?;
    c.wait_all(last)?;
    let p1 = c.publisher.stats();
    let mut samples: Vec<u64> = c
        .samples
        .iter()
        .flat_map(|s| s.locked().iter().map(|x| x.1).collect::<Vec<_>>())
        .collect();
    samples.sort_unstable();
    let mut commits = commit_lat.into_inner().unwrap_or_else(|e| e.into_inner());
    commits.sort_unstable();
    c.close()?;
    ctx.bar.inc(1);
    let journal = p1.journal_commits.saturating_sub(p0.journal_commits);
    let committed = p1.updates_committed.saturating_sub(p0.updates_committed);
    let tail = tail_loss(ctx, counts)?;
    ctx.bar.inc(1);
    Ok((
        Latency {
            subscribers: n,
            value_bytes: 1024,
            offered_per_s: rate,
            achieved_per_s: total as f64 / end.duration_since(start).as_secs_f64().max(1e-9),
            updates: total,
            samples: samples.len(),
            p50_us: quantile(&samples, 0.50),
            p90_us: quantile(&samples, 0.90),
            p99_us: quantile(&samples, 0.99),
            p999_us: quantile(&samples, 0.999),
            max_us: samples.last().copied().unwrap_or(0),
            commit_p50_us: quantile(&commits, 0.50),
            commit_p99_us: quantile(&commits, 0.99),
            updates_per_journal_commit: committed as f64 / journal.max(1) as f64,
            cdf: (1..=200)
                .map(|i| {
                    let q = f64::from(i) / 200.0;
                    (quantile(&samples, q), q)
                })
                .collect(),
            tail_loss: tail,
        },
        samples,
    ))
}

/// Time to apply an update whose packets were lost when nothing follows it: isolated 1 KiB
/// updates to three subscribers, one of them with 10 % injected loss (heartbeats are lost
/// at that rate too; a minority at a loss under the error thresholds, so neither the
/// subscriber's unicast fallback nor the publisher's quiescing kicks in). An update counts as a lost tail when its data came by repair (packet repair
/// delivered at least its size, or the journal delivered an update); otherwise as clean,
/// or as "waited for a heartbeat" when only an earlier lost heartbeat was fetched first.
pub(super) fn tail_loss(ctx: &mut Ctx, counts: &Counts) -> BenchResult<TailLoss> {
    const P: f64 = 0.1;
    ctx.bar
        .set_message("(b) tail loss: isolated updates, 10 % injected loss");
    let c = Cluster::open(ctx, 3, Some(P), 1)?;
    let p0 = c.publisher.stats();
    c.record.store(true, Ordering::SeqCst);
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ 0x7a11);
    let value = values(1, 1024, ctx.seed ^ 0x7a12).remove(0);
    let sub = &c.subs[0];
    let (mut lost, mut lossless, mut after_heartbeat) = (Vec::new(), Vec::new(), Vec::new());
    let mut trials = 0;
    while trials < counts.tail_trials && (lost.len() < counts.tail_lost || lossless.len() < 10) {
        trials += 1;
        let before = sub.stats();
        let v = c.db.put(key("tail", trials), &value)?;
        sub.wait_for_version(v, CONVERGE)?;
        let after = sub.stats();
        let lat = c.samples[0]
            .locked()
            .iter()
            .rev()
            .find(|x| x.0 == v)
            .map(|x| x.1);
        let data_repaired = after.repair_updates > before.repair_updates
            || after.packet_repair_bytes - before.packet_repair_bytes >= value.len() as u64;
        let any_repaired = after.packets_repaired > before.packets_repaired;
        if let Some(lat) = lat {
            if data_repaired {
                lost.push(lat);
            } else if any_repaired {
                after_heartbeat.push(lat);
            } else {
                lossless.push(lat);
            }
        }
        // Idle a while so the next update is again the last one sent.
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..40)));
    }
    let hb = c.heartbeat_initial;
    let (quiesces, backoffs) = (
        c.publisher.stats().quiesces - p0.quiesces,
        sub.stats().unicast_backoffs,
    );
    c.close()?;
    lost.sort_unstable();
    lossless.sort_unstable();
    after_heartbeat.sort_unstable();
    let (lp50, llp50) = (quantile(&lost, 0.5), quantile(&lossless, 0.5));
    Ok(TailLoss {
        loss_probability: P,
        heartbeat_initial_us: hb.as_micros() as u64,
        trials,
        lost_samples: lost.len(),
        lost_p50_us: lp50,
        lost_p90_us: quantile(&lost, 0.9),
        lost_max_us: lost.last().copied().unwrap_or(0),
        lossless_samples: lossless.len(),
        lossless_p50_us: llp50,
        heartbeat_repaired_samples: after_heartbeat.len(),
        heartbeat_repaired_p50_us: quantile(&after_heartbeat, 0.5),
        excess_p50_us: lp50.saturating_sub(llp50),
        quiesces,
        unicast_backoffs: backoffs,
        target_us: 2 * hb.as_micros() as u64,
    })
}

/// (c): egress bytes per update for 1..16 subscribers, beside TCP fan-out.
pub(super) fn fanout(ctx: &mut Ctx, counts: &Counts) -> BenchResult<Vec<FanoutRow>> {
    let mut rows: Vec<FanoutRow> = Vec::new();
    let count = counts.fanout;
    for &n in &FANOUT_SUBS {
        ctx.bar.set_message(format!(
            "(c) fan-out: {n} subscriber(s), {count} updates of 1 KiB"
        ));
        let (l, vals) = run_load(ctx, n, 1024, count, None, "f")?;
        ctx.bar.inc(1);
        ctx.bar
            .set_message(format!("(c) TCP unicast fan-out to {n} receiver(s)"));
        let ts = wall_clock_us();
        let encoded: Vec<Vec<u8>> = vals
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                update_to_vec(&Update {
                    version: i as u64 + 2,
                    timestamp_us: ts,
                    ops: vec![Op::put(key("f", i), v)],
                    reset: false,
                })
            })
            .collect();
        let enc_bytes = encoded.iter().map(Vec::len).sum::<usize>() as f64 / count as f64;
        let tcp = baseline::tcp_fanout(n, &encoded)?;
        ctx.bar.inc(1);
        let (mc, rep) = (pd!(l, bytes_sent), pd!(l, repair_bytes_sent));
        let per = (mc + rep) as f64 / count as f64;
        let one = rows.first().map_or(per, |r| r.bytes_per_update);
        rows.push(FanoutRow {
            subscribers: n,
            value_bytes: 1024,
            updates: count,
            encoded_bytes_per_update: enc_bytes,
            bytes_per_update: per,
            multicast_bytes: mc,
            repair_bytes: rep,
            ratio_to_one_subscriber: per / one,
            updates_per_s: l.updates_per_s(),
            tcp_bytes_per_update: tcp.bytes_per_update,
            tcp_updates_per_s: tcp.updates_per_s,
        });
    }
    Ok(rows)
}

/// (d): repair bytes against lost bytes, and throughput kept, under injected loss.
pub(super) fn repair(ctx: &mut Ctx, counts: &Counts, subs: usize) -> BenchResult<Vec<RepairRow>> {
    let mut rows: Vec<RepairRow> = Vec::new();
    let (count, reps) = (counts.repair, counts.repeats);
    // Rounds over every loss rate, so a slow spell of the machine hits all rates alike.
    let mut all: Vec<Vec<Load>> = LOSSES.iter().map(|_| Vec::new()).collect();
    for round in 1..=reps {
        for (i, &p) in LOSSES.iter().enumerate() {
            ctx.bar.set_message(format!(
                "(d) repair: {:.1} % loss, {subs} subscribers, {count} updates of 1 KiB (round {round}/{reps})",
                p * 100.0
            ));
            all[i].push(run_load(ctx, subs, 1024, count, Some(p), "r")?.0);
            ctx.bar.inc(1);
        }
    }
    for (&p, mut runs) in LOSSES.iter().zip(all) {
        runs.sort_by(|a, b| a.updates_per_s().total_cmp(&b.updates_per_s()));
        let mid = runs.len() / 2;
        // Injected loss drops a uniform sample of the stream, so the lost bytes are the
        // dropped packets times the stream's mean datagram size.
        let lost_bytes: f64 = runs
            .iter()
            .flat_map(|l| l.s1.iter().zip(&l.s0))
            .map(|(a, b)| {
                let pk = a.packets_received.saturating_sub(b.packets_received);
                let by = a.bytes_received.saturating_sub(b.bytes_received);
                let dr = a.dropped_injected.saturating_sub(b.dropped_injected);
                dr as f64 * by as f64 / pk.max(1) as f64
            })
            .sum();
        let sum = |f: &dyn Fn(&SubscriptionStats) -> u64| -> u64 {
            runs.iter().map(|l| l.sub_sum(f)).sum()
        };
        let repair_bytes = sum(&|s| s.packet_repair_bytes + s.repair_bytes);
        let ups = runs[mid].updates_per_s();
        let base = rows.first().map_or(ups, |r| r.updates_per_s);
        rows.push(RepairRow {
            loss: p,
            subscribers: subs,
            value_bytes: 1024,
            updates: count,
            updates_per_s: ups,
            updates_per_s_runs: runs.iter().map(Load::updates_per_s).collect(),
            throughput_kept: ups / base,
            lost_packets: sum(&|s| s.dropped_injected),
            lost_bytes: lost_bytes.round() as u64,
            repair_bytes,
            repair_fraction: (lost_bytes > 0.0).then(|| repair_bytes as f64 / lost_bytes),
            packets_repaired: sum(&|s| s.packets_repaired),
            repair_updates: sum(&|s| s.repair_updates),
            chains_dropped: sum(&|s| s.chains_dropped),
            updates_per_apply_commit: runs[mid].sub_sum(|s| s.updates_applied) as f64
                / runs[mid].sub_sum(|s| s.apply_commits).max(1) as f64,
            quiesces: runs.iter().map(|l| pd!(l, quiesces)).sum(),
            resubscriptions: sum(&|s| s.resubscriptions),
            unicast_backoffs: sum(&|s| s.unicast_backoffs),
            bundle_bytes_at_end: runs[mid].p1.bundle_bytes,
            bytes_per_sec_at_end: runs[mid].p1.bytes_per_sec,
        });
    }
    Ok(rows)
}
