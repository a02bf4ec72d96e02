//! `mqlink check --broker-conf FILE`: what a Mosquitto configuration
//! means for custody, as warnings with `file:line` (README, "Broker
//! settings"). The agent acknowledges a message only once the federation
//! has it, so while a path is slow or down the broker holds the messages
//! for the agent's persistent session; these settings decide how many,
//! for how long, and whether they outlive a broker restart.
//!
//! Mosquitto's syntax: one `option value...` per line, `#` comments,
//! `include_dir DIR` reading `DIR/*.conf` in alphabetical order.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mqlink_config::{Diagnostic, Pos, RegionConfig};

/// The agent's MQTT 5 Receive Maximum (see `broker.rs`): what it can use
/// of `max_inflight_messages`.
const AGENT_INFLIGHT: u64 = crate::broker::EXPORT_INFLIGHT as u64;
/// Below this a broker queue for the agent fills within seconds at a
/// modest rate.
const QUEUE_HINT: u64 = 10_000;

/// One setting: its value, and where it was set.
#[derive(Debug, Clone)]
struct Setting {
    value: String,
    file: PathBuf,
    line: u64,
}

impl Setting {
    fn pos(&self) -> Option<Pos> {
        Some(Pos {
            line: self.line,
            column: 1,
        })
    }
}

/// Every option of a configuration (last one wins, as in Mosquitto).
#[derive(Debug, Default)]
struct Conf {
    settings: Vec<(String, Setting)>,
}

impl Conf {
    fn get(&self, key: &str) -> Option<&Setting> {
        self.settings
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, s)| s)
    }

    fn read(&mut self, file: &Path, depth: u32, diags: &mut Vec<Diagnostic>) {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                diags.push(Diagnostic::error(
                    file,
                    None,
                    format!("cannot read the broker configuration: {e}"),
                ));
                return;
            }
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let setting = Setting {
                value: value.trim().to_owned(),
                file: file.to_owned(),
                line: i as u64 + 1,
            };
            if key == "include_dir" && depth < 4 {
                let dir = PathBuf::from(&setting.value);
                let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                    .map(|d| {
                        d.filter_map(|e| e.ok())
                            .map(|e| e.path())
                            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                            .collect()
                    })
                    .unwrap_or_default();
                files.sort();
                for f in files {
                    self.read(&f, depth + 1, diags);
                }
            }
            self.settings.push((key.to_owned(), setting));
        }
    }
}

/// Mosquitto's duration syntax for `persistent_client_expiration`:
/// a number and one of h, d, w, m (month), y.
fn expiration(v: &str) -> Option<Duration> {
    let unit = v.chars().last()?;
    let n: u64 = v[..v.len() - unit.len_utf8()].parse().ok()?;
    let hours = match unit {
        'h' => 1,
        'd' => 24,
        'w' => 24 * 7,
        'm' => 24 * 30,
        'y' => 24 * 365,
        _ => return None,
    };
    Some(Duration::from_secs(n * hours * 3600))
}

/// Warnings about `file` (a Mosquitto configuration) for agents `configs`.
pub fn check(file: &Path, configs: &[RegionConfig]) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let mut conf = Conf::default();
    conf.read(file, 0, &mut diags);
    if !diags.is_empty() {
        return diags;
    }
    let number = |key: &str| conf.get(key).map(|s| (s, s.value.parse::<u64>().ok()));
    match conf.get("persistence") {
        Some(s) if s.value == "true" => {}
        found => diags.push(Diagnostic::warning(
            found.map_or(file, |s| &s.file),
            found.and_then(Setting::pos),
            "persistence is off: a broker restart loses the agent's session and every \
             message the broker holds for it (set `persistence true` and a \
             `persistence_location`)",
        )),
    }
    // A numeric setting below its floor (0 = no limit), or missing and
    // left at Mosquitto's default: a warning saying what the value does.
    let mut at_least = |key: &str, floor: u64, default: u64, what: &dyn Fn(u64) -> String| {
        let (f, pos, n, fine) = match conf.get(key) {
            Some(s) => {
                let v = s.value.parse::<u64>().ok();
                let fine = v.is_some_and(|n| n == 0 || n >= floor);
                (s.file.as_path(), s.pos(), v.unwrap_or(0), fine)
            }
            None => (file, None, default, false),
        };
        if !fine {
            diags.push(Diagnostic::warning(f, pos, what(n)));
        }
    };
    at_least("max_queued_messages", QUEUE_HINT, 1000, &|n| {
        format!(
            "max_queued_messages {n}: while a path is down the broker queues at most \
             {n} messages for the agent and drops the rest; size it for the longest \
             outage to ride out at your rate (e.g. 100000; 0 = no limit)"
        )
    });
    at_least("max_inflight_messages", AGENT_INFLIGHT, 20, &|n| {
        format!(
            "max_inflight_messages {n}: the agent takes at most {n} QoS 1/2 messages \
             per federation round trip (set `max_inflight_messages {AGENT_INFLIGHT}`, \
             the agent's Receive Maximum)"
        )
    });
    if let Some((s, Some(n))) = number("max_queued_bytes")
        && n > 0
    {
        diags.push(Diagnostic::warning(
            &s.file,
            s.pos(),
            format!(
                "max_queued_bytes {n}: the broker drops messages for the agent beyond {n} \
                 queued bytes (0 = no limit)"
            ),
        ));
    }
    if let Some(s) = conf.get("persistent_client_expiration")
        && let Some(limit) = expiration(&s.value)
    {
        for c in configs.iter().filter(|c| c.spool.max_age > limit) {
            diags.push(Diagnostic::warning(
                &s.file,
                s.pos(),
                format!(
                    "persistent_client_expiration {} is shorter than region {}'s spool.max_age \
                     ({} s, the agent's session expiry): an agent down longer loses its session \
                     and what the broker held for it",
                    s.value,
                    c.region,
                    c.spool.max_age.as_secs()
                ),
            ));
        }
    }
    if conf
        .get("set_tcp_nodelay")
        .is_none_or(|s| s.value != "true")
    {
        let (f, pos) = conf
            .get("set_tcp_nodelay")
            .map_or((file, None), |s| (s.file.as_path(), s.pos()));
        diags.push(Diagnostic::warning(
            f,
            pos,
            "set_tcp_nodelay is off: the broker holds small writes to subscribers until a \
             full TCP segment gathers or the last one is acknowledged (Nagle), up to 15-17 ms \
             at a steady 38,000 msgs/s; set `set_tcp_nodelay true`",
        ));
    }
    use mqlink_config::DynamicInterest;
    let kinds = configs.iter().map(|c| c.interest.dynamic);
    if let Some(kind) = kinds
        .filter(|k| *k != DynamicInterest::None)
        .max_by_key(|k| *k == DynamicInterest::Plugin)
    {
        dynamic_interest(file, &conf, kind, &mut diags);
    }
    diags
}

/// For `interest: { dynamic: mosquitto }`: the `mqlink_interest` plugin
/// loaded and built, its state file set, the log on `$SYS` (fallback and
/// session-expiry lines).
fn dynamic_interest(
    file: &Path,
    conf: &Conf,
    kind: mqlink_config::DynamicInterest,
    diags: &mut Vec<Diagnostic>,
) {
    let only_plugin = kind == mqlink_config::DynamicInterest::Plugin;
    let plugin = conf
        .settings
        .iter()
        .rev()
        .find(|(k, s)| k == "plugin" && s.value.contains("mqlink_interest"))
        .map(|(_, s)| s);
    match plugin {
        None if only_plugin => diags.push(Diagnostic::error(
            file,
            None,
            "interest.dynamic: plugin needs the mqlink_interest plugin, which is not loaded: \
             the agent would learn no subscription (build it with `make -C deploy/mosquitto` \
             and add deploy/mosquitto/mqlink.conf)",
        )),
        None => diags.push(Diagnostic::warning(
            file,
            None,
            "dynamic interest: the mqlink_interest plugin is not loaded, so the agent sees only \
             subscriptions made while it is connected (build it with `make -C deploy/mosquitto` \
             and add deploy/mosquitto/mqlink.conf)",
        )),
        Some(s) if s.value.contains("@DEPLOY@") => diags.push(Diagnostic::error(
            &s.file,
            s.pos(),
            "plugin @DEPLOY@/...: replace @DEPLOY@ with the absolute path of deploy/mosquitto",
        )),
        Some(s) if !Path::new(&s.value).exists() => diags.push(Diagnostic::warning(
            &s.file,
            s.pos(),
            format!(
                "plugin {}: no such file (build it with `make -C deploy/mosquitto`)",
                s.value
            ),
        )),
        Some(s) => {
            if conf.get("plugin_opt_state_file").is_none() {
                diags.push(Diagnostic::warning(
                    &s.file,
                    s.pos(),
                    "plugin_opt_state_file is not set: after a broker restart the plugin \
                     forgets the subscriptions of restored persistent sessions",
                ));
            }
        }
    }
    if only_plugin && plugin.is_none() {
        return;
    }
    if only_plugin {
        // The plugin alone cannot see an offline session expire (the 2.0
        // plugin API does not show it); the agent relays the broker's log
        // line only with `dynamic: mosquitto`.
        diags.push(Diagnostic::warning(
            file,
            None,
            "interest.dynamic: plugin on Mosquitto: an offline persistent session's interest \
             stays after the broker expires it; `dynamic: mosquitto` with `log_dest topic` ends it",
        ));
        return;
    }
    let log_topic = conf
        .settings
        .iter()
        .any(|(k, s)| k == "log_dest" && s.value.split_whitespace().any(|v| v == "topic"));
    if !log_topic {
        diags.push(Diagnostic::warning(
            file,
            None,
            "dynamic interest: no `log_dest topic`: the agent cannot see when the broker expires \
             an offline session (its interest then stays), nor follow subscriptions without the \
             plugin (add deploy/mosquitto/mqlink.conf)",
        ));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let d = crate::scratch::dir(&format!("mqlink-broker-conf-{name}")).unwrap();
        std::fs::create_dir_all(d.join("conf.d")).unwrap();
        let f = d.join("mosquitto.conf");
        std::fs::write(&f, text.replace("@D@", &d.display().to_string())).unwrap();
        f
    }

    fn messages(d: &[Diagnostic]) -> Vec<String> {
        d.iter()
            .map(|d| format!("{}: {}", d.location(), d.message))
            .collect()
    }

    #[test]
    fn a_stock_configuration_gets_every_hint() {
        let f = write("stock", "listener 1883\n");
        let d = check(&f, &[]);
        let m = messages(&d);
        assert_eq!(d.len(), 4, "{m:#?}");
        assert!(m[0].contains("persistence is off"));
        assert!(m[1].contains("max_queued_messages 1000"));
        assert!(m[2].contains("max_inflight_messages 20"));
        assert!(m[3].contains("set_tcp_nodelay is off"));
    }

    #[test]
    fn the_shipped_snippet_with_persistence_passes_and_lines_are_named() {
        let f = write(
            "good",
            "persistence true\npersistence_location /var/lib/mosquitto/\ninclude_dir @D@/conf.d\n",
        );
        let snippet = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/mosquitto/mqlink.conf"
        ))
        .unwrap();
        std::fs::write(f.parent().unwrap().join("conf.d/mqlink.conf"), snippet).unwrap();
        assert_eq!(messages(&check(&f, &[])), Vec::<String>::new());
        // A later file overriding a setting is named with its line.
        std::fs::write(
            f.parent().unwrap().join("conf.d/zz.conf"),
            "# late\nmax_inflight_messages 10\n",
        )
        .unwrap();
        let m = messages(&check(&f, &[]));
        assert_eq!(m.len(), 1, "{m:#?}");
        assert!(
            m[0].contains("zz.conf:2:1: max_inflight_messages 10"),
            "{m:#?}"
        );
    }

    #[test]
    fn dynamic_interest_wants_the_plugin_built_and_named() {
        let region = |dynamic: &str| {
            mqlink_config::parse(
                std::path::Path::new("r.yaml"),
                &format!(
                    "region: r\ntls: {{ cert: c, key: k, ca: a }}\n\
                     interest: {{ dynamic: {dynamic} }}\nlinks: []\n"
                ),
                "host",
            )
            .unwrap()
        };
        let base = "persistence true\nmax_queued_messages 100000\nmax_inflight_messages 1000\nset_tcp_nodelay true\n";
        let f = write("dyn-none", base);
        assert!(check(&f, &[region("none")]).is_empty());
        let m = messages(&check(&f, &[region("mosquitto")]));
        assert_eq!(m.len(), 2, "{m:#?}");
        assert!(m[0].contains("plugin is not loaded"));
        assert!(m[1].contains("no `log_dest topic`"));
        let f = write(
            "dyn-deploy",
            &format!("{base}log_dest topic\nplugin @DEPLOY@/mqlink_interest.so\n"),
        );
        let m = messages(&check(&f, &[region("mosquitto")]));
        assert_eq!(m.len(), 1, "{m:#?}");
        assert!(m[0].contains(":6:1: plugin @DEPLOY@"), "{m:#?}");
        let f = write(
            "dyn-missing",
            &format!("{base}log_dest topic\nplugin /nowhere/mqlink_interest.so\n"),
        );
        let m = messages(&check(&f, &[region("mosquitto")]));
        assert!(m[0].contains("no such file"), "{m:#?}");
        let f = write("dyn-plugin", base);
        let d = check(&f, &[region("plugin")]);
        assert_eq!(d.len(), 1, "{d:#?}");
        assert_eq!(d[0].severity, mqlink_config::Severity::Error);
        assert!(d[0].message.contains("needs the mqlink_interest"), "{d:#?}");
    }

    #[test]
    fn expirations_parse_as_mosquitto_writes_them() {
        assert_eq!(expiration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(expiration("1d"), Some(Duration::from_secs(86_400)));
        assert_eq!(expiration("3x"), None);
        assert_eq!(expiration(""), None);
    }
}
