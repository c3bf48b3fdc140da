//! The replica keeps each restricted record's access groups (`acl/<db>`) through every kind
//! of apply, and hands them back with the whole state (what a reset is built from).

use super::subscriber::{ResyncDelivery, SubscriberStore};
use crate::{Op, OpKind, Update};

fn put(key: &str, groups: &[&str]) -> Op {
    let mut op = Op::put(key, format!("value of {key}"));
    op.groups = groups.iter().map(|g| g.to_string()).collect();
    op
}

fn update(version: u64, ops: Vec<Op>) -> Update {
    Update {
        version,
        timestamp_us: 0,
        ops,
        reset: false,
    }
}

/// Key and groups of every record, in key order.
fn groups(store: &SubscriberStore, name: &str) -> Vec<(String, Vec<String>)> {
    let tables = store.tables(name).unwrap();
    store
        .all_puts(tables)
        .unwrap()
        .into_iter()
        .map(|op| {
            assert_eq!(op.kind, OpKind::Put);
            (String::from_utf8(op.key).unwrap(), op.groups)
        })
        .collect()
}

fn expect(rows: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
    rows.iter()
        .map(|(k, g)| (k.to_string(), g.iter().map(|s| s.to_string()).collect()))
        .collect()
}

#[test]
fn every_apply_keeps_the_replicas_access_groups_current() {
    let dir = tempfile::tempdir().unwrap();
    let store = SubscriberStore::open(dir.path(), 1 << 20).unwrap();
    let t = store.tables("db").unwrap();
    let live = update(
        1,
        vec![put("a", &["g1"]), put("b", &[]), put("c", &["g1", "g2"])],
    );
    store.apply("db", t, &[live], &[], 0).unwrap();
    assert_eq!(
        groups(&store, "db"),
        expect(&[("a", &["g1"]), ("b", &[]), ("c", &["g1", "g2"])])
    );
    // Made public, deleted: the acl entries go with them.
    let later = update(2, vec![put("a", &[]), Op::delete("c")]);
    store.apply("db", t, &[later], &[], 0).unwrap();
    assert_eq!(groups(&store, "db"), expect(&[("a", &[]), ("b", &[])]));
    // A resync: fetched records keep their groups, a journal tail's puts too.
    let tail = update(4, vec![put("e", &["g2"])]);
    store
        .apply_resync(
            "db",
            t,
            &[b"b".to_vec()],
            &[put("a", &["g3"]), put("d", &["g1"])],
            &[tail],
            4,
            ResyncDelivery::Keep(&[]),
        )
        .unwrap();
    assert_eq!(
        groups(&store, "db"),
        expect(&[("a", &["g3"]), ("d", &["g1"]), ("e", &["g2"])])
    );
    // Kept across a reopen, and per database.
    drop(store);
    let store = SubscriberStore::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(
        groups(&store, "db"),
        expect(&[("a", &["g3"]), ("d", &["g1"]), ("e", &["g2"])])
    );
    assert!(groups(&store, "other").is_empty());
}
