//! `mqlink certs`: a development PKI. `init` makes a CA (DIR/ca.pem,
//! DIR/ca.key); `issue REGION` makes a certificate for one region
//! (DIR/REGION.pem, DIR/REGION.key) signed by it, whose only subject
//! alternative name is the region name: agents check that SAN against the
//! region a peer claims. The same certificate serves as TLS server and
//! client certificate (mutual TLS).
//!
//! For production, use your own CA; the agent only needs PEM files whose
//! SAN (DNS name) is the region.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use mqlink_topology::RegionName;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Validity of issued certificates: from a day ago, for this many days.
const LEAF_DAYS: i64 = 825;
const CA_DAYS: i64 = 3650;

fn validity(params: &mut CertificateParams, days: i64) {
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
        / 86_400;
    let date = |days: i64| {
        let (y, m, d) = civil_from_days(days);
        rcgen::date_time_ymd(y, m, d)
    };
    params.not_before = date(today - 1);
    params.not_after = date(today + days);
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian;
/// H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        (yoe + era * 400 + i64::from(m <= 2)) as i32,
        m as u8,
        d as u8,
    )
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

/// Write DIR/REGION.pem and DIR/REGION.key, signed by DIR/ca.*.
pub fn issue(region: &RegionName, dir: &Path) -> Result<(PathBuf, PathBuf), CertsError> {
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
    validity(&mut params, LEAF_DAYS);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_787), (2026, 11, 30));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
