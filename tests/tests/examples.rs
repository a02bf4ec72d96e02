//! The shipped example deployment is what the README tells a newcomer to
//! check first: it must load and cross-check cleanly, and its routes must be
//! what its costs say.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should panic

use std::path::{Path, PathBuf};

use mqlink_config::{check_deployment, load};

fn example_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn example_deployment_is_a_valid_triangle_without_warnings() {
    let configs: Vec<_> = example_files().iter().map(|f| load(f).unwrap()).collect();
    let d = check_deployment(&configs);
    assert!(d.diagnostics.is_empty(), "{:#?}", d.diagnostics);
    let names: Vec<&str> = d.regions.iter().map(|r| r.as_str()).collect();
    assert_eq!(names, ["ap-south", "eu-west", "us-east"]);
    assert_eq!(d.links.len(), 3);
    // eu-west exports only factory and alert topics to ap-south.
    let eu = configs
        .iter()
        .find(|c| c.region.as_str() == "eu-west")
        .unwrap();
    let to_ap = eu
        .links
        .iter()
        .find(|l| l.region.as_str() == "ap-south")
        .unwrap();
    let exported: Vec<&str> = to_ap.export.iter().map(|f| f.as_str()).collect();
    assert_eq!(exported, ["factory/#", "alerts/#"]);
}
