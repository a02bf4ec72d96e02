//! `mqlink check` as a user runs it: the real binary, real files, exit codes
//! and messages.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should panic

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// A fresh directory holding copies of the example files, so a test can break one.
fn scratch() -> PathBuf {
    let dir = mqlink::scratch::dir("mqlink-check").unwrap();
    for f in examples() {
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    dir
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from:?} not in {}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

fn check(args: &[&Path], extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mqlink"))
        .arg("check")
        .arg("--config")
        .args(args)
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap() + &String::from_utf8(out.stderr).unwrap();
    (out.status.code().unwrap(), text)
}

fn line_of(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .position(|l| l.contains(needle))
        .unwrap()
        + 1
}

#[test]
fn the_example_deployment_is_valid() {
    let files = examples();
    assert_eq!(files.len(), 3);
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let (code, out) = check(&refs, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("deployment of 3 regions (ap-south, eu-west, us-east) and 3 links: valid (0 errors, 0 warnings)"), "{out}");

    let (code, out) = check(&refs, &["--json"]);
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["valid"], true);
    assert_eq!(report["deployment"]["regions"].as_array().unwrap().len(), 3);
    assert_eq!(report["deployment"]["links"].as_array().unwrap().len(), 3);
}

#[test]
fn repeated_config_flags_work_like_one_list() {
    let files = examples();
    let out = Command::new(env!("CARGO_BIN_EXE_mqlink"))
        .arg("check")
        .args(
            files
                .iter()
                .flat_map(|f| ["--config".as_ref(), f.as_os_str()]),
        )
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("deployment of 3 regions"));
}

#[test]
fn a_typo_in_a_key_names_file_line_column_and_the_nearest_key() {
    let dir = scratch();
    let f = dir.join("eu-west.yaml");
    edit(&f, "\nlisten:", "\nlisen:");
    let (code, out) = check(&[&f], &[]);
    assert_eq!(code, 1, "{out}");
    let want = format!(
        "{}:{}:1: error: unknown key `lisen`; did you mean `listen`?",
        f.display(),
        line_of(&f, "lisen:")
    );
    assert!(out.contains(&want), "{out}\nwant: {want}");
}

#[test]
fn a_bad_filter_names_its_position_and_the_rule() {
    let dir = scratch();
    let f = dir.join("eu-west.yaml");
    edit(&f, "export: [\"factory/#\",", "export: [\"a/#/b\",");
    let (code, out) = check(&[&f], &[]);
    assert_eq!(code, 1, "{out}");
    let want = format!(
        "{}:{}:14: error: links.export: `#` must be the last level of a filter (found in level 2 of 3)",
        f.display(),
        line_of(&f, "a/#/b")
    );
    assert!(out.contains(&want), "{out}\nwant: {want}");
}

#[test]
fn a_link_declared_on_one_side_only_is_an_error() {
    let dir = scratch();
    let ap = dir.join("ap-south.yaml");
    // Drop ap-south's link to us-east.
    edit(
        &ap,
        "  - region: us-east\n    endpoints: [linker.us-east.example.net:7443]\n",
        "",
    );
    let files: Vec<PathBuf> = ["ap-south.yaml", "eu-west.yaml", "us-east.yaml"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let (code, out) = check(&refs, &[]);
    assert_eq!(code, 1, "{out}");
    let us = dir.join("us-east.yaml");
    let want = format!(
        "{}:{}:13: error: link to `ap-south` is declared on this side only: {}:3:9 has no link back to `us-east`",
        us.display(),
        line_of(&us, "region: ap-south"),
        ap.display()
    );
    assert!(out.contains(&want), "{out}\nwant: {want}");
    // With the link gone, the deployment is a line: eu-west is a single point of failure.
    let eu = dir.join("eu-west.yaml");
    let want = format!(
        "{}:6:9: warning: single point of failure: losing region `eu-west`",
        eu.display()
    );
    assert!(out.contains(&want), "{out}\nwant: {want}");
}

#[test]
fn a_single_point_of_failure_is_a_warning_with_a_position() {
    let dir = scratch();
    let (ap, us) = (dir.join("ap-south.yaml"), dir.join("us-east.yaml"));
    edit(
        &ap,
        "  - region: us-east\n    endpoints: [linker.us-east.example.net:7443]\n",
        "",
    );
    edit(
        &us,
        "  - region: ap-south\n    endpoints: [linker.ap-south.example.net:7443]\n",
        "",
    );
    let eu = dir.join("eu-west.yaml");
    let files = [ap.as_path(), eu.as_path(), us.as_path()];
    let (code, out) = check(&files, &[]);
    assert_eq!(code, 0, "warnings only: {out}");
    let want = format!(
        "{}:{}:13: warning: single point of failure: losing the link ap-south <-> eu-west",
        ap.display(),
        line_of(&ap, "region: eu-west")
    );
    assert!(out.contains(&want), "{out}\nwant: {want}");
    assert!(out.contains("valid (0 errors, 3 warnings)"), "{out}");
    let (code, _) = check(&files, &["--deny-warnings"]);
    assert_eq!(code, 1);
}

#[test]
fn replicas_must_export_through_shared_subscriptions() {
    let dir = scratch();
    let (eu, eu_b) = (dir.join("eu-west.yaml"), dir.join("eu-west-b.yaml"));
    std::fs::copy(&eu, &eu_b).unwrap();
    edit(&eu_b, "node: eu-west-a", "node: eu-west-b");
    let files = |dir: &Path| {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    let all = files(&dir);
    let refs: Vec<&Path> = all.iter().map(PathBuf::as_path).collect();
    let (code, out) = check(&refs, &[]);
    assert_eq!(code, 1, "{out}");
    let want = format!(
        "{}:6:9: error: region `eu-west` has 2 agents (replicas) but `eu-west-b` does not set `broker.shared: true`",
        eu_b.display()
    );
    assert!(out.contains(&want), "{out}\nwant: {want}");
    for f in [&eu, &eu_b] {
        edit(
            f,
            "  url: mqtt://127.0.0.1:1883\n",
            "  url: mqtt://127.0.0.1:1883\n  shared: true\n",
        );
    }
    let (code, out) = check(&refs, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("deployment of 3 regions"), "{out}");
    // ap-south dials eu-west (it sorts first) but lists one endpoint for two agents.
    let ap = dir.join("ap-south.yaml");
    let want = format!(
        "{}:{}:13: warning: link to `eu-west` lists 1 endpoint(s) but region `eu-west` has 2 agents (eu-west-a, eu-west-b)",
        ap.display(),
        line_of(&ap, "region: eu-west")
    );
    assert!(out.contains(&want), "{out}\nwant: {want}");
    edit(
        &ap,
        "endpoints: [linker.eu-west.example.net:7443]",
        "endpoints: [eu-west-a.example.net:7443, eu-west-b.example.net:7443]",
    );
    let (code, out) = check(&refs, &["--deny-warnings"]);
    assert_eq!(code, 0, "{out}");
}
