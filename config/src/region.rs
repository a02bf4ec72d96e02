//! The checked region configuration and the conversion from the raw YAML,
//! collecting every problem in the file (not just the first) with its
//! position.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mqlink_topology::{Cost, NodeName, RegionName, Subscription, TopicFilter};
use serde::Serialize;
use serde_saphyr::Spanned;

use crate::diagnostic::{Diagnostic, Pos};
use crate::raw::{
    RawBroker, RawDns, RawInterest, RawLink, RawListen, RawRegion, RawSpool, RawTls, Text,
};
use crate::units::{BrokerUrl, ByteSize, Endpoint, parse_duration, parse_listen};

/// Default QUIC listen address.
pub const DEFAULT_QUIC: &str = "0.0.0.0:7443";
/// Default admin (gRPC) listen address: loopback only.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:7444";
/// Default Prometheus listen address: loopback only.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9464";
/// Default local broker.
pub const DEFAULT_BROKER: &str = "mqtt://127.0.0.1:1883";
/// Default spool directory.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/mqlink";
/// Default spool size limit.
pub const DEFAULT_SPOOL_MAX_BYTES: ByteSize = ByteSize(1 << 30);
/// Default spool age limit.
pub const DEFAULT_SPOOL_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// One agent's configuration, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegionConfig {
    /// The file it was read from.
    pub file: PathBuf,
    /// This region's name.
    pub region: RegionName,
    /// Where `region:` is in the file (for deployment-level messages).
    pub region_pos: Option<Pos>,
    /// This agent's node (replica) name.
    pub node: NodeName,
    /// The local broker.
    pub broker: BrokerConfig,
    /// Listening sockets.
    pub listen: ListenConfig,
    /// Certificate files (absolute, or relative to the working directory).
    pub tls: TlsConfig,
    /// Links to neighbouring regions.
    pub links: Vec<LinkConfig>,
    /// Where local interest comes from.
    pub interest: InterestConfig,
    /// The on-disk spool.
    pub spool: SpoolConfig,
    /// Every file the config names (certificates, keys, password, CA),
    /// with where (for `mqlink check --files`).
    pub files: Vec<FileRef>,
    /// How peer endpoints' names are resolved.
    pub dns: DnsConfig,
}

/// `dns:`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DnsConfig {
    /// Name servers to ask (`ip:port`, or `ip` for port 53); empty: the
    /// system's (`/etc/resolv.conf`, and `/etc/hosts`).
    pub servers: Vec<SocketAddr>,
}

/// A file named by the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileRef {
    /// Its key (`tls.cert`, `broker.password_file`, ...).
    pub key: String,
    /// The path, resolved against the config's directory.
    pub path: PathBuf,
    /// Where the value is.
    pub pos: Option<Pos>,
}

/// `broker:`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokerConfig {
    /// Broker URL.
    pub url: BrokerUrl,
    /// MQTT client id of the agent.
    pub client_id: String,
    /// Optional user name.
    pub username: Option<String>,
    /// Optional file holding the password.
    pub password_file: Option<PathBuf>,
    /// CA certificates (PEM) the broker's certificate is checked against
    /// (`mqtts://`; default: the system's bundle).
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) and key for `mqtts://`, if the broker
    /// asks for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Export through MQTT 5 shared subscriptions
    /// (`$share/mqlink-<region>/<filter>`), so that several agents of one
    /// region (replicas) split the exported messages between them; set it
    /// on every replica. Default false: one agent, plain subscriptions with
    /// No Local (which MQTT 5 forbids on shared ones).
    pub shared: bool,
    /// How long messages read from the broker may wait for more to gather
    /// before they are read and sent on as one batch (`batch_delay`).
    /// Default zero: each is read as it comes (lowest latency). A delay
    /// of about a millisecond halves the agents' CPU per message at
    /// moderate rates, for up to that much more latency.
    pub batch_delay: Duration,
}

/// Longest `broker.batch_delay` accepted.
pub const MAX_BATCH_DELAY: Duration = Duration::from_millis(100);

/// `listen:`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenConfig {
    /// QUIC (UDP) address for peer agents.
    pub quic: SocketAddr,
    /// gRPC admin API (TCP).
    pub admin: SocketAddr,
    /// Prometheus metrics (TCP).
    pub metrics: SocketAddr,
}

/// `tls:`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsConfig {
    /// This region's certificate (PEM), whose SAN names the region.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The deployment's CA certificate (PEM).
    pub ca: PathBuf,
}

/// One entry of `links:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkConfig {
    /// The neighbouring region.
    pub region: RegionName,
    /// Where the entry's `region:` is.
    pub pos: Option<Pos>,
    /// The neighbour's agents, one entry each (a region with replicas lists
    /// them all); the dialling side keeps a connection to every entry.
    pub endpoints: Vec<Endpoint>,
    /// Configured cost; `None` means "measured round-trip time in ms".
    pub cost: Option<Cost>,
    /// Where `cost:` is, if given.
    pub cost_pos: Option<Pos>,
    /// What may be sent to the neighbour (default `#`: everything).
    pub export: Vec<TopicFilter>,
    /// Where `export:` is, if given.
    pub export_pos: Option<Pos>,
    /// What may be accepted from it (default `#`: everything).
    pub import: Vec<TopicFilter>,
    /// Where `import:` is, if given.
    pub import_pos: Option<Pos>,
}

/// `interest:`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InterestConfig {
    /// Filters this region always wants (`static:`).
    pub static_filters: Vec<TopicFilter>,
    /// Dynamic interest source.
    pub dynamic: DynamicInterest,
    /// Most filters this region advertises (`budget:`): past it the
    /// summary is aggregated, only ever widening. `None`: exact.
    pub budget: Option<usize>,
}

/// Where dynamic interest comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DynamicInterest {
    /// Only static filters.
    None,
    /// Follow client subscriptions on a Mosquitto 2.x broker: the
    /// `mqlink_interest` plugin, with the `$SYS` log as the fallback where
    /// the plugin is not loaded.
    Mosquitto,
    /// The mqlink interest protocol on `$mqlink/interest` only, with no
    /// log fallback: a broker that speaks it itself (the demo's embedded
    /// broker, or Mosquitto with the plugin).
    Plugin,
}

/// `spool:`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpoolConfig {
    /// Directory holding the spool.
    pub dir: PathBuf,
    /// Size limit.
    pub max_bytes: ByteSize,
    /// Age limit: older messages are dropped (and counted).
    pub max_age: Duration,
    /// What a full spool does.
    pub full: SpoolFull,
}

/// `spool.full`: what happens when the spool reaches `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SpoolFull {
    /// Refuse new messages: they stay unacknowledged upstream, and the
    /// origin broker holds them and slows its publishers (backpressure).
    /// Nothing is lost.
    #[default]
    Block,
    /// Make room by dropping the oldest spooled messages (counted as
    /// `spool_full`), for operators who prefer fresh data to old.
    DropOldest,
}

/// Collects diagnostics while converting one file.
pub(crate) struct Ctx<'a> {
    /// The file being converted.
    pub file: &'a Path,
    /// Its text.
    pub text: &'a str,
    /// Problems found so far.
    pub diags: Vec<Diagnostic>,
    /// Files named so far.
    pub files: Vec<FileRef>,
}

impl Ctx<'_> {
    fn err(&mut self, pos: Option<Pos>, msg: impl Into<String>) {
        self.diags.push(Diagnostic::error(self.file, pos, msg));
    }

    /// Parse a spanned text with `parse`, reporting failure at its position.
    fn parse<T, E: ToString>(
        &mut self,
        text: &Text,
        what: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        match parse(text.value.as_str()) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(
                    Pos::of(text.referenced),
                    format!("{what}: {}", e.to_string()),
                );
                None
            }
        }
    }

    /// Resolve a path relative to the config file's directory.
    fn path(&mut self, text: &Text, what: &str) -> Option<PathBuf> {
        if text.value.trim().is_empty() {
            self.err(
                Pos::of(text.referenced),
                format!("{what}: expected a file path, found an empty string"),
            );
            return None;
        }
        let p = Path::new(&text.value);
        let path = if p.is_absolute() {
            p.to_owned()
        } else {
            self.file.parent().unwrap_or(Path::new("")).join(p)
        };
        if what != "spool.dir" {
            self.files.push(FileRef {
                key: what.to_owned(),
                path: path.clone(),
                pos: Pos::of(text.referenced),
            });
        }
        Some(path)
    }

    fn filters(&mut self, list: &[Text], what: &str) -> Vec<TopicFilter> {
        list.iter()
            .filter_map(|t| self.parse(t, what, TopicFilter::new))
            .collect()
    }
}

/// Whether the value at `p` in `text` is a quoted string (YAML would
/// still turn `"false"` into a boolean for a boolean key).
fn quoted_at(text: &str, p: Pos) -> bool {
    let (Ok(line), Ok(col)) = (usize::try_from(p.line), usize::try_from(p.column)) else {
        return false;
    };
    text.lines()
        .nth(line.saturating_sub(1))
        .and_then(|l| l.get(col.saturating_sub(1)..))
        .is_some_and(|rest| rest.starts_with(['"', '\'']))
}

fn pos<T>(s: &Spanned<T>) -> Option<Pos> {
    Pos::of(s.referenced)
}

/// Convert a parsed file into a checked config, or every problem in it.
pub(crate) fn convert(ctx: &mut Ctx<'_>, raw: RawRegion, hostname: &str) -> Option<RegionConfig> {
    let region = ctx.parse(&raw.region, "region", RegionName::new);
    let node = match &raw.node {
        Some(n) => ctx.parse(n, "node", NodeName::new),
        None => NodeName::new(hostname)
            .ok()
            .or_else(|| NodeName::new("node").ok()),
    };
    let broker = convert_broker(ctx, raw.broker, region.as_ref(), node.as_ref());
    let listen = convert_listen(ctx, raw.listen);
    let tls = convert_tls(ctx, &raw.tls);
    let links: Vec<LinkConfig> = raw
        .links
        .iter()
        .filter_map(|l| convert_link(ctx, l, region.as_ref()))
        .collect();
    check_duplicate_links(ctx, &links);
    let interest = convert_interest(ctx, raw.interest);
    let spool = convert_spool(ctx, raw.spool);
    let region_pos = pos(&raw.region);
    let dns = convert_dns(ctx, raw.dns);
    Some(RegionConfig {
        file: ctx.file.to_owned(),
        region: region?,
        region_pos,
        node: node?,
        broker: broker?,
        listen: listen?,
        tls: tls?,
        links,
        interest: interest?,
        spool: spool?,
        files: std::mem::take(&mut ctx.files),
        dns: dns?,
    })
}

fn convert_dns(ctx: &mut Ctx<'_>, raw: Option<RawDns>) -> Option<DnsConfig> {
    let Some(raw) = raw else {
        return Some(DnsConfig::default());
    };
    let mut servers = Vec::new();
    for t in &raw.servers {
        let parsed = t.value.parse::<SocketAddr>().or_else(|_| {
            t.value
                .parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        });
        match parsed {
            Ok(a) => servers.push(a),
            Err(_) => ctx.err(
                pos(t),
                format!(
                    "dns.servers: invalid name server `{}`: expected `ip` or `ip:port`, like `10.0.0.2` or `[::1]:5353`",
                    t.value
                ),
            ),
        }
    }
    Some(DnsConfig { servers })
}

fn convert_broker(
    ctx: &mut Ctx<'_>,
    raw: Option<RawBroker>,
    region: Option<&RegionName>,
    node: Option<&NodeName>,
) -> Option<BrokerConfig> {
    let raw = raw.unwrap_or(RawBroker {
        url: None,
        client_id: None,
        username: None,
        password_file: None,
        shared: None,
        batch_delay: None,
        ca: None,
        cert: None,
        key: None,
    });
    let url = match &raw.url {
        Some(u) => ctx.parse(u, "broker.url", BrokerUrl::parse),
        None => BrokerUrl::parse(DEFAULT_BROKER).ok(),
    };
    let client_id = match &raw.client_id {
        Some(c) if c.value.is_empty() || c.value.len() > 65_535 || c.value.contains('\0') => {
            ctx.err(
                pos(c),
                "broker.client_id: expected 1 to 65535 bytes without NUL",
            );
            None
        }
        Some(c) => Some(c.value.clone()),
        None => match (region, node) {
            (Some(r), Some(n)) if n.as_str().starts_with(r.as_str()) => Some(format!("mqlink-{n}")),
            (Some(r), Some(n)) => Some(format!("mqlink-{r}-{n}")),
            _ => None,
        },
    };
    let password_file = raw
        .password_file
        .as_ref()
        .and_then(|p| ctx.path(p, "broker.password_file"));
    let batch_delay = match &raw.batch_delay {
        Some(t) => ctx.parse(t, "broker.batch_delay", |s| match parse_duration(s) {
            Ok(d) if d > MAX_BATCH_DELAY => Err(format!(
                "expected at most {}ms (it adds up to that much latency)",
                MAX_BATCH_DELAY.as_millis()
            )),
            other => other,
        }),
        None => Some(Duration::ZERO),
    };
    let ca = raw.ca.as_ref().and_then(|p| ctx.path(p, "broker.ca"));
    let cert = raw.cert.as_ref().and_then(|p| ctx.path(p, "broker.cert"));
    let key = raw.key.as_ref().and_then(|p| ctx.path(p, "broker.key"));
    let client_cert = match (cert, key, &raw.cert, &raw.key) {
        (Some(c), Some(k), _, _) => Some((c, k)),
        (_, _, Some(c), None) => {
            ctx.err(pos(c), "broker.cert: needs broker.key too");
            None
        }
        (_, _, None, Some(k)) => {
            ctx.err(pos(k), "broker.key: needs broker.cert too");
            None
        }
        _ => None,
    };
    let tls_only = [
        (&raw.ca, "broker.ca"),
        (&raw.cert, "broker.cert"),
        (&raw.key, "broker.key"),
    ];
    if url.as_ref().is_some_and(|u| !u.tls) {
        for (t, what) in tls_only {
            if let Some(t) = t {
                ctx.err(pos(t), format!("{what}: only for an mqtts:// broker url"));
            }
        }
    }
    if let Some(s) = &raw.shared
        && let Some(p) = pos(s)
        && quoted_at(ctx.text, p)
    {
        ctx.err(
            Some(p),
            "broker.shared: expected `true` or `false` unquoted, found a quoted string",
        );
    }
    Some(BrokerConfig {
        url: url?,
        client_id: client_id?,
        username: raw.username.map(|u| u.value),
        password_file,
        ca,
        client_cert,
        shared: raw.shared.is_some_and(|s| s.value),
        batch_delay: batch_delay?,
    })
}

fn convert_listen(ctx: &mut Ctx<'_>, raw: Option<RawListen>) -> Option<ListenConfig> {
    let raw = raw.unwrap_or(RawListen {
        quic: None,
        admin: None,
        metrics: None,
    });
    let mut one = |t: &Option<Text>, what: &str, default: &str| match t {
        Some(t) => ctx.parse(t, what, parse_listen),
        None => parse_listen(default).ok(),
    };
    let quic = one(&raw.quic, "listen.quic", DEFAULT_QUIC);
    let admin = one(&raw.admin, "listen.admin", DEFAULT_ADMIN);
    let metrics = one(&raw.metrics, "listen.metrics", DEFAULT_METRICS);
    if let (Some(a), Some(m)) = (admin, metrics)
        && a == m
        && a.port() != 0
    {
        let at = raw.metrics.as_ref().or(raw.admin.as_ref()).and_then(pos);
        ctx.err(at, format!("listen.metrics: {m} is also listen.admin; the two TCP listeners need different addresses"));
        return None;
    }
    Some(ListenConfig {
        quic: quic?,
        admin: admin?,
        metrics: metrics?,
    })
}

fn convert_tls(ctx: &mut Ctx<'_>, raw: &RawTls) -> Option<TlsConfig> {
    let cert = ctx.path(&raw.cert, "tls.cert");
    let key = ctx.path(&raw.key, "tls.key");
    let ca = ctx.path(&raw.ca, "tls.ca");
    Some(TlsConfig {
        cert: cert?,
        key: key?,
        ca: ca?,
    })
}

fn convert_link(
    ctx: &mut Ctx<'_>,
    raw: &Spanned<RawLink>,
    me: Option<&RegionName>,
) -> Option<LinkConfig> {
    let l = &raw.value;
    let region = ctx.parse(&l.region, "links.region", RegionName::new);
    if let (Some(r), Some(me)) = (&region, me)
        && r == me
    {
        ctx.err(
            pos(&l.region),
            format!("links.region: `{r}` is this region itself; a link must name another region"),
        );
    }
    let endpoints: Vec<Endpoint> = l
        .endpoints
        .value
        .iter()
        .filter_map(|e| ctx.parse(e, "links.endpoints", Endpoint::parse))
        .collect();
    if l.endpoints.value.is_empty() {
        ctx.err(
            pos(&l.endpoints),
            "links.endpoints: expected at least one `host:port` of the peer's agent",
        );
    }
    let cost = l.cost.as_ref().and_then(|c| match Cost::new(c.value) {
        Ok(cost) => Some(cost),
        Err(e) => {
            ctx.err(pos(c), format!("links.cost: {e}"));
            None
        }
    });
    let everything = || TopicFilter::new("#").ok().into_iter().collect::<Vec<_>>();
    let export = l
        .export
        .as_ref()
        .map_or_else(everything, |e| ctx.filters(&e.value, "links.export"));
    let import = l
        .import
        .as_ref()
        .map_or_else(everything, |i| ctx.filters(&i.value, "links.import"));
    Some(LinkConfig {
        region: region?,
        pos: pos(&l.region),
        endpoints,
        cost,
        cost_pos: l.cost.as_ref().and_then(pos),
        export,
        export_pos: l.export.as_ref().and_then(pos),
        import,
        import_pos: l.import.as_ref().and_then(pos),
    })
}

fn check_duplicate_links(ctx: &mut Ctx<'_>, links: &[LinkConfig]) {
    for (i, link) in links.iter().enumerate() {
        if let Some(first) = links[..i].iter().find(|l| l.region == link.region) {
            let first_at = crate::diagnostic::at(ctx.file, first.pos);
            ctx.err(
                link.pos,
                format!(
                    "links: `{}` is listed twice (first at {first_at}); one entry per neighbour",
                    link.region
                ),
            );
        }
    }
}

/// Largest `interest.budget` (the protocol's limit on one table).
const MAX_BUDGET: u64 = 1_000_000;

fn convert_interest(ctx: &mut Ctx<'_>, raw: Option<RawInterest>) -> Option<InterestConfig> {
    let Some(raw) = raw else {
        return Some(InterestConfig {
            static_filters: Vec::new(),
            dynamic: DynamicInterest::None,
            budget: None,
        });
    };
    let static_filters = raw
        .static_filters
        .iter()
        .filter_map(|t| ctx.parse(t, "interest.static", Subscription::parse))
        .map(|s| s.filter().clone())
        .collect();
    let dynamic = match &raw.dynamic {
        None => Some(DynamicInterest::None),
        Some(d) => match d.value.as_str() {
            "none" => Some(DynamicInterest::None),
            "mosquitto" => Some(DynamicInterest::Mosquitto),
            "plugin" => Some(DynamicInterest::Plugin),
            other => {
                ctx.err(pos(d), format!("interest.dynamic: unknown source `{other}`; expected `mosquitto`, `plugin` or `none`"));
                None
            }
        },
    };
    let budget = match &raw.budget {
        None => Some(None),
        Some(b) if (1..=MAX_BUDGET).contains(&b.value) => Some(Some(b.value as usize)),
        Some(b) => {
            ctx.err(
                pos(b),
                format!(
                    "interest.budget: {} is out of range; expected 1 to {MAX_BUDGET} filters",
                    b.value
                ),
            );
            None
        }
    };
    Some(InterestConfig {
        static_filters,
        dynamic: dynamic?,
        budget: budget?,
    })
}

fn convert_spool(ctx: &mut Ctx<'_>, raw: Option<RawSpool>) -> Option<SpoolConfig> {
    let raw = raw.unwrap_or(RawSpool {
        dir: None,
        max_bytes: None,
        max_age: None,
        full: None,
    });
    let dir = match &raw.dir {
        Some(d) => ctx.path(d, "spool.dir"),
        None => Some(PathBuf::from(DEFAULT_SPOOL_DIR)),
    };
    let max_bytes = match &raw.max_bytes {
        Some(t) => ctx.parse(t, "spool.max_bytes", |s| match ByteSize::parse(s) {
            Ok(ByteSize(0)) => Err("expected a size above zero".to_owned()),
            other => other,
        }),
        None => Some(DEFAULT_SPOOL_MAX_BYTES),
    };
    let max_age = match &raw.max_age {
        Some(t) => ctx.parse(t, "spool.max_age", |s| match parse_duration(s) {
            Ok(d) if d.is_zero() => Err("expected a duration above zero".to_owned()),
            other => other,
        }),
        None => Some(DEFAULT_SPOOL_MAX_AGE),
    };
    let full = match &raw.full {
        None => Some(SpoolFull::Block),
        Some(t) => ctx.parse(t, "spool.full", |s| match s {
            "block" => Ok(SpoolFull::Block),
            "drop-oldest" => Ok(SpoolFull::DropOldest),
            other => Err(format!(
                "unknown policy `{other}`; expected `block` or `drop-oldest`"
            )),
        }),
    };
    Some(SpoolConfig {
        dir: dir?,
        max_bytes: max_bytes?,
        max_age: max_age?,
        full: full?,
    })
}
