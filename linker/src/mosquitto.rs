//! Dynamic interest from a stock Mosquitto 2.x's log: the fallback for a
//! broker where the `mqlink_interest` plugin ([`crate::plugin_feed`]) is
//! not loaded, and the stand-in until it answers; with the plugin, only its
//! "Expiring client" lines are used (relayed to the plugin). The broker
//! publishes its log lines on `$SYS/broker/log/...` when configured with
//!
//! ```text
//! log_dest topic
//! log_type subscribe
//! log_type unsubscribe
//! log_type notice
//! ```
//!
//! (shipped as `deploy/mosquitto/mqlink.conf`). Lines look like
//! `$SYS/broker/log/M/subscribe  1796016184: dev42 1 factory/+/temp`,
//! `$SYS/broker/log/M/unsubscribe  <ts>: dev42 factory/+/temp`,
//! `$SYS/broker/log/N  <ts>: New client connected from ... as dev42 (p2, c1, k60).` and
//! `$SYS/broker/log/N  <ts>: Client dev42 disconnected.`
//!
//! This is a sans-IO parser: lines in, interest changes out.
//!
//! Limits (written down in the README too):
//! - The log shows only what happens while the agent is connected: an agent
//!   that starts after clients subscribed does not see their subscriptions
//!   until they subscribe again (static filters cover long-lived needs).
//! - A client's interest ends when it disconnects if it connected with
//!   clean start (`c1`); persistent sessions (`c0`) keep their interest,
//!   since the broker queues for them, until the broker logs that it
//!   expired them (`Expiring client <id> due to timeout.`).
//! - Client ids containing spaces are not supported (the log is
//!   space-separated).
//!
//! The same notices say when the broker starts dropping messages queued
//! for a client beyond its limits (`Outgoing messages are being dropped
//! for client <id>.`, once per episode: [`dropping_client`]): for the
//! agent's own client, that is QoS >= 1 traffic the broker acknowledged
//! to its publishers and then lost before the agent could take it.

use std::collections::{BTreeMap, BTreeSet};

use mqlink_topology::{Subscription, TopicFilter};

/// Topics the agent subscribes to on the broker to follow its log.
pub const LOG_TOPICS: [&str; 3] = [
    "$SYS/broker/log/M/subscribe",
    "$SYS/broker/log/M/unsubscribe",
    "$SYS/broker/log/N",
];

/// A change in local interest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// One more subscription holds the filter.
    Subscribe(TopicFilter),
    /// One subscription to the filter ended.
    Unsubscribe(TopicFilter),
}

#[derive(Debug, Default)]
struct Client {
    /// Connected with clean start: its subscriptions end with the connection.
    clean: bool,
    /// Its subscriptions.
    filters: BTreeSet<TopicFilter>,
}

/// Follows one broker's log.
#[derive(Debug)]
pub struct LogFollower {
    /// The agent's own client id, whose subscriptions are not interest.
    own_client: String,
    /// Known clients.
    clients: BTreeMap<String, Client>,
}

impl LogFollower {
    /// A follower ignoring `own_client`'s subscriptions.
    pub fn new(own_client: &str) -> Self {
        Self {
            own_client: own_client.to_owned(),
            clients: BTreeMap::new(),
        }
    }

    /// The agent's own client id.
    pub fn own_client(&self) -> &str {
        &self.own_client
    }

    /// Take one log message (topic and payload); returns interest changes.
    pub fn handle_line(&mut self, topic: &str, payload: &str) -> Vec<Change> {
        // Strip the "<timestamp>: " prefix.
        let Some((_, line)) = payload.split_once(": ") else {
            return Vec::new();
        };
        let line = line.trim_end();
        match topic {
            "$SYS/broker/log/M/subscribe" => {
                let mut parts = line.splitn(3, ' ');
                let (Some(client), Some(_qos), Some(filter)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Vec::new();
                };
                self.subscribe(client, filter)
            }
            "$SYS/broker/log/M/unsubscribe" => {
                let Some((client, filter)) = line.split_once(' ') else {
                    return Vec::new();
                };
                self.unsubscribe(client, filter)
            }
            "$SYS/broker/log/N" => self.notice(line),
            _ => Vec::new(),
        }
    }

    fn filter_of(text: &str) -> Option<TopicFilter> {
        if text.starts_with("$SYS") {
            return None;
        }
        Subscription::parse(text).ok().map(|s| s.filter().clone())
    }

    fn subscribe(&mut self, client: &str, filter: &str) -> Vec<Change> {
        if client == self.own_client {
            return Vec::new();
        }
        let Some(filter) = Self::filter_of(filter) else {
            return Vec::new();
        };
        let c = self.clients.entry(client.to_owned()).or_default();
        if c.filters.insert(filter.clone()) {
            vec![Change::Subscribe(filter)]
        } else {
            Vec::new()
        }
    }

    fn unsubscribe(&mut self, client: &str, filter: &str) -> Vec<Change> {
        let Some(filter) = Self::filter_of(filter) else {
            return Vec::new();
        };
        let removed = self
            .clients
            .get_mut(client)
            .is_some_and(|c| c.filters.remove(&filter));
        if removed {
            vec![Change::Unsubscribe(filter)]
        } else {
            Vec::new()
        }
    }

    /// Withdraw everything this follower contributed (the plugin took
    /// over as the source); it keeps following for session ends only.
    pub fn withdraw_all(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.clients)
            .into_values()
            .flat_map(|c| c.filters.into_iter().map(Change::Unsubscribe))
            .collect()
    }

    /// End every subscription of `client`.
    fn drop_client(&mut self, client: &str) -> Vec<Change> {
        self.clients
            .remove(client)
            .map(|c| c.filters.into_iter().map(Change::Unsubscribe).collect())
            .unwrap_or_default()
    }

    fn notice(&mut self, line: &str) -> Vec<Change> {
        if let Some(client) = crate::plugin_feed::expired_client(line) {
            // An offline persistent session reached its expiry.
            return self.drop_client(client);
        }
        if let Some(rest) = line.strip_prefix("New client connected from ") {
            // "... as <id> (p2, c1, k60)."
            let Some((_, tail)) = rest.split_once(" as ") else {
                return Vec::new();
            };
            let Some((client, flags)) = tail.split_once(" (") else {
                return Vec::new();
            };
            let clean = flags.split(", ").any(|f| f == "c1");
            // A clean start discards any earlier session of the same id.
            let mut changes = if clean {
                self.drop_client(client)
            } else {
                Vec::new()
            };
            self.clients.entry(client.to_owned()).or_default().clean = clean;
            if client == self.own_client {
                changes.clear();
            }
            return changes;
        }
        let client = if let Some(rest) = line.strip_prefix("Client ") {
            let ends = rest.contains(" disconnect")
                || rest.contains(" closed its connection")
                || rest.contains("exceeded timeout");
            if !ends {
                return Vec::new();
            }
            rest.split(' ').next().unwrap_or("").trim_end_matches(',')
        } else if let Some(rest) = line.strip_prefix("Socket error on client ") {
            rest.split(',').next().unwrap_or("")
        } else {
            return Vec::new();
        };
        if self.clients.get(client).is_some_and(|c| c.clean) {
            return self.drop_client(client);
        }
        Vec::new()
    }
}

/// The client id in a broker log line saying it started dropping
/// messages queued for that client (Mosquitto 2.x, `max_queued_messages`
/// or `max_queued_bytes` reached; logged once until the queue drains), if
/// it is one.
pub fn dropping_client(line: &str) -> Option<&str> {
    let rest = line
        .split_once("Outgoing messages are being dropped for client ")?
        .1;
    rest.trim_end().strip_suffix('.')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }

    #[test]
    fn follows_real_mosquitto_2_0_11_lines() {
        let mut l = LogFollower::new("mqlink-b");
        let n = "$SYS/broker/log/N";
        let sub = "$SYS/broker/log/M/subscribe";
        let unsub = "$SYS/broker/log/M/unsubscribe";
        assert!(
            l.handle_line(
                n,
                "1796016184: New client connected from 127.0.0.1:37516 as dev42 (p2, c1, k60)."
            )
            .is_empty()
        );
        assert_eq!(
            l.handle_line(sub, "1796016184: dev42 1 factory/+/temp"),
            vec![Change::Subscribe(f("factory/+/temp"))]
        );
        assert!(
            l.handle_line(sub, "1796016184: dev42 1 factory/+/temp")
                .is_empty(),
            "resubscribe"
        );
        assert_eq!(
            l.handle_line(sub, "1796016184: dev42 1 x/#"),
            vec![Change::Subscribe(f("x/#"))]
        );
        assert_eq!(
            l.handle_line(unsub, "1796016185: dev42 x/#"),
            vec![Change::Unsubscribe(f("x/#"))]
        );
        assert!(
            l.handle_line(sub, "1796016184: mqlink-b 2 y/#").is_empty(),
            "our own subscription"
        );
        assert!(
            l.handle_line(sub, "1796016184: watcher 0 $SYS/broker/log/#")
                .is_empty()
        );
        assert_eq!(
            l.handle_line(n, "1796016185: Client dev42 disconnected."),
            vec![Change::Unsubscribe(f("factory/+/temp"))]
        );
        // A persistent session keeps its interest past the disconnect,
        // until the broker expires it; withdrawing returns what is left.
        l.handle_line(
            n,
            "1: New client connected from 127.0.0.1:1 as dev7 (p5, c0, k60).",
        );
        l.handle_line(sub, "1: dev7 1 p/#");
        assert!(l.handle_line(n, "2: Client dev7 disconnected.").is_empty());
        assert_eq!(
            l.handle_line(n, "3: Expiring client dev7 due to timeout."),
            vec![Change::Unsubscribe(f("p/#"))]
        );
        l.handle_line(sub, "4: other 1 q/1");
        assert_eq!(l.withdraw_all(), vec![Change::Unsubscribe(f("q/1"))]);
        assert!(l.withdraw_all().is_empty());

        // A persistent session keeps its interest across disconnects.
        l.handle_line(
            n,
            "1796016185: New client connected from 127.0.0.1:37526 as dev43 (p2, c0, k60).",
        );
        assert_eq!(
            l.handle_line(sub, "1796016185: dev43 1 persist/#"),
            vec![Change::Subscribe(f("persist/#"))]
        );
        assert!(
            l.handle_line(n, "1796016186: Client dev43 disconnected.")
                .is_empty()
        );
        // ... until it comes back with clean start.
        assert_eq!(
            l.handle_line(
                n,
                "1796016187: New client connected from 127.0.0.1:1 as dev43 (p2, c1, k60)."
            ),
            vec![Change::Unsubscribe(f("persist/#"))]
        );

        // Shared subscriptions count as their filter; socket errors end clean sessions.
        l.handle_line(
            n,
            "1: New client connected from 127.0.0.1:2 as dev44 (p5, c1, k60).",
        );
        assert_eq!(
            l.handle_line(sub, "1: dev44 0 $share/g/f/+"),
            vec![Change::Subscribe(f("f/+"))]
        );
        assert_eq!(
            l.handle_line(n, "2: Socket error on client dev44, disconnecting."),
            vec![Change::Unsubscribe(f("f/+"))]
        );
        // Garbage is ignored.
        assert!(l.handle_line(sub, "no colon").is_empty());
        assert!(l.handle_line(sub, "1: dev45 1 a/#/b").is_empty());
    }

    #[test]
    fn names_the_client_the_broker_drops_for() {
        // As Mosquitto 2.0.11 published it on `$SYS/broker/log/N` when the
        // agent's queue overflowed (`mqlink bench --compare --qos 1`).
        let line = "1796263908: Outgoing messages are being dropped for client mqlink-bench-a.";
        assert_eq!(dropping_client(line), Some("mqlink-bench-a"));
        assert_eq!(
            dropping_client("1796263909: Client x closed its connection."),
            None
        );
        assert_eq!(
            dropping_client("1: Outgoing messages are being dropped for client x"),
            None,
            "a line cut short is not taken"
        );
        assert_eq!(
            LogFollower::new("mqlink-bench-a").own_client(),
            "mqlink-bench-a"
        );
    }
}
