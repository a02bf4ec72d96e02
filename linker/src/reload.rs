//! Reloading the configuration without a restart (SIGHUP, `mqlink ctl
//! reload`): what may change in place, and the plan that applies it.
//!
//! In place: links added or removed, their endpoints, costs, export and
//! import policies, and `interest.static`. Connections to links that did
//! not change stay up and lose nothing (the core keeps their state; only
//! the dial tasks of endpoints that changed are started or stopped). Any
//! other change (region, node, broker, listen, tls, spool, dns, dynamic
//! interest, budget) needs a restart: the reload is refused, saying which
//! keys, and the running configuration stays. A file that does not load
//! is refused with its `file:line:col` errors, and nothing changes.

use std::collections::BTreeSet;

use mqlink_config::{Endpoint, RegionConfig};
use mqlink_proto::LinkPolicy;
use mqlink_topology::{RegionName, TopicFilter};

/// The protocol core's view of a config's links.
pub fn link_policies(cfg: &RegionConfig) -> Vec<LinkPolicy> {
    cfg.links
        .iter()
        .map(|l| LinkPolicy {
            region: l.region.clone(),
            cost: l.cost,
            export: l.export.clone(),
            import: l.import.clone(),
        })
        .collect()
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not load.
    #[error("{0}\nthe running configuration stays")]
    Invalid(String),
    /// It changes what only a restart can.
    #[error(
        "{file}: changing {keys} needs a restart (mqlink run reads them once); nothing was changed",
        file = .file, keys = .keys.join(", ")
    )]
    NeedsRestart {
        /// The file.
        file: String,
        /// The keys.
        keys: Vec<&'static str>,
    },
    /// The agent is stopping.
    #[error("the agent is stopping")]
    Stopping,
}

/// What a reload does.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Neighbours added.
    pub added: Vec<RegionName>,
    /// Neighbours removed.
    pub removed: Vec<RegionName>,
    /// Neighbours whose cost, policies or endpoints changed.
    pub changed: Vec<RegionName>,
    /// Endpoints to stop dialling.
    pub stop_dialling: Vec<(RegionName, Endpoint)>,
    /// Endpoints to start dialling.
    pub start_dialling: Vec<(RegionName, Endpoint)>,
    /// Static filters added.
    pub subscribe: Vec<TopicFilter>,
    /// Static filters removed.
    pub unsubscribe: Vec<TopicFilter>,
}

impl Plan {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// One line for the log and `ctl reload`.
    pub fn summary(&self) -> String {
        if self.is_empty() {
            return "no change".to_owned();
        }
        fn join<T: ToString>(v: &[T], sep: &str) -> String {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(sep)
        }
        [
            ("links added", join(&self.added, ", ")),
            ("links removed", join(&self.removed, ", ")),
            ("links changed", join(&self.changed, ", ")),
            ("static interest added", join(&self.subscribe, " ")),
            ("static interest removed", join(&self.unsubscribe, " ")),
        ]
        .into_iter()
        .filter(|(_, what)| !what.is_empty())
        .map(|(label, what)| format!("{label}: {what}"))
        .collect::<Vec<_>>()
        .join("; ")
    }
}

/// The keys that differ between `old` and `new` and need a restart.
pub fn restart_needed(old: &RegionConfig, new: &RegionConfig) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |differs: bool, key: &'static str| {
        if differs {
            keys.push(key);
        }
    };
    check(old.region != new.region, "region");
    check(old.node != new.node, "node");
    check(old.broker != new.broker, "broker");
    check(old.listen != new.listen, "listen");
    check(old.tls != new.tls, "tls");
    check(old.spool != new.spool, "spool");
    check(old.dns != new.dns, "dns");
    check(
        old.interest.dynamic != new.interest.dynamic,
        "interest.dynamic",
    );
    check(
        old.interest.budget != new.interest.budget,
        "interest.budget",
    );
    keys
}

/// The plan from `old` to `new` (for the region `me`, which dials the
/// neighbours whose names sort after its own).
pub fn plan(old: &RegionConfig, new: &RegionConfig) -> Plan {
    let me = &new.region;
    let mut p = Plan::default();
    for l in &new.links {
        match old.links.iter().find(|o| o.region == l.region) {
            None => p.added.push(l.region.clone()),
            Some(o) => {
                let same = o.cost == l.cost
                    && o.export == l.export
                    && o.import == l.import
                    && o.endpoints == l.endpoints;
                if !same {
                    p.changed.push(l.region.clone());
                }
            }
        }
    }
    for o in &old.links {
        if !new.links.iter().any(|l| l.region == o.region) {
            p.removed.push(o.region.clone());
        }
    }
    let dialled = |cfg: &RegionConfig| -> BTreeSet<(RegionName, Endpoint)> {
        cfg.links
            .iter()
            .filter(|l| crate::link::dials(me, &l.region))
            .flat_map(|l| l.endpoints.iter().map(|e| (l.region.clone(), e.clone())))
            .collect()
    };
    let (before, after) = (dialled(old), dialled(new));
    p.stop_dialling = before.difference(&after).cloned().collect();
    p.start_dialling = after.difference(&before).cloned().collect();
    let statics = |cfg: &RegionConfig| -> BTreeSet<TopicFilter> {
        cfg.interest.static_filters.iter().cloned().collect()
    };
    let (before, after) = (statics(old), statics(new));
    p.subscribe = after.difference(&before).cloned().collect();
    p.unsubscribe = before.difference(&after).cloned().collect();
    p
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn cfg(text: &str) -> RegionConfig {
        // One directory per process: relative paths resolve against it,
        // so two configs compare equal where their text does.
        static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
        let dir = DIR.get_or_init(|| crate::scratch::dir("mqlink-reload").unwrap());
        let file = dir.join("a.yaml");
        std::fs::write(&file, text).unwrap();
        mqlink_config::load(&file).unwrap()
    }

    const BASE: &str = "region: a\nnode: a-1\ntls: { cert: c, key: k, ca: ca }\n";

    #[test]
    fn a_plan_names_what_changes_and_only_that() {
        let old = cfg(&format!(
            "{BASE}interest: {{ static: [\"x/#\", \"y/#\"] }}\nlinks:\n  \
             - region: b\n    endpoints: [\"127.0.0.1:1\"]\n    cost: 10\n  \
             - region: c\n    endpoints: [\"127.0.0.1:2\"]\n"
        ));
        let new = cfg(&format!(
            "{BASE}interest: {{ static: [\"y/#\", \"z/#\"] }}\nlinks:\n  \
             - region: b\n    endpoints: [\"127.0.0.1:1\"]\n    cost: 10\n    import: [\"x/#\"]\n  \
             - region: d\n    endpoints: [\"127.0.0.1:4\"]\n"
        ));
        assert!(restart_needed(&old, &new).is_empty());
        let p = plan(&old, &new);
        let names = |v: &[RegionName]| v.iter().map(|r| r.to_string()).collect::<Vec<_>>();
        assert_eq!(names(&p.added), ["d"]);
        assert_eq!(names(&p.removed), ["c"]);
        assert_eq!(names(&p.changed), ["b"]);
        // b's endpoint did not change: its dial task stays.
        let dials = |v: &[(RegionName, Endpoint)]| {
            v.iter()
                .map(|(r, e)| format!("{r}@{e}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(dials(&p.stop_dialling), ["c@127.0.0.1:2"]);
        assert_eq!(dials(&p.start_dialling), ["d@127.0.0.1:4"]);
        assert_eq!(p.subscribe, [TopicFilter::new("z/#").unwrap()]);
        assert_eq!(p.unsubscribe, [TopicFilter::new("x/#").unwrap()]);
        assert_eq!(
            p.summary(),
            "links added: d; links removed: c; links changed: b; \
             static interest added: z/#; static interest removed: x/#"
        );
        assert!(plan(&old, &old).is_empty());
    }

    #[test]
    fn what_only_a_restart_changes_is_named() {
        let old = cfg(BASE);
        let new = cfg(&format!(
            "{BASE}listen: {{ quic: \"127.0.0.1:9\" }}\nbroker: {{ url: \"mqtt://127.0.0.1:2\" }}\n"
        ));
        assert_eq!(restart_needed(&old, &new), ["broker", "listen"]);
    }
}
