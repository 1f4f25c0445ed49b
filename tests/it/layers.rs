//! The module map holds: dependencies between the crate's top-level modules point one way
//! (`main → app → {http, lambda} → cache → {store, upstream} → oci`, with `config`, `secrets`
//! and `bounded` as leaves), and the layers below the HTTP edge use no HTTP framework, status or
//! header types. Read from the source, so a new `use` that breaks the map fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Which project modules each top-level module may import (`crate::<module>`).
const ALLOWED: &[(&str, &[&str])] = &[
    ("oci", &[]),
    ("config", &[]),
    ("secrets", &[]),
    ("bounded", &[]),
    ("metrics", &[]),
    ("aws", &["config", "secrets"]),
    ("store", &["oci", "config", "aws", "metrics"]),
    (
        "upstream",
        &["oci", "config", "secrets", "bounded", "metrics"],
    ),
    ("auth", &["config", "secrets", "bounded"]),
    (
        "cache",
        &[
            "store", "upstream", "oci", "config", "secrets", "bounded", "metrics",
        ],
    ),
    ("lifecycle", &["cache", "store", "oci", "config", "metrics"]),
    (
        "http",
        &["cache", "auth", "oci", "config", "lifecycle", "metrics"],
    ),
    (
        "lambda",
        &[
            "http",
            "cache",
            "auth",
            "aws",
            "config",
            "lifecycle",
            "metrics",
        ],
    ),
    (
        "app",
        &[
            "http",
            "lambda",
            "cache",
            "auth",
            "aws",
            "store",
            "config",
            "secrets",
            "lifecycle",
            "metrics",
        ],
    ),
];

/// Crates and types that belong to the HTTP edge, by module that must not use them.
const FORBIDDEN_TEXT: &[(&[&str], &[&str])] = &[
    (
        &[
            "cache", "store", "upstream", "oci", "config", "secrets", "bounded", "auth",
        ],
        &["axum::", "lambda_http::", "lambda_runtime::", "hyper::"],
    ),
    (
        &["cache", "store", "oci", "config", "auth"],
        &["StatusCode", "HeaderMap", "HeaderValue", "http::header"],
    ),
];

/// Top-level module → (project modules it imports, its non-test source text).
fn modules(files: &[(String, String)]) -> BTreeMap<String, (BTreeSet<String>, String)> {
    let mut out: BTreeMap<String, (BTreeSet<String>, String)> = BTreeMap::new();
    for (path, text) in files {
        let top = path
            .split('/')
            .next()
            .unwrap_or(path)
            .trim_end_matches(".rs")
            .to_owned();
        // Test modules may reach anywhere (they check the layers' answers end to end).
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let code: String = code
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let entry = out.entry(top.clone()).or_default();
        let mut rest = code.as_str();
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != top {
                        entry.0.insert(name);
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    entry.0.insert(name);
                }
            }
        }
        entry.1.push_str(&code);
        entry.1.push('\n');
    }
    out
}

/// Every breach of the map, in words.
fn breaches(files: &[(String, String)]) -> Vec<String> {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut found = Vec::new();
    for (module, (deps, text)) in modules(files) {
        if matches!(module.as_str(), "lib" | "main") {
            continue;
        }
        match allowed.get(module.as_str()) {
            None => found.push(format!(
                "src/{module}: a top-level module missing from the map (add it to ALLOWED)"
            )),
            Some(ok) => {
                for d in &deps {
                    if !ok.contains(&d.as_str()) {
                        found.push(format!("{module} imports crate::{d}"));
                    }
                }
            }
        }
        for (modules, words) in FORBIDDEN_TEXT {
            if modules.contains(&module.as_str()) {
                for w in *words {
                    if text.contains(w) {
                        found.push(format!("{module} uses {w}"));
                    }
                }
            }
        }
    }
    found
}

fn read_tree(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            read_tree(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push((rel, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

#[test]
fn module_dependencies_point_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    read_tree(&root, &root, &mut files);
    assert!(files.len() > 20, "read {} files", files.len());
    let found = breaches(&files);
    assert!(
        found.is_empty(),
        "the module map is broken:\n{}",
        found.join("\n")
    );
}

/// The check itself catches what it is there for.
#[test]
fn the_map_check_catches_a_wrong_import_and_an_http_type() {
    let files = vec![
        (
            "store/mod.rs".to_owned(),
            "use crate::cache::Cache;\nuse crate::{oci, http};\n".to_owned(),
        ),
        (
            "cache/blobs.rs".to_owned(),
            "fn f() -> axum::http::StatusCode { todo!() }\n#[cfg(test)]\nuse crate::http;\n"
                .to_owned(),
        ),
        ("oci/mod.rs".to_owned(), "// use crate::cache;\n".to_owned()),
        ("newthing.rs".to_owned(), String::new()),
    ];
    let found = breaches(&files);
    for expected in [
        "store imports crate::cache",
        "store imports crate::http",
        "cache uses axum::",
        "cache uses StatusCode",
        "src/newthing: a top-level module missing from the map (add it to ALLOWED)",
    ] {
        assert!(
            found.iter().any(|f| f == expected),
            "{expected} not in {found:?}"
        );
    }
    assert!(!found.iter().any(|f| f.starts_with("oci")), "{found:?}");
    assert!(
        !found.iter().any(|f| f == "cache imports crate::http"),
        "{found:?}"
    );
}
