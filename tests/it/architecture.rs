//! The layering rule (README "Architecture", D27), held against the code: every path of the
//! crate that a file of `src/` names (`use crate::…`, `super::…`, a path written inline) must
//! point down the table [`LAYERS`], or within the file's own layer; an adapter may not name
//! another adapter; the binaries call only the composition root; and no two files import each
//! other, directly or round a circle.
//!
//! Comments and string literals are left out before reading, so a doc link is not an import.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each layer of the crate (a top-level module) and the layers it may import, lowest first.
/// The README's diagram draws this table.
const LAYERS: &[(&str, &[&str])] = &[
    ("domain", &[]),
    ("telemetry", &[]),
    ("ports", &["domain"]),
    ("app", &["domain", "ports", "telemetry"]),
    ("sim", &["domain", "ports", "telemetry"]),
    ("adapters", &["domain", "ports", "telemetry"]),
    (
        "boot",
        &["domain", "telemetry", "ports", "app", "sim", "adapters"],
    ),
];

/// What `#[cfg(test)]` modules may import besides their layer's table: services are tested
/// on the in-memory fakes (style guide C17).
const TEST_ALSO: &[(&str, &[&str])] = &[
    ("app", &["adapters::memory"]),
    ("sim", &["adapters::memory"]),
];

/// The only module of the library a binary (`src/main.rs`, `src/bin/*.rs`) may name.
const BINARIES_USE: &str = "boot";

#[test]
fn every_import_runs_down_the_layer_table_and_no_adapter_names_another() {
    let violations = violations(&src_files());
    assert!(
        violations.is_empty(),
        "imports against the layer table (tests/it/architecture.rs, README \"Architecture\"):\n{}",
        violations.join("\n")
    );
}

#[test]
fn no_two_files_of_src_import_each_other_round_a_circle() {
    let files = src_files();
    let graph = file_graph(&files);
    let circles = circles(&graph);
    assert!(
        circles.is_empty(),
        "import circles between files:\n{}",
        circles
            .iter()
            .map(|c| c.join(" -> "))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_checker_sees_imports_that_break_the_rule() {
    // What the rule must catch, each in the form it takes in the code.
    let cases = [
        ("src/domain/events.rs", "use crate::ports::Payload;", true),
        ("src/ports/inbound.rs", "use crate::app::clients::X;", true),
        (
            "src/adapters/http/router.rs",
            "use crate::app::health::Health;",
            true,
        ),
        (
            "src/adapters/socketio/inbound.rs",
            "use crate::{domain::Payload, adapters::http::Joined};",
            true,
        ),
        (
            "src/adapters/kafka/client.rs",
            "fn f() { let _ = crate::adapters::memory::MemoryBus::new(); }",
            true,
        ),
        (
            "src/app/ingest/batch.rs",
            "use super::super::super::boot::X;",
            true,
        ),
        (
            "src/app/clients.rs",
            "use crate::adapters::memory::MemoryCache;",
            true,
        ),
        (
            "src/main.rs",
            "fn main() { flux_bff::app::clients::run(); }",
            true,
        ),
        // And what it must let through.
        (
            "src/app/clients.rs",
            "use crate::{domain::Payload, ports::EmitOptions};",
            false,
        ),
        (
            "src/adapters/kafka/client.rs",
            "use super::errors::KafkaError;",
            false,
        ),
        (
            "src/boot/wiring.rs",
            "use crate::adapters::memory::MemoryBus;",
            false,
        ),
        (
            "src/app/clients.rs",
            "#[cfg(test)]\nmod tests {\n    use crate::adapters::memory::MemoryCache;\n}",
            false,
        ),
        (
            "src/domain/events.rs",
            "// use crate::ports::Payload;\nconst S: &str = \"crate::app\";",
            false,
        ),
    ];
    for (file, code, bad) in cases {
        let found = violations(&[(PathBuf::from(file), code.to_owned())]);
        assert_eq!(!found.is_empty(), bad, "{file}: {code:?} gave {found:?}");
    }
    let circle = [
        (PathBuf::from("src/app/a.rs"), "use super::b::X;".to_owned()),
        (
            PathBuf::from("src/app/b.rs"),
            "use crate::app::a::Y;".to_owned(),
        ),
    ];
    let graph = file_graph(&circle);
    assert_eq!(circles(&graph).len(), 1, "{graph:?}");
}

/// Every `.rs` file under `src/`, with its text.
fn src_files() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("a source file is UTF-8");
                out.push((path, text));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    walk(&root.join("src"), &mut files);
    files
        .into_iter()
        .map(|(path, text)| (path.strip_prefix(root).unwrap().to_owned(), text))
        .collect()
}

/// A module path of the crate (`["app", "ingest", "batch"]`) named at some point of a file,
/// and whether that point is inside a `#[cfg(test)]` module.
#[derive(Debug)]
struct Reference {
    target: Vec<String>,
    in_test: bool,
}

fn violations(files: &[(PathBuf, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in files {
        let Some(module) = module_of(path) else {
            continue;
        };
        let binary = is_binary(path);
        for r in references(&module, text, binary) {
            if let Err(why) = check(&module, &r, binary) {
                found.push(format!(
                    "{}: crate::{} ({why})",
                    path.display(),
                    r.target.join("::")
                ));
            }
        }
    }
    found
}

fn is_binary(path: &Path) -> bool {
    path == Path::new("src/main.rs") || path.starts_with("src/bin")
}

/// Whether the module `from` may name `r.target`.
fn check(from: &[String], r: &Reference, binary: bool) -> Result<(), String> {
    let Some(to_layer) = r.target.first() else {
        return Ok(());
    };
    if binary {
        return match to_layer.as_str() == BINARIES_USE {
            true => Ok(()),
            false => Err(format!("a binary calls only {BINARIES_USE}")),
        };
    }
    let Some(layer) = from.first() else {
        return Ok(()); // lib.rs declares the layers
    };
    let allowed = LAYERS
        .iter()
        .find(|(name, _)| name == layer)
        .map(|(_, allowed)| *allowed)
        .ok_or_else(|| format!("{layer} is not in the layer table"))?;
    if to_layer == layer {
        // Within a layer, adapters stay apart: one adapter never names another.
        let same_adapter =
            layer != "adapters" || r.target.len() < 2 || from.len() < 2 || r.target[1] == from[1];
        return match same_adapter {
            true => Ok(()),
            false => Err(format!("adapter {} names adapter {}", from[1], r.target[1])),
        };
    }
    if allowed.contains(&to_layer.as_str()) {
        return Ok(());
    }
    let target = r.target.join("::");
    let test_allowed = r.in_test
        && TEST_ALSO
            .iter()
            .any(|(l, also)| l == layer && also.iter().any(|a| target.starts_with(a)));
    match test_allowed {
        true => Ok(()),
        false => Err(format!("{layer} may import only {allowed:?}")),
    }
}

/// The module path of a file of `src/`: `src/app/ingest/batch.rs` is `app::ingest::batch`,
/// `src/app.rs` is `app`, `src/lib.rs` and the binaries are the root.
fn module_of(path: &Path) -> Option<Vec<String>> {
    let rel = path.strip_prefix("src").ok()?;
    if rel == Path::new("lib.rs") || is_binary(path) {
        return Some(Vec::new());
    }
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    Some(parts)
}

/// Every crate path the code of `text` (module `module`) names, resolved to an absolute
/// module path; in a binary, the `flux_bff::` paths.
fn references(module: &[String], text: &str, binary: bool) -> Vec<Reference> {
    let code = strip_comments_and_strings(text);
    let root = if binary { "flux_bff" } else { "crate" };
    let mut out = Vec::new();
    // The inline modules open at each point: (name, brace depth inside it, cfg(test)).
    let mut inline: Vec<(String, usize, bool)> = Vec::new();
    let mut depth = 0usize;
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        match c {
            '{' => {
                depth += 1;
                i += 1;
                continue;
            }
            '}' => {
                if inline.last().is_some_and(|(_, d, _)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
                continue;
            }
            _ => {}
        }
        if !starts_word(bytes, i) {
            i += 1;
            continue;
        }
        let word = word_at(&code, i);
        // A file module named `tests` is declared under `#[cfg(test)]` (`sim/tests.rs`).
        let in_test =
            module.last().is_some_and(|m| m == "tests") || inline.iter().any(|(_, _, t)| *t);
        let here: Vec<String> = module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _, _)| n.clone()))
            .collect();
        if word == "mod" {
            // `mod name {`: an inline module (a `mod name;` declares a file, no scope).
            let rest = &code[i + 3..];
            let name = rest.trim_start();
            let name_len = name
                .find(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
                .unwrap_or(name.len());
            let after = name[name_len..].trim_start();
            if name_len > 0 && after.starts_with('{') {
                let is_test = last_attribute_is_cfg_test(&code[..i]);
                let open = i + 3 + rest.find('{').expect("seen above");
                inline.push((name[..name_len].to_owned(), depth + 1, is_test));
                depth += 1;
                i = open + 1;
                continue;
            }
        }
        // `use` starts an import unless it is `+ use<…>` (precise capturing).
        if word == "use" && !code[i + 3..].trim_start().starts_with('<') {
            let end = code[i..].find(';').map_or(code.len(), |e| i + e);
            let tree = &code[i + 3..end];
            for path in expand_use_tree(tree.trim()) {
                if let Some(target) = resolve(&here, &path, root) {
                    out.push(Reference { target, in_test });
                }
            }
            i = end + 1;
            continue;
        }
        if word == root || word == "super" {
            let len = path_len(&code[i..]);
            let path: Vec<String> = code[i..i + len]
                .split("::")
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            if path.len() > 1
                && let Some(target) = resolve(&here, &path, root)
            {
                out.push(Reference { target, in_test });
            }
            i += len.max(word.len());
            continue;
        }
        i += word.len().max(1);
    }
    out
}

/// Whether the attributes right before a `mod` (and its visibility) include `#[cfg(test)]`.
fn last_attribute_is_cfg_test(before: &str) -> bool {
    let mut rest = before.trim_end();
    for visibility in ["pub(super)", "pub(crate)", "pub"] {
        if let Some(r) = rest.strip_suffix(visibility) {
            rest = r.trim_end();
            break;
        }
    }
    while rest.ends_with(']') {
        let Some(start) = rest.rfind("#[") else {
            return false;
        };
        if rest[start..].replace(char::is_whitespace, "") == "#[cfg(test)]" {
            return true;
        }
        rest = rest[..start].trim_end();
    }
    false
}

fn starts_word(bytes: &[u8], i: usize) -> bool {
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    is_ident(bytes[i]) && (i == 0 || !(is_ident(bytes[i - 1]) || bytes[i - 1] == b':'))
}

fn word_at(code: &str, i: usize) -> &str {
    let rest = &code[i..];
    let len = rest
        .find(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
        .unwrap_or(rest.len());
    &rest[..len]
}

/// The length of the path `a::b::c` at the start of `text` (stops before anything else).
fn path_len(text: &str) -> usize {
    let mut len = 0;
    let mut rest = text;
    loop {
        let word = rest
            .find(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
            .unwrap_or(rest.len());
        if word == 0 {
            return len;
        }
        len += word;
        rest = &rest[word..];
        match rest.strip_prefix("::") {
            Some(after) if after.starts_with(|ch: char| ch.is_alphanumeric() || ch == '_') => {
                len += 2;
                rest = after;
            }
            _ => return len,
        }
    }
}

/// The paths a use tree names: `crate::{a::b, c::{d, e as f}}` gives `crate::a::b`,
/// `crate::c::d`, `crate::c::e`.
fn expand_use_tree(tree: &str) -> Vec<Vec<String>> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let mut out = Vec::new();
    expand(&tree, &mut Vec::new(), &mut out);
    out
}

fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let tree = tree.strip_prefix("::").unwrap_or(tree);
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let n = prefix.len();
        prefix.extend(head);
        for item in split_top_level(inner) {
            expand(item, prefix, out);
        }
        prefix.truncate(n);
        return;
    }
    let path = tree.split("as").next().unwrap_or(tree);
    let mut full = prefix.clone();
    full.extend(
        path.split("::")
            .filter(|s| !s.is_empty() && *s != "self" && *s != "*")
            .map(str::to_owned),
    );
    if !full.is_empty() {
        out.push(full);
    }
}

fn split_top_level(inner: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, ch) in inner.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

/// The absolute module path `path` names from module `here`, if it names the crate (not an
/// external crate nor `self::`).
fn resolve(here: &[String], path: &[String], root: &str) -> Option<Vec<String>> {
    let first = path.first()?;
    if first == root {
        return Some(path[1..].to_vec());
    }
    if first != "super" {
        return None;
    }
    let mut base = here.to_vec();
    let mut rest = path;
    while rest.first().is_some_and(|s| s == "super") {
        base.pop()?;
        rest = &rest[1..];
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The code with comments, string and character literals blanked (same length, so offsets
/// hold), keeping line breaks.
fn strip_comments_and_strings(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut level = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    level += 1;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    level -= 1;
                    blank(&mut out, chars[i]);
                    blank(&mut out, chars[i + 1]);
                    i += 2;
                    if level == 0 {
                        break;
                    }
                    continue;
                }
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !prev_is_ident(&chars, i)
        {
            // A raw string r"…" or r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let closing: String = std::iter::once('"')
                .chain((0..hashes).map(|_| '#'))
                .collect();
            let body_start = j + 1;
            let mut k = body_start;
            while k < chars.len() && !chars[k..].iter().collect::<String>().starts_with(&closing) {
                k += 1;
            }
            let end = (k + closing.chars().count()).min(chars.len());
            for ch in &chars[i..end] {
                blank(&mut out, *ch);
            }
            i = end;
        } else if c == '"' {
            blank(&mut out, c);
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
                if i < chars.len() {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
            if i < chars.len() {
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '\'' && next == Some('\\') {
            // An escaped character literal: up to the closing quote.
            let end = chars[i + 2..]
                .iter()
                .position(|ch| *ch == '\'')
                .map_or(chars.len(), |p| i + 2 + p + 1);
            for ch in &chars[i..end] {
                blank(&mut out, *ch);
            }
            i = end;
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            // A plain character literal such as '"' (a lifetime has no closing quote).
            for ch in &chars[i..i + 3] {
                blank(&mut out, *ch);
            }
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn prev_is_ident(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// Which files each file imports: a path resolves to the file of its longest module prefix
/// that is a file. A module naming its own ancestor is not an edge (children use what their
/// parent re-exports), nor is a module naming itself.
fn file_graph(files: &[(PathBuf, String)]) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeMap<Vec<String>, String> = files
        .iter()
        .filter(|(p, _)| !is_binary(p))
        .filter_map(|(p, _)| Some((module_of(p)?, p.display().to_string())))
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in files {
        if is_binary(path) {
            continue;
        }
        let Some(module) = module_of(path) else {
            continue;
        };
        let from = path.display().to_string();
        let edges = graph.entry(from.clone()).or_default();
        for r in references(&module, text, false) {
            let mut target = r.target.clone();
            while !target.is_empty() && !modules.contains_key(&target) {
                target.pop();
            }
            if target.is_empty() || module.starts_with(&target) {
                continue;
            }
            if let Some(file) = modules.get(&target) {
                edges.insert(file.clone());
            }
        }
    }
    graph
}

/// Each set of files that reach each other through imports (strongly connected, more than
/// one file), as the circle found from its first file.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(f) = todo.pop() {
            for next in graph.get(&f).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let mut done = BTreeSet::new();
    let mut found = Vec::new();
    for file in graph.keys() {
        if done.contains(file) {
            continue;
        }
        let from_file = reach(file);
        let mut members: Vec<String> = from_file
            .iter()
            .filter(|other| *other != file && reach(other).contains(file))
            .cloned()
            .collect();
        if !members.is_empty() {
            members.insert(0, file.clone());
            done.extend(members.iter().cloned());
            found.push(members);
        }
    }
    found
}
