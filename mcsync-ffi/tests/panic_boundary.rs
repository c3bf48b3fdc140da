//! Proves that every function exported to C runs its whole body inside
//! `ffi_panic_boundary!`, so no panic can unwind into C.
//!
//! It parses every file under `mcsync-ffi/src` with `syn`, finds each `#[no_mangle]` or
//! `extern "C"` function, and requires its body to be exactly one `ffi_panic_boundary!`
//! invocation. A raw-text count cross-checks the parse, so an export hidden where `syn`
//! does not look (inside a `macro_rules!` body, say) fails the test too.

use std::path::{Path, PathBuf};
use syn::visit::Visit;

#[derive(Debug)]
struct Export {
    file: PathBuf,
    name: String,
    line: usize,
    no_mangle: bool,
    extern_c: bool,
    wrapped: bool,
}

struct Finder<'a> {
    file: &'a Path,
    text: &'a str,
    found: Vec<Export>,
}

fn has_no_mangle(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        let p = a.path();
        p.is_ident("no_mangle") || p.is_ident("export_name") || {
            // `#[unsafe(no_mangle)]` (edition 2024 spelling).
            p.is_ident("unsafe")
                && a.meta
                    .require_list()
                    .map(|l| l.tokens.to_string().contains("no_mangle"))
                    .unwrap_or(false)
        }
    })
}

fn is_extern_c(sig: &syn::Signature) -> bool {
    sig.abi.as_ref().is_some_and(|abi| {
        abi.name
            .as_ref()
            .is_none_or(|n| n.value() == "C" || n.value() == "C-unwind")
    })
}

/// The body is exactly `ffi_panic_boundary! { ... }` (as a statement or tail expression).
fn body_is_wrapped(block: &syn::Block) -> bool {
    if block.stmts.len() != 1 {
        return false;
    }
    let mac = match &block.stmts[0] {
        syn::Stmt::Macro(m) => &m.mac,
        syn::Stmt::Expr(syn::Expr::Macro(m), _) => &m.mac,
        _ => return false,
    };
    mac.path.is_ident("ffi_panic_boundary")
}

impl Finder<'_> {
    fn record(&mut self, attrs: &[syn::Attribute], sig: &syn::Signature, block: &syn::Block) {
        let no_mangle = has_no_mangle(attrs);
        let extern_c = is_extern_c(sig);
        if no_mangle || extern_c {
            self.found.push(Export {
                file: self.file.to_path_buf(),
                name: sig.ident.to_string(),
                line: line_of(self.text, &sig.ident.to_string()),
                no_mangle,
                extern_c,
                wrapped: body_is_wrapped(block),
            });
        }
    }
}

impl<'ast> Visit<'ast> for Finder<'_> {
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.record(&f.attrs, &f.sig, &f.block);
        syn::visit::visit_item_fn(self, f);
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        self.record(&f.attrs, &f.sig, &f.block);
        syn::visit::visit_impl_item_fn(self, f);
    }
}

/// Line of `fn name` in the file (for messages only; 0 if not found).
fn line_of(text: &str, name: &str) -> usize {
    let needle = format!("fn {name}(");
    text.find(&needle)
        .map_or(0, |at| text[..at].matches('\n').count() + 1)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Counts exported-function definitions in raw text: `#[no_mangle]` attributes and
/// `extern "C" fn name` definitions (a function-pointer type has no name after `fn`).
fn text_counts(text: &str) -> (usize, usize) {
    let no_mangle = text.matches("#[no_mangle]").count()
        + text.matches("#[unsafe(no_mangle)]").count()
        + text.matches("#[export_name").count();
    let mut defs = 0;
    for (i, _) in text.match_indices("extern \"C\" fn") {
        let rest = text[i + "extern \"C\" fn".len()..].trim_start();
        if rest.starts_with(|c: char| c.is_alphabetic() || c == '_') {
            defs += 1;
        }
    }
    (no_mangle, defs)
}

fn scan() -> Vec<Export> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut all = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read source");
        let parsed = syn::parse_file(&text).expect("source parses");
        let mut finder = Finder {
            file,
            text: &text,
            found: Vec::new(),
        };
        finder.visit_file(&parsed);
        let (no_mangle_text, extern_text) = text_counts(&text);
        let no_mangle_seen = finder.found.iter().filter(|e| e.no_mangle).count();
        let extern_seen = finder.found.iter().filter(|e| e.extern_c).count();
        assert_eq!(
            (no_mangle_text, extern_text),
            (no_mangle_seen, extern_seen),
            "{}: exported functions in the text and in the parse disagree; is an export \
             defined inside a macro, where this check cannot see its body?",
            file.display()
        );
        all.extend(finder.found);
    }
    all
}

#[test]
fn every_export_runs_inside_the_panic_boundary() {
    let exports = scan();
    assert!(
        exports.len() >= 60,
        "found only {} exports; is the scan looking in the right place?",
        exports.len()
    );
    let bad: Vec<String> = exports
        .iter()
        .filter(|e| !(e.wrapped && e.no_mangle && e.extern_c))
        .map(|e| {
            format!(
                "{}:{} {} (no_mangle: {}, extern \"C\": {}, body is one ffi_panic_boundary!: {})",
                e.file.display(),
                e.line,
                e.name,
                e.no_mangle,
                e.extern_c,
                e.wrapped
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "exports not wrapped in ffi_panic_boundary! (or not both #[no_mangle] and \
         extern \"C\"):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_header_declares_exactly_the_exports() {
    let mut exported: Vec<String> = scan().into_iter().map(|e| e.name).collect();
    exported.sort();
    let header_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../include/mcsync.h");
    let header = std::fs::read_to_string(header_path).expect("include/mcsync.h");
    let mut declared: Vec<String> = header
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with("typedef") && !l.starts_with('#'))
        .filter_map(|l| {
            let open = l.find('(')?;
            let name = l[..open].rsplit([' ', '*']).next()?;
            name.starts_with("mcsync_").then(|| name.to_owned())
        })
        .collect();
    declared.sort();
    assert_eq!(declared, exported);
}

#[test]
fn the_scan_rejects_an_unwrapped_body() {
    let bad: syn::ItemFn = syn::parse_quote! {
        #[no_mangle]
        pub extern "C" fn mcsync_bad() -> i32 { let x = 1; ffi_panic_boundary! { on_panic = 0; x } }
    };
    assert!(!body_is_wrapped(&bad.block));
    let good: syn::ItemFn = syn::parse_quote! {
        #[no_mangle]
        pub extern "C" fn mcsync_good() -> i32 { ffi_panic_boundary! { on_panic = 0; 1 } }
    };
    assert!(body_is_wrapped(&good.block));
    assert!(has_no_mangle(&good.attrs) && is_extern_c(&good.sig));
    assert_eq!(
        text_counts("type F = Option<unsafe extern \"C\" fn(x: i32)>;"),
        (0, 0)
    );
}
