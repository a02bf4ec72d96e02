//! What `deploy/` ships stays true to the agent: every metric the Grafana
//! dashboard queries is one the agent exports (and the metrics table
//! documents), the configs inside the Kubernetes manifests pass `mqlink
//! check` as one deployment, the manifests parse into the objects they
//! claim, and the systemd unit and Containerfile keep their hardening.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `mqlink_*` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("mqlink_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// The metrics the agent registers: `counter!` / `gauge!` / `histogram!`
/// names in its sources.
fn exported() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut dirs = vec![root().join("linker/src")];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            for macro_ in ["counter!(", "gauge!(", "histogram!("] {
                for (i, _) in text.match_indices(macro_) {
                    let args = text[i + macro_.len()..].trim_start();
                    if let Some(name) = args.strip_prefix('"').and_then(|a| a.split('"').next()) {
                        out.insert(name.to_owned());
                    }
                }
            }
        }
    }
    out
}

/// `configs` cross-check as one deployment without errors (warnings,
/// such as single points of failure, allowed).
fn assert_no_errors(configs: &[mqlink_config::RegionConfig]) {
    let d = mqlink_config::check_deployment(configs);
    let errors: Vec<_> = d
        .diagnostics
        .iter()
        .filter(|x| x.severity == mqlink_config::Severity::Error)
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn the_dashboard_queries_only_metrics_the_agent_exports() {
    let dash: Value = serde_json::from_str(&read("deploy/grafana/mqlink.json")).unwrap();
    let mut queried = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            queried.extend(metric_names(t["expr"].as_str().unwrap()));
        }
    }
    queried.extend(metric_names(
        dash["templating"]["list"][1]["query"].as_str().unwrap(),
    ));
    let exported = exported();
    assert!(exported.len() > 25, "{exported:?}");
    let unknown: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries unknown metrics: {unknown:?}"
    );
    // What the issue asks the dashboard to show.
    for m in [
        "mqlink_drops_total",
        "mqlink_spool_messages",
        "mqlink_peers_up",
        "mqlink_route_recomputations_total",
        "mqlink_messages_out_total",
        "mqlink_bytes_out_total",
    ] {
        assert!(queried.contains(m), "the dashboard lacks {m}");
    }
    // Every exported metric is documented in the metrics table.
    let documented = metric_names(&read("linker/src/metrics.rs"));
    let undocumented: Vec<&String> = exported.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "not in linker/src/metrics.rs's table: {undocumented:?}"
    );
}

#[test]
fn the_kubernetes_manifests_parse_and_their_configs_pass_check() {
    let dir = root().join("deploy/kubernetes");
    let scratch = mqlink::scratch::dir("mqlink-deploy").unwrap();
    let mut configs = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["ConfigMap", "Secret", "Service", "Service", "StatefulSet"],
            "{}",
            f.display()
        );
        for d in &docs {
            assert!(d["apiVersion"].is_string() && d["metadata"]["name"].is_string());
        }
        let quic = &docs[2]["spec"]["ports"][0];
        assert_eq!(
            (quic["protocol"].as_str(), quic["port"].as_u64()),
            (Some("UDP"), Some(7443))
        );
        let sts = &docs[4]["spec"];
        assert!(sts["volumeClaimTemplates"][0]["metadata"]["name"] == "spool");
        let c = &sts["template"]["spec"]["containers"][0];
        assert!(c["readinessProbe"].is_object() && c["livenessProbe"].is_object());
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        // The config the ConfigMap carries, checked as `mqlink check` does.
        let yaml = docs[0]["data"]["mqlink.yaml"].as_str().unwrap();
        let name = f.file_name().unwrap();
        let path = scratch.join(name);
        std::fs::write(&path, yaml).unwrap();
        let cfg = mqlink_config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert_eq!(cfg.spool.dir, Path::new("/var/lib/mqlink"));
        configs.push(cfg);
    }
    assert_no_errors(&configs);
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn the_systemd_unit_and_containerfile_keep_their_hardening() {
    let unit = read("deploy/systemd/mqlink.service");
    for line in [
        "User=mqlink",
        "StateDirectory=mqlink",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "ExecStart=/usr/local/bin/mqlink run --config /etc/mqlink/mqlink.yaml",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks `{line}`");
    }
    let file = read("deploy/container/Containerfile");
    assert_eq!(
        file.lines().filter(|l| l.starts_with("FROM ")).count(),
        2,
        "multi-stage"
    );
    assert!(
        file.lines()
            .any(|l| l.starts_with("USER ") && !l.contains("root"))
    );
}

/// The walk-through's two regions (`deploy/local`, deploy/README.md) load
/// and cross-check as one deployment, on loopback ports of their own.
#[test]
fn the_local_walk_through_configs_pass_check() {
    let dir = root().join("deploy/local");
    let configs: Vec<_> = ["west.yaml", "east.yaml"]
        .iter()
        .map(|f| mqlink_config::load(&dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}")))
        .collect();
    assert_no_errors(&configs);
    for c in &configs {
        assert!(c.listen.quic.ip().is_loopback() && c.listen.admin.ip().is_loopback());
        assert!(
            c.broker
                .url
                .to_string()
                .starts_with("mqtt://127.0.0.1:1883")
        );
    }
    let guide = read("deploy/README.md");
    for line in [
        "mqlink run --config west.yaml",
        "mosquitto -c mosquitto-east.conf",
    ] {
        assert!(guide.contains(line), "the guide lacks `{line}`");
    }
}
