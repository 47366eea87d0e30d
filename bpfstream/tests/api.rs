//! The public API snapshot: every public item of `bpfstream/src` (signatures, fields, variants,
//! trait items, impls, re-exports), extracted with `syn` and compared with the committed
//! `bpfstream/api.txt`. A change to the public API fails this test until api.txt is updated, so
//! it shows up in review as a diff of that file:
//!
//! ```text
//! BPFSTREAM_BLESS_API=1 cargo test -p bpfstream --test api
//! ```
//!
//! Bodies and docs are left out: only what a user can name or rely on is listed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use quote::ToTokens;
use syn::{Attribute, Fields, ImplItem, Item, TraitItem, Visibility};

const BLESS: &str = "BPFSTREAM_BLESS_API";

fn tokens(t: &impl ToTokens) -> String {
    // `quote` spaces every token; undo the spacing that only hurts reading.
    let mut s = t.to_token_stream().to_string();
    for (from, to) in [
        (" :: ", "::"),
        (":: ", "::"),
        (" ,", ","),
        (" ;", ";"),
        ("< ", "<"),
        (" <", "<"),
        (" >", ">"),
        ("& ", "&"),
        ("( ", "("),
        (" (", "("),
        (" )", ")"),
        ("[ ", "["),
        (" ]", "]"),
        (" :", ":"),
        ("! ", "!"),
        ("# ", "#"),
        ("' ", "'"),
    ] {
        s = s.replace(from, to);
    }
    s.replace("->", " -> ").replace("  ", " ").replace("=>", " => ")
}

fn is_pub(vis: &Visibility) -> bool {
    matches!(vis, Visibility::Public(_))
}

/// The attributes that are part of the API: derives, repr, non_exhaustive, cfg, macro_export.
fn api_attrs(attrs: &[Attribute]) -> String {
    let mut out = String::new();
    for attr in attrs {
        let path = attr.path();
        if ["derive", "repr", "non_exhaustive", "cfg", "macro_export"].iter().any(|name| path.is_ident(name)) {
            out.push_str(&tokens(attr));
            out.push(' ');
        }
    }
    out
}

fn fields(f: &Fields, all: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut hidden = false;
    for (i, field) in f.iter().enumerate() {
        if all || is_pub(&field.vis) {
            let name = field.ident.as_ref().map_or(i.to_string(), ToString::to_string);
            out.push(format!("{name}: {}", tokens(&field.ty)));
        } else {
            hidden = true;
        }
    }
    if hidden {
        out.push("(private fields)".into());
    }
    out
}

struct Extractor {
    src: PathBuf,
    entries: Vec<String>,
    /// Types declared without `pub` in the file being read: their impls are not API.
    private_types: Vec<String>,
    /// Traits declared without `pub` anywhere in the crate: their impls are not API.
    private_traits: Vec<String>,
}

impl Extractor {
    fn file(&mut self, module: &str, path: &Path) {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
        let outer = std::mem::take(&mut self.private_types);
        self.private_types = file
            .items
            .iter()
            .filter_map(|item| match item {
                Item::Struct(s) if !is_pub(&s.vis) => Some(s.ident.to_string()),
                Item::Enum(e) if !is_pub(&e.vis) => Some(e.ident.to_string()),
                _ => None,
            })
            .collect();
        self.items(module, &file.items);
        self.private_types = outer;
    }

    fn push(&mut self, module: &str, head: String, body: Vec<String>) {
        let mut entry = format!("{module}: {head}");
        for line in body {
            write!(entry, "\n    {line}").unwrap();
        }
        self.entries.push(entry);
    }

    fn items(&mut self, module: &str, items: &[Item]) {
        for item in items {
            match item {
                // Test support (`#[cfg(test)] mod sim`) is no part of the API.
                Item::Mod(m) if m.attrs.iter().any(|a| tokens(a) == "#[cfg(test)]") => {}
                Item::Mod(m) => {
                    let child = format!("{module}::{}", m.ident);
                    if is_pub(&m.vis) {
                        self.push(module, format!("{}pub mod {}", api_attrs(&m.attrs), m.ident), vec![]);
                    }
                    match &m.content {
                        Some((_, inner)) if is_pub(&m.vis) => self.items(&child, inner),
                        Some(_) => {} // private inline modules (tests)
                        None => {
                            let file = self.src.join(format!("{}.rs", m.ident));
                            self.file(&child, &file);
                        }
                    }
                }
                Item::Use(u) if is_pub(&u.vis) => self.push(module, format!("pub use {}", tokens(&u.tree)), vec![]),
                Item::Fn(f) if is_pub(&f.vis) => {
                    self.push(module, format!("{}pub {}", api_attrs(&f.attrs), tokens(&f.sig)), vec![])
                }
                Item::Struct(s) if is_pub(&s.vis) => {
                    let head = format!("{}pub struct {}{}", api_attrs(&s.attrs), s.ident, tokens(&s.generics));
                    self.push(module, head, fields(&s.fields, false));
                }
                Item::Enum(e) if is_pub(&e.vis) => {
                    let head = format!("{}pub enum {}{}", api_attrs(&e.attrs), e.ident, tokens(&e.generics));
                    let variants = e
                        .variants
                        .iter()
                        .map(|v| {
                            let f = fields(&v.fields, true);
                            match &v.fields {
                                Fields::Unit => v.ident.to_string(),
                                Fields::Unnamed(u) => format!("{}({})", v.ident, tokens(&u.unnamed)),
                                Fields::Named(_) => format!("{} {{ {} }}", v.ident, f.join(", ")),
                            }
                        })
                        .collect();
                    self.push(module, head, variants);
                }
                Item::Trait(t) if is_pub(&t.vis) => {
                    let unsafety = if t.unsafety.is_some() { "unsafe " } else { "" };
                    let supertraits =
                        if t.supertraits.is_empty() { String::new() } else { format!(": {}", tokens(&t.supertraits)) };
                    let head = format!("pub {unsafety}trait {}{}{supertraits}", t.ident, tokens(&t.generics));
                    let body = t
                        .items
                        .iter()
                        .filter_map(|i| match i {
                            TraitItem::Fn(f) => Some(format!(
                                "{}{}",
                                tokens(&f.sig),
                                if f.default.is_some() { " (provided)" } else { "" }
                            )),
                            TraitItem::Type(ty) if ty.bounds.is_empty() => Some(format!("type {}", ty.ident)),
                            TraitItem::Type(ty) => Some(format!("type {}: {}", ty.ident, tokens(&ty.bounds))),
                            TraitItem::Const(c) => Some(format!("const {}: {}", c.ident, tokens(&c.ty))),
                            _ => None,
                        })
                        .collect();
                    self.push(module, head, body);
                }
                Item::Impl(i) => self.impl_block(module, i),
                Item::Const(c) if is_pub(&c.vis) => {
                    let head = format!("pub const {}: {} = {}", c.ident, tokens(&c.ty), tokens(&c.expr));
                    self.push(module, head, vec![]);
                }
                Item::Static(s) if is_pub(&s.vis) => {
                    self.push(module, format!("pub static {}: {}", s.ident, tokens(&s.ty)), vec![])
                }
                Item::Type(t) if is_pub(&t.vis) => {
                    let head = format!("pub type {}{} = {}", t.ident, tokens(&t.generics), tokens(&t.ty));
                    self.push(module, head, vec![]);
                }
                Item::Macro(m) if m.attrs.iter().any(|a| a.path().is_ident("macro_export")) => {
                    let name = m.ident.as_ref().map_or(String::new(), ToString::to_string);
                    self.push("bpfstream", format!("macro {name}!"), vec![]);
                }
                _ => {}
            }
        }
    }

    fn impl_block(&mut self, module: &str, i: &syn::ItemImpl) {
        if let syn::Type::Path(p) = &*i.self_ty {
            if p.path.segments.last().is_some_and(|s| self.private_types.contains(&s.ident.to_string())) {
                return;
            }
        }
        let cfg = api_attrs(&i.attrs);
        let unsafety = if i.unsafety.is_some() { "unsafe " } else { "" };
        let generics = tokens(&i.generics);
        let target = tokens(&i.self_ty);
        match &i.trait_ {
            Some((_, path, _))
                if path.segments.last().is_some_and(|s| self.private_traits.contains(&s.ident.to_string())) => {}
            // A trait impl is API as a whole (what it implements), whatever its items.
            Some((_, path, _)) => {
                let head = format!("{cfg}{unsafety}impl{generics} {} for {target}", tokens(path));
                self.push(module, head, vec![]);
            }
            None => {
                let body: Vec<String> = i
                    .items
                    .iter()
                    .filter_map(|item| match item {
                        ImplItem::Fn(f) if is_pub(&f.vis) => {
                            Some(format!("{}pub {}", api_attrs(&f.attrs), tokens(&f.sig)))
                        }
                        ImplItem::Const(c) if is_pub(&c.vis) => {
                            Some(format!("pub const {}: {}", c.ident, tokens(&c.ty)))
                        }
                        _ => None,
                    })
                    .collect();
                if !body.is_empty() {
                    self.push(module, format!("{cfg}impl{generics} {target}"), body);
                }
            }
        }
    }
}

/// The traits of every source file that are not `pub` (crate-private plumbing).
fn private_traits(src: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let file = syn::parse_file(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for item in file.items {
                if let Item::Trait(t) = item {
                    if !is_pub(&t.vis) {
                        out.push(t.ident.to_string());
                    }
                }
            }
        }
    }
    out
}

fn current_api() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut extractor = Extractor {
        src: root.join("src"),
        entries: Vec::new(),
        private_types: Vec::new(),
        private_traits: private_traits(&root.join("src")),
    };
    extractor.file("bpfstream", &root.join("src/lib.rs"));
    extractor.entries.sort();
    extractor.entries.dedup();
    let mut out = String::from(
        "# The public API of bpfstream, extracted by tests/api.rs. A diff here is an API change:\n\
         # review it, then regenerate with BPFSTREAM_BLESS_API=1 cargo test -p bpfstream --test api\n",
    );
    for entry in extractor.entries {
        out.push_str(&entry);
        out.push('\n');
    }
    out
}

/// The snapshot's entries: a line and the indented lines under it.
fn entries(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        match out.last_mut() {
            Some(entry) if line.starts_with(' ') => {
                entry.push('\n');
                entry.push_str(line);
            }
            _ => out.push(line.to_owned()),
        }
    }
    out
}

#[test]
fn public_api_matches_the_snapshot() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("api.txt");
    let current = current_api();
    if std::env::var_os(BLESS).is_some() {
        std::fs::write(&path, &current).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed == current {
        return;
    }
    let (old, new) = (entries(&committed), entries(&current));
    let mut diff = String::new();
    for entry in old.iter().filter(|e| !new.contains(e)) {
        writeln!(diff, "- {}", entry.replace('\n', "\n- ")).unwrap();
    }
    for entry in new.iter().filter(|e| !old.contains(e)) {
        writeln!(diff, "+ {}", entry.replace('\n', "\n+ ")).unwrap();
    }
    panic!(
        "the public API changed (bpfstream/api.txt is the snapshot):\n{diff}\nIf this is intended, run {BLESS}=1 cargo test -p bpfstream --test api and commit api.txt."
    );
}

#[test]
fn the_extractor_sees_signatures_fields_and_feature_gates() {
    let api = current_api();
    for expected in [
        "bpfstream::source: impl EventSource",
        "pub fn consume<F: Flow>(&mut self, mut handler: impl FnMut(Event<Record<'_>>) -> F) -> Result<usize, F::Error>",
        "bpfstream: #[cfg(feature = \"aya\")] pub mod aya",
        "bpfstream: macro record!",
        "bpfstream::totals: #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)] pub struct Totals",
        "    delivered: u64",
    ] {
        assert!(api.contains(expected), "{expected:?} missing from the extracted API:\n{api}");
    }
}
