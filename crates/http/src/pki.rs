//! The internal certificate authority of the control plane ↔ agent link (ECDSA P-256, as
//! upstream).
//!
//! The control plane keeps one CA. At registration (and every refresh) it issues the agent a
//! server certificate for the address it dials ([`Ca::issue_server_cert`]); for itself it
//! issues a client certificate ([`Ca::issue_client_cert`]) and renews it in-process. Both sides
//! trust only this CA on this link.

use crate::error::{Error, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;

/// Validity of a CA made by [`Ca::generate`].
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far back certificates are dated, so a peer whose clock is slightly behind accepts them.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// A certificate authority that can sign leaf certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

/// A freshly issued leaf certificate.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    /// PKCS#8 PEM.
    pub key_pem: String,
    /// SHA-256 over the certificate's DER, lowercase hex (what `hosts.cert_fingerprint` holds).
    pub fingerprint_sha256_hex: String,
    pub not_after: SystemTime,
}

impl IssuedCert {
    /// The certificate and key, checked and ready for rustls: install it with
    /// `ReloadableCert::new` or `ReloadableCert::replace` (the control plane renewing its client
    /// certificate).
    pub fn certified_key(&self) -> Result<std::sync::Arc<rustls::sign::CertifiedKey>> {
        crate::tls::certified_key(
            &crate::tls::Pem::text("issued certificate", self.cert_pem.clone()),
            &crate::tls::Pem::text("issued key", self.key_pem.clone()),
        )
    }
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("fingerprint_sha256_hex", &self.fingerprint_sha256_hex)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn pki_err(what: &str, e: impl fmt::Display) -> Error {
    Error::Pki(format!("{what}: {e}"))
}

/// `now - BACKDATE` and `now + ttl`, as certificate times.
fn validity(ttl: Duration) -> Result<(OffsetDateTime, OffsetDateTime)> {
    let now = OffsetDateTime::now_utc();
    let not_before = now - BACKDATE;
    let not_after = now
        .checked_add(time::Duration::try_from(ttl).map_err(|e| pki_err("validity", e))?)
        .ok_or_else(|| Error::Pki(format!("validity {ttl:?} is out of range")))?;
    Ok((not_before, not_after))
}

fn new_key() -> Result<KeyPair> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| pki_err("generating a P-256 key", e))
}

fn subject(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

impl Ca {
    /// A new self-signed CA, valid for [`CA_VALIDITY`], that may sign leaf certificates only.
    pub fn generate(common_name: &str) -> Result<Self> {
        let key = new_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        (params.not_before, params.not_after) = validity(CA_VALIDITY)?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| pki_err("self-signing the CA", e))?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem,
            key_pem,
        })
    }

    /// An existing CA: its certificate and its PKCS#8 private key (PEM). Fails when the key is
    /// not the certificate's, so swapped or stale files are caught at start.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| {
            pki_err(
                "CA key",
                format!(
                    "{e} (a PKCS#8 `BEGIN PRIVATE KEY` PEM of an ECDSA P-256/P-384, Ed25519 or \
                     RSA key is expected; convert with `openssl pkcs8 -topk8 -nocrypt`)"
                ),
            )
        })?;
        let der = first_cert_der(cert_pem, "CA certificate")?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| pki_err("parsing the CA certificate", e))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(Error::Pki(
                "the CA key does not belong to the CA certificate".into(),
            ));
        }
        if !parsed.is_ca() {
            return Err(Error::Pki(
                "the CA certificate is not a CA (no basicConstraints CA:TRUE)".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&der.into(), key)
            .map_err(|e| pki_err("loading the CA certificate", e))?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A server certificate for a host agent: CN `common_name`, SAN from `address` (`ip:port`,
    /// `name:port`, `[v6]:port` or a bare host; an IP gives an IP SAN, anything else a DNS SAN),
    /// ExtKeyUsage ServerAuth, valid from a minute ago for `ttl`.
    pub fn issue_server_cert(
        &self,
        common_name: &str,
        address: &str,
        ttl: Duration,
    ) -> Result<IssuedCert> {
        let san = san_for(address)?;
        self.issue(
            common_name,
            vec![san],
            ExtendedKeyUsagePurpose::ServerAuth,
            ttl,
        )
    }

    /// A client certificate (the control plane's): CN `common_name`, ExtKeyUsage ClientAuth.
    pub fn issue_client_cert(&self, common_name: &str, ttl: Duration) -> Result<IssuedCert> {
        self.issue(
            common_name,
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            ttl,
        )
    }

    fn issue(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
        ttl: Duration,
    ) -> Result<IssuedCert> {
        let key = new_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(common_name);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let (not_before, not_after) = validity(ttl)?;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| pki_err("signing the certificate", e))?;
        Ok(IssuedCert {
            fingerprint_sha256_hex: hex::encode(Sha256::digest(cert.der())),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: SystemTime::from(not_after),
        })
    }
}

/// The SAN a server certificate for `address` gets.
fn san_for(address: &str) -> Result<SanType> {
    let address = address.trim();
    if let Ok(sock) = address.parse::<SocketAddr>() {
        return Ok(SanType::IpAddress(sock.ip()));
    }
    if let Ok(ip) = address.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let host = match address.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => address,
    };
    if host.is_empty() {
        return Err(Error::Pki(format!(
            "address {address:?} has no host; use ip:port or name:port"
        )));
    }
    let name = host
        .to_ascii_lowercase()
        .try_into()
        .map_err(|e| pki_err(&format!("address {address:?} is not a DNS name"), e))?;
    Ok(SanType::DnsName(name))
}

fn first_cert_der(cert_pem: &str, what: &str) -> Result<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| pki_err(&format!("{what} is not a `BEGIN CERTIFICATE` PEM"), e))
}

/// When the first certificate in `cert_pem` expires (the agent refreshes its own ahead of it).
pub fn cert_not_after(cert_pem: &str) -> Result<SystemTime> {
    let der = first_cert_der(cert_pem, "certificate")?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| pki_err("parsing the certificate", e))?;
    Ok(SystemTime::from(parsed.validity().not_after.to_datetime()))
}

/// SHA-256 over the DER of the first certificate in `cert_pem`, lowercase hex.
pub fn fingerprint_sha256_hex(cert_pem: &str) -> Result<String> {
    let der = first_cert_der(cert_pem, "certificate")?;
    Ok(hex::encode(Sha256::digest(der)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed_sans(pem: &str) -> Vec<String> {
        let der = first_cert_der(pem, "cert").expect("der");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        cert.subject_alternative_name()
            .expect("san ext")
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .map(|n| match n {
                        x509_parser::extensions::GeneralName::IPAddress(b) => {
                            match <[u8; 4]>::try_from(*b) {
                                Ok(v4) => format!("ip:{}", IpAddr::from(v4)),
                                Err(_) => match <[u8; 16]>::try_from(*b) {
                                    Ok(v6) => format!("ip:{}", IpAddr::from(v6)),
                                    Err(_) => format!("ip:{b:?}"),
                                },
                            }
                        }
                        x509_parser::extensions::GeneralName::DNSName(d) => format!("dns:{d}"),
                        other => other.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn sans_follow_the_address() {
        let ca = Ca::generate("wrenn test CA").expect("ca");
        let day = Duration::from_secs(86400);
        let ip = ca
            .issue_server_cert("host-1", "10.0.0.5:50051", day)
            .expect("issue");
        assert_eq!(parsed_sans(&ip.cert_pem), ["ip:10.0.0.5"]);
        let v6 = ca
            .issue_server_cert("host-1", "[::1]:50051", day)
            .expect("issue");
        assert_eq!(parsed_sans(&v6.cert_pem), ["ip:::1"]);
        let dns = ca
            .issue_server_cert("host-1", "Agent-1.example.com:50051", day)
            .expect("issue");
        assert_eq!(parsed_sans(&dns.cert_pem), ["dns:agent-1.example.com"]);
        assert!(ca.issue_server_cert("host-1", ":50051", day).is_err());
    }

    #[test]
    fn validity_fingerprint_and_usage() {
        let ca = Ca::generate("wrenn test CA").expect("ca");
        let ttl = Duration::from_secs(7 * 86400);
        let before = SystemTime::now();
        let leaf = ca
            .issue_server_cert("host-1", "127.0.0.1:1", ttl)
            .expect("issue");
        assert_eq!(
            cert_not_after(&leaf.cert_pem).expect("not_after"),
            // Certificates carry whole seconds.
            SystemTime::UNIX_EPOCH
                + Duration::from_secs(
                    leaf.not_after
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .expect("epoch")
                        .as_secs()
                )
        );
        let lifetime = leaf.not_after.duration_since(before).expect("future");
        assert!(
            lifetime >= ttl && lifetime < ttl + Duration::from_secs(5),
            "{lifetime:?}"
        );
        assert_eq!(
            fingerprint_sha256_hex(&leaf.cert_pem).expect("fp"),
            leaf.fingerprint_sha256_hex
        );
        assert_eq!(leaf.fingerprint_sha256_hex.len(), 64);

        let der = first_cert_der(&leaf.cert_pem, "cert").expect("der");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let not_before = SystemTime::from(cert.validity().not_before.to_datetime());
        assert!(not_before <= before - Duration::from_secs(59));
        let eku = cert
            .extended_key_usage()
            .expect("eku")
            .expect("eku present");
        assert!(eku.value.server_auth && !eku.value.client_auth);
        assert_eq!(
            cert.subject().to_string(),
            "CN=host-1",
            "the host id is the CN"
        );

        let client = ca
            .issue_client_cert("wrenn-cp", Duration::from_secs(86400))
            .expect("client");
        let der = first_cert_der(&client.cert_pem, "cert").expect("der");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let eku = cert
            .extended_key_usage()
            .expect("eku")
            .expect("eku present");
        assert!(eku.value.client_auth && !eku.value.server_auth);
    }

    #[test]
    fn ca_round_trips_through_pem() {
        let ca = Ca::generate("wrenn test CA").expect("ca");
        let again = Ca::from_pem(ca.cert_pem(), ca.key_pem()).expect("reload");
        // A leaf from the reloaded CA names the same issuer.
        let leaf = again
            .issue_client_cert("wrenn-cp", Duration::from_secs(60))
            .expect("issue");
        let der = first_cert_der(&leaf.cert_pem, "cert").expect("der");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        assert_eq!(cert.issuer().to_string(), "CN=wrenn test CA");

        let other = Ca::generate("other").expect("other");
        let err = Ca::from_pem(ca.cert_pem(), other.key_pem()).expect_err("mismatch");
        assert!(err.to_string().contains("does not belong"), "{err}");
        let err = Ca::from_pem(ca.cert_pem(), "garbage").expect_err("bad key");
        assert!(err.to_string().contains("PKCS#8"), "{err}");
        let err = Ca::from_pem(&leaf.cert_pem, &leaf.key_pem).expect_err("leaf");
        assert!(err.to_string().contains("not a CA"), "{err}");
    }
}
