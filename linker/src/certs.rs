//! `mqlink certs`: a development PKI. `init` makes a CA (DIR/ca.pem,
//! DIR/ca.key); `issue REGION` makes a certificate for one region
//! (DIR/REGION.pem, DIR/REGION.key) signed by it, whose only subject
//! alternative name is the region name: agents check that SAN against the
//! region a peer claims. The same certificate serves as TLS server and
//! client certificate (mutual TLS).
//!
//! `inspect FILE` shows a certificate: region(s), validity, days left,
//! fingerprint. Validity is computed with the `time` crate.
//!
//! For production, use your own CA; the agent only needs PEM files whose
//! SAN (DNS name) is the region.

use std::path::{Path, PathBuf};

use mqlink_topology::RegionName;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Validity of issued certificates: from a day ago, for this many days.
pub const LEAF_DAYS: i64 = 825;
const CA_DAYS: i64 = 3650;

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
}

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// A file or directory could not be read or written.
    #[error("{what} {}{hint}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What to do about it, if anything ("" otherwise).
        hint: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `init` found a CA in the directory already.
    #[error("{} already holds a CA (ca.pem / ca.key); remove them first to make a new one", .0.display())]
    CaExists(PathBuf),
    /// A certificate file that does not parse.
    #[error("{}: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Key generation, parsing or signing failed.
    #[error("{what}")]
    Crypto {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: rcgen::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CertsError {
    let path = path.to_path_buf();
    move |source| CertsError::Io {
        what,
        path,
        hint: "",
        source,
    }
}

fn crypto(what: &'static str) -> impl FnOnce(rcgen::Error) -> CertsError {
    move |source| CertsError::Crypto { what, source }
}

/// Write DIR/ca.pem and DIR/ca.key. Refuses to overwrite an existing CA.
pub fn init(dir: &Path) -> Result<(PathBuf, PathBuf), CertsError> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    if cert_path.exists() || key_path.exists() {
        return Err(CertsError::CaExists(dir.to_path_buf()));
    }
    let key = KeyPair::generate().map_err(crypto("generating the CA key"))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(crypto("CA parameters"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "mqlink development CA");
    dn.push(DnType::OrganizationName, "mqlink");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, CA_DAYS);
    let cert = params.self_signed(&key).map_err(crypto("signing the CA"))?;
    write_private(&key_path, &key.serialize_pem())?;
    std::fs::write(&cert_path, cert.pem()).map_err(io("writing", &cert_path))?;
    Ok((cert_path, key_path))
}

/// Write DIR/REGION.pem and DIR/REGION.key, signed by DIR/ca.*, valid
/// for [`LEAF_DAYS`].
pub fn issue(region: &RegionName, dir: &Path) -> Result<(PathBuf, PathBuf), CertsError> {
    issue_for(region, dir, LEAF_DAYS)
}

/// [`issue`], valid for `days` (from a day ago).
pub fn issue_for(
    region: &RegionName,
    dir: &Path,
    days: i64,
) -> Result<(PathBuf, PathBuf), CertsError> {
    let ca = dir.join("ca.pem");
    let ca_pem = std::fs::read_to_string(&ca).map_err(|source| CertsError::Io {
        what: "reading",
        path: ca.clone(),
        hint: " (run `mqlink certs init --out DIR` first)",
        source,
    })?;
    let ca_key_path = dir.join("ca.key");
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(io("reading", &ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(crypto("parsing ca.key"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(crypto("parsing ca.pem"))?;

    let key = KeyPair::generate().map_err(crypto("generating the region key"))?;
    let mut params = CertificateParams::new(vec![region.to_string()])
        .map_err(crypto("certificate parameters"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, region.as_str());
    dn.push(DnType::OrganizationName, "mqlink");
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, days);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(crypto("signing the region certificate"))?;
    let (cert_path, key_path) = (
        dir.join(format!("{region}.pem")),
        dir.join(format!("{region}.key")),
    );
    write_private(&key_path, &key.serialize_pem())?;
    std::fs::write(&cert_path, cert.pem()).map_err(io("writing", &cert_path))?;
    Ok((cert_path, key_path))
}

/// Write a private key readable by the owner only.
fn write_private(path: &Path, pem: &str) -> Result<(), CertsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io("writing", path))?;
    f.write_all(pem.as_bytes()).map_err(io("writing", path))?;
    Ok(())
}

/// One certificate of a PEM file, as `mqlink certs inspect` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertInfo {
    /// Subject (distinguished name).
    pub subject: String,
    /// Issuer (distinguished name).
    pub issuer: String,
    /// DNS subject alternative names: the regions it speaks for.
    pub regions: Vec<String>,
    /// Whether it is a CA.
    pub ca: bool,
    /// Valid from (RFC 3339).
    pub not_before: String,
    /// Valid until (RFC 3339).
    pub not_after: String,
    /// Whole days from now until `not_after` (negative: expired).
    pub days_left: i64,
    /// SHA-256 of the DER, hex pairs joined by `:`.
    pub sha256: String,
}

impl std::fmt::Display for CertInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.days_left {
            d if d < 0 => format!("EXPIRED {} day(s) ago", -d),
            d if d < 30 => format!("expires in {d} day(s): renew it"),
            d => format!("{d} day(s) left"),
        };
        writeln!(f, "subject:     {}", self.subject)?;
        writeln!(f, "issuer:      {}", self.issuer)?;
        if self.ca {
            writeln!(f, "kind:        CA")?;
        } else {
            writeln!(f, "region(s):   {}", self.regions.join(", "))?;
        }
        writeln!(f, "valid from:  {}", self.not_before)?;
        writeln!(f, "valid until: {} ({state})", self.not_after)?;
        writeln!(f, "sha256:      {}", self.sha256)
    }
}

/// Every certificate in the PEM file `path`.
pub fn inspect(path: &Path) -> Result<Vec<CertInfo>, CertsError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let bad = |reason: String| CertsError::Parse {
        path: path.to_path_buf(),
        reason,
    };
    let ders: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if ders.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    let now = time::OffsetDateTime::now_utc();
    let rfc3339 = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.to_string())
    };
    ders.iter()
        .map(|der| {
            let (_, cert) = x509_parser::parse_x509_certificate(der)
                .map_err(|e| bad(format!("unparsable certificate: {e}")))?;
            let regions = crate::tls::dns_names(der).unwrap_or_default();
            let validity = cert.validity();
            let not_after = validity.not_after.to_datetime();
            let digest = ring::digest::digest(&ring::digest::SHA256, der);
            Ok(CertInfo {
                subject: cert.subject().to_string(),
                issuer: cert.issuer().to_string(),
                regions,
                ca: cert.is_ca(),
                not_before: rfc3339(validity.not_before.to_datetime()),
                not_after: rfc3339(not_after),
                days_left: (not_after - now).whole_days(),
                sha256: digest
                    .as_ref()
                    .iter()
                    .map(|b| format!("{b:02X}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            })
        })
        .collect()
}

/// Days before expiry under which the agent warns.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// Keep `mqlink_certificate_expiry_days` set from the agent's certificate
/// `path` and warn in the log while it has fewer than
/// [`EXPIRY_WARNING_DAYS`] left: at start, then twice a day.
pub async fn watch_expiry(path: PathBuf, region: String) {
    loop {
        match inspect(&path) {
            Ok(certs) => {
                if let Some(c) = certs.first() {
                    metrics::gauge!("mqlink_certificate_expiry_days").set(c.days_left as f64);
                    if c.days_left < EXPIRY_WARNING_DAYS {
                        tracing::warn!(
                            file = %path.display(),
                            %region,
                            days_left = c.days_left,
                            not_after = %c.not_after,
                            "the agent's certificate expires soon: issue a new one and reload"
                        );
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "checking the certificate's expiry"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(12 * 3600)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn issued_certificates_inspect_as_issued() {
        let dir = std::env::temp_dir().join(format!("mqlink-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        init(&dir).unwrap();
        let (pem, _) = issue(&RegionName::new("eu-west").unwrap(), &dir).unwrap();
        let info = inspect(&pem).unwrap();
        assert_eq!(info.len(), 1);
        let c = &info[0];
        assert_eq!(c.regions, ["eu-west"]);
        assert!(!c.ca);
        assert!(
            (LEAF_DAYS - 1..=LEAF_DAYS).contains(&c.days_left),
            "{}",
            c.days_left
        );
        assert_eq!(c.sha256.len(), 32 * 3 - 1);
        let ca = &inspect(&dir.join("ca.pem")).unwrap()[0];
        assert!(ca.ca);
        assert!((CA_DAYS - 1..=CA_DAYS).contains(&ca.days_left));
        assert!(c.to_string().contains("region(s):   eu-west"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
