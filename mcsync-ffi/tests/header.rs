//! Header drift check: regenerates `include/mcsync.h` in memory with the pinned cbindgen
//! and `cbindgen.toml`, and fails when it differs from the checked-in file.
//!
//! Regenerate after changing an export or its doc comment:
//!     MCSYNC_REGEN_HEADER=1 cargo test -p mcsync-ffi --test header

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("mcsync-ffi sits in the workspace root")
        .to_path_buf()
}

fn generate() -> String {
    let root = repo_root();
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml"))
        .expect("cbindgen.toml at the repository root parses");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("mcsync-ffi/src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("the header is UTF-8")
}

#[test]
fn header_matches_the_sources() {
    let path = repo_root().join("include/mcsync.h");
    let fresh = generate();
    if std::env::var_os("MCSYNC_REGEN_HEADER").is_some() {
        std::fs::write(&path, &fresh).expect("write include/mcsync.h");
        eprintln!("regenerated {}", path.display());
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    if checked_in != fresh {
        let line = checked_in
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || checked_in.lines().count().min(fresh.lines().count()) + 1,
                |i| i + 1,
            );
        panic!(
            "include/mcsync.h is out of date with mcsync-ffi/src (first difference at line \
             {line}).\nRegenerate it with:\n    MCSYNC_REGEN_HEADER=1 cargo test -p mcsync-ffi \
             --test header\nand commit the result."
        );
    }
}

#[test]
fn header_declares_every_export() {
    let fresh = generate();
    for name in [
        "mcsync_publisher_open",
        "mcsync_subscriber_subscribe",
        "mcsync_last_error",
    ] {
        assert!(
            fresh.contains(&format!("{name}(")),
            "{name} missing from header"
        );
    }
    assert!(fresh.contains("MCSYNC_OK = 0"));
}
