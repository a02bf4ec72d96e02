//! `mqlink demo`: a local federation, end to end, narrated.
//!
//! N regions (default 3), each a broker (embedded by default, or the
//! system's Mosquitto) and an agent, linked in a ring over QUIC with mutual
//! TLS on 127.0.0.1; certificates and generated configs live in a scratch
//! directory. Subscribers in some regions want some topics; publishers in
//! every region publish wanted and unwanted topics every second. The log
//! shows each cross-region delivery; every five seconds, what each link
//! carried; at the end, a summary: deliveries against expectations,
//! duplicates, and the topics no link carried because nobody wanted them.
//! A timed run (`--for`) cuts links while the agents live (a UDP relay on
//! every link drops the datagrams): one at a third of the run, which
//! reroutes round the ring, then (three regions or more) the first region's
//! other link at half, which cuts it off so QoS 1 traffic waits in the
//! spools; both come back at two thirds and the spools drain.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqlink_topology::{RegionName, TopicFilter, TopicName};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

use crate::federation::{BrokerKind, LinkSpec, LocalFederation, RegionSpec};

const NAMES: [&str; 8] = [
    "eu-west",
    "us-east",
    "ap-south",
    "sa-east",
    "af-south",
    "me-central",
    "ca-central",
    "au-east",
];

/// Demo options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Number of regions (2 to 8).
    pub regions: usize,
    /// How long to run; `None`: until Ctrl-C.
    pub duration: Option<Duration>,
    /// Which brokers to run.
    pub broker: BrokerKind,
}

/// What each region subscribes to, and why (for the narration).
fn subscriptions(names: &[RegionName]) -> Vec<(RegionName, String, &'static str)> {
    let mut subs = Vec::new();
    for (i, r) in names.iter().enumerate() {
        let (filter, who) = match i {
            0 => ("alerts/#".to_owned(), "operations team"),
            1 => ("factory/+/temp".to_owned(), "dashboards"),
            2 => (format!("factory/{}/#", names[0]), "sister plant"),
            _ => (format!("factory/{}/temp", names[i - 1]), "neighbour plant"),
        };
        subs.push((r.clone(), filter, who));
    }
    subs
}

/// A ring of links; with three or more regions, the link closing the ring
/// is expensive, so some traffic transits a middle region.
fn ring(names: &[RegionName]) -> Vec<LinkSpec> {
    let n = names.len();
    let mut links = Vec::new();
    for i in 0..n {
        let j = (i + 1) % n;
        if n == 2 && i == 1 {
            break;
        }
        let cost = if n >= 3 && j == 0 {
            300
        } else {
            80 + 10 * i as u32
        };
        links.push(LinkSpec {
            a: names[i].clone(),
            b: names[j].clone(),
            cost: Some(cost),
            a_extra: String::new(),
            relay: true,
        });
    }
    links
}

/// What the demo observed, per region, for callers (and tests) to check.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    /// Per region: (distinct messages received that it wanted, how many it
    /// should have received, duplicates).
    pub deliveries: BTreeMap<RegionName, (usize, usize, usize)>,
    /// Messages carried per directed link.
    pub carried: BTreeMap<(RegionName, RegionName), u64>,
}

/// One received message, for the log and the tally.
#[derive(Debug)]
struct Received {
    region: RegionName,
    topic: String,
    payload: String,
    origin: String,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// `--regions` out of range.
    #[error("--regions must be between 2 and {max}")]
    Regions {
        /// The most regions the demo names.
        max: usize,
    },
    /// Setting up the federation.
    #[error(transparent)]
    Federation(#[from] crate::federation::FederationError),
    /// The scratch directory.
    #[error("creating the scratch directory")]
    Io(#[from] std::io::Error),
    /// A demo client (publisher or subscriber) failed.
    #[error("demo client: {0}")]
    Client(String),
    /// The federation did not converge in time.
    #[error("{0}")]
    NotReady(String),
}

fn client_err(e: impl std::fmt::Display) -> DemoError {
    DemoError::Client(e.to_string())
}

/// Run the demo, narrating on stdout.
pub async fn run(opts: DemoOptions) -> Result<DemoReport, DemoError> {
    if !(2..=NAMES.len()).contains(&opts.regions) {
        return Err(DemoError::Regions { max: NAMES.len() });
    }
    let names: Vec<RegionName> = NAMES[..opts.regions]
        .iter()
        .map(|n| RegionName::new(n))
        .collect::<Result<_, _>>()
        .map_err(crate::federation::FederationError::from)?;
    let subs = subscriptions(&names);
    let links = ring(&names);
    let dir = std::env::temp_dir().join(format!("mqlink-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;

    let broker_text = match opts.broker {
        BrokerKind::Embedded => {
            "embedded MQTT 5 brokers (mqtt5 crate; interest from their real subscriptions)"
        }
        BrokerKind::Mosquitto => "Mosquitto brokers (dynamic interest from their $SYS log)",
    };
    println!(
        "mqlink demo: {} regions, {broker_text}, agents linked by QUIC + mutual TLS 1.3 on 127.0.0.1",
        names.len()
    );
    println!(
        "  scratch dir: {} (certificates, region configs, broker logs)",
        dir.display()
    );
    let link_text: Vec<String> = links
        .iter()
        .map(|l| format!("{} <-> {} (cost {})", l.a, l.b, l.cost.unwrap_or_default()))
        .collect();
    println!("  links: {}", link_text.join(", "));
    println!("  subscribers:");
    for (r, f, who) in &subs {
        println!("    {r:<10} {f:<22} ({who})");
    }
    println!(
        "  every second, each region publishes factory/<region>/temp, factory/<region>/humidity and"
    );
    println!(
        "  debug/<region>/trace; the last region also raises alerts. Nobody wants debug, and only the"
    );
    println!(
        "  sister plant wants eu-west's humidity: watch the rest never cross a link. Agents learn"
    );
    println!(
        "  this from the subscriptions on their brokers; nothing is declared in their configs."
    );
    println!();

    let specs: Vec<RegionSpec> = names
        .iter()
        .map(|n| RegionSpec {
            name: n.clone(),
            // Interest is learned from the subscribers below, on either broker.
            static_interest: Vec::new(),
            replicas: 1,
        })
        .collect();
    let started = Instant::now();
    let fed = LocalFederation::start(&dir, &specs, &links, opts.broker).await?;
    let outcome = narrate(&fed, &names, &subs, &opts, started).await;
    println!();
    println!("stopping: agents, then brokers");
    fed.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

async fn narrate(
    fed: &LocalFederation,
    names: &[RegionName],
    subs: &[(RegionName, String, &'static str)],
    opts: &DemoOptions,
    started: Instant,
) -> Result<DemoReport, DemoError> {
    fed.wait_links_up(Duration::from_secs(15)).await?;
    println!(
        "[{:>5.1}s] all {} links up",
        started.elapsed().as_secs_f64(),
        fed.links.len()
    );

    // Subscribers, then wait until every agent knows every region's interest.
    let (rx_tx, mut received) = mpsc::unbounded_channel();
    let mut clients = Vec::new();
    for (region, filter, _) in subs {
        clients.push(
            subscriber(
                fed.brokers[region].port(),
                region.clone(),
                filter.clone(),
                rx_tx.clone(),
            )
            .await?,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for agent in names {
        for (region, filter, _) in subs.iter().filter(|(r, _, _)| r != agent) {
            loop {
                let knows = fed
                    .stats(agent)
                    .await
                    .interest
                    .get(region)
                    .is_some_and(|fs| fs.iter().any(|f| f.as_str() == filter));
                if knows {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(DemoError::NotReady(format!(
                        "{agent} never learned that {region} wants {filter}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // ... and its broker has granted (SUBACK) export subscriptions that
    // cover what the others want: a message published before that finds no
    // subscriber on its broker and is gone (Mosquitto answers later than
    // the embedded broker: the first humidity message was lost this way).
    for agent in names {
        let wanted: Vec<mqlink_topology::TopicFilter> = subs
            .iter()
            .filter(|(r, _, _)| r != agent)
            .filter_map(|(_, f, _)| mqlink_topology::TopicFilter::new(f).ok())
            .collect();
        loop {
            let granted = fed.agents.get(agent).is_some_and(|replicas| {
                replicas.iter().all(|a| {
                    let g = a.exports_granted();
                    wanted.iter().all(|w| g.iter().any(|e| e.covers(w)))
                })
            });
            if granted {
                break;
            }
            if Instant::now() > deadline {
                return Err(DemoError::NotReady(format!(
                    "{agent} never subscribed to what the other regions want"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!(
        "[{:>5.1}s] every agent knows what every region wants; publishing starts",
        started.elapsed().as_secs_f64()
    );
    let plan = opts.duration.map(|d| FaultPlan::new(names, d));
    match opts.duration {
        Some(d) => println!(
            "          running for {}; Ctrl-C stops earlier",
            mqlink_config::units::format_duration(d)
        ),
        None => println!("          running until Ctrl-C (no link cut: give --for to see one)"),
    }
    if let Some(plan) = &plan {
        plan.announce();
    }

    let mut publishers = Vec::new();
    for r in names {
        publishers.push((
            r.clone(),
            client(fed.brokers[r].port(), &format!("demo-pub-{r}")).await?,
        ));
    }
    let filters: Vec<(RegionName, TopicFilter)> = subs
        .iter()
        .filter_map(|(r, f, _)| TopicFilter::new(f).ok().map(|f| (r.clone(), f)))
        .collect();
    let mut published: Vec<(RegionName, TopicName)> = Vec::new();
    let mut got: Vec<Received> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let end = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut round = 0u64;
    let publishing = Instant::now();
    let mut step = 0usize;
    let mut links_up: BTreeMap<(RegionName, RegionName), bool> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                round += 1;
                if let Some(plan) = &plan {
                    step = plan.apply(fed, publishing.elapsed(), step, started);
                    watch_links(fed, &mut links_up, started).await;
                    if plan.faulty(publishing.elapsed()) {
                        print_spool(fed, names, started).await;
                    }
                }
                for (i, (r, c)) in publishers.iter().enumerate() {
                    let temp = format!("n={round} {:.1}C", 18.0 + ((round as f64 + i as f64 * 3.0).sin() * 4.0));
                    let mut msgs = vec![
                        (format!("factory/{r}/temp"), temp),
                        (format!("factory/{r}/humidity"), format!("n={round} 40%")),
                        (format!("debug/{r}/trace"), format!("n={round} noise")),
                    ];
                    if i == names.len() - 1 && round % 4 == 1 {
                        msgs.push((format!("alerts/{r}/overheat"), format!("n={round} line 3 at 92C")));
                    }
                    for (topic, payload) in msgs {
                        c.publish(topic.clone(), QoS::AtLeastOnce, false, Bytes::from(payload))
                            .await
                            .map_err(client_err)?;
                        if let Ok(t) = TopicName::new(&topic) {
                            published.push((r.clone(), t));
                        }
                    }
                }
                if round.is_multiple_of(5) {
                    print_links(fed, started).await;
                }
            }
            Some(m) = received.recv() => {
                println!(
                    "[{:>5.1}s] {:<10} <- {:<26} {:<18} (published in {})",
                    started.elapsed().as_secs_f64(), m.region, m.topic, m.payload, m.origin
                );
                got.push(m);
            }
            _ = &mut ctrl_c => break,
            () = sleep_until(end) => break,
        }
    }
    // Let in-flight messages land: wait until the count stops changing (bounded).
    let quiet_deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < quiet_deadline {
        match tokio::time::timeout(Duration::from_millis(500), received.recv()).await {
            Ok(Some(m)) => got.push(m),
            _ => break,
        }
    }
    let report = summary(fed, names, &filters, &published, &got, started).await;
    for (c, task) in clients {
        let _ = c.disconnect().await;
        task.abort();
    }
    Ok(report)
}

/// The link faults of a timed demo: at a third of the run the first link
/// is cut (traffic reroutes round the ring); with three or more regions,
/// at half the first region's other link is cut too (it is cut off: what
/// it owes and is owed waits in the spools); at two thirds both come back
/// (the spools drain). The cut is a relay that drops every datagram while
/// both agents keep running.
struct FaultPlan {
    /// (when, cut or restore, the link).
    steps: Vec<(Duration, bool, RegionName, RegionName)>,
}

impl FaultPlan {
    fn new(names: &[RegionName], d: Duration) -> Self {
        let first = (names[0].clone(), names[1].clone());
        let mut steps = vec![(d / 3, true, first.0.clone(), first.1.clone())];
        if names.len() >= 3 {
            let other = (names[names.len() - 1].clone(), names[0].clone());
            steps.push((d / 2, true, other.0.clone(), other.1.clone()));
            steps.push((d * 2 / 3, false, other.0, other.1));
        }
        steps.push((d * 2 / 3, false, first.0, first.1));
        Self { steps }
    }

    fn announce(&self) {
        for (at, cut, a, b) in &self.steps {
            println!(
                "          at {:>4.1}s the link {a} <-> {b} is {}",
                at.as_secs_f64(),
                if *cut {
                    "cut (both agents keep running)"
                } else {
                    "restored"
                }
            );
        }
        println!("          messages are QoS 1: watch them wait and arrive once, none lost");
    }

    /// Whether a fault is in force at `t`.
    fn faulty(&self, t: Duration) -> bool {
        self.steps.first().is_some_and(|s| t >= s.0)
            && self
                .steps
                .last()
                .is_some_and(|s| t < s.0 + Duration::from_secs(4))
    }

    /// Carry out the steps due by `t` from `step` on; returns the next step.
    fn apply(
        &self,
        fed: &LocalFederation,
        t: Duration,
        mut step: usize,
        started: Instant,
    ) -> usize {
        while let Some((at, cut, a, b)) = self.steps.get(step) {
            if t < *at {
                break;
            }
            if let Some(relay) = fed.relay(a, b) {
                if *cut {
                    relay.cut();
                } else {
                    relay.restore();
                }
                println!(
                    "[{:>5.1}s] ** link {a} <-> {b} {}",
                    started.elapsed().as_secs_f64(),
                    if *cut {
                        "CUT: its datagrams are dropped from now on"
                    } else {
                        "RESTORED"
                    }
                );
            }
            step += 1;
        }
        step
    }
}

/// Print each link's state when the agents' view of it changes.
async fn watch_links(
    fed: &LocalFederation,
    seen: &mut BTreeMap<(RegionName, RegionName), bool>,
    started: Instant,
) {
    for l in &fed.links {
        let up = fed.stats(&l.a).await.peers_up.contains(&l.b);
        let key = (l.a.clone(), l.b.clone());
        if seen.insert(key, up).is_some_and(|was| was != up) {
            println!(
                "[{:>5.1}s] ** the agents see {} <-> {} {}",
                started.elapsed().as_secs_f64(),
                l.a,
                l.b,
                if up {
                    "up again: routes return to it, spools drain"
                } else {
                    "down (keep-alives stopped): routes recomputed around it"
                }
            );
        }
    }
}

/// Messages waiting for a path, per region: in the spool on disk, and in
/// custody in memory.
async fn print_spool(fed: &LocalFederation, names: &[RegionName], started: Instant) {
    let mut parts = Vec::new();
    for r in names {
        let s = fed.stats(r).await.stats;
        parts.push(format!("{r} {} spooled/{} held", s.spool_unread, s.held));
    }
    println!(
        "[{:>5.1}s] -- waiting for a path: {}",
        started.elapsed().as_secs_f64(),
        parts.join(", ")
    );
}

async fn sleep_until(end: Option<tokio::time::Instant>) {
    match end {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn print_links(fed: &LocalFederation, started: Instant) {
    let mut parts = Vec::new();
    for l in &fed.links {
        for (x, y) in [(&l.a, &l.b), (&l.b, &l.a)] {
            let n = fed.stats(x).await.stats.sent.get(y).copied().unwrap_or(0);
            parts.push(format!("{x}->{y} {n}"));
        }
    }
    println!(
        "[{:>5.1}s] -- messages carried so far: {}",
        started.elapsed().as_secs_f64(),
        parts.join(", ")
    );
}

async fn summary(
    fed: &LocalFederation,
    names: &[RegionName],
    filters: &[(RegionName, TopicFilter)],
    published: &[(RegionName, TopicName)],
    got: &[Received],
    started: Instant,
) -> DemoReport {
    let mut report = DemoReport::default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nsummary after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(out, "  deliveries (cross-region, to subscribers):");
    for r in names {
        let expected = published
            .iter()
            .filter(|(origin, t)| {
                origin != r && filters.iter().any(|(fr, f)| fr == r && f.matches(t))
            })
            .count();
        let mine: Vec<&Received> = got.iter().filter(|m| m.region == *r).collect();
        let distinct: BTreeSet<(&str, &str)> = mine
            .iter()
            .map(|m| (m.topic.as_str(), m.payload.as_str()))
            .collect();
        let duplicates = mine.len() - distinct.len();
        let _ = writeln!(
            out,
            "    {r:<10} received {:>4} of {:>4} published that it wants, {duplicates} duplicates",
            distinct.len(),
            expected,
        );
        report
            .deliveries
            .insert(r.clone(), (distinct.len(), expected, duplicates));
    }
    let (mut all, mut wanted, mut dups) = (0usize, 0usize, 0usize);
    for (d, e, x) in report.deliveries.values() {
        all += d;
        wanted += e;
        dups += x;
    }
    let _ = writeln!(
        out,
        "  QoS 1, through the link cuts: {all} of {wanted} delivered, {} lost, {dups} duplicates",
        wanted.saturating_sub(all)
    );
    let _ = writeln!(out, "  links (envelopes carried each way):");
    for l in &fed.links {
        let ab = fed
            .stats(&l.a)
            .await
            .stats
            .sent
            .get(&l.b)
            .copied()
            .unwrap_or(0);
        let ba = fed
            .stats(&l.b)
            .await
            .stats
            .sent
            .get(&l.a)
            .copied()
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "    {:<10} -> {:<10} {ab:>5}    {:<10} -> {:<10} {ba:>5}",
            l.a, l.b, l.b, l.a
        );
        report.carried.insert((l.a.clone(), l.b.clone()), ab);
        report.carried.insert((l.b.clone(), l.a.clone()), ba);
    }
    let mut unwanted: BTreeMap<String, usize> = BTreeMap::new();
    for (origin, t) in published {
        let wanted = filters.iter().any(|(fr, f)| fr != origin && f.matches(t));
        if !wanted {
            *unwanted.entry(t.to_string()).or_default() += 1;
        }
    }
    let _ = writeln!(
        out,
        "  never exported (no other region wants them; the export subscriptions below leave them on their broker):"
    );
    for (topic, n) in unwanted {
        let _ = writeln!(out, "    {topic:<26} {n:>5} published");
    }
    let _ = writeln!(
        out,
        "  what each agent subscribes to on its broker, to export:"
    );
    for r in names {
        let export: Vec<String> = fed
            .stats(r)
            .await
            .export
            .iter()
            .map(ToString::to_string)
            .collect();
        let _ = writeln!(out, "    {r:<10} [{}]", export.join(", "));
    }
    print!("{out}");
    report
}

/// An MQTT client on 127.0.0.1:`port`, connected.
async fn client(port: u16, id: &str) -> Result<AsyncClient, DemoError> {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (c, mut events) = AsyncClient::new(opts, 1024);
    let (up_tx, mut up) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = up_tx.try_send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(5), up.recv())
        .await
        .map_err(|_| DemoError::Client(format!("{id}: no CONNACK within 5 s")))?;
    Ok(c)
}

/// A subscriber in `region`, reporting what it receives.
async fn subscriber(
    port: u16,
    region: RegionName,
    filter: String,
    out: mpsc::UnboundedSender<Received>,
) -> Result<(AsyncClient, tokio::task::JoinHandle<()>), DemoError> {
    let mut opts = MqttOptions::new(format!("demo-sub-{region}"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (c, mut events) = AsyncClient::new(opts, 1024);
    let (ack_tx, mut ack) = mpsc::channel(1);
    let task = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let origin = p
                        .properties
                        .as_ref()
                        .and_then(|pr| {
                            pr.user_properties
                                .iter()
                                .find(|(k, _)| k == mqlink_proto::ORIGIN_PROPERTY)
                        })
                        .map(|(_, v)| v.split(':').next().unwrap_or("?").to_owned());
                    // Only imports (messages from other regions) are narrated.
                    if let Some(origin) = origin {
                        let _ = out.send(Received {
                            region: region.clone(),
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            origin,
                        });
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ack_tx.try_send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    c.subscribe(filter, QoS::AtLeastOnce)
        .await
        .map_err(client_err)?;
    tokio::time::timeout(Duration::from_secs(5), ack.recv())
        .await
        .map_err(|_| DemoError::Client("no SUBACK within 5 s".into()))?;
    Ok((c, task))
}
