//! The house's layers: no import circle among the modules of src/, the AWS edge (`aws`) and the
//! metrics at the bottom. The sources are read with a real Rust parser (`syn`): every path that
//! starts at `crate` counts, in `use` trees however nested (`use crate::{a::{X}, b};`) and in
//! code; unit tests (`#[cfg(test)]` items) do not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use syn::visit::Visit;

/// What each bottom module may import (besides itself).
const ALLOWED: [(&str, &[&str]); 6] = [
    ("limits", &[]),
    ("status", &[]),
    ("backoff", &[]),
    ("net", &["backoff"]),
    ("aws", &["limits", "net"]),
    ("metrics", &["aws", "limits", "status"]),
];

/// The top-level modules of the crate that a file's code names (`crate::NAME…`).
#[derive(Default)]
struct CrateImports(BTreeSet<String>);

impl CrateImports {
    fn use_tree(&mut self, tree: &syn::UseTree, at_crate: bool) {
        match tree {
            syn::UseTree::Path(p) if at_crate => {
                self.0.insert(p.ident.to_string());
            }
            syn::UseTree::Path(p) => self.use_tree(&p.tree, p.ident == "crate"),
            syn::UseTree::Name(n) if at_crate => {
                self.0.insert(n.ident.to_string());
            }
            syn::UseTree::Rename(r) if at_crate => {
                self.0.insert(r.ident.to_string());
            }
            syn::UseTree::Group(g) => g.items.iter().for_each(|t| self.use_tree(t, at_crate)),
            _ => {}
        }
    }
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs
        .iter()
        .any(|a| a.path().is_ident("cfg") && a.parse_args::<syn::Meta>().is_ok_and(|m| m.path().is_ident("test")))
}

impl<'ast> Visit<'ast> for CrateImports {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(u) => &u.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !is_test_only(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&u.tree, false);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let mut segments = path.segments.iter();
        if segments.next().is_some_and(|s| s.ident == "crate") {
            if let Some(s) = segments.next() {
                self.0.insert(s.ident.to_string());
            }
        }
        syn::visit::visit_path(self, path);
    }
}

fn imports_of(source: &str) -> BTreeSet<String> {
    let file = syn::parse_file(source).expect("a Rust source that parses");
    let mut v = CrateImports::default();
    v.visit_file(&file);
    v.0
}

/// Each top-level module of src/ (a file or a folder) and the modules it imports.
/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("src/ is readable") {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

fn modules() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = rust_files(&src);
    let mut mods: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        // the binary (main.rs and its cli.rs) and the crate root sit above every layer
        if top == "main" || top == "cli" || top == "lib" {
            continue;
        }
        let deps = imports_of(&std::fs::read_to_string(&f).unwrap());
        mods.entry(top.clone()).or_default().extend(deps.into_iter().filter(|d| *d != top));
    }
    mods
}

/// The import circles among `mods` (strongly connected components of more than one module).
fn circles(mods: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // a module is in a circle with every module that reaches it and that it reaches
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for d in mods.get(&m).into_iter().flatten() {
                if mods.contains_key(d) && seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> = mods.keys().map(|m| (m, reach(m))).collect();
    let mut out: Vec<Vec<String>> = Vec::new();
    for m in mods.keys() {
        let circle: Vec<String> =
            mods.keys().filter(|o| *o == m || (reaches[m].contains(*o) && reaches[*o].contains(m))).cloned().collect();
        if circle.len() > 1 && !out.contains(&circle) {
            out.push(circle);
        }
    }
    out
}

#[test]
fn modules_import_each_other_in_no_circle_and_the_edge_sits_at_the_bottom() {
    let mods = modules();
    assert!(mods.len() >= 20, "only {} modules found in src/: {:?}", mods.len(), mods.keys());
    for (m, allowed) in ALLOWED {
        let extra: Vec<&String> = mods[m].iter().filter(|d| !allowed.contains(&d.as_str())).collect();
        assert!(extra.is_empty(), "src/{m} imports {extra:?}: it may import only {allowed:?}");
    }
    let found = circles(&mods);
    assert!(found.is_empty(), "import circles: {}", found.iter().map(|c| c.join(" ↔ ")).collect::<Vec<_>>().join("; "));
}

/// The reader itself: nested groups, renames, paths in code count; unit tests and comments do
/// not (the regular expressions it replaces lost `use crate::{a::{X}, b};`).
#[test]
fn the_reader_finds_every_crate_path_and_skips_unit_tests() {
    let found = imports_of(
        "use crate::{a::{X, y::Z}, b, c as d};\nuse std::fmt;\n// crate::comment\n\
         fn f() { crate::e::g(); let _x: crate::h::T; }\n\
         #[cfg(test)]\nmod tests { use crate::t; fn u() { crate::v::w(); } }",
    );
    assert_eq!(found, ["a", "b", "c", "e", "h"].map(String::from).into_iter().collect());
    let mods: BTreeMap<String, BTreeSet<String>> =
        [("p", vec!["q"]), ("q", vec!["r"]), ("r", vec!["p"]), ("s", vec!["p"])]
            .into_iter()
            .map(|(m, d)| (m.to_string(), d.into_iter().map(String::from).collect()))
            .collect();
    assert_eq!(circles(&mods), vec![vec!["p".to_string(), "q".into(), "r".into()]]);
}

/// Functions in `src/` longer than this many lines are a fault of the house (issue 33: there
/// were 27, the longest 211 lines; the last were split in that issue).
const MAX_FUNCTION_LINES: usize = 60;

/// Every function of `src/` (outside unit tests) as (file, name, lines).
fn function_lengths() -> Vec<(String, String, usize)> {
    struct Lengths<'f> {
        file: &'f str,
        out: Vec<(String, String, usize)>,
    }
    impl Lengths<'_> {
        fn record(&mut self, name: &syn::Ident, block: &syn::Block) {
            use syn::spanned::Spanned;
            let span = block.span();
            let lines = span.end().line - span.start().line + 1;
            self.out.push((self.file.to_string(), name.to_string(), lines));
        }
    }
    impl<'ast> Visit<'ast> for Lengths<'_> {
        fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
            if !is_test_only(&m.attrs) {
                syn::visit::visit_item_mod(self, m);
            }
        }
        fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
            self.record(&f.sig.ident, &f.block);
            syn::visit::visit_item_fn(self, f);
        }
        fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
            self.record(&f.sig.ident, &f.block);
            syn::visit::visit_impl_item_fn(self, f);
        }
        fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
            if let Some(block) = &f.default {
                self.record(&f.sig.ident, block);
            }
            syn::visit::visit_trait_item_fn(self, f);
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = rust_files(&root.join("src"));
    let mut all = Vec::new();
    for path in files {
        let file = path.strip_prefix(root).unwrap().display().to_string();
        let ast = syn::parse_file(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut lengths = Lengths { file: &file, out: Vec::new() };
        lengths.visit_file(&ast);
        all.extend(lengths.out);
    }
    all
}

#[test]
fn no_function_in_src_is_longer_than_sixty_lines() {
    let long: Vec<(String, String, usize)> =
        function_lengths().into_iter().filter(|(_, _, lines)| *lines > MAX_FUNCTION_LINES).collect();
    assert!(long.is_empty(), "over {MAX_FUNCTION_LINES} lines, split them: {long:?}");
}

/// The lengths are read from the parsed source: a function's lines from its opening to its
/// closing brace, unit tests left out.
#[test]
fn function_lengths_come_from_the_source() {
    let all = function_lengths();
    let get = |file: &str, name: &str| all.iter().find(|(f, n, _)| f == file && n == name).map(|(_, _, l)| *l);
    // `release_margin` in src/shutdown.rs is a one-line body between its braces
    assert_eq!(get("src/shutdown.rs", "release_margin"), Some(3));
    assert!(get("src/shutdown.rs", "margin_is_a_fifth_within_bounds").is_none(), "unit tests are not counted");
}

/// The house in layers, lowest first: a module imports only modules before it. Under the shared
/// parts (the edge, SQS, the configuration) come the message's own types (`event`, its trace and
/// payload), then the stages — each importing what it hands messages on to, so none reaches back
/// to an earlier one (the dispatcher tells the autoscaler of throttles through
/// `dispatch::Backpressure`, the keeper tells telemetry of extensions through
/// `lease::ExtensionWatcher`) — then the service around them.
const LAYERS: &[&str] = &[
    // the bottom: no imports of the crate, or only of each other
    "limits",
    "status",
    "backoff",
    "filter",
    "fuzz",
    "notify",
    "shutdown",
    "net",
    "aws",
    "metrics",
    "sqs",
    "sim",
    "config",
    "descriptors",
    "check",
    "import_esm",
    // the message
    "event",
    "trace",
    "payload",
    // the stages, from where a message ends to where it begins
    "lease",
    "control",
    "fleet",
    "dispatch",
    "hop",
    "ack",
    "batch",
    "intake",
    "telemetry",
    "poller",
    // the service around them
    "server",
    "admin",
    "dlq",
    "redrive",
    "pipeline",
    "supervisor",
];

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let mods = modules();
    let layer = |m: &str| LAYERS.iter().position(|l| *l == m);
    let unplaced: Vec<&String> = mods.keys().filter(|m| layer(m).is_none()).collect();
    assert!(unplaced.is_empty(), "modules without a place in LAYERS: {unplaced:?}");
    let mut against = Vec::new();
    for (m, imports) in &mods {
        for i in imports {
            if let (Some(a), Some(b)) = (layer(m), layer(i)) {
                if b >= a {
                    against.push(format!("{m} imports {i}"));
                }
            }
        }
    }
    assert!(
        against.is_empty(),
        "imports against the layers (a module imports only those before it in LAYERS): {against:?}"
    );
}

/// The four imports issue 33 found against the message's path are the kind the layers refuse.
#[test]
fn the_layers_refuse_a_stage_reaching_back() {
    let layer = |m: &str| LAYERS.iter().position(|l| *l == m).unwrap();
    for (from, to) in [("dispatch", "poller"), ("dispatch", "server"), ("lease", "telemetry"), ("event", "payload")] {
        assert!(layer(to) > layer(from), "{from} may not import {to}");
    }
}
