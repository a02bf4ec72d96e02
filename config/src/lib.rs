//! mqlink's configuration: the region YAML parsed into checked types, with
//! every error naming the file, line and column and what was expected, and
//! the cross-checks of a whole deployment (several region files at once).
//!
//! # Layout
//!
//! - [`raw`](crate::raw) (private): the YAML as serde sees it, every value
//!   spanned with its position (serde-saphyr).
//! - [`region`]: the checked [`RegionConfig`] and the raw-to-checked
//!   conversion, which reports every problem in a file, not just the first.
//! - [`units`]: sizes, durations, endpoints, broker URLs, "did you mean".
//! - [`deployment`]: whole-deployment checks (links declared on both sides,
//!   duplicate regions, partitions, single points of failure, export/import
//!   filters that can never overlap).
//! - [`diagnostic`]: [`Diagnostic`], printed as `file:line:column: severity: message`,
//!   and [`ConfigError`].
//!
//! # The region file, and its defaults
//!
//! ```yaml
//! region: eu-west                 # required; a DNS label: a-z, 0-9, '-'
//! node: eu-west-a                 # default: the machine's hostname
//! broker:
//!   url: mqtt://127.0.0.1:1883    # default; mqtts:// for TLS (default port 8883)
//!   client_id: mqlink-eu-west-a   # default: mqlink-<node>, or mqlink-<region>-<node>
//!                                 #   when the node name does not start with the region
//!   username: agent               # optional
//!   password_file: secrets/pw     # optional; chmod 600 (check --files warns otherwise)
//!   ca: certs/broker-ca.pem       # mqtts:// only; default: /etc/ssl/certs/ca-certificates.crt
//!   cert: certs/agent.pem         # mqtts:// only, with key: a client certificate
//!   key: certs/agent.key
//!   shared: false                 # default; true on every agent of a region with
//!                                 #   replicas: exports via $share/mqlink-<region>/...
//!   batch_delay: 0ms              # default; up to 100ms: messages gather this long
//!                                 #   before they are read (less CPU, more latency)
//! listen:
//!   quic: 0.0.0.0:7443            # default
//!   admin: 127.0.0.1:7444         # default (loopback only)
//!   metrics: 127.0.0.1:9464       # default (loopback only)
//! tls:                            # required: mutual TLS is not optional
//!   cert: certs/eu-west.pem
//!   key: certs/eu-west.key
//!   ca: certs/ca.pem
//! links:                          # default: none
//!   - region: us-east             # required
//!     endpoints: [linker.us-east.example.net:7443]   # required, at least one;
//!                                 #   one entry per agent (replica) of that region
//!     cost: 80                    # default: measured RTT in ms; 1 to 1,000,000
//!     export: ["factory/#"]       # default ["#"]: everything may be sent
//!     import: ["factory/#"]       # default ["#"]: everything may be accepted
//! interest:
//!   static: ["alerts/#"]          # default: none; `$share/<g>/<f>` counts as <f>
//!   dynamic: mosquitto            # default: none; `mosquitto` (the mqlink_interest
//!                                 #   plugin, the $SYS log as fallback) or `plugin`
//!                                 #   ($mqlink/interest only: embedded demo broker)
//!   budget: 1000                  # default: none (exact); most filters advertised,
//!                                 #   past it the summary is aggregated (only widens)
//! spool:
//!   dir: /var/lib/mqlink          # default
//!   max_bytes: 1GiB               # default; units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB
//!   max_age: 24h                  # default; units us, ms, s, m, h, d (e.g. 1h30m)
//!   full: block                   # default; or drop-oldest (counted `spool_full`)
//! dns:
//!   servers: ["10.0.0.2"]         # default: the system's resolvers (/etc/resolv.conf, /etc/hosts)
//! ```
//!
//! Relative paths are relative to the directory of the file that names
//! them. `export: []` means "send nothing to this neighbour" (a one-way
//! link); a `#` default does not include `$`-topics (MQTT's rule), so
//! `$SYS/...` never crosses unless a filter names it.

mod raw;

pub mod deployment;
pub mod diagnostic;
mod explain;
pub mod region;
pub mod units;

use std::path::Path;

pub use deployment::{Deployment, check_deployment};
pub use diagnostic::{ConfigError, Diagnostic, Pos, Severity};
pub use region::{
    BrokerConfig, DnsConfig, DynamicInterest, FileRef, InterestConfig, LinkConfig, ListenConfig,
    RegionConfig, SpoolConfig, SpoolFull, TlsConfig,
};
pub use units::{BrokerUrl, ByteSize, Endpoint, Host};

/// Parse region YAML `text`, reporting positions against `file`. `hostname`
/// is the default node name. Reads nothing from disk.
pub fn parse(file: &Path, text: &str, hostname: &str) -> Result<RegionConfig, ConfigError> {
    let raw: raw::RawRegion =
        serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|e| ConfigError {
            diagnostics: vec![yaml_error_in(file, text, &e)],
        })?;
    let mut ctx = region::Ctx {
        file,
        text,
        diags: Vec::new(),
        files: Vec::new(),
    };
    let config = region::convert(&mut ctx, raw, hostname);
    match config {
        Some(config) if ctx.diags.is_empty() => Ok(config),
        _ => Err(ConfigError {
            diagnostics: ctx.diags,
        }),
    }
}

/// Read and parse the region file at `file`.
pub fn load(file: &Path) -> Result<RegionConfig, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        diagnostics: vec![Diagnostic::error(
            file,
            None,
            format!("cannot read the file: {e}"),
        )],
    })?;
    parse(file, &text, &hostname())
}

/// Warnings for files the config names that do not exist (yet): TLS
/// material and the broker password file. `mqlink run` needs them; a check
/// on a build machine may not have them.
pub fn missing_files(config: &RegionConfig) -> Vec<Diagnostic> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = Vec::new();
    for f in &config.files {
        let Ok(meta) = std::fs::metadata(&f.path) else {
            out.push(Diagnostic::warning(
                &config.file,
                f.pos,
                format!("{}: `{}` does not exist", f.key, f.path.display()),
            ));
            continue;
        };
        let secret = f.key == "broker.password_file" || f.key.ends_with(".key");
        if secret && meta.permissions().mode() & 0o077 != 0 {
            out.push(Diagnostic::warning(
                &config.file,
                f.pos,
                format!(
                    "{}: `{}` can be read or changed by other users (mode {:o}); chmod 600 it",
                    f.key,
                    f.path.display(),
                    meta.permissions().mode() & 0o777
                ),
            ));
        }
    }
    out
}

/// This machine's hostname (the default node name), or `node`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| mqlink_topology::NodeName::new(h).is_ok())
        .unwrap_or_else(|| "node".to_owned())
}

/// Turn a serde-saphyr error into a diagnostic with a message of our own
/// words where we can do better than the generic one (used for every YAML
/// file mqlink reads, scenarios included).
/// How mqlink reads YAML: booleans are `true` / `false` only (YAML 1.1's
/// `yes`, `no`, `on`, `off` are refused rather than guessed).
pub fn yaml_options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.strict_booleans = true;
    o
}

/// [`yaml_error`], saying more with the source `text`: the dotted key a
/// bad value belongs to, the block a missing key belongs in (and its
/// position), where an unclosed bracket was opened, plain words for the
/// parser's jargon.
pub fn yaml_error_in(file: &Path, text: &str, err: &serde_saphyr::Error) -> Diagnostic {
    let plain = yaml_error(file, err);
    let Some(at) = plain.pos else {
        return plain;
    };
    let line = usize::try_from(at.line).unwrap_or(usize::MAX);
    let mut key = explain::dotted(&explain::path_at(text, line));
    let mut value = explain::value_at(text, line);
    if let Some((inner, v)) = explain::flow_entry(text, at) {
        key = format!("{key}.{inner}");
        value = Some(v);
    }
    let found = value.map(|v| format!(", found `{v}`")).unwrap_or_default();
    let (pos, message) = match (err.without_snippet(), plain.message.as_str()) {
        (serde_saphyr::Error::SerdeMissingField { field, .. }, _) => {
            let block = explain::block_of(text, at);
            match block.last() {
                Some((_, p)) => {
                    let path = explain::dotted(&block);
                    (*p, format!("{path}: missing required key `{path}.{field}`"))
                }
                None => (at, plain.message.clone()),
            }
        }
        (_, "expected a whole number") => (at, format!("{key}: expected a whole number{found}")),
        (_, m) if m.contains("bool") => (
            at,
            format!("{key}: expected `true` or `false` (unquoted){found}"),
        ),
        (_, m) if m.contains("sequence start") => {
            let list = explain::dotted(&explain::block_of(text, at));
            (
                at,
                format!("{list}: expected a list (`- item` lines, or `[a, b]`), found `key: value` lines"),
            )
        }
        (_, m) if m.contains("did not find expected key") => (
            at,
            "this line is indented deeper than the keys above it, or is not `key: value`: keys of one block start in the same column".to_owned(),
        ),
        _ => match explain::unclosed_before(text, at) {
            Some((c, opened)) => {
                let close = if c == '[' { ']' } else { '}' };
                (
                    opened,
                    format!("unclosed `{c}`: close it with `{close}` on this line (the parser stumbled at line {}: {})", at.line, plain.message),
                )
            }
            None => return plain,
        },
    };
    Diagnostic::error(file, Some(pos), message)
}

/// A YAML error as a diagnostic, from the parser's error alone.
pub fn yaml_error(file: &Path, err: &serde_saphyr::Error) -> Diagnostic {
    let pos = err.location().and_then(Pos::of);
    let message = match err.without_snippet() {
        serde_saphyr::Error::SerdeUnknownField {
            field, expected, ..
        } => {
            let mut m = format!("unknown key `{field}`");
            if let Some(near) = units::nearest(field, expected) {
                m.push_str(&format!("; did you mean `{near}`?"));
            }
            m.push_str(&format!(" (expected one of: {})", expected.join(", ")));
            m
        }
        serde_saphyr::Error::SerdeMissingField { field, .. } => {
            format!("missing required key `{field}`")
        }
        other => {
            let text = other.to_string();
            let text = text
                .rfind(" at line ")
                .map_or(text.as_str(), |i| &text[..i])
                .to_owned();
            if text.starts_with("duplicate mapping key") {
                text.split(", set DuplicateKeyPolicy")
                    .next()
                    .unwrap_or(&text)
                    .replace("mapping key:", "key")
            } else if text == "invalid u64" {
                "expected a whole number".to_owned()
            } else {
                text
            }
        }
    };
    Diagnostic::error(file, pos, message)
}

#[cfg(test)]
mod tests;
