//! Read-only views of the agent's state for the admin API (`mqlink ctl`):
//! nothing here changes the agent.

use mqlink_topology::{Miss, NodeName, RegionName, TopicName, Trace};

use super::{Agent, LinkPolicy, PeerId};

impl Agent {
    /// Our node.
    pub fn node(&self) -> &NodeName {
        &self.cfg.node
    }

    /// Our configured links and their policies.
    pub fn links(&self) -> &[LinkPolicy] {
        &self.cfg.links
    }

    /// The node connection `id` said hello as, once it did.
    pub fn peer_node(&self, id: &PeerId) -> Option<&NodeName> {
        self.peers.get(id)?.hello.as_ref().map(|h| &h.node)
    }

    /// Where a message from `origin` on `topic` would go, as this agent
    /// sees it ([`mqlink_topology::Router::trace`]), with the export and
    /// import policies of our own links applied (other regions' policies
    /// are theirs: ask their agent).
    pub fn trace(&mut self, origin: &RegionName, topic: &TopicName) -> Trace {
        let me = self.cfg.region.clone();
        let mut trace = self.router.trace(origin, topic);
        let links: Vec<(RegionName, bool, bool)> = self
            .cfg
            .links
            .iter()
            .map(|l| {
                let allows =
                    |fs: &[mqlink_topology::TopicFilter]| fs.iter().any(|f| f.matches(topic));
                (l.region.clone(), allows(&l.export), allows(&l.import))
            })
            .collect();
        for (peer, exports, imports) in links {
            if !exports {
                let miss = Miss::ExportPolicy {
                    from: me.clone(),
                    to: peer.clone(),
                };
                trace.refuse(&me, &peer, &miss);
            }
            if !imports {
                let miss = Miss::ImportPolicy {
                    from: peer.clone(),
                    to: me.clone(),
                };
                trace.refuse(&peer, &me, &miss);
            }
        }
        trace
    }
}
