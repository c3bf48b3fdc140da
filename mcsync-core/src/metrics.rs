//! Counters and gauges in the OpenMetrics text format (which Prometheus scrapes), rendered
//! on demand from snapshots: [`Publisher::metrics`](crate::Publisher::metrics) and
//! [`Subscriber::metrics`](crate::Subscriber::metrics).
//!
//! Names: `mcsync_publisher_<counter>_total` and `mcsync_publisher_<gauge>` for the
//! publisher's counters ([`PublisherStats`]), `mcsync_database_*{database}` per published
//! database, `mcsync_subscriber_*{database,user,client,id}` for what each registered
//! subscriber last reported, and `mcsync_subscription_*{database}` for a subscriber's
//! subscriptions ([`SubscriptionStats`]), with the publish→applied latency as a histogram
//! (`mcsync_subscription_latency_seconds`).

use crate::net::repair_server::SubscriberRecord;
use crate::stats::{PublisherStats, SubscriptionStats};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

/// The content type to serve [`Publisher::metrics`](crate::Publisher::metrics) with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One published database, as the metrics show it.
#[derive(Debug, Clone)]
pub struct DatabaseView {
    /// Its name.
    pub name: String,
    /// Latest committed version.
    pub committed: u64,
    /// Oldest version the journal holds.
    pub oldest: u64,
    /// Current key epoch.
    pub key_epoch: u32,
}

/// One subscription, as the metrics show it.
#[derive(Debug, Clone)]
pub struct SubscriptionView {
    /// Database name.
    pub database: String,
    /// Its counters.
    pub stats: SubscriptionStats,
    /// Version applied (and, with a callback, delivered).
    pub version: u64,
    /// Publish→applied latency: `(upper bound in seconds, count in that bucket)`.
    pub latency_buckets: Vec<(f64, u64)>,
    /// Sum of the latencies recorded, seconds.
    pub latency_sum: f64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DbLabel {
    database: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriberLabels {
    database: String,
    user: String,
    client: String,
    id: String,
}

type F64Gauge = Gauge<f64, AtomicU64>;

/// Registers one metric per field of a stats snapshot: a counter, or a gauge when the name
/// is in `gauges`, each in a family labelled by `label` (or unlabelled).
fn register_fields<L>(reg: &mut Registry, rows: &[(L, Vec<(&'static str, u64)>)], gauges: &[&str])
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let Some((_, first)) = rows.first() else {
        return;
    };
    for (i, (name, _)) in first.iter().enumerate() {
        if gauges.contains(name) {
            let f = Family::<L, Gauge>::default();
            for (label, fields) in rows {
                f.get_or_create(label).set(fields[i].1 as i64);
            }
            reg.register(*name, help(name), f);
        } else {
            let f = Family::<L, Counter>::default();
            for (label, fields) in rows {
                f.get_or_create(label).inc_by(fields[i].1);
            }
            reg.register(*name, help(name), f);
        }
    }
}

fn help(name: &str) -> String {
    format!("mcsync counter {name} (see the field of the same name in docs)")
}

/// The set of no labels, for the publisher's own counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NoLabels {}

fn render(reg: &Registry) -> String {
    let mut out = String::new();
    encode(&mut out, reg).expect("writing to a String cannot fail");
    out
}

/// The publisher's metrics. (Long: one registration per metric family, read top to
/// bottom like the exposition it produces.)
pub fn render_publisher(
    stats: &PublisherStats,
    databases: &[DatabaseView],
    subscribers: &[SubscriberRecord],
    now: Instant,
) -> String {
    let mut root = Registry::with_prefix("mcsync");
    let reg = root.sub_registry_with_prefix("publisher");
    register_fields(
        reg,
        &[(NoLabels {}, stats.fields())],
        PublisherStats::GAUGES,
    );
    let db = root.sub_registry_with_prefix("database");
    let committed = Family::<DbLabel, Gauge>::default();
    let oldest = Family::<DbLabel, Gauge>::default();
    let epoch = Family::<DbLabel, Gauge>::default();
    for d in databases {
        let l = DbLabel {
            database: d.name.clone(),
        };
        committed.get_or_create(&l).set(d.committed as i64);
        oldest.get_or_create(&l).set(d.oldest as i64);
        epoch.get_or_create(&l).set(i64::from(d.key_epoch));
    }
    db.register("version", "Latest committed version", committed);
    db.register("oldest_version", "Oldest version the journal holds", oldest);
    db.register("key_epoch", "Current key epoch", epoch);
    let sub = root.sub_registry_with_prefix("subscriber");
    let applied = Family::<SubscriberLabels, Gauge>::default();
    let lag = Family::<SubscriberLabels, Gauge>::default();
    let loss = Family::<SubscriberLabels, F64Gauge>::default();
    let p50 = Family::<SubscriberLabels, F64Gauge>::default();
    let p99 = Family::<SubscriberLabels, F64Gauge>::default();
    let unicast = Family::<SubscriberLabels, Gauge>::default();
    let age = Family::<SubscriberLabels, F64Gauge>::default();
    for r in subscribers {
        let Some((rep, at)) = &r.report else { continue };
        let l = SubscriberLabels {
            database: r.database.clone(),
            user: r.user.clone(),
            client: r.client.clone(),
            id: r.id.to_string(),
        };
        let head = databases
            .iter()
            .find(|d| d.name == r.database)
            .map_or(0, |d| d.committed);
        applied.get_or_create(&l).set(rep.applied_version as i64);
        lag.get_or_create(&l)
            .set(head.saturating_sub(rep.applied_version) as i64);
        loss.get_or_create(&l).set(f64::from(rep.loss_ppm) / 1e6);
        p50.get_or_create(&l).set(rep.latency_p50_us as f64 / 1e6);
        p99.get_or_create(&l).set(rep.latency_p99_us as f64 / 1e6);
        unicast.get_or_create(&l).set(i64::from(rep.unicast_only));
        age.get_or_create(&l)
            .set(now.saturating_duration_since(*at).as_secs_f64());
    }
    sub.register(
        "applied_version",
        "Version the subscriber last reported applied",
        applied,
    );
    sub.register(
        "lag_versions",
        "Versions the subscriber is behind the master",
        lag,
    );
    sub.register(
        "loss_ratio",
        "Fraction of packets the network lost, last report",
        loss,
    );
    sub.register(
        "latency_p50_seconds",
        "Publish to applied latency, median",
        p50,
    );
    sub.register(
        "latency_p99_seconds",
        "Publish to applied latency, 99th percentile",
        p99,
    );
    sub.register(
        "unicast_only",
        "1 while the subscriber catches up by unicast (error policy)",
        unicast,
    );
    sub.register(
        "report_age_seconds",
        "Seconds since the subscriber's last report",
        age,
    );
    render(&root)
}

/// A latency histogram with fixed buckets, read from a snapshot.
#[derive(Debug)]
struct LatencyHistogram {
    buckets: Vec<(f64, u64)>,
    sum: f64,
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let count = self.buckets.iter().map(|b| b.1).sum();
        encoder.encode_histogram::<NoLabels>(self.sum, count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The buckets with a last one of `+Inf` (OpenMetrics requires it).
fn with_infinity(buckets: &[(f64, u64)]) -> Vec<(f64, u64)> {
    let mut b = buckets.to_vec();
    if b.last().is_none_or(|l| l.0 != f64::INFINITY) {
        b.push((f64::INFINITY, 0));
    }
    b
}

/// A subscriber's metrics, one label set per subscription.
pub fn render_subscriber(subscriptions: &[SubscriptionView]) -> String {
    let mut root = Registry::with_prefix("mcsync");
    let reg = root.sub_registry_with_prefix("subscription");
    let rows: Vec<_> = subscriptions
        .iter()
        .map(|s| {
            (
                DbLabel {
                    database: s.database.clone(),
                },
                s.stats.fields(),
            )
        })
        .collect();
    register_fields(reg, &rows, SubscriptionStats::GAUGES);
    let version = Family::<DbLabel, Gauge>::default();
    for s in subscriptions {
        version
            .get_or_create(&DbLabel {
                database: s.database.clone(),
            })
            .set(s.version as i64);
    }
    reg.register("version", "Version applied and delivered", version);
    for s in subscriptions {
        let per_db = reg.sub_registry_with_label((
            "database".into(),
            std::borrow::Cow::Owned(s.database.clone()),
        ));
        per_db.register(
            "latency_seconds",
            "Publish to applied latency (needs synchronized clocks)",
            LatencyHistogram {
                buckets: with_infinity(&s.latency_buckets),
                sum: s.latency_sum,
            },
        );
    }
    render(&root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, line_start: &str) -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no {line_start:?} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn publisher_counters_gauges_and_subscribers_render() {
        let stats = PublisherStats {
            updates_committed: 42,
            backlog_bytes: 7,
            ..PublisherStats::default()
        };
        let dbs = [DatabaseView {
            name: "prices".into(),
            committed: 42,
            oldest: 3,
            key_epoch: 5,
        }];
        let now = Instant::now();
        let sub = SubscriberRecord {
            push: None,
            id: 9,
            user: "alice".into(),
            database: "prices".into(),
            client: "c".into(),
            peer: "127.0.0.1:1".parse().unwrap(),
            sessions: 1,
            participant: false,
            report: Some((
                crate::wire::control::SubscriberReport {
                    loss_ppm: 25_000,
                    applied_version: 40,
                    ..Default::default()
                },
                now,
            )),
            last_seen: now,
        };
        let t = render_publisher(&stats, &dbs, &[sub], now);
        assert_eq!(value(&t, "mcsync_publisher_updates_committed_total "), 42.0);
        assert!(
            t.contains("# TYPE mcsync_publisher_backlog_bytes gauge"),
            "{t}"
        );
        assert_eq!(value(&t, "mcsync_publisher_backlog_bytes "), 7.0);
        assert_eq!(
            value(&t, "mcsync_database_version{database=\"prices\"}"),
            42.0
        );
        let l = "{database=\"prices\",user=\"alice\",client=\"c\",id=\"9\"}";
        assert_eq!(
            value(&t, &format!("mcsync_subscriber_lag_versions{l}")),
            2.0
        );
        assert_eq!(
            value(&t, &format!("mcsync_subscriber_loss_ratio{l}")),
            0.025
        );
        assert!(t.ends_with("# EOF\n"));
    }

    #[test]
    fn subscription_latency_is_a_cumulative_histogram() {
        let s = SubscriptionView {
            database: "d".into(),
            stats: SubscriptionStats {
                updates_applied: 3,
                key_epoch: 2,
                ..SubscriptionStats::default()
            },
            version: 3,
            latency_buckets: vec![(0.001, 1), (0.002, 2)],
            latency_sum: 0.004,
        };
        let t = render_subscriber(&[s]);
        assert_eq!(
            value(
                &t,
                "mcsync_subscription_updates_applied_total{database=\"d\"}"
            ),
            3.0
        );
        assert!(
            t.contains("# TYPE mcsync_subscription_key_epoch gauge"),
            "{t}"
        );
        assert_eq!(
            value(
                &t,
                "mcsync_subscription_latency_seconds_bucket{database=\"d\",le=\"0.002\"}"
            ),
            3.0
        );
        assert_eq!(
            value(
                &t,
                "mcsync_subscription_latency_seconds_bucket{database=\"d\",le=\"+Inf\"}"
            ),
            3.0
        );
        assert_eq!(
            value(
                &t,
                "mcsync_subscription_latency_seconds_count{database=\"d\"}"
            ),
            3.0
        );
    }

    #[test]
    fn every_declared_gauge_is_a_field() {
        let p = PublisherStats::default().fields();
        for g in PublisherStats::GAUGES {
            assert!(p.iter().any(|(n, _)| n == g), "{g}");
        }
        let s = SubscriptionStats::default().fields();
        for g in SubscriptionStats::GAUGES {
            assert!(s.iter().any(|(n, _)| n == g), "{g}");
        }
    }
}
