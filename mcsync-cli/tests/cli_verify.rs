//! `mcsync verify` finds a replica edited behind mcsync's back; `mcsync resync` repairs it.

use mcsync::{
    Authentication, Publisher, PublisherConfig, ServerTrust, Subscriber, SubscriberConfig,
};
use std::process::Command;
use std::time::Duration;

fn mcsync(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mcsync"))
        .args(args)
        .env("MCSYNC_PASSWORD", "unused")
        .output()
        .expect("run mcsync");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn verify_detects_tampering_and_resync_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut pc = PublisherConfig::new(dir.path().join("pub"));
    pc.authentication = Authentication::Open;
    pc.multicast.group = std::net::Ipv4Addr::new(239, 77, (std::process::id() % 250) as u8, 9);
    pc.multicast.port = 30_000 + (std::process::id() % 20_000) as u16;
    let p = Publisher::open(pc).unwrap();
    let db = p.database("inv").unwrap();
    let mut t = db.transaction();
    for i in 0..500 {
        t.put(format!("item-{i:04}"), format!("stock {i}")).unwrap();
    }
    let v = t.commit().unwrap();
    let fp = p.fingerprint().unwrap().to_owned();
    let sdir = dir.path().join("sub");
    {
        let mut sc = SubscriberConfig::new(
            &sdir,
            p.control_addr(),
            ServerTrust::Fingerprint(fp.clone()),
        );
        sc.user = "ops".into();
        let s = Subscriber::open(sc).unwrap();
        let sub = s.subscribe("inv", |_| {}).unwrap();
        sub.wait_for_version(v, Duration::from_secs(60)).unwrap();
    }
    let addr = p.control_addr().to_string();
    let args = |cmd: &'static str| {
        vec![
            cmd.to_string(),
            "--data-dir".into(),
            sdir.display().to_string(),
            "--server".into(),
            addr.clone(),
            "--database".into(),
            "inv".into(),
            "--user".into(),
            "ops".into(),
            "--fingerprint".into(),
            fp.clone(),
        ]
    };
    let run = |cmd: &'static str| {
        let a = args(cmd);
        mcsync(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (code, out) = run("verify");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("in agreement"), "{out}");
    {
        use lmdb::Transaction;
        let env = lmdb::Environment::new()
            .set_max_dbs(64)
            .open(&sdir)
            .unwrap();
        let t = env.open_db(Some("replica/inv")).unwrap();
        let mut txn = env.begin_rw_txn().unwrap();
        txn.put(t, b"item-0007", b"forged", lmdb::WriteFlags::empty())
            .unwrap();
        txn.del(t, b"item-0042", None).unwrap();
        txn.put(t, b"planted", b"x", lmdb::WriteFlags::empty())
            .unwrap();
        txn.commit().unwrap();
    }
    let (code, out) = run("verify");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("DIFFERS") && out.contains("differs: key hashes"),
        "{out}"
    );
    let (code, out) = run("resync");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 records fetched, 1 deleted"), "{out}");
    let (code, out) = run("verify");
    assert_eq!(code, 0, "{out}");
}
