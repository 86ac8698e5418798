//! The layering, checked, so that the structure cannot silently regrow its knot: every
//! `src/**/*.rs` file is mapped to its layer, its `crate::…` and `super::…` paths are resolved to
//! the module file they name, and the test fails on an arrow from a lower layer to a higher one,
//! and on a cycle among modules other than the actors that exchange messages.
//!
//! The layers, lowest first (a module may use its own layer and those below it):
//! base (ids, config, protocol, auth, json, metrics) → store → engine (event, actors) →
//! services (commit, requests, publisher, outbox, inbox, outbound, retention) → adapters
//! (ws, sse, socket_io, cluster, webhooks) → http (api, error, http) → wiring (server, cli, main,
//! logging, scheduling). The load tool is a crate of its own (`bench/`), over the library's
//! public API.
//!
//! Exceptions would be listed in [`ALLOWED_UPWARD`] and [`KNOTS`]; both are empty now and are to
//! stay so (an entry that is no longer needed fails the test too). Comments are not read (a doc
//! link is not a dependency), nor are `#[cfg(test)] mod tests` blocks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const LAYERS: [&str; 7] = [
    "base", "store", "engine", "services", "adapters", "http", "wiring",
];

/// Each top-level module's layer.
const MODULE_LAYERS: &[(&str, &str)] = &[
    ("ids", "base"),
    ("channel", "base"),
    ("config", "base"),
    ("protocol", "base"),
    ("auth", "base"),
    ("json", "base"),
    ("metrics", "base"),
    ("store", "store"),
    ("event", "engine"),
    ("actors", "engine"),
    ("commit", "services"),
    ("requests", "services"),
    ("publisher", "services"),
    ("outbox", "services"),
    ("inbox", "services"),
    ("outbound", "services"),
    ("presence_webhooks", "services"),
    ("retention", "services"),
    ("ws", "adapters"),
    ("sse", "adapters"),
    ("revocation", "services"),
    ("socket_io", "adapters"),
    ("cluster", "adapters"),
    ("webhooks", "adapters"),
    ("api", "http"),
    ("error", "http"),
    ("http", "http"),
    ("server", "wiring"),
    ("cli", "wiring"),
    ("main", "wiring"),
    ("crate", "wiring"),
    ("logging", "wiring"),
    ("scheduling", "wiring"),
];

/// Arrows up the layers allowed, module to module: none (kept for the test's own self-check).
const ALLOWED_UPWARD: &[(&str, &str)] = &[];

/// Groups of modules that may form cycles for good: the actors, which exchange messages declared
/// beside their handlers (actix's chat example), with the engine's port to its peers; the
/// Socket.IO link and socket actors, with the wire between them. A cycle must lie within one.
const ACTOR_GROUPS: &[&[&str]] = &[
    &[
        "actors::broker",
        "actors::peers",
        "actors::room",
        "actors::session",
    ],
    &["socket_io::link", "socket_io::socket", "socket_io::wire"],
];

/// Cycles allowed outside the actor groups, each exactly as it is: none.
const KNOTS: &[&[&str]] = &[];

fn layer(module: &str) -> usize {
    let top = module.split("::").next().unwrap_or(module);
    let name = MODULE_LAYERS
        .iter()
        .find(|(m, _)| *m == top)
        .map(|(_, l)| *l)
        .unwrap_or_else(|| panic!("module {module} has no layer: add it to MODULE_LAYERS"));
    LAYERS.iter().position(|l| *l == name).unwrap()
}

/// A source file's module path: `actors/room/mod.rs` is `actors::room`, `lib.rs` is `crate`.
fn module_of(path: &str) -> String {
    let path = path.strip_suffix(".rs").unwrap_or(path);
    let mut parts: Vec<&str> = path.split('/').collect();
    if parts.last() == Some(&"mod") {
        parts.pop();
    }
    match parts.as_slice() {
        ["lib"] => "crate".to_owned(),
        _ => parts.join("::"),
    }
}

/// The code of a file without its comments and its unit tests.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    text.lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string ("http://…") is cut too: it cannot hide a `crate::` path.
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The paths of a use tree starting at `at` (just after `crate::` or `super::`), each prefixed
/// with `prefix`: `a::{b, c::d}` gives `a::b` and `a::c::d`.
fn use_tree(s: &[u8], at: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    loop {
        while *at < s.len() && s[*at].is_ascii_whitespace() {
            *at += 1;
        }
        if *at < s.len() && s[*at] == b'{' {
            *at += 1;
            loop {
                while *at < s.len() && (s[*at].is_ascii_whitespace() || s[*at] == b',') {
                    *at += 1;
                }
                if *at >= s.len() || s[*at] == b'}' {
                    *at += 1;
                    return;
                }
                use_tree(s, at, &path, out);
                // Past an `as` alias or a glob, to the next item of the group.
                while *at < s.len() && s[*at] != b',' && s[*at] != b'}' {
                    *at += 1;
                }
            }
        }
        let start = *at;
        while *at < s.len() && is_ident(s[*at]) {
            *at += 1;
        }
        let ident = String::from_utf8_lossy(&s[start..*at]).into_owned();
        if ident.is_empty() {
            break;
        }
        if ident != "self" {
            path.push(ident);
        }
        if s[*at..].starts_with(b"::") {
            *at += 2;
        } else {
            break;
        }
    }
    out.push(path);
}

/// Every module path a file's code names through `crate::` or `super::`, made absolute.
fn named_paths(module: &str, code: &str) -> Vec<Vec<String>> {
    let s = code.as_bytes();
    let here: Vec<String> = match module {
        "crate" | "main" => Vec::new(),
        _ => module.split("::").map(str::to_owned).collect(),
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at < s.len() {
        let boundary = at == 0 || !is_ident(s[at - 1]);
        if boundary && s[at..].starts_with(b"crate::") {
            at += "crate::".len();
            use_tree(s, &mut at, &[], &mut out);
        } else if boundary && s[at..].starts_with(b"super::") {
            let mut base = here.clone();
            while s[at..].starts_with(b"super::") {
                at += "super::".len();
                base.pop();
            }
            use_tree(s, &mut at, &base, &mut out);
        } else {
            at += 1;
        }
    }
    out
}

/// The module graph of a crate given as (path under `src/`, text) pairs: each module's arrows to
/// the modules it names (the longest known prefix of each path), its ancestors left out.
fn graph(files: &[(String, String)]) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = files.iter().map(|(p, _)| module_of(p)).collect();
    let mut edges = BTreeMap::new();
    for (path, text) in files {
        let module = module_of(path);
        let mut targets = BTreeSet::new();
        for named in named_paths(&module, &code(text)) {
            let target = (1..=named.len())
                .rev()
                .map(|n| named[..n].join("::"))
                .find(|m| modules.contains(m));
            if let Some(target) = target {
                let ancestor = module.starts_with(&format!("{target}::"));
                if target != module && !ancestor {
                    targets.insert(target);
                }
            }
        }
        edges.insert(module, targets);
    }
    edges
}

/// Strongly connected components of more than one module (Tarjan's algorithm).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a str) {
        let n = w.index.len();
        w.index.insert(v, n);
        w.low.insert(v, n);
        w.stack.push(v);
        let edges = w.edges;
        for t in edges.get(v).into_iter().flatten() {
            let t = t.as_str();
            if !w.index.contains_key(t) {
                visit(w, t);
                let low = w.low[v].min(w.low[t]);
                w.low.insert(v, low);
            } else if w.stack.contains(&t) {
                let low = w.low[v].min(w.index[t]);
                w.low.insert(v, low);
            }
        }
        if w.low[v] == w.index[v] {
            let mut component = BTreeSet::new();
            while let Some(t) = w.stack.pop() {
                component.insert(t.to_owned());
                if t == v {
                    break;
                }
            }
            if component.len() > 1 {
                w.found.push(component);
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v.as_str()) {
            visit(&mut walk, v);
        }
    }
    walk.found
}

/// What is wrong with the crate's structure, one line each; empty when it holds.
fn violations(
    files: &[(String, String)],
    allowed_upward: &[(&str, &str)],
    actor_groups: &[&[&str]],
    knots: &[&[&str]],
) -> Vec<String> {
    let edges = graph(files);
    let mut wrong = Vec::new();
    let mut upward = BTreeSet::new();
    for (from, targets) in &edges {
        for to in targets {
            if layer(to) > layer(from) {
                upward.insert((from.as_str(), to.as_str()));
                if !allowed_upward.contains(&(from.as_str(), to.as_str())) {
                    wrong.push(format!(
                        "{from} ({}) uses {to} ({}), a higher layer",
                        LAYERS[layer(from)],
                        LAYERS[layer(to)]
                    ));
                }
            }
        }
    }
    for allowed in allowed_upward {
        if !upward.contains(allowed) {
            wrong.push(format!(
                "{} -> {} is allowed but no longer there: remove it from ALLOWED_UPWARD",
                allowed.0, allowed.1
            ));
        }
    }
    let mut found = cycles(&edges);
    found.sort();
    let as_set = |group: &[&str]| group.iter().map(|m| m.to_string()).collect::<BTreeSet<_>>();
    for cycle in &found {
        let within = actor_groups
            .iter()
            .any(|group| cycle.iter().all(|m| group.contains(&m.as_str())));
        let known = knots.iter().any(|knot| as_set(knot) == *cycle);
        if !within && !known {
            let modules: Vec<&str> = cycle.iter().map(String::as_str).collect();
            wrong.push(format!("a cycle: {}", modules.join(", ")));
        }
    }
    for knot in knots {
        if !found.contains(&as_set(knot)) {
            wrong.push(format!(
                "the cycle {} is no longer there as listed: update KNOTS",
                knot.join(", ")
            ));
        }
    }
    wrong
}

fn source_files(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            source_files(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).unwrap();
            let relative = relative.to_string_lossy().replace('\\', "/");
            out.push((relative, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

#[test]
fn dependencies_point_down_the_layers_and_only_actors_form_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &src, &mut files);
    assert!(files.len() > 50, "read {} files under {src:?}", files.len());
    let wrong = violations(&files, ALLOWED_UPWARD, ACTOR_GROUPS, KNOTS);
    assert!(
        wrong.is_empty(),
        "the layering is broken:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_check_finds_a_planted_upward_arrow_and_a_planted_cycle() {
    let file = |path: &str, text: &str| (path.to_owned(), text.to_owned());
    let files = [
        file("lib.rs", "pub mod api;\npub mod store;"),
        file(
            "api/mod.rs",
            "use crate::store::Store;\npub struct AppState;",
        ),
        // Planted: the store names the HTTP layer, in a grouped `use` behind a comment.
        file(
            "store/mod.rs",
            "// crate::nothing here\nuse crate::{ids::AccountId, api::{self, AppState}};",
        ),
        file("ids.rs", ""),
        // Planted: two services that name each other, one through `super::`.
        file("inbox.rs", "fn f() { crate::publisher::run() }"),
        file("publisher.rs", "use super::inbox;"),
        // Allowed: the actors exchange messages.
        file("actors/broker.rs", "use super::room::Join;"),
        file("actors/room/mod.rs", "use super::broker::Leave;"),
        file("actors/room/members.rs", "use super::super::broker::Join;"),
    ];
    let wrong = violations(&files, &[], ACTOR_GROUPS, &[]);
    assert_eq!(
        wrong,
        [
            "store (store) uses api (http), a higher layer",
            "a cycle: api, store",
            "a cycle: inbox, publisher",
        ],
    );
    // An allowance that is no longer needed is reported, so the list only shrinks.
    let files = [file("ids.rs", ""), file("store/mod.rs", "use crate::ids;")];
    assert_eq!(
        violations(&files, &[("store", "api")], &[], &[&["ids", "store"]]),
        [
            "store -> api is allowed but no longer there: remove it from ALLOWED_UPWARD",
            "the cycle ids, store is no longer there as listed: update KNOTS",
        ],
    );
}

/// Crates only the HTTP layer and the transports (adapters) may use: the engine knows no
/// transport, so a new one (Server-Sent Events, say) is a wire of the same session.
const TRANSPORT_CRATES: [&str; 3] = ["actix_web", "actix_web_actors", "actix_http"];

/// The engine's files that name a transport crate, with the crate. (`auth`, below it, reads a
/// token from an actix-web request: the request is where a token comes from.)
fn transport_users(files: &[(String, String)]) -> Vec<String> {
    let engine = LAYERS.iter().position(|l| *l == "engine").unwrap();
    let mut found = Vec::new();
    for (path, text) in files {
        if layer(&module_of(path)) != engine {
            continue;
        }
        let code = code(text);
        for name in TRANSPORT_CRATES {
            let named = code.match_indices(name).any(|(at, _)| {
                let before = code[..at].bytes().last();
                let after = code.as_bytes().get(at + name.len());
                !before.is_some_and(is_ident) && !after.is_some_and(|c| is_ident(*c))
            });
            if named {
                found.push(format!("{path} uses {name}"));
            }
        }
    }
    found
}

#[test]
fn the_engine_uses_no_http_or_websocket_crate() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &src, &mut files);
    assert_eq!(transport_users(&files), Vec::<String>::new());
    // The check itself finds one.
    let planted = [(
        "actors/session/mod.rs".to_owned(),
        "use actix_web_actors::ws;\nuse my_actix_web2::x;".to_owned(),
    )];
    assert_eq!(
        transport_users(&planted),
        ["actors/session/mod.rs uses actix_web_actors"]
    );
}
