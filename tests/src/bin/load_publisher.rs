//! A publisher with a users file and real TLS (a self-signed certificate), as a child process
//! of the load test (`tests/tests/load.rs`), so that the test can read the publisher's own
//! peak memory (`VmHWM` of this process) while it attacks the control port.
//!
//! ```text
//! load_publisher --dir D --users FILE --database NAME
//! ```
//!
//! Prints `ready <fingerprint> <control address> <pid>` once it serves. Each stdin line
//! `stats` is answered with one line `stats name=value name=value …` (every publisher
//! counter). It closes the publisher and exits 0 when stdin closes.

use mcsync::{Authentication, Publisher};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;

/// Ends the process with `code` after saying why (a failure the test reports).
fn die(code: i32, why: impl std::fmt::Display) -> ! {
    eprintln!("load_publisher {}: {why}", std::process::id());
    std::process::exit(code)
}

fn say(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    // A closed pipe means the test is gone.
    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
        std::process::exit(0);
    }
}

fn main() {
    let mut flags = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let Some(name) = flag.strip_prefix("--") else {
            die(2, format!("unexpected argument {flag:?}"))
        };
        let value = it
            .next()
            .unwrap_or_else(|| die(2, format!("--{name} needs a value")));
        flags.insert(name.to_owned(), value);
    }
    let get = |name: &str| {
        flags
            .get(name)
            .cloned()
            .unwrap_or_else(|| die(2, format!("--{name} is required")))
    };
    let dir = PathBuf::from(get("dir"));
    let mut cfg = mcsync_tests::publisher_config(&dir);
    cfg.authentication = Authentication::UsersFile(PathBuf::from(get("users")));
    let p = Publisher::open(cfg).unwrap_or_else(|e| die(5, format!("opening publisher: {e}")));
    let db = p
        .database(&get("database"))
        .unwrap_or_else(|e| die(5, format!("opening database: {e}")));
    db.put("hello", "world")
        .unwrap_or_else(|e| die(5, format!("first put: {e}")));
    let fp = p
        .fingerprint()
        .unwrap_or_else(|| die(5, "no TLS fingerprint"))
        .to_owned();
    say(format!(
        "ready {fp} {} {}",
        p.control_addr(),
        std::process::id()
    ));
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() == "stats" {
            let fields: Vec<String> = p
                .stats()
                .fields()
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            say(format!("stats {}", fields.join(" ")));
        }
    }
    p.close()
        .unwrap_or_else(|e| die(5, format!("closing publisher: {e}")));
}
