//! The gRPC service: each call becomes a [`Query`] for the core task (or a
//! read of the spool thread's last report) and waits for the answer.

use std::time::Duration;

use mqlink_topology::{RegionName, TopicName};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::{Request, Response, Status};

use super::answer::Query;
use super::pb;
use crate::core::Input;
use crate::spool::SpoolView;

/// A reload asked through the admin API: the answer is the plan's
/// summary, or why the reload was refused.
pub type ReloadRequest = oneshot::Sender<Result<String, String>>;

/// How long a call waits for the core (busy flat out, or stopping).
const CORE_WAIT: Duration = Duration::from_secs(5);

/// The admin service of one agent.
#[derive(Debug, Clone)]
pub struct AdminService {
    core: mpsc::Sender<Input>,
    spool: watch::Receiver<SpoolView>,
    /// The configured links.
    neighbours: crate::link::Neighbours,
    /// Reload requests, answered by whoever runs the agent.
    reload: mpsc::Sender<ReloadRequest>,
    max_bytes: u64,
}

impl AdminService {
    /// A service asking `core`, reading `spool`'s reports.
    pub fn new(
        core: mpsc::Sender<Input>,
        spool: watch::Receiver<SpoolView>,
        neighbours: crate::link::Neighbours,
        reload: mpsc::Sender<ReloadRequest>,
        max_bytes: u64,
    ) -> Self {
        Self {
            core,
            spool,
            neighbours,
            reload,
            max_bytes,
        }
    }

    async fn ask<T>(&self, query: impl FnOnce(oneshot::Sender<T>) -> Query) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        let gone = || Status::unavailable("the agent is stopping");
        let asked = async {
            self.core
                .send(Input::Admin(query(tx)))
                .await
                .map_err(|_| gone())?;
            rx.await.map_err(|_| gone())
        };
        tokio::time::timeout(CORE_WAIT, asked)
            .await
            .map_err(|_| Status::deadline_exceeded("the agent's core did not answer within 5 s"))?
    }
}

/// An optional region name from a request field (empty: none).
fn region_arg(s: &str, what: &str) -> Result<Option<RegionName>, Status> {
    if s.is_empty() {
        return Ok(None);
    }
    RegionName::new(s)
        .map(Some)
        .map_err(|e| Status::invalid_argument(format!("{what}: {e}")))
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn peers(
        &self,
        _: Request<pb::PeersRequest>,
    ) -> Result<Response<pb::PeersReply>, Status> {
        let mut r = self.ask(Query::Peers).await?;
        for p in &mut r.peers {
            if let Ok(region) = RegionName::new(&p.region) {
                p.configured = self.neighbours.endpoints(&region);
            }
        }
        Ok(Response::new(r))
    }

    async fn topology(
        &self,
        _: Request<pb::TopologyRequest>,
    ) -> Result<Response<pb::TopologyReply>, Status> {
        self.ask(Query::Topology).await.map(Response::new)
    }

    async fn routes(
        &self,
        req: Request<pb::RoutesRequest>,
    ) -> Result<Response<pb::RoutesReply>, Status> {
        let origin = region_arg(&req.get_ref().origin, "origin")?;
        self.ask(|tx| Query::Routes(origin, tx))
            .await
            .map(Response::new)
    }

    async fn interest(
        &self,
        req: Request<pb::InterestRequest>,
    ) -> Result<Response<pb::InterestReply>, Status> {
        let region = region_arg(&req.get_ref().region, "region")?;
        self.ask(|tx| Query::Interest(region, tx))
            .await
            .map(Response::new)
    }

    async fn spool(
        &self,
        _: Request<pb::SpoolRequest>,
    ) -> Result<Response<pb::SpoolReply>, Status> {
        let mut r = self.ask(Query::Custody).await?;
        let v = self.spool.borrow().clone();
        r.messages = v.messages;
        r.bytes = v.bytes;
        r.oldest_ms = u64::try_from(v.oldest.as_millis()).unwrap_or(u64::MAX);
        r.max_bytes = self.max_bytes;
        r.regions = v
            .regions
            .iter()
            .map(|(region, w)| pb::SpoolRegion {
                region: region.to_string(),
                messages: w.messages,
                bytes: w.bytes,
                oldest_ms: v
                    .oldest_per_region
                    .get(region)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            })
            .collect();
        Ok(Response::new(r))
    }

    async fn reload(
        &self,
        _: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadReply>, Status> {
        let (tx, rx) = oneshot::channel();
        let stopping = || Status::unavailable("the agent is stopping");
        self.reload.send(tx).await.map_err(|_| stopping())?;
        match rx.await.map_err(|_| stopping())? {
            Ok(summary) => Ok(Response::new(pb::ReloadReply { summary })),
            Err(why) => Err(Status::failed_precondition(why)),
        }
    }

    async fn trace(
        &self,
        req: Request<pb::TraceRequest>,
    ) -> Result<Response<pb::TraceReply>, Status> {
        let req = req.into_inner();
        let topic = TopicName::new(&req.topic)
            .map_err(|e| Status::invalid_argument(format!("topic `{}`: {e}", req.topic)))?;
        let origin = region_arg(&req.origin, "origin")?;
        self.ask(|tx| Query::Trace(origin, topic, tx))
            .await
            .map(Response::new)
    }
}
