//! Layers import downward only: every `crate::<module>` path in `crates/kedit/src` names a
//! module of a lower layer than the file's own (or the file's own module). Modules of one
//! layer are siblings and do not import each other.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Bottom to top; the modules of one entry are siblings. A module listed here need not
/// exist yet; one that exists must be listed.
///
/// The foundation is three tiers rather than one layer of siblings: every module reports
/// errors through `error`, and `fsio` (built on `error`) writes the files of the others
/// (`plot`'s pictures among them). `request` sits below `data`, which reads datasets into
/// requests.
const LAYERS: [&[&str]; 14] = [
    &["error"],
    &["fsio"],
    &["hash", "rng", "cache", "plot", "progress"],
    &["tokenizer"],
    &["model"],
    &["runtime"],
    &["lm", "stats", "trace", "encoder"],
    &["request"],
    &["prompts", "data"],
    &["edit"],
    &["editor"],
    &["evaluate", "methods"],
    &["experiment"],
    &["bench", "fuzz"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module of a file below `src` (`None` for the crate root, lib.rs).
fn top_module(rel: &Path) -> Option<String> {
    let first = rel.iter().next()?.to_string_lossy().into_owned();
    match first.strip_suffix(".rs") {
        Some("lib") => None,
        Some(stem) => Some(stem.to_string()),
        None => Some(first),
    }
}

/// The source with comments (doc comments too) and the insides of string and character
/// literals blanked out; line breaks are kept, so that line numbers stay right.
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if c[i] == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&c, i) {
            // A raw string: r"…", r#"…"#, …
            let mut j = i + 1;
            while c.get(j) == Some(&'#') {
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            let hashes = j - i - 1;
            let close: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let body_start = j + 1;
            let rest: String = c[body_start..].iter().collect();
            let body_len = rest
                .find(&close)
                .map_or(c.len() - body_start, |b| rest[..b].chars().count());
            let end = (body_start + body_len + close.chars().count()).min(c.len());
            out.extend(c[i..end].iter().map(|&ch| blank(ch)));
            i = end;
        } else if c[i] == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < c.len() {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c[i] == '\'' && next == Some('\\') {
            // An escaped character literal: '\n', '\'', '\u{..}'.
            out.push_str("  ");
            i += 2;
            while i < c.len() && c[i] != '\'' {
                out.push(' ');
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else if c[i] == '\'' && c.get(i + 2) == Some(&'\'') {
            out.push_str("   ");
            i += 3;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn ident_before(c: &[char], i: usize) -> bool {
    i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_')
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first segments of the items of a `{…}` group (nested groups inside are skipped).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item = String::new();
    for ch in group.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                heads.push(ident_at(item.trim()).to_string());
                item.clear();
                continue;
            }
            _ => {}
        }
        if depth == 0 {
            item.push(ch);
        }
    }
    heads.push(ident_at(item.trim()).to_string());
    heads.into_iter().filter(|h| !h.is_empty()).collect()
}

/// What `pub use module::{A, B}` in lib.rs makes `crate::A`: (name, module).
fn root_reexports(lib: &str) -> Vec<(String, String)> {
    let code = code_only(lib);
    let mut out = Vec::new();
    for stmt in code.split(';') {
        let Some(rest) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let module = ident_at(rest).to_string();
        let tail = &rest[module.len()..];
        let names = match (tail.find('{'), tail.rfind('}')) {
            (Some(a), Some(b)) => group_heads(&tail[a + 1..b]),
            _ => vec![ident_at(tail.rsplit("::").next().unwrap_or("").trim()).to_string()],
        };
        out.extend(names.into_iter().map(|n| (n, module.clone())));
    }
    out
}

/// The top-level modules a file's code names through `crate::`, with the line of each.
/// (`super::` is not followed: out of a top-level file it would reach the crate root, which
/// no file here does.)
fn imports(code: &str, reexports: &[(String, String)]) -> Vec<(usize, String)> {
    let resolve = |name: &str| -> Option<String> {
        if name.is_empty() || name == "self" {
            return None;
        }
        match reexports.iter().find(|(n, _)| n == name) {
            Some((_, m)) => Some(m.clone()),
            None => Some(name.to_string()),
        }
    };
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at].ends_with(|ch: char| ch == '$' || ch.is_alphanumeric() || ch == '_') {
            continue;
        }
        let line = code[..at].matches('\n').count() + 1;
        let after = &code[at + "crate::".len()..];
        match after.strip_prefix('{') {
            Some(group) => {
                let mut depth = 1;
                let end = group
                    .char_indices()
                    .find(|&(_, ch)| {
                        match ch {
                            '{' => depth += 1,
                            '}' => depth -= 1,
                            _ => {}
                        }
                        depth == 0
                    })
                    .map_or(group.len(), |(k, _)| k);
                for head in group_heads(&group[..end]) {
                    found.extend(resolve(&head).map(|m| (line, m)));
                }
            }
            None => found.extend(resolve(ident_at(after)).map(|m| (line, m))),
        }
    }
    found
}

/// Every import that breaks the layering, as `file:line: message`.
fn violations(root: &Path) -> Vec<String> {
    let lib = std::fs::read_to_string(root.join("lib.rs")).expect("lib.rs");
    let reexports = root_reexports(&lib);
    let mut files = Vec::new();
    rust_files(root, &mut files);
    let mut problems = Vec::new();
    let mut unlisted = BTreeSet::new();
    for file in &files {
        let rel = file.strip_prefix(root).expect("below src");
        let Some(own) = top_module(rel) else {
            continue; // lib.rs re-exports whatever it likes
        };
        let Some(own_layer) = layer_of(&own) else {
            unlisted.insert(own.clone());
            continue;
        };
        let text = std::fs::read_to_string(file).expect("readable source");
        let shown = Path::new("crates/kedit/src").join(rel);
        let mut seen = BTreeSet::new();
        for (line, target) in imports(&code_only(&text), &reexports) {
            if target == own || !seen.insert((line, target.clone())) {
                continue;
            }
            let message = match layer_of(&target) {
                None => format!("`crate::{target}` is not a module of the layer table"),
                Some(l) if l > own_layer => format!(
                    "`{own}` (layer {own_layer}) imports `crate::{target}` from layer {l} above it"
                ),
                Some(l) if l == own_layer => {
                    format!("`{own}` imports its sibling `crate::{target}` (both layer {l})")
                }
                Some(_) => continue,
            };
            problems.push(format!("{}:{line}: {message}", shown.display()));
        }
    }
    for m in unlisted {
        problems.push(format!(
            "crates/kedit/src: module `{m}` is in no layer of the table in tests/layers.rs"
        ));
    }
    problems
}

#[test]
fn layers_import_downward_only() {
    let problems = violations(&src());
    assert!(
        problems.is_empty(),
        "{} import(s) against the layering:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn the_scanner_reads_code_not_comments_or_strings() {
    let text = r#"
//! Built on [`crate::experiment`] (a doc comment).
use crate::error::Result;
use crate::{model::Model,
    runtime::{Site, TokenBatch}, Error};
/* crate::bench in a block comment */
fn f() -> Result<()> {
    let s = "crate::methods in a string";
    let c = '"';
    let p = crate::stats::key_stats; // crate::editor in a comment
    Ok(())
}
"#;
    let reexports = vec![("Error".to_string(), "error".to_string())];
    let found = imports(&code_only(text), &reexports);
    let lines: Vec<(usize, &str)> = found.iter().map(|(l, m)| (*l, m.as_str())).collect();
    assert_eq!(
        lines,
        [
            (3, "error"),
            (4, "model"),
            (4, "runtime"),
            (4, "error"),
            (10, "stats")
        ]
    );
}
