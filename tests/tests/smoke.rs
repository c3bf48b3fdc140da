use mcsync_tests::*;
use std::sync::{Arc, Mutex};

#[test]
fn one_subscriber_receives_updates() {
    let dir = tempfile::tempdir().unwrap();
    let publisher = mcsync::Publisher::open(publisher_config(&dir.path().join("pub"))).unwrap();
    let db = publisher.database("smoke").unwrap();
    db.put("before", "subscribe").unwrap();
    let sub = open_subscriber(&dir.path().join("sub"), &publisher, None);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let s = sub
        .subscribe("smoke", move |u| s2.lock().unwrap().push(u.version))
        .unwrap();
    let mut last = 0;
    for i in 0..200u32 {
        last = db
            .put(format!("k{i}"), vec![i as u8; (i as usize) * 37])
            .unwrap();
    }
    s.wait_for_version(last, CONVERGE).unwrap();
    assert_eq!(
        s.iter().unwrap().collect::<Vec<_>>(),
        db.snapshot().unwrap()
    );
    assert_versions(&seen.lock().unwrap(), 1..=last);
    println!("{:?}", s.stats());
    println!("{:?}", publisher.stats());
}
