//! Dynamic interest for the embedded demo broker: the `mqtt5` broker's
//! event hooks (connect, subscribe, unsubscribe, disconnect, publish) keep
//! the broker's subscription table, and the broker speaks the same
//! protocol as the `mqlink_interest` Mosquitto plugin on
//! [`PLUGIN_TOPIC`]: a snapshot when an agent asks on [`SYNC_TOPIC`], then
//! sequenced deltas. The agent's [`crate::plugin_feed::PluginFeed`] reads
//! both brokers alike (`interest.dynamic: plugin`).
//!
//! [`InterestTable`] is the sans-IO part (events and `now` in, messages
//! out); [`EmbeddedInterest`] is the hook the broker calls and
//! [`EmbeddedInterest::serve`] the task that publishes what the table
//! says. The rules follow the plugin's:
//! - a client's filters end with its session: at disconnect when its
//!   session expiry is 0, when its expiry runs out offline, or when it
//!   comes back with a clean start; a takeover keeps them (connections
//!   are counted per client id, so the old connection's end does not
//!   end the new one's session);
//! - `$share/<g>/<f>` counts as `<f>`; `$`-topics and the agents' own
//!   shared subscriptions (`$share/mqlink-...`) never count;
//! - an agent is known by its subscription to [`PLUGIN_TOPIC`] (the first
//!   filter it asks for) or its sync request: its subscriptions are not
//!   interest;
//! - at most [`MAX_FILTERS_PER_CLIENT`] filters per client (more are
//!   counted and logged, not advertised).
//!
//! The embedded broker keeps sessions in memory, so its table needs no
//! state file: a restart of the demo loses both alike.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqtt5::broker::events::{
    BrokerEventHandler, ClientConnectEvent, ClientDisconnectEvent, ClientPublishEvent,
    ClientSubscribeEvent, ClientUnsubscribeEvent, PublishAction, SubAckReasonCode,
};
use mqtt5::broker::router::MessageRouter;
use tokio::sync::Notify;
use tracing::warn;

use crate::plugin_feed::{PLUGIN_TOPIC, SYNC_TOPIC, encode_delta, encode_snapshot};

/// Most filters kept per client (the plugin's default too).
pub const MAX_FILTERS_PER_CLIENT: usize = 10_000;
/// About how many bytes a snapshot part holds.
const SNAPSHOT_PART: usize = 32 * 1024;
/// The agents' shared export subscriptions (`$share/mqlink-<region>/...`).
const AGENT_SHARE: &str = "$share/mqlink-";

/// One client's session as the table sees it.
#[derive(Debug, Default)]
struct Client {
    /// Its filters (as counted: `$share/` stripped).
    filters: BTreeSet<String>,
    /// Live connections with its id (more than one during a takeover).
    connections: u32,
    /// Its session expiry interval in seconds, as granted at connect.
    expiry: u32,
    /// When its offline session ends, if it is offline and expiring.
    expires_at: Option<Instant>,
}

/// The broker's subscription table, sans IO.
#[derive(Debug)]
pub struct InterestTable {
    /// This broker start (tells the agent the table began anew).
    epoch: u64,
    /// The last delta's sequence number.
    seq: u64,
    clients: HashMap<String, Client>,
    /// Client ids of agents: their subscriptions are not interest.
    agents: HashSet<String>,
    /// Filter -> how many clients hold it.
    holders: HashMap<String, u32>,
    /// Filters whose holding changed since the last delta.
    touched: BTreeSet<String>,
    /// Offline sessions by when they end.
    expiring: BTreeSet<(Instant, String)>,
    /// A snapshot was asked for.
    sync: bool,
    /// Filters refused past the per-client bound.
    refused: u64,
}

/// The filter a subscription counts as, if it counts.
fn counted(sub: &str) -> Option<&str> {
    if let Some(rest) = sub.strip_prefix("$share/") {
        if sub.starts_with(AGENT_SHARE) {
            return None;
        }
        let (_, f) = rest.split_once('/')?;
        return (!f.is_empty() && !f.starts_with('$')).then_some(f);
    }
    (!sub.is_empty() && !sub.starts_with('$')).then_some(sub)
}

impl InterestTable {
    /// An empty table for the broker start `epoch`.
    pub fn new(epoch: u64) -> Self {
        Self {
            epoch,
            seq: 0,
            clients: HashMap::new(),
            agents: HashSet::new(),
            holders: HashMap::new(),
            touched: BTreeSet::new(),
            expiring: BTreeSet::new(),
            sync: false,
            refused: 0,
        }
    }

    /// Filters refused past [`MAX_FILTERS_PER_CLIENT`] so far.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// A client connected: a clean start ends its old session.
    pub fn handle_connect(&mut self, id: &str, clean_start: bool, expiry: u32) {
        if clean_start {
            self.forget(id);
        }
        let c = self.clients.entry(id.to_owned()).or_default();
        c.connections += 1;
        c.expiry = expiry;
        if let Some(at) = c.expires_at.take() {
            self.expiring.remove(&(at, id.to_owned()));
        }
    }

    /// A client subscribed to `filters` (the ones the broker granted).
    pub fn handle_subscribe<'a>(&mut self, id: &str, filters: impl IntoIterator<Item = &'a str>) {
        let subs: Vec<&str> = filters.into_iter().collect();
        if subs.contains(&PLUGIN_TOPIC) {
            self.mark_agent(id);
        }
        if self.agents.contains(id) {
            return;
        }
        let Self {
            clients,
            holders,
            touched,
            refused,
            ..
        } = self;
        let c = clients.entry(id.to_owned()).or_default();
        for f in subs.into_iter().filter_map(counted) {
            if c.filters.contains(f) {
                continue;
            }
            if c.filters.len() >= MAX_FILTERS_PER_CLIENT {
                if refused.is_multiple_of(1000) {
                    warn!(
                        client = id,
                        refused = *refused + 1,
                        "embedded broker: a client holds {MAX_FILTERS_PER_CLIENT} filters, the \
                         most kept per client; more are not advertised"
                    );
                }
                *refused += 1;
                continue;
            }
            c.filters.insert(f.to_owned());
            *holders.entry(f.to_owned()).or_default() += 1;
            touched.insert(f.to_owned());
        }
    }

    /// A client unsubscribed from `filters`.
    pub fn handle_unsubscribe<'a>(&mut self, id: &str, filters: impl IntoIterator<Item = &'a str>) {
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        for f in filters.into_iter().filter_map(counted) {
            if c.filters.remove(f) {
                release(&mut self.holders, &mut self.touched, f);
            }
        }
    }

    /// A connection with this id closed (for any reason).
    pub fn handle_disconnect(&mut self, now: Instant, id: &str) {
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        c.connections = c.connections.saturating_sub(1);
        if c.connections > 0 {
            return; // taken over: the session lives on
        }
        match c.expiry {
            0 => self.forget(id),
            u32::MAX => {} // never expires
            secs => {
                let at = now + Duration::from_secs(u64::from(secs));
                c.expires_at = Some(at);
                self.expiring.insert((at, id.to_owned()));
            }
        }
    }

    /// An agent asked for a snapshot.
    pub fn handle_sync(&mut self, id: &str) {
        self.mark_agent(id);
        self.sync = true;
    }

    /// End the offline sessions whose expiry ran out by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, id)) = self.expiring.first().cloned() {
            if at > now {
                break;
            }
            self.expiring.remove(&(at, id.clone()));
            self.forget(&id);
        }
    }

    /// When [`Self::handle_timeout`] has work next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.expiring.first().map(|(at, _)| *at)
    }

    /// Messages for [`PLUGIN_TOPIC`], in order: the delta of what changed
    /// since the last one, then a snapshot if one was asked for.
    pub fn poll_messages(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if !self.touched.is_empty() {
            let touched = std::mem::take(&mut self.touched);
            let (add, remove): (Vec<&str>, Vec<&str>) = touched
                .iter()
                .map(String::as_str)
                .partition(|f| self.holders.contains_key(*f));
            self.seq += 1;
            out.push(encode_delta(self.epoch, self.seq, &add, &remove));
        }
        if std::mem::take(&mut self.sync) {
            let filters = self.holders.keys().map(String::as_str);
            out.extend(encode_snapshot(
                self.epoch,
                self.seq,
                filters,
                SNAPSHOT_PART,
            ));
        }
        out
    }

    fn mark_agent(&mut self, id: &str) {
        if self.agents.insert(id.to_owned()) {
            self.forget(id);
        }
    }

    /// End a client's session: its filters are released.
    fn forget(&mut self, id: &str) {
        let Some(c) = self.clients.remove(id) else {
            return;
        };
        if let Some(at) = c.expires_at {
            self.expiring.remove(&(at, id.to_owned()));
        }
        for f in &c.filters {
            release(&mut self.holders, &mut self.touched, f);
        }
    }
}

/// One holder less for `f`.
fn release(holders: &mut HashMap<String, u32>, touched: &mut BTreeSet<String>, f: &str) {
    if let Some(n) = holders.get_mut(f) {
        *n -= 1;
        if *n == 0 {
            holders.remove(f);
        }
        touched.insert(f.to_owned());
    }
}

/// The broker's event hook around an [`InterestTable`].
#[derive(Debug)]
pub struct EmbeddedInterest {
    table: Mutex<InterestTable>,
    /// Wakes [`Self::serve`] after a change.
    wake: Notify,
}

impl EmbeddedInterest {
    /// A hook for a broker that starts now.
    pub fn new() -> Arc<Self> {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Arc::new(Self {
            table: Mutex::new(InterestTable::new(epoch)),
            wake: Notify::new(),
        })
    }

    /// Change the table and wake the publisher.
    fn with(&self, f: impl FnOnce(&mut InterestTable)) {
        if let Ok(mut t) = self.table.lock() {
            f(&mut t);
        }
        self.wake.notify_one();
    }

    /// Publish the table's messages on `router` until dropped (changes
    /// coalesce while a message is routed; expiries wake it on time).
    pub async fn serve(self: Arc<Self>, router: Arc<MessageRouter>) {
        use mqtt5::QoS;
        use mqtt5::packet::publish::PublishPacket;
        loop {
            let (messages, next) = match self.table.lock() {
                Ok(mut t) => {
                    t.handle_timeout(Instant::now());
                    (t.poll_messages(), t.poll_timeout())
                }
                Err(_) => return,
            };
            for m in messages {
                let p = PublishPacket::new(PLUGIN_TOPIC, m, QoS::AtMostOnce);
                router.route_message(&p, None).await;
            }
            let next = next.map_or_else(
                || tokio::time::Instant::now() + Duration::from_secs(3600),
                tokio::time::Instant::from_std,
            );
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep_until(next) => {}
            }
        }
    }
}

type Hook<'a, T = ()> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl BrokerEventHandler for EmbeddedInterest {
    fn on_client_connect<'a>(&'a self, e: ClientConnectEvent) -> Hook<'a> {
        self.with(|t| t.handle_connect(&e.client_id, e.clean_start, e.session_expiry_interval));
        Box::pin(async {})
    }

    fn on_client_subscribe<'a>(&'a self, e: ClientSubscribeEvent) -> Hook<'a> {
        let granted = e.subscriptions.iter().filter(|s| {
            matches!(
                s.result,
                SubAckReasonCode::GrantedQoS0
                    | SubAckReasonCode::GrantedQoS1
                    | SubAckReasonCode::GrantedQoS2
            )
        });
        self.with(|t| t.handle_subscribe(&e.client_id, granted.map(|s| &*s.topic_filter)));
        Box::pin(async {})
    }

    fn on_client_unsubscribe<'a>(&'a self, e: ClientUnsubscribeEvent) -> Hook<'a> {
        self.with(|t| t.handle_unsubscribe(&e.client_id, e.topic_filters.iter().map(|f| &**f)));
        Box::pin(async {})
    }

    fn on_client_disconnect<'a>(&'a self, e: ClientDisconnectEvent) -> Hook<'a> {
        self.with(|t| t.handle_disconnect(Instant::now(), &e.client_id));
        Box::pin(async {})
    }

    fn on_client_publish<'a>(&'a self, e: ClientPublishEvent) -> Hook<'a, PublishAction> {
        let action = if &*e.topic == SYNC_TOPIC {
            self.with(|t| t.handle_sync(&e.client_id));
            PublishAction::Handled
        } else if e.topic.starts_with("$mqlink/") {
            PublishAction::Handled // the plugin's other requests mean nothing here
        } else {
            PublishAction::Continue
        };
        Box::pin(async { action })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use mqlink_topology::TopicFilter;

    use super::*;
    use crate::mosquitto::Change;
    use crate::plugin_feed::PluginFeed;

    /// A table and an agent's feed reading everything it publishes.
    struct Rig {
        table: InterestTable,
        feed: PluginFeed,
        wanted: BTreeSet<String>,
    }

    impl Rig {
        fn new() -> Self {
            let mut r = Self {
                table: InterestTable::new(1),
                feed: PluginFeed::default(),
                wanted: BTreeSet::new(),
            };
            r.table.handle_connect("agent", false, 3600);
            r.table
                .handle_subscribe("agent", [PLUGIN_TOPIC, "x/#", "$share/mqlink-r/y"]);
            r.table.handle_sync("agent");
            r.pump();
            r
        }
        fn pump(&mut self) -> &BTreeSet<String> {
            for m in self.table.poll_messages() {
                let feed = self.feed.handle(&m);
                assert!(!feed.resync);
                for c in feed.changes {
                    match c {
                        Change::Subscribe(f) => assert!(self.wanted.insert(f.to_string())),
                        Change::Unsubscribe(f) => assert!(self.wanted.remove(&f.to_string())),
                    }
                }
            }
            &self.wanted
        }
    }

    fn set(fs: &[&str]) -> BTreeSet<String> {
        fs.iter().map(|f| (*f).to_owned()).collect()
    }

    #[test]
    fn sessions_hold_interest_until_they_end() {
        let t0 = Instant::now();
        let mut r = Rig::new();
        assert!(r.feed.active());
        assert!(
            r.pump().is_empty(),
            "the agent's own filters are not interest"
        );
        r.table.handle_connect("dev one", true, 0);
        r.table
            .handle_subscribe("dev one", ["a/+", "$share/g/b", "$SYS/#"]);
        r.table.handle_connect("p", false, 60);
        r.table.handle_subscribe("p", ["a/+", "c"]);
        assert_eq!(r.pump(), &set(&["a/+", "b", "c"]));
        // A clean session ends at disconnect; a persistent one expires.
        r.table.handle_disconnect(t0, "dev one");
        r.table.handle_disconnect(t0, "p");
        assert_eq!(r.pump(), &set(&["a/+", "c"]));
        assert_eq!(r.table.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        r.table.handle_timeout(t0 + Duration::from_secs(59));
        assert_eq!(r.pump(), &set(&["a/+", "c"]));
        // Back before expiry: the session resumes.
        r.table.handle_connect("p", false, 60);
        assert_eq!(r.table.poll_timeout(), None);
        r.table.handle_unsubscribe("p", ["c"]);
        assert_eq!(r.pump(), &set(&["a/+"]));
        r.table.handle_disconnect(t0, "p");
        r.table.handle_timeout(t0 + Duration::from_secs(60));
        assert!(r.pump().is_empty());
    }

    #[test]
    fn a_takeover_keeps_the_session_and_a_clean_start_ends_it() {
        let t0 = Instant::now();
        let mut r = Rig::new();
        r.table.handle_connect("c", false, 0);
        r.table.handle_subscribe("c", ["a"]);
        // The new connection arrives before the old one's end is told.
        r.table.handle_connect("c", false, 0);
        r.table.handle_disconnect(t0, "c");
        assert_eq!(r.pump(), &set(&["a"]));
        r.table.handle_disconnect(t0, "c");
        assert!(r.pump().is_empty());
        r.table.handle_connect("d", false, 30);
        r.table.handle_subscribe("d", ["b"]);
        r.table.handle_disconnect(t0, "d");
        r.table.handle_connect("d", true, 30);
        assert!(r.pump().is_empty());
        assert_eq!(r.table.poll_timeout(), None);
    }

    #[test]
    fn an_agent_resyncs_without_a_flap_and_clients_are_bounded() {
        let mut r = Rig::new();
        r.table.handle_connect("many", false, u32::MAX);
        let filters: Vec<String> = (0..MAX_FILTERS_PER_CLIENT + 5)
            .map(|i| format!("dev/{i}/cmd"))
            .collect();
        r.table
            .handle_subscribe("many", filters.iter().map(String::as_str));
        assert_eq!(r.pump().len(), MAX_FILTERS_PER_CLIENT);
        assert_eq!(r.table.refused(), 5);
        // A second agent (a fresh feed) learns it all by a multi-part
        // snapshot; the first one sees nothing change.
        let mut fresh = PluginFeed::default();
        r.table.handle_sync("agent-2");
        let messages = r.table.poll_messages();
        assert!(messages.len() > 1);
        let learned: usize = messages.iter().map(|m| fresh.handle(m).changes.len()).sum();
        assert_eq!(learned, MAX_FILTERS_PER_CLIENT);
        for m in &messages {
            assert!(r.feed.handle(m).changes.is_empty());
        }
        assert!(TopicFilter::new("dev/1/cmd").is_ok());
    }

    #[test]
    fn odd_subscriptions_are_skipped() {
        assert_eq!(counted("$share/g/a/b"), Some("a/b"));
        assert_eq!(counted("$share/g/"), None);
        assert_eq!(counted("$share/g"), None);
        assert_eq!(counted("$share/mqlink-eu/a"), None);
        assert_eq!(counted("$mqlink/interest"), None);
        assert_eq!(counted(""), None);
        assert_eq!(counted("a b/+"), Some("a b/+"));
    }
}
