//! Trust: one writer per data directory, delivery of every update to the host, and no
//! silent divergence when the master's history changes.

use mcsync::{ErrorKind, Publisher};
use mcsync_tests::*;

const DB: &str = "orders";

#[test]
fn a_data_directory_has_one_publisher_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(dir.path())).unwrap();
    let db = p.database(DB).unwrap();
    assert_eq!(db.put("k", "v").unwrap(), 1);
    let err = Publisher::open(publisher_config(dir.path()))
        .err()
        .expect("second publisher refused");
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    assert!(msg.contains("in use by this process"), "{msg}");
    // The first publisher is unharmed and the version sequence stays its own.
    assert_eq!(db.put("k", "w").unwrap(), 2);
    p.close().unwrap();
    drop((db, p));
    // Once closed, the directory can be opened again and continues the history.
    let p = Publisher::open(publisher_config(dir.path())).unwrap();
    assert_eq!(p.database(DB).unwrap().version(), 2);
}

#[test]
fn a_data_directory_has_one_subscriber_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let sub_dir = dir.path().join("sub");
    let s = open_subscriber(&sub_dir, &p, None);
    let err = mcsync::Subscriber::open(subscriber_config(&sub_dir, &p, None))
        .err()
        .expect("second subscriber refused");
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
    s.close().unwrap();
    drop(s);
    mcsync::Subscriber::open(subscriber_config(&sub_dir, &p, None)).unwrap();
}
