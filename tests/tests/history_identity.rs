//! History identity: each published database has a random, nonzero incarnation id that
//! survives restarts of the publisher, differs between data directories, and reaches
//! subscribers in HELLO_OK and STATUS beside the stream id the multicaster seals under.

use mcsync::Publisher;
use mcsync_tests::{publisher_config, repair_client};

#[test]
fn incarnation_is_kept_across_restarts_and_sent_in_hello_ok_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = publisher_config(&dir.path().join("pub"));
    let (incarnation, stream) = {
        let publisher = Publisher::open(cfg.clone()).unwrap();
        let db = publisher.database("ledger").unwrap();
        db.put("k", "v").unwrap();
        let incarnation = db.incarnation();
        assert_ne!(incarnation, 0);
        let other = publisher.database("other").unwrap();
        assert_ne!(other.incarnation(), incarnation, "one per database");
        let mut client = repair_client(&publisher, "ledger", "tester", "");
        let info = client.hello().unwrap();
        assert_eq!(info.incarnation, incarnation);
        let status = client.status().unwrap();
        assert_eq!(status.incarnation, incarnation);
        assert_eq!(status.current_version, 1);
        publisher.close().unwrap();
        (incarnation, info.stream_id)
    };
    let publisher = Publisher::open(cfg).unwrap();
    let db = publisher.database("ledger").unwrap();
    assert_eq!(
        db.incarnation(),
        incarnation,
        "kept in the store across restarts"
    );
    let mut client = repair_client(&publisher, "ledger", "tester", "");
    let info = client.hello().unwrap();
    assert_eq!(info.incarnation, incarnation);
    assert_ne!(
        info.stream_id, stream,
        "a restarted publisher seals under a new stream"
    );
    publisher.close().unwrap();

    // Another data directory is another history.
    let dir2 = tempfile::tempdir().unwrap();
    let publisher = Publisher::open(publisher_config(&dir2.path().join("pub"))).unwrap();
    let db = publisher.database("ledger").unwrap();
    assert_ne!(db.incarnation(), incarnation);
    publisher.close().unwrap();
}
