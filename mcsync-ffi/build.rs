//! Gives `libmcsync.so` a versioned SONAME, `libmcsync.so.<major>`, so that programs linked
//! against it record that name (not the unversioned development symlink) and keep loading
//! every compatible release. `make -C examples/c install` installs the library as
//! `libmcsync.so.<version>` with the `libmcsync.so.<major>` and `libmcsync.so` symlinks.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    // ELF targets: Linux and the other Unixes except Apple's (Mach-O has install names).
    if var("CARGO_CFG_TARGET_FAMILY")
        .split(',')
        .any(|f| f == "unix")
        && var("CARGO_CFG_TARGET_VENDOR") != "apple"
    {
        let major = var("CARGO_PKG_VERSION_MAJOR");
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libmcsync.so.{major}");
    }
}
