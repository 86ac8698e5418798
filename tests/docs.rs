//! The docs' internal links resolve: every relative link in README.md, ARCHITECTURE.md and
//! docs/*.md names a file that exists and, with a `#anchor`, a heading of that file under GitHub's
//! slug rules — so moving a section cannot silently strand the links to it. Links with a scheme
//! (`https:`, `mailto:`) are left alone: no network. Uses std only; reads the checkout, starts
//! no server.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

/// GitHub's anchor for a heading: lower case; letters, digits, `-` and `_` kept; each space a
/// `-`; everything else (backticks, `/`, `.`, `:`, `—`…) dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The lines of a Markdown text that are prose, with their 1-based numbers: fenced code blocks
/// hold examples, not links or headings.
fn prose_lines(markdown: &str) -> Vec<(usize, &str)> {
    let mut in_fence = false;
    let mut lines = Vec::new();
    for (index, line) in markdown.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence {
            lines.push((index + 1, line));
        }
    }
    lines
}

/// Every anchor a Markdown text offers: one per ATX heading, a repeated one suffixed `-1`, `-2`…
/// as GitHub does.
fn anchors(markdown: &str) -> HashSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = HashSet::new();
    for (_, line) in prose_lines(markdown) {
        let level = line.chars().take_while(|&c| c == '#').count();
        let Some(text) = line.get(level..).and_then(|rest| rest.strip_prefix(' ')) else {
            continue;
        };
        if !(1..=6).contains(&level) {
            continue;
        }
        let base = slug(text.trim_end_matches('#'));
        let count = seen.entry(base.clone()).or_insert(0);
        anchors.insert(if *count == 0 {
            base
        } else {
            format!("{base}-{count}")
        });
        *count += 1;
    }
    anchors
}

/// A line with its inline code spans removed: `[x](y)` inside backticks is text, not a link.
fn without_code_spans(line: &str) -> String {
    line.split('`')
        .enumerate()
        .filter(|(index, _)| index % 2 == 0)
        .map(|(_, part)| part)
        .collect()
}

/// The targets of the inline links and images of a Markdown text, with their line numbers.
fn links(markdown: &str) -> Vec<(usize, String)> {
    let mut links = Vec::new();
    for (number, line) in prose_lines(markdown) {
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            let end = after.find(')').unwrap_or(after.len());
            links.push((number, after[..end].to_string()));
            rest = &after[end..];
        }
    }
    links
}

/// `a/b/../c` as `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                normal.pop();
            }
            other => normal.push(other),
        }
    }
    normal
}

/// The links of one document (`doc`, its path relative to the root) that do not resolve, each
/// described with its line. `markdown_of` answers the text of a Markdown file by its path
/// relative to the root (None: no such file); `exists` whether any other file exists.
fn broken_links(
    doc: &Path,
    markdown: &str,
    markdown_of: &dyn Fn(&Path) -> Option<String>,
    exists: &dyn Fn(&Path) -> bool,
) -> Vec<String> {
    let mut broken = Vec::new();
    for (line, target) in links(markdown) {
        let is_external = target
            .split_once(':')
            .is_some_and(|(scheme, _)| !scheme.is_empty() && !scheme.contains(['/', '#']));
        if is_external {
            continue;
        }
        let (file, anchor) = match target.split_once('#') {
            Some((file, anchor)) => (file, Some(anchor)),
            None => (target.as_str(), None),
        };
        let path = if file.is_empty() {
            doc.to_path_buf()
        } else {
            normalize(&doc.parent().unwrap_or(Path::new("")).join(file))
        };
        let here = format!("{}:{line}: `{target}`", doc.display());
        let is_markdown = path.extension().is_some_and(|ext| ext == "md");
        if !is_markdown {
            if !exists(&path) {
                broken.push(format!("{here}: no file {}", path.display()));
            }
            continue;
        }
        let text = if file.is_empty() {
            Some(markdown.to_string())
        } else {
            markdown_of(&path)
        };
        match text {
            None => broken.push(format!("{here}: no file {}", path.display())),
            Some(text) => {
                if let Some(anchor) = anchor.filter(|a| !anchors(&text).contains(*a)) {
                    broken.push(format!(
                        "{here}: no heading #{anchor} in {}",
                        path.display()
                    ));
                }
            }
        }
    }
    broken
}

/// README.md, ARCHITECTURE.md and docs/*.md, relative to the root.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut documents = vec![PathBuf::from("README.md"), PathBuf::from("ARCHITECTURE.md")];
    let mut in_docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ is readable")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .filter_map(|path| path.strip_prefix(root).ok().map(Path::to_path_buf))
        .collect();
    in_docs.sort();
    assert!(!in_docs.is_empty(), "docs/ holds no Markdown file");
    documents.extend(in_docs);
    documents
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let markdown_of = |path: &Path| std::fs::read_to_string(root.join(path)).ok();
    let exists = |path: &Path| root.join(path).exists();
    let mut broken = Vec::new();
    for doc in documents(root) {
        let text = markdown_of(&doc).unwrap_or_else(|| panic!("{} is missing", doc.display()));
        broken.extend(broken_links(&doc, &text, &markdown_of, &exists));
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn a_planted_broken_link_or_anchor_is_found() {
    let other = "# Other page\n\n## `GET /ws` — connect\n";
    let markdown_of = |path: &Path| (path == Path::new("docs/other.md")).then(|| other.to_string());
    let exists = |path: &Path| path == Path::new("tests/browser/demo.png");
    let doc = "\
# Title

## Errors and codes

See [the codes](#errors-and-codes), [connect](other.md#get-ws--connect),
[the demo](../tests/browser/demo.png) and [the site](https://example.com/#nowhere).
A link in code is text: `[x](#not-a-link)`.

```sh
echo '[y](#nor-this)'
```

Broken: [one](#no-such-heading), [two](other.md#no-such-heading), [three](missing.md),
![four](../missing.png).
";
    let broken = broken_links(Path::new("docs/page.md"), doc, &markdown_of, &exists);
    let targets: Vec<&str> = broken
        .iter()
        .filter_map(|line| line.split('`').nth(1))
        .collect();
    assert_eq!(
        targets,
        [
            "#no-such-heading",
            "other.md#no-such-heading",
            "missing.md",
            "../missing.png"
        ],
        "{broken:#?}"
    );
}

#[test]
fn anchors_follow_githubs_slug_rules() {
    let text = "\
# Switchboard
## `POST /api/v1/publish` — publish an event
## Socket.IO clients: migrating an existing frontend
### One connection per browser: `shared: true`
## Notes
## Notes
```
# not a heading
```
#not-a-heading-either
";
    let found = anchors(text);
    let expected: HashSet<String> = [
        "switchboard",
        "post-apiv1publish--publish-an-event",
        "socketio-clients-migrating-an-existing-frontend",
        "one-connection-per-browser-shared-true",
        "notes",
        "notes-1",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(found, expected);
}
