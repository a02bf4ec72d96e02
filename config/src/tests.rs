//! Tests of parsing, per-file validation and deployment checks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const FILE: &str = "conf/eu.yaml";

fn ok(text: &str) -> RegionConfig {
    match parse(Path::new(FILE), text, "host-1") {
        Ok(c) => c,
        Err(e) => panic!("unexpected errors:\n{e}"),
    }
}

fn errors(text: &str) -> Vec<String> {
    match parse(Path::new(FILE), text, "host-1") {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.diagnostics.iter().map(ToString::to_string).collect(),
    }
}

const MINIMAL: &str = "region: eu\ntls: { cert: c.pem, key: c.key, ca: ca.pem }\n";

#[test]
fn minimal_file_gets_the_documented_defaults() {
    let c = ok(MINIMAL);
    assert_eq!(c.region.as_str(), "eu");
    assert_eq!(c.node.as_str(), "host-1");
    assert_eq!(c.broker.url.to_string(), "mqtt://127.0.0.1:1883");
    assert_eq!(c.broker.client_id, "mqlink-eu-host-1");
    assert_eq!(c.listen.quic.to_string(), "0.0.0.0:7443");
    assert_eq!(c.listen.admin.to_string(), "127.0.0.1:7444");
    assert_eq!(c.listen.metrics.to_string(), "127.0.0.1:9464");
    assert_eq!(c.tls.cert, PathBuf::from("conf/c.pem"));
    assert!(c.links.is_empty());
    assert!(c.interest.static_filters.is_empty());
    assert_eq!(c.interest.dynamic, DynamicInterest::None);
    assert_eq!(c.interest.budget, None);
    assert_eq!(c.spool.dir, PathBuf::from("/var/lib/mqlink"));
    assert_eq!(c.spool.max_bytes, ByteSize(1 << 30));
    assert_eq!(c.spool.max_age, Duration::from_secs(86_400));
    assert_eq!(c.broker.batch_delay, Duration::ZERO);
    assert_eq!(c.region_pos, Some(Pos { line: 1, column: 9 }));
}

#[test]
fn full_file_parses_into_checked_types() {
    let c = ok(r#"
region: eu-west
node: eu-west-a
broker:
  url: mqtts://broker.local
  username: agent
  password_file: /etc/mqlink/pw
  batch_delay: 2ms
listen: { quic: "[::]:7443", admin: 127.0.0.1:1, metrics: 127.0.0.1:2 }
tls: { cert: /c.pem, key: /c.key, ca: /ca.pem }
links:
  - region: us-east
    endpoints: [linker.us-east.example.net:7443, "10.0.0.1:7443"]
    cost: 80
    export: ["factory/#"]
    import: []
interest:
  static: ["alerts/#", "$share/g/cmd/+"]
  dynamic: mosquitto
  budget: 1000
spool: { dir: /tmp/sp, max_bytes: 512MiB, max_age: 1h30m, full: drop-oldest }
"#);
    assert_eq!(c.broker.client_id, "mqlink-eu-west-a");
    assert_eq!(c.broker.url.port, 8883);
    assert_eq!(c.broker.batch_delay, Duration::from_millis(2));
    let l = &c.links[0];
    assert_eq!(l.cost.map(|c| c.get()), Some(80));
    assert_eq!(l.endpoints.len(), 2);
    assert_eq!(l.export[0].as_str(), "factory/#");
    assert!(l.import.is_empty());
    assert_eq!(
        l.pos,
        Some(Pos {
            line: 12,
            column: 13
        })
    );
    assert_eq!(
        c.interest
            .static_filters
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>(),
        ["alerts/#", "cmd/+"]
    );
    assert_eq!(c.interest.dynamic, DynamicInterest::Mosquitto);
    assert_eq!(c.interest.budget, Some(1000));
    assert_eq!(c.spool.max_age, Duration::from_secs(5400));
    assert_eq!(c.spool.full, SpoolFull::DropOldest);
}

#[test]
fn typo_in_a_key_names_position_and_suggests() {
    let e = errors("region: eu\nlisen:\n  quic: 0.0.0.0:1\ntls: { cert: c, key: k, ca: a }\n");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("conf/eu.yaml:2:1: error: unknown key `lisen`; did you mean `listen`?"),
        "{}",
        e[0]
    );
    let e = errors(
        "region: eu\ntls: { cert: c, key: k, ca: a }\nlinks:\n  - region: us\n    endpionts: [a:1]\n",
    );
    assert!(
        e[0].starts_with(
            "conf/eu.yaml:5:5: error: unknown key `endpionts`; did you mean `endpoints`?"
        ),
        "{}",
        e[0]
    );
}

#[test]
fn bad_values_are_all_reported_with_positions() {
    let e = errors(
        r#"region: EU
tls: { cert: c, key: k, ca: a }
broker: { batch_delay: 1s }
links:
  - region: us
    endpoints: [nohost]
    cost: 0
    export: ["a/#/b"]
interest:
  static: ["x+"]
  dynamic: redis
  budget: 0
spool: { max_bytes: lots, max_age: 0s, full: never }
"#,
    );
    let expect = [
        "conf/eu.yaml:1:9: error: region: invalid region name `EU`",
        "conf/eu.yaml:3:24: error: broker.batch_delay: expected at most 100ms",
        "conf/eu.yaml:6:17: error: links.endpoints: invalid endpoint `nohost`",
        "conf/eu.yaml:7:11: error: links.cost: invalid cost 0",
        "conf/eu.yaml:8:14: error: links.export: `#` must be the last level of a filter (found in level 2 of 3)",
        "conf/eu.yaml:10:12: error: interest.static: `+` must occupy a whole level",
        "conf/eu.yaml:11:12: error: interest.dynamic: unknown source `redis`; expected `mosquitto`, `plugin` or `none`",
        "conf/eu.yaml:12:11: error: interest.budget: 0 is out of range; expected 1 to 1000000 filters",
        "conf/eu.yaml:13:21: error: spool.max_bytes: invalid size `lots`",
        "conf/eu.yaml:13:36: error: spool.max_age: expected a duration above zero",
        "conf/eu.yaml:13:46: error: spool.full: unknown policy `never`; expected `block` or `drop-oldest`",
    ];
    assert_eq!(e.len(), expect.len(), "{e:#?}");
    for (got, want) in e.iter().zip(expect) {
        assert!(got.starts_with(want), "got {got}\nwant {want}");
    }
}

#[test]
fn structural_errors() {
    let e = errors("region: eu\n");
    assert!(e[0].contains("missing required key `tls`"), "{}", e[0]);
    let e = errors("region: eu\ntls: { cert: c, key: k, ca: a }\nregion: us\n");
    assert!(
        e[0].starts_with("conf/eu.yaml:3:1: error: duplicate key"),
        "{}",
        e[0]
    );
    let e = errors(
        "region: eu\ntls: { cert: c, key: k, ca: a }\nlinks:\n  - region: eu\n    endpoints: []\n",
    );
    assert!(
        e.iter().any(|m| m.contains("is this region itself")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.contains("expected at least one `host:port`")),
        "{e:?}"
    );
    let e = errors(
        "region: eu\ntls: { cert: c, key: k, ca: a }\nlinks:\n  - {region: us, endpoints: [a:1]}\n  - {region: us, endpoints: [b:1]}\n",
    );
    assert!(
        e[0].contains("`us` is listed twice (first at conf/eu.yaml:4:14)"),
        "{}",
        e[0]
    );
    let e = errors("region: [eu\n");
    assert!(e[0].starts_with("conf/eu.yaml:1:"), "{}", e[0]);
}

fn region_file(name: &str, links: &[(&str, &str)]) -> RegionConfig {
    let mut text =
        format!("region: {name}\nnode: {name}-a\ntls: {{ cert: c, key: k, ca: a }}\nlinks:\n");
    for (peer, extra) in links {
        text.push_str(&format!(
            "  - region: {peer}\n    endpoints: [{peer}.example:7443]\n"
        ));
        for line in extra.lines() {
            text.push_str(&format!("    {line}\n"));
        }
    }
    if links.is_empty() {
        text.push_str("  []\n");
    }
    parse(Path::new(&format!("{name}.yaml")), &text, "h").unwrap()
}

fn messages(d: &Deployment) -> Vec<String> {
    d.diagnostics.iter().map(ToString::to_string).collect()
}

#[test]
fn triangle_is_valid_without_warnings() {
    let d = check_deployment(&[
        region_file("a", &[("b", ""), ("c", "")]),
        region_file("b", &[("a", ""), ("c", "")]),
        region_file("c", &[("a", ""), ("b", "")]),
    ]);
    assert!(d.is_valid());
    assert!(d.diagnostics.is_empty(), "{:?}", messages(&d));
    assert_eq!(d.links.len(), 3);
}

#[test]
fn one_sided_link_and_unknown_region_are_errors() {
    let d = check_deployment(&[
        region_file("a", &[("b", ""), ("c", ""), ("zz", "")]),
        region_file("b", &[("a", ""), ("c", "")]),
        region_file("c", &[("b", "")]),
    ]);
    let m = messages(&d);
    assert!(!d.is_valid());
    assert!(
        m.iter().any(|x| x.starts_with("a.yaml:7:13: error: link to `c` is declared on this side only: c.yaml:1:9 has no link back to `a`")),
        "{m:#?}"
    );
    assert!(
        m.iter()
            .any(|x| x.starts_with("a.yaml:9:13: error: link to `zz`, but no file")),
        "{m:#?}"
    );
}

#[test]
fn line_topology_reports_single_points_of_failure_as_warnings() {
    let d = check_deployment(&[
        region_file("a", &[("b", "")]),
        region_file("b", &[("a", ""), ("c", "")]),
        region_file("c", &[("b", "")]),
    ]);
    assert!(d.is_valid(), "warnings only");
    let m = messages(&d);
    assert!(
        m.iter().any(|x| x
            .starts_with("a.yaml:5:13: warning: single point of failure: losing the link a <-> b")),
        "{m:#?}"
    );
    assert!(
        m.iter().any(|x| x.starts_with(
            "b.yaml:1:9: warning: single point of failure: losing region `b` cuts {c} off from {a}"
        )),
        "{m:#?}"
    );
}

#[test]
fn partitions_duplicates_and_dead_filters() {
    let d = check_deployment(&[
        region_file("a", &[("b", "export: [\"x/#\"]")]),
        region_file("b", &[("a", "import: [\"y/#\"]\ncost: 3")]),
        region_file("c", &[]),
        region_file("c", &[]),
    ]);
    let m = messages(&d);
    assert!(
        m.iter()
            .any(|x| x.starts_with("c.yaml:1:9: error: partition: {c} cannot reach {a, b}")),
        "{m:#?}"
    );
    assert!(
        m.iter()
            .any(|x| x.contains("region `c` node `c-a` is already defined in c.yaml:1:9")),
        "{m:#?}"
    );
    assert!(
        m.iter().any(|x| x.starts_with("a.yaml:7:13: error: nothing `a` exports to `b` (export: [x/#]) can pass `b`'s import filter (import: [y/#] at b.yaml:7:13)")),
        "{m:#?}"
    );
}

#[test]
fn yaml_errors_say_which_key_and_what_to_do() {
    let cases = [
        // A missing key: the block it belongs in, by its full name.
        (
            "region: eu\ntls:\n  cert: c\n  ca: a\n",
            "conf/eu.yaml:2:1: error: tls: missing required key `tls.key`",
        ),
        (
            "region: eu\ntls: { cert: c, ca: a }\n",
            "conf/eu.yaml:2:1: error: tls: missing required key `tls.key`",
        ),
        // An unclosed bracket: where it was opened, not where the parser stumbled.
        (
            "region: eu\ntls: { cert: c, key: k, ca: a }\nlinks:\n  - region: us\n    endpoints: [a:1\n    cost: 5\n",
            "conf/eu.yaml:5:16: error: unclosed `[`: close it with `]` on this line",
        ),
        // Bad values name their key and what was found.
        (
            "region: eu\ntls: { cert: c, key: k, ca: a }\nlinks:\n  - region: us\n    endpoints: [\"a:1\"]\n    cost: -5\n",
            "conf/eu.yaml:6:11: error: links.cost: expected a whole number, found `-5`",
        ),
        (
            "region: eu\ntls: { cert: c, key: k, ca: a }\nbroker: { shared: maybe }\n",
            "conf/eu.yaml:3:19: error: broker.shared: expected `true` or `false` (unquoted), found `maybe`",
        ),
        // YAML 1.1 booleans are refused rather than guessed.
        (
            "region: eu\ntls: { cert: c, key: k, ca: a }\nbroker: { shared: \"yes\" }\n",
            "conf/eu.yaml:3:19: error: broker.shared: expected `true` or `false`",
        ),
        (
            "region: eu\ntls: { cert: c, key: k, ca: a }\nbroker: { shared: \"false\" }\n",
            "conf/eu.yaml:3:19: error: broker.shared: expected `true` or `false` unquoted, found a quoted string",
        ),
        // The parser's jargon, in words.
        (
            "region: eu\ntls: { cert: c, key: k, ca: a }\nlinks:\n  region: us\n",
            "conf/eu.yaml:4:3: error: links: expected a list (`- item` lines, or `[a, b]`)",
        ),
        (
            "region: eu\ntls: { cert: c, key: k, ca: a }\n  links: []\n",
            "conf/eu.yaml:3:3: error: this line is indented deeper than the keys above it",
        ),
    ];
    for (text, want) in cases {
        let e = errors(text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with(want), "got  {}\nwant {want}", e[0]);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    /// Whatever the file holds (mangled configs: brackets, quotes, tabs,
    /// colons, dashes and multibyte characters in any order), parsing and
    /// explaining its errors never panics, and every error has a position
    /// inside the file.
    #[test]
    fn any_text_gives_a_config_or_positioned_errors(
        text in "(region: eu\n|tls: \\{ cert: c, key: k, ca: a \\}\n|links:\n|  - region: us\n|    endpoints: \\[|\\]|\\{|\\}|\"|'|:|-|#|é|\t| |\n|cost: -5|shared: yes|broker:|  url: x|[a-z]{1,6}){0,40}"
    ) {
        positioned(&text)?;
    }

    /// Arbitrary printable text and line breaks.
    #[test]
    fn arbitrary_text_never_panics(text in "(\\PC|\n){0,200}") {
        positioned(&text)?;
    }
}

/// Parse `text`; every error it gives has a line inside the file.
fn positioned(text: &str) -> Result<(), proptest::test_runner::TestCaseError> {
    if let Err(e) = parse(Path::new(FILE), text, "host-1") {
        let lines = text.lines().count().max(1) as u64 + 1;
        for d in &e.diagnostics {
            if let Some(p) = d.pos {
                proptest::prop_assert!(p.line >= 1 && p.line <= lines, "{d} in {text:?}");
            }
        }
    }
    Ok(())
}
