//! The admin API through `mqlink ctl`, as an operator runs it, against
//! agent processes beside real Mosquitto brokers: a line a - b - c where
//! c wants `factory/#` and a wants `alerts/#`; c's admin API listens on
//! every address, so it takes mutual TLS only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

use mqlink_e2e::procs::{Options, ProcFederation, mqlink_bin};
use mqlink_e2e::wait_until;
use serde_json::Value;

/// `mqlink ctl --admin 127.0.0.1:<port of region> <args>`: (exit code,
/// stdout, stderr).
fn ctl(fed: &ProcFederation, region: &str, args: &[&str]) -> (i32, String, String) {
    let port = fed.regions[region].admin_port;
    let mut cmd = Command::new(mqlink_bin().unwrap());
    cmd.arg("ctl")
        .arg("--admin")
        .arg(format!("127.0.0.1:{port}"));
    run(cmd.args(args))
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    eprintln!("$ {cmd:?}\n{}", String::from_utf8_lossy(&out.stdout));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(fed: &ProcFederation, region: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, out, err) = ctl(fed, region, &all);
    assert_eq!(code, 0, "ctl {args:?} at {region}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn hop<'a>(trace: &'a Value, region: &str) -> &'a Value {
    trace["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["region"] == region)
        .unwrap_or_else(|| panic!("{region} not in {trace}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_answers_on_a_line_of_three() {
    if !mqlink::bench::setups::mosquitto_available() {
        eprintln!("skipped: mosquitto not installed");
        return;
    }
    let fed = ProcFederation::start_with(
        "admin",
        &["a", "b", "c"],
        &[("a", "b", 10), ("b", "c", 20)],
        &[("c", "factory/#"), ("a", "alerts/#")],
        &Options {
            admin_any: vec!["c".into()],
            ..Options::default()
        },
    )
    .unwrap();

    // Converged: a's view of factory/x reaches c.
    wait_until("a's trace to reach c", Duration::from_secs(20), || async {
        let (code, out, _) = ctl(&fed, "a", &["--json", "trace", "factory/x"]);
        code == 0
            && serde_json::from_str::<Value>(&out).is_ok_and(|t| {
                t["regions"].as_array().is_some_and(|hs| {
                    hs.iter()
                        .any(|h| h["region"] == "c" && h["reached"] == true)
                })
            })
    })
    .await
    .unwrap();

    // trace, JSON: through the transit b, by c's filter; b wants nothing.
    let t = json(&fed, "a", &["trace", "factory/x"]);
    assert_eq!(t["origin"], "a");
    assert_eq!(t["region"], "a");
    let c = hop(&t, "c");
    assert_eq!(strings(&c["path"]), ["a", "b", "c"]);
    assert_eq!(c["cost"], 30);
    assert_eq!(c["matches"][0]["filter"], "factory/#");
    assert_eq!(c["matches"][0]["node"], "c-1");
    let b = hop(&t, "b");
    assert_eq!(b["reached"], false);
    assert_eq!(b["reason"], "no_interest");
    // From c, as b sees it: a's alerts/# pulls it the other way.
    let t = json(&fed, "b", &["trace", "alerts/fire", "--from", "c"]);
    assert_eq!(strings(&hop(&t, "a")["path"]), ["c", "b", "a"]);
    assert_eq!(hop(&t, "a")["matches"][0]["filter"], "alerts/#");
    // A topic nobody wants reaches nobody, and says why.
    let t = json(&fed, "a", &["trace", "debug/x"]);
    assert!(
        t["regions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["reason"] == "no_interest")
    );

    // trace, table.
    let (code, out, err) = ctl(&fed, "a", &["trace", "factory/x"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("reaches 1 region(s)"), "{out}");
    assert!(out.contains("a -> b -> c"), "{out}");
    assert!(out.contains("factory/# (c-1)"), "{out}");
    assert!(out.contains("no_interest"), "{out}");

    // peers at the transit: both neighbours up, with their nodes.
    let p = json(&fed, "b", &["peers"]);
    let peers = p["peers"].as_array().unwrap();
    let up: Vec<(&str, &str)> = peers
        .iter()
        .filter(|x| x["up"] == true)
        .map(|x| (x["region"].as_str().unwrap(), x["node"].as_str().unwrap()))
        .collect();
    assert_eq!(up, [("a", "a-1"), ("c", "c-1")], "{p}");
    assert!(
        peers
            .iter()
            .all(|x| x["configured"].as_array().unwrap().len() == 1)
    );
    let (code, out, _) = ctl(&fed, "b", &["peers"]);
    assert_eq!(code, 0);
    assert!(out.contains("2 neighbour connection(s)"), "{out}");

    // routes from a: c via b, at cost 30.
    let r = json(&fed, "b", &["routes", "--from", "a"]);
    let entries = r["origins"][0]["entries"].as_array().unwrap();
    let c = entries.iter().find(|e| e["region"] == "c").unwrap();
    assert_eq!(
        (c["via"].as_str(), c["cost"].as_u64()),
        (Some("b"), Some(30))
    );
    let (_, out, _) = ctl(&fed, "a", &["routes"]);
    assert!(
        out.contains("from c:") && out.contains("c -> b -> a"),
        "{out}"
    );

    // interest: c's table at a; a's own exports follow c's filter.
    let i = json(&fed, "a", &["interest", "--region", "c"]);
    let tables = i["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 1);
    assert_eq!(strings(&tables[0]["filters"]), ["factory/#"]);
    wait_until("a to export factory/#", Duration::from_secs(10), || async {
        let i = json(&fed, "a", &["interest"]);
        strings(&i["own"]["export"]).contains(&"factory/#".to_owned())
    })
    .await
    .unwrap();
    let (_, out, _) = ctl(&fed, "a", &["interest"]);
    assert!(
        out.contains("factory/#") && out.contains("alerts/#"),
        "{out}"
    );

    // topology and spool answer too.
    let t = json(&fed, "a", &["topology"]);
    assert_eq!(t["regions"].as_array().unwrap().len(), 3);
    assert_eq!(t["components"].as_array().unwrap().len(), 1);
    let s = json(&fed, "a", &["spool"]);
    assert_eq!(s["messages"], 0);

    // c's admin API is on every address: mutual TLS only. Without a
    // certificate the handshake fails; with c's config (its certificate
    // from the deployment CA) it answers.
    let (code, _, err) = ctl(&fed, "c", &["peers"]);
    assert_ne!(code, 0, "a plain client must be refused");
    assert!(err.contains("cannot reach"), "{err}");
    let port = fed.regions["c"].admin_port;
    let (code, out, err) = run(Command::new(mqlink_bin().unwrap())
        .current_dir(&fed.dir)
        .arg("ctl")
        .arg("--config")
        .arg(&fed.regions["c"].config)
        .arg("--admin")
        .arg(format!("127.0.0.1:{port}"))
        .arg("peers"));
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("c (c-1)"), "{out}");

    // Nothing listening: a clear error, exit status 2.
    let dead = mqlink::brokers::free_port().unwrap();
    let (code, _, err) = run(Command::new(mqlink_bin().unwrap())
        .args(["ctl", "--admin"])
        .arg(format!("127.0.0.1:{dead}"))
        .arg("peers"));
    assert_eq!(code, 2);
    assert!(err.contains("cannot reach the agent's admin API"), "{err}");
}
