//! The region YAML as serde sees it: plain strings and numbers, each with
//! the line and column it came from. Nothing here is validated; the
//! `region` module turns these into checked types.

use serde::Deserialize;
use serde_saphyr::Spanned;

pub(crate) type Text = Spanned<String>;

/// Top level of a region file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRegion {
    pub region: Text,
    pub node: Option<Text>,
    pub broker: Option<RawBroker>,
    pub listen: Option<RawListen>,
    pub tls: RawTls,
    #[serde(default)]
    pub links: Vec<Spanned<RawLink>>,
    pub interest: Option<RawInterest>,
    pub spool: Option<RawSpool>,
    pub dns: Option<RawDns>,
}

/// `dns:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDns {
    #[serde(default)]
    pub servers: Vec<Text>,
}

/// `broker:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBroker {
    pub url: Option<Text>,
    pub client_id: Option<Text>,
    pub username: Option<Text>,
    pub password_file: Option<Text>,
    pub shared: Option<Spanned<bool>>,
    pub batch_delay: Option<Text>,
    pub ca: Option<Text>,
    pub cert: Option<Text>,
    pub key: Option<Text>,
}

/// `listen:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListen {
    pub quic: Option<Text>,
    pub admin: Option<Text>,
    pub metrics: Option<Text>,
}

/// `tls:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub cert: Text,
    pub key: Text,
    pub ca: Text,
}

/// One entry of `links:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLink {
    pub region: Text,
    pub endpoints: Spanned<Vec<Text>>,
    pub cost: Option<Spanned<u64>>,
    pub export: Option<Spanned<Vec<Text>>>,
    pub import: Option<Spanned<Vec<Text>>>,
}

/// `interest:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInterest {
    #[serde(rename = "static", default)]
    pub static_filters: Vec<Text>,
    pub dynamic: Option<Text>,
    pub budget: Option<Spanned<u64>>,
}

/// `spool:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSpool {
    pub dir: Option<Text>,
    pub max_bytes: Option<Text>,
    pub max_age: Option<Text>,
    pub full: Option<Text>,
}
