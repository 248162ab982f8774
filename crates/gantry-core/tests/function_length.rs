//! Issue 11's shape rule: no function in `crates/*/src` is longer than
//! 120 lines, and no command handler in `crates/gantry-cli/src/commands`
//! is longer than 40. Test code (`tests/` dirs, `tests.rs` files and
//! `#[cfg(test)]` modules) is not counted.
//!
//! Every crate is held to it, a new one too, except those in
//! `PRINTED_ONLY`: their offenders are printed, so the list stays visible
//! while they are reshaped.

use std::path::{Path, PathBuf};

use syn::spanned::Spanned;
use syn::visit::Visit;

const MAX_FN_LINES: usize = 120;
const MAX_HANDLER_LINES: usize = 40;

/// Paths (relative to `crates/`) whose offenders are printed, not failed:
/// none today; a crate being reshaped may be listed here for a while.
const PRINTED_ONLY: &[&str] = &[];

#[derive(Debug)]
struct Offender {
    file: String,
    line: usize,
    name: String,
    lines: usize,
    limit: usize,
}

struct FnVisitor<'a> {
    file: &'a str,
    limit: usize,
    found: Vec<Offender>,
}

impl FnVisitor<'_> {
    fn check(&mut self, sig: &syn::Signature, block: &syn::Block) {
        let name = sig.ident.to_string();
        let (start, end) = lines_of(sig, block);
        let lines = end - start + 1;
        if lines > self.limit {
            self.found.push(Offender {
                file: self.file.to_string(),
                line: start,
                name,
                lines,
                limit: self.limit,
            });
        }
    }
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr
                .parse_args::<syn::Meta>()
                .is_ok_and(|meta| meta.path().is_ident("test"))
    })
}

/// Lines from the signature to the closing brace; doc comments and
/// attributes do not count.
fn lines_of(sig: &syn::Signature, block: &syn::Block) -> (usize, usize) {
    let start = sig.span().start().line;
    let end = block.brace_token.span.close().end().line;
    (start, end)
}

impl<'ast> Visit<'ast> for FnVisitor<'_> {
    fn visit_item_mod(&mut self, node: &'ast syn::ItemMod) {
        if !is_cfg_test(&node.attrs) {
            syn::visit::visit_item_mod(self, node);
        }
    }

    fn visit_item_fn(&mut self, node: &'ast syn::ItemFn) {
        if is_cfg_test(&node.attrs) {
            return;
        }
        self.check(&node.sig, &node.block);
        syn::visit::visit_item_fn(self, node);
    }

    fn visit_impl_item_fn(&mut self, node: &'ast syn::ImplItemFn) {
        if is_cfg_test(&node.attrs) {
            return;
        }
        self.check(&node.sig, &node.block);
        syn::visit::visit_impl_item_fn(self, node);
    }

    fn visit_trait_item_fn(&mut self, node: &'ast syn::TraitItemFn) {
        if let Some(block) = &node.default {
            self.check(&node.sig, block);
        }
        syn::visit::visit_trait_item_fn(self, node);
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "tests") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

fn offenders() -> Vec<Offender> {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&crates).expect("read crates/").flatten() {
        rust_files(&entry.path().join("src"), &mut files);
    }
    assert!(files.len() > 20, "found only {} source files", files.len());
    files.sort();
    let mut found = Vec::new();
    for path in files {
        let rel = path
            .strip_prefix(&crates)
            .expect("under crates/")
            .to_string_lossy()
            .replace('\\', "/");
        let source = std::fs::read_to_string(&path).expect("read source");
        let ast = syn::parse_file(&source).unwrap_or_else(|e| panic!("parse {rel}: {e}"));
        let limit = if rel.starts_with("gantry-cli/src/commands/") {
            MAX_HANDLER_LINES
        } else {
            MAX_FN_LINES
        };
        let mut visitor = FnVisitor {
            file: &rel,
            limit,
            found: Vec::new(),
        };
        visitor.visit_file(&ast);
        found.extend(visitor.found);
    }
    found
}

fn enforced(file: &str) -> bool {
    !PRINTED_ONLY.iter().any(|p| file.starts_with(p))
}

#[test]
fn no_function_is_too_long() {
    let all = offenders();
    let show = |o: &Offender| {
        format!(
            "crates/{}:{} fn {} is {} lines (limit {})",
            o.file, o.line, o.name, o.lines, o.limit
        )
    };
    let mut failing = Vec::new();
    for o in &all {
        if !enforced(&o.file) {
            eprintln!("not yet enforced: {}", show(o));
        } else {
            failing.push(show(o));
        }
    }
    assert!(
        failing.is_empty(),
        "functions too long; extract well-named steps:\n{}",
        failing.join("\n")
    );
}

#[test]
fn the_check_sees_a_long_function() {
    let body = "    let _x = 1;\n".repeat(MAX_FN_LINES);
    let source =
        format!("fn long() {{\n{body}}}\n#[cfg(test)]\nmod tests {{ fn t() {{\n{body}}} }}");
    let ast = syn::parse_file(&source).expect("parse");
    let mut visitor = FnVisitor {
        file: "x.rs",
        limit: MAX_FN_LINES,
        found: Vec::new(),
    };
    visitor.visit_file(&ast);
    let names: Vec<_> = visitor
        .found
        .iter()
        .map(|o| (o.name.as_str(), o.lines))
        .collect();
    assert_eq!(names, [("long", MAX_FN_LINES + 2)]);
}

#[test]
fn every_crate_is_held_to_the_limit() {
    assert!(enforced("gantry-proxy/src/forward.rs"));
    assert!(enforced("gantry-agent/src/container/image.rs"));
    assert!(enforced("gantry-core/src/deploy.rs"));
    assert!(enforced("gantry-someday/src/lib.rs"));
    assert!(enforced("gantry-hub/src/store/fields.rs"));
}
