//! Checked value types for the config: sizes (`1GiB`), durations (`24h`),
//! endpoints (`host:port`), broker URLs (`mqtt://host:port`). Each parser
//! returns a message saying what was expected, which the loader places at
//! the value's line and column.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;

/// A size in bytes. Accepts a plain number of bytes or a number with a
/// unit: `B`, `KB`/`MB`/`GB`/`TB` (powers of 1000), `KiB`/`MiB`/`GiB`/`TiB`
/// (powers of 1024). Case-insensitive units, optional space: `512 MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parse a size.
    pub fn parse(s: &str) -> Result<Self, String> {
        let expected = || {
            format!(
                "invalid size `{s}`: expected a number of bytes with an optional unit, like `1GiB`, `512MiB` or `10MB`"
            )
        };
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| expected())?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            _ => return Err(expected()),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size `{s}` is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (unit, size) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// Parse a duration: one or more `<number><unit>` parts, units `us`, `ms`,
/// `s`, `m`, `h`, `d`; e.g. `200us`, `500ms`, `30s`, `1h30m`, `24h`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let expected = || {
        format!(
            "invalid duration `{s}`: expected numbers with units us, ms, s, m, h or d, like `24h`, `30s`, `1h30m` or `200us`"
        )
    };
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(expected());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(expected());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| expected())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "us" => Duration::from_micros(n),
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3_600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            _ => return Err(expected()),
        };
        rest = &rest[unit_len..];
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// Format a duration the way the config writes it (`24h`, `90s`, `250ms`,
/// `200us`).
pub fn format_duration(d: Duration) -> String {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{}us", d.as_micros());
    }
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// A host: an IP address or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub enum Host {
    /// A literal address.
    Ip(IpAddr),
    /// A DNS name, resolved (and re-resolved) at run time.
    Dns(String),
}

impl Host {
    fn parse(s: &str) -> Result<Self, String> {
        let inner = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
        if let Some(v6) = inner {
            return v6
                .parse()
                .map(Host::Ip)
                .map_err(|_| format!("invalid IPv6 address `{v6}`"));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if s.len() <= 253 && s.trim_end_matches('.').split('.').all(label_ok) {
            Ok(Host::Dns(s.to_owned()))
        } else {
            Err(format!(
                "invalid host `{s}`: expected a DNS name or an IP address"
            ))
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Dns(name) => f.write_str(name),
        }
    }
}

impl From<Host> for String {
    fn from(h: Host) -> String {
        h.to_string()
    }
}

/// Split `host:port` (with `[v6]:port` for IPv6).
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if s.starts_with('[') {
        let end = s.find(']')?;
        let port = s[end + 1..].strip_prefix(':')?;
        Some((&s[..=end], port))
    } else {
        s.rsplit_once(':')
    }
}

fn parse_port(s: &str, whole: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!(
            "invalid port `{s}` in `{whole}`: expected a number from 1 to 65535"
        )),
    }
}

/// A peer agent's address: `host:port`, the host a DNS name or an IP.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct Endpoint {
    /// Where the peer is.
    pub host: Host,
    /// Its QUIC (UDP) port.
    pub port: u16,
}

impl Endpoint {
    /// Parse `host:port`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let Some((host, port)) = split_host_port(s) else {
            return Err(format!(
                "invalid endpoint `{s}`: expected `host:port`, like `linker.us-east.example.net:7443`"
            ));
        };
        Ok(Endpoint {
            host: Host::parse(host)?,
            port: parse_port(port, s)?,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl From<Endpoint> for String {
    fn from(e: Endpoint) -> String {
        e.to_string()
    }
}

/// Parse a local socket address to listen on (`0.0.0.0:7443`, `[::]:7443`).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!(
            "invalid listen address `{s}`: expected `ip:port`, like `0.0.0.0:7443` or `[::1]:7444`"
        )
    })
}

/// The local broker's URL: `mqtt://host[:port]` (TCP, default port 1883)
/// or `mqtts://host[:port]` (TLS, default port 8883).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct BrokerUrl {
    /// Whether to use TLS (`mqtts`).
    pub tls: bool,
    /// The broker's host.
    pub host: Host,
    /// The broker's port.
    pub port: u16,
}

impl BrokerUrl {
    /// Parse a broker URL.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(format!(
                "invalid broker URL `{s}`: expected `mqtt://host:port` or `mqtts://host:port`"
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '@', '?']) {
            return Err(format!(
                "invalid broker URL `{s}`: expected only a host and port after the scheme (credentials go in `username` / `password_file`)"
            ));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let bracketed_v6 = rest.starts_with('[') && rest.ends_with(']');
        let (host, port) = match split_host_port(rest) {
            Some((h, p)) if !bracketed_v6 => (h, parse_port(p, s)?),
            _ => (rest, default_port),
        };
        Ok(BrokerUrl {
            tls,
            host: Host::parse(host)?,
            port,
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}:{}",
            if self.tls { "mqtts" } else { "mqtt" },
            self.host,
            self.port
        )
    }
}

impl From<BrokerUrl> for String {
    fn from(u: BrokerUrl) -> String {
        u.to_string()
    }
}

/// The candidate closest to `word` by edit distance, if close enough to be
/// a plausible typo.
pub fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(2))
        .min()
        .map(|(_, c)| c)
}

/// Levenshtein distance, on characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("1GiB"), Ok(ByteSize(1 << 30)));
        assert_eq!(ByteSize::parse("512 MiB"), Ok(ByteSize(512 << 20)));
        assert_eq!(ByteSize::parse("10MB"), Ok(ByteSize(10_000_000)));
        assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
        assert!(ByteSize::parse("1 GiBs").is_err());
        assert!(ByteSize::parse("GiB").is_err());
        assert!(ByteSize::parse("99999999999TiB").is_err());
        assert_eq!(ByteSize(1 << 30).to_string(), "1GiB");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "h", "10", "10x", "1h 30m", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(parse_duration("200us"), Ok(Duration::from_micros(200)));
        assert_eq!(parse_duration("1ms500us"), Ok(Duration::from_micros(1_500)));
        assert_eq!(format_duration(Duration::from_micros(200)), "200us");
        assert_eq!(format_duration(Duration::from_micros(1_500)), "1500us");
    }

    #[test]
    fn endpoints_and_urls() {
        let e = Endpoint::parse("linker.us-east.example.net:7443").unwrap();
        assert_eq!(e.host, Host::Dns("linker.us-east.example.net".into()));
        assert_eq!(
            Endpoint::parse("[::1]:7443").unwrap().to_string(),
            "[::1]:7443"
        );
        assert_eq!(Endpoint::parse("127.0.0.1:1").unwrap().port, 1);
        for bad in [
            "host",
            "host:0",
            "host:70000",
            "bad_host:1",
            "[::1:7",
            ":7443",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(BrokerUrl::parse("mqtt://127.0.0.1").unwrap().port, 1883);
        let u = BrokerUrl::parse("mqtts://broker.local:9000").unwrap();
        assert!(u.tls && u.port == 9000);
        assert_eq!(
            BrokerUrl::parse("mqtt://[::1]").unwrap().to_string(),
            "mqtt://[::1]:1883"
        );
        assert!(BrokerUrl::parse("http://x").is_err());
        assert!(BrokerUrl::parse("mqtt://user:pw@x").is_err());
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            nearest("lisen", &["region", "listen", "links"]),
            Some("listen")
        );
        assert_eq!(
            nearest("endpionts", &["region", "endpoints", "cost"]),
            Some("endpoints")
        );
        assert_eq!(nearest("zzzzzz", &["region", "listen"]), None);
    }
}
