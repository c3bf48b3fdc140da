//! A data directory in use by one process is refused to another, naming the holder.

use mcsync::{Authentication, Publisher, PublisherConfig};
use std::process::Command;

#[test]
fn another_process_sees_the_directory_in_use_and_who_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut pc = PublisherConfig::new(dir.path());
    pc.authentication = Authentication::Open;
    pc.multicast.group = std::net::Ipv4Addr::new(239, 78, (std::process::id() % 250) as u8, 3);
    pc.multicast.port = 30_000 + (std::process::id() % 20_000) as u16;
    let p = Publisher::open(pc.clone()).unwrap();
    p.database("inv").unwrap().put("k", "v").unwrap();
    let status = |dir: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_mcsync"))
            .args(["status", "--data-dir"])
            .arg(dir)
            .output()
            .expect("run mcsync status");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let text = status(dir.path());
    let holder = format!("in use by process {}", std::process::id());
    assert!(text.contains(&holder), "{text}");
    // Closed, the directory is free: status opens the store itself and reads it.
    p.close().unwrap();
    let text = status(dir.path());
    assert!(text.contains("inv: version 1"), "{text}");
}
