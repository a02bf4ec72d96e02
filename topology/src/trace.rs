//! Route trace: where a message on topic T from region O would go, as this
//! region's routing brain sees it (`mqlink ctl trace`). Every region other
//! than the origin is either reached (with its path through the origin's
//! shortest-path tree and the filters of its agents that match) or not,
//! with the reason: nobody there wants the topic, no path (a partition),
//! or the path is longer than the hop limit. Policies on links are the
//! protocol core's to add ([`Trace::refuse`]): it knows its own links'.

use serde::Serialize;

use crate::region::{NodeName, RegionName};
use crate::route::Router;
use crate::topic::{TopicFilter, TopicName};

/// Why a region does not get the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Miss {
    /// No agent of the region has a filter that matches the topic.
    NoInterest,
    /// The region wants it but no path leads there from the origin (or the
    /// origin is not in the link-state database).
    Partition,
    /// The path is longer than the hop limit.
    HopLimit {
        /// Links on the path.
        hops: u32,
        /// The limit.
        limit: u32,
    },
    /// A link's export policy refuses the topic.
    ExportPolicy {
        /// The link's sending end.
        from: RegionName,
        /// Its receiving end.
        to: RegionName,
    },
    /// A link's import policy refuses the topic.
    ImportPolicy {
        /// The link's sending end.
        from: RegionName,
        /// Its receiving end (whose policy it is).
        to: RegionName,
    },
}

impl Miss {
    /// The reason's name (`no_interest`, `partition`, ...).
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoInterest => "no_interest",
            Self::Partition => "partition",
            Self::HopLimit { .. } => "hop_limit",
            Self::ExportPolicy { .. } => "export_policy",
            Self::ImportPolicy { .. } => "import_policy",
        }
    }

    /// One line for a person.
    pub fn describe(&self) -> String {
        match self {
            Self::NoInterest => "no subscriber there wants the topic".to_owned(),
            Self::Partition => "no path from the origin (partition)".to_owned(),
            Self::HopLimit { hops, limit } => {
                format!("the path takes {hops} links, more than the hop limit {limit}")
            }
            Self::ExportPolicy { from, to } => {
                format!("the export policy of {from}'s link to {to} refuses the topic")
            }
            Self::ImportPolicy { from, to } => {
                format!("the import policy of {to}'s link from {from} refuses the topic")
            }
        }
    }
}

/// One region that wants the topic, with what of it matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Match {
    /// The agent (replica) whose table holds the filter.
    pub node: NodeName,
    /// The filter that matches.
    pub filter: TopicFilter,
}

/// One region's fate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hop {
    /// The region.
    pub region: RegionName,
    /// The path from the origin to it, both ends included (empty when
    /// there is none).
    pub path: Vec<RegionName>,
    /// Sum of the link costs on the path.
    pub cost: Option<u64>,
    /// The filters of its agents that match the topic.
    pub matches: Vec<Match>,
    /// Why it does not get the message; `None`: it does.
    pub miss: Option<Miss>,
}

/// Where a message would go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trace {
    /// The region that answered (whose view this is).
    pub seen_from: RegionName,
    /// The origin region.
    pub origin: RegionName,
    /// The topic.
    pub topic: TopicName,
    /// Every region but the origin, by name.
    pub regions: Vec<Hop>,
}

impl Trace {
    /// The regions that get the message.
    pub fn reached(&self) -> impl Iterator<Item = &Hop> {
        self.regions.iter().filter(|h| h.miss.is_none())
    }

    /// The regions that do not.
    pub fn missed(&self) -> impl Iterator<Item = &Hop> {
        self.regions.iter().filter(|h| h.miss.is_some())
    }

    /// A link policy refuses the topic on the link `from -> to`: every
    /// region reached through that link is no longer reached.
    pub fn refuse(&mut self, from: &RegionName, to: &RegionName, miss: &Miss) {
        for hop in &mut self.regions {
            if hop.miss.is_some() {
                continue;
            }
            if hop.path.windows(2).any(|w| w[0] == *from && w[1] == *to) {
                hop.miss = Some(miss.clone());
            }
        }
    }
}

impl Router {
    /// Where a message from `origin` on `topic` would go (see the module
    /// docs). Regions known from the link-state database or from an
    /// interest table are listed.
    pub fn trace(&mut self, origin: &RegionName, topic: &TopicName) -> Trace {
        let limit = self.hop_limit();
        let mut wanted: Vec<(RegionName, Match)> = Vec::new();
        for t in self.interests().tables() {
            let v = t.version();
            for f in t.filters().filter(|f| f.matches(topic)) {
                wanted.push((
                    v.region.clone(),
                    Match {
                        node: v.node.clone(),
                        filter: f.clone(),
                    },
                ));
            }
        }
        wanted.sort_by(|a, b| (&a.0, &a.1.node, &a.1.filter).cmp(&(&b.0, &b.1.node, &b.1.filter)));
        let mut names: Vec<RegionName> = wanted.iter().map(|(r, _)| r.clone()).collect();
        if let Some(g) = self.graph() {
            names.extend(g.regions().iter().cloned());
        }
        names.sort();
        names.dedup();
        names.retain(|r| r != origin);
        let paths: Vec<(Vec<RegionName>, Option<u64>)> = match self.tree(origin) {
            Some((g, tree)) => names
                .iter()
                .map(|r| {
                    let Some(pos) = g.position(r).filter(|p| tree.reaches(*p)) else {
                        return (Vec::new(), None);
                    };
                    let mut path = vec![r.clone()];
                    let mut at = pos;
                    while let Some(p) = tree.parent(at) {
                        path.push(g.regions()[p].clone());
                        at = p;
                    }
                    path.reverse();
                    (path, tree.dist(pos))
                })
                .collect(),
            None => names.iter().map(|_| (Vec::new(), None)).collect(),
        };
        let regions = names
            .into_iter()
            .zip(paths)
            .map(|(region, (path, cost))| {
                let matches: Vec<Match> = wanted
                    .iter()
                    .filter(|(r, _)| *r == region)
                    .map(|(_, m)| m.clone())
                    .collect();
                let hops = u32::try_from(path.len().saturating_sub(1)).unwrap_or(u32::MAX);
                let miss = if matches.is_empty() {
                    Some(Miss::NoInterest)
                } else if path.is_empty() {
                    Some(Miss::Partition)
                } else if hops > limit {
                    Some(Miss::HopLimit { hops, limit })
                } else {
                    None
                };
                Hop {
                    region,
                    path,
                    cost,
                    matches,
                    miss,
                }
            })
            .collect();
        Trace {
            seen_from: self.me().clone(),
            origin: origin.clone(),
            topic: topic.clone(),
            regions,
        }
    }
}
