//! The core task's side of the admin API: each query carries its reply
//! channel and is answered from the agent's state between two bursts of
//! inputs (the core owns the agent; nothing is shared or locked).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use mqlink_proto::{Agent, PeerId};
use mqlink_topology::{RegionName, TopicFilter, TopicName};
use tokio::sync::oneshot;

use super::pb;

/// A question for the core.
#[derive(Debug)]
pub enum Query {
    /// Connections and neighbours.
    Peers(oneshot::Sender<pb::PeersReply>),
    /// The link-state database.
    Topology(oneshot::Sender<pb::TopologyReply>),
    /// Shortest-path trees (of one origin, or all).
    Routes(Option<RegionName>, oneshot::Sender<pb::RoutesReply>),
    /// Interest tables (of one region, or all).
    Interest(Option<RegionName>, oneshot::Sender<pb::InterestReply>),
    /// Custody counts, for the spool view.
    Custody(oneshot::Sender<pb::SpoolReply>),
    /// Where a message would go (origin `None`: ours).
    Trace(
        Option<RegionName>,
        TopicName,
        oneshot::Sender<pb::TraceReply>,
    ),
}

/// What the core knows of one live connection.
#[derive(Debug, Clone)]
pub struct Conn {
    /// Region and connection number.
    pub id: PeerId,
    /// Remote address.
    pub remote: SocketAddr,
    /// QUIC's smoothed RTT.
    pub rtt: Duration,
    /// UDP bytes sent and received.
    pub bytes: (u64, u64),
    /// When it came up.
    pub since: SystemTime,
}

/// What the core hands [`answer`] besides the agent.
#[derive(Debug)]
pub struct CoreView<'a> {
    /// Live connections.
    pub conns: Vec<Conn>,
    /// Why the last connection to each region ended.
    pub last_errors: &'a BTreeMap<RegionName, String>,
    /// What each region's endpoints resolved to (endpoint -> addresses).
    pub resolved: &'a BTreeMap<RegionName, BTreeMap<String, String>>,
    /// Our export subscriptions.
    pub export: &'a BTreeSet<TopicFilter>,
    /// The core's clock.
    pub now: Instant,
}

fn names(v: impl IntoIterator<Item = impl ToString>) -> Vec<String> {
    v.into_iter().map(|x| x.to_string()).collect()
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Answer `query` (a dropped reply channel only means the client left).
pub fn answer(query: Query, agent: &mut Agent, view: &CoreView<'_>) {
    let region = agent.region().to_string();
    let node = agent.node().to_string();
    match query {
        Query::Peers(tx) => {
            let _ = tx.send(pb::PeersReply {
                peers: peers(agent, view),
                region,
                node,
            });
        }
        Query::Topology(tx) => {
            let _ = tx.send(topology(agent, view.now, region, node));
        }
        Query::Routes(origin, tx) => {
            let _ = tx.send(routes(agent, origin.as_ref(), region, node));
        }
        Query::Interest(only, tx) => {
            let _ = tx.send(interest(agent, only.as_ref(), view.export, region, node));
        }
        Query::Custody(tx) => {
            let s = agent.stats();
            let _ = tx.send(pb::SpoolReply {
                region,
                node,
                custody_messages: s.held,
                custody_parked: s.parked,
                custody_bytes: s.held_bytes,
                ..Default::default()
            });
        }
        Query::Trace(origin, topic, tx) => {
            let origin = origin.unwrap_or_else(|| agent.region().clone());
            let t = agent.trace(&origin, &topic);
            let _ = tx.send(pb::TraceReply {
                region,
                node,
                origin: t.origin.to_string(),
                topic: t.topic.to_string(),
                regions: t
                    .regions
                    .into_iter()
                    .map(|h| pb::TraceHop {
                        region: h.region.to_string(),
                        path: names(&h.path),
                        cost: h.cost.unwrap_or(0),
                        matches: h
                            .matches
                            .iter()
                            .map(|m| pb::TraceMatch {
                                node: m.node.to_string(),
                                filter: m.filter.to_string(),
                            })
                            .collect(),
                        reached: h.miss.is_none(),
                        reason: h.miss.as_ref().map_or("", |m| m.label()).to_owned(),
                        detail: h.miss.as_ref().map(|m| m.describe()).unwrap_or_default(),
                    })
                    .collect(),
            });
        }
    }
}

fn peers(agent: &mut Agent, view: &CoreView<'_>) -> Vec<pb::Peer> {
    let stats = agent.stats();
    let mut out = Vec::new();
    for link in agent.links() {
        let r = &link.region;
        let base = pb::Peer {
            region: r.to_string(),
            messages_out: stats.sent.get(r).copied().unwrap_or(0),
            messages_in: stats.received.get(r).copied().unwrap_or(0),
            last_error: view.last_errors.get(r).cloned().unwrap_or_default(),
            cost: u64::from(agent.link_cost(r).get()),
            resolved: view
                .resolved
                .get(r)
                .map(|m| m.iter().map(|(e, a)| format!("{e} -> {a}")).collect())
                .unwrap_or_default(),
            ..Default::default()
        };
        let conns: Vec<&Conn> = view.conns.iter().filter(|c| c.id.region == *r).collect();
        if conns.is_empty() {
            out.push(base.clone());
        }
        for c in conns {
            let node = agent.peer_node(&c.id);
            out.push(pb::Peer {
                node: node.map(ToString::to_string).unwrap_or_default(),
                up: node.is_some(),
                endpoint: c.remote.to_string(),
                connected_since_unix_ms: c
                    .since
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, ms),
                rtt_us: u64::try_from(c.rtt.as_micros()).unwrap_or(u64::MAX),
                bytes_out: c.bytes.0,
                bytes_in: c.bytes.1,
                ..base.clone()
            });
        }
    }
    out
}

fn topology(agent: &mut Agent, now: Instant, region: String, node: String) -> pb::TopologyReply {
    let hop_limit = agent.router().hop_limit();
    let mut regions: Vec<pb::RegionState> = agent
        .router()
        .lsdb()
        .lsas_aged(now)
        .map(|(lsa, age)| pb::RegionState {
            region: lsa.origin.to_string(),
            node: lsa.node.to_string(),
            seq: lsa.seq,
            age_ms: ms(age),
            links: lsa
                .links
                .iter()
                .map(|l| pb::Link {
                    to: l.peer.to_string(),
                    cost: u64::from(l.cost.get()),
                    up: l.up,
                    in_graph: false,
                })
                .collect(),
        })
        .collect();
    let mut components = Vec::new();
    if let Some(g) = agent.router().graph() {
        for r in &mut regions {
            let from = r.region.clone();
            for l in &mut r.links {
                l.in_graph = match (RegionName::new(&from), RegionName::new(&l.to)) {
                    (Ok(a), Ok(b)) => g.cost(&a, &b).is_some(),
                    _ => false,
                };
            }
        }
        components = g
            .components()
            .into_iter()
            .map(|c| pb::Component { regions: names(c) })
            .collect();
    }
    pb::TopologyReply {
        region,
        node,
        regions,
        components,
        hop_limit,
    }
}

fn routes(
    agent: &mut Agent,
    only: Option<&RegionName>,
    region: String,
    node: String,
) -> pb::RoutesReply {
    let all: Vec<RegionName> = agent
        .router()
        .graph()
        .map(|g| g.regions().to_vec())
        .unwrap_or_default();
    let mut origins = Vec::new();
    for origin in all.iter().filter(|o| only.is_none_or(|x| x == *o)) {
        let Some((g, tree)) = agent.router().tree(origin) else {
            continue;
        };
        let regions = g.regions();
        let mut entries = Vec::new();
        let mut unreachable = Vec::new();
        for (pos, r) in regions.iter().enumerate() {
            let Some(cost) = tree.dist(pos) else {
                unreachable.push(r.to_string());
                continue;
            };
            let mut path = vec![r.to_string()];
            let mut at = pos;
            while let Some(p) = tree.parent(at) {
                path.push(regions[p].to_string());
                at = p;
            }
            path.reverse();
            entries.push(pb::RouteEntry {
                region: r.to_string(),
                via: tree
                    .parent(pos)
                    .map(|p| regions[p].to_string())
                    .unwrap_or_default(),
                cost,
                path,
            });
        }
        origins.push(pb::OriginRoutes {
            origin: origin.to_string(),
            entries,
            unreachable,
        });
    }
    pb::RoutesReply {
        region,
        node,
        origins,
    }
}

fn interest(
    agent: &mut Agent,
    only: Option<&RegionName>,
    export: &BTreeSet<TopicFilter>,
    region: String,
    node: String,
) -> pb::InterestReply {
    let (local, advertised, widened, budget) = agent.interest_summary();
    let mut tables: Vec<pb::InterestTable> = agent
        .router()
        .interests()
        .tables()
        .filter(|t| only.is_none_or(|r| t.version().region == *r))
        .map(|t| {
            let v = t.version();
            let d = t.digest();
            pb::InterestTable {
                region: v.region.to_string(),
                node: v.node.to_string(),
                epoch: v.epoch,
                seq: v.seq,
                digest: format!("{:x}/{}", d.sum, d.count),
                filters: names(t.filters()),
            }
        })
        .collect();
    tables.sort_by(|a, b| (&a.region, &a.node).cmp(&(&b.region, &b.node)));
    pb::InterestReply {
        region,
        node,
        tables,
        own: Some(pb::OwnInterest {
            local: local as u64,
            advertised: advertised as u64,
            widened: widened as u64,
            budget: budget.map_or(0, |b| b as u64),
            export: names(export),
        }),
    }
}
