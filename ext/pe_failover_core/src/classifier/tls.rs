//! TLS for the classifier client: the Puppet CA as the only trust anchor,
//! the host's Puppet certificate and key as the client identity, an optional
//! CRL, and errors that name the file at fault.
//!
//! Everything that can be checked before connecting is checked here, so a
//! wrong file is reported as such instead of as a failed handshake: the CA
//! file holds certificates, the key parses (PKCS#1 RSA, PKCS#8 or SEC1 EC) and
//! belongs to the certificate, and the certificate is signed by the CA, not
//! expired and not revoked. The key's contents never appear in a message.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, RootCertStore};

use crate::error::{Error, ErrorKind, Result};

/// The files of a client identity, as given to the builder.
#[derive(Clone, Debug)]
pub(crate) struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub crl: Option<PathBuf>,
}

/// What [`client_config`] builds.
pub(crate) struct Tls {
    pub config: ClientConfig,
    /// The certname (subject CN) of the client certificate.
    pub certname: String,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(&format!("read the {what}"), path, e))
}

fn verification(path: &Path, message: String) -> Error {
    Error::new(ErrorKind::Verification, message).with_path(path)
}

fn pem_error(path: &Path, what: &str, err: rustls::pki_types::pem::Error) -> Error {
    verification(
        path,
        format!("{} is not a valid PEM {what} file: {err}", path.display()),
    )
}

/// Every certificate in a PEM file (other sections are skipped).
fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, what, e))?;
    if certs.is_empty() {
        return Err(verification(
            path,
            format!(
                "{} holds no certificate (expected a PEM \"BEGIN CERTIFICATE\" block)",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read(path, "private key")?;
    // Only the armour lines are looked at, never the key material.
    let encrypted = pem.split(|&b| b == b'\n').any(|line| {
        line.starts_with(b"-----BEGIN ENCRYPTED") || line.starts_with(b"Proc-Type: 4,ENCRYPTED")
    });
    if encrypted {
        return Err(verification(
            path,
            format!(
                "the private key {} is encrypted; Puppet host keys are not, use the host's own key",
                path.display()
            ),
        ));
    }
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let why = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no private key (expected PEM \"RSA PRIVATE KEY\", \"PRIVATE KEY\" or \"EC PRIVATE KEY\")"
                    .to_owned()
            }
            // Say what kind of damage, never echo anything from the file.
            rustls::pki_types::pem::Error::Base64Decode(_) => {
                "is not a valid PEM private key (its base64 body is damaged)".to_owned()
            }
            rustls::pki_types::pem::Error::MissingSectionEnd { .. } => {
                "is not a valid PEM private key (a section has no END line)".to_owned()
            }
            _ => "is not a valid PEM private key".to_owned(),
        };
        verification(path, format!("{} {why}", path.display()))
    })
}

fn crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let pem = read(path, "CRL")?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, "CRL", e))?;
    if crls.is_empty() {
        return Err(verification(
            path,
            format!(
                "{} holds no certificate revocation list (expected a PEM \"BEGIN X509 CRL\" block)",
                path.display()
            ),
        ));
    }
    Ok(crls)
}

/// Builds the rustls configuration for `files`, checking each file.
pub(crate) fn client_config(files: &TlsFiles) -> Result<Tls> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let mut roots = RootCertStore::empty();
    for cert in certificates(&files.ca, "CA certificate")? {
        roots.add(cert).map_err(|e| {
            verification(
                &files.ca,
                format!(
                    "{} holds a certificate that cannot be used as a CA: {e}",
                    files.ca.display()
                ),
            )
        })?;
    }
    let roots = Arc::new(roots);
    let crls = match &files.crl {
        Some(path) => crls(path)?,
        None => Vec::new(),
    };

    let chain = certificates(&files.cert, "client certificate")?;
    let key = private_key(&files.key)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| {
            verification(
                &files.key,
                format!(
                    "the private key {} cannot be used: {e} (supported: RSA, ECDSA P-256/P-384, Ed25519)",
                    files.key.display()
                ),
            )
        })?;
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        CertifiedKey::new(chain.clone(), signing_key).keys_match()
    {
        return Err(verification(
            &files.key,
            format!(
                "the private key {} does not belong to the client certificate {}",
                files.key.display(),
                files.cert.display()
            ),
        )
        .with_hint("use the key from the same Puppet ssldir as the certificate (private_keys/<certname>.pem)"));
    }
    check_client_certificate(files, &chain, &roots, &crls, &provider)?;
    let certname = certname(&chain[0]).unwrap_or_else(|| "<certificate without a CN>".to_owned());

    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status()
        .build()
        .map_err(|e| {
            let path = files.crl.as_deref().unwrap_or(&files.ca);
            verification(
                path,
                format!("cannot use {} to verify servers: {e}", path.display()),
            )
        })?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorKind::Internal, format!("TLS versions: {e}")))?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| {
            verification(
                &files.cert,
                format!(
                    "the client certificate {} and key {} cannot be used together: {e}",
                    files.cert.display(),
                    files.key.display()
                ),
            )
        })?;
    Ok(Tls { config, certname })
}

/// Checks locally what the classifier will check: the client certificate
/// chains to the CA, is within its validity period and is not revoked.
/// Other findings (key usage, ...) are left to the server.
fn check_client_certificate(
    files: &TlsFiles,
    chain: &[CertificateDer<'static>],
    roots: &Arc<RootCertStore>,
    crls: &[CertificateRevocationListDer<'static>],
    provider: &Arc<CryptoProvider>,
) -> Result<()> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), Arc::clone(provider))
            .with_crls(crls.iter().cloned())
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| {
                verification(
                    &files.ca,
                    format!(
                        "cannot use {} to check the client certificate: {e}",
                        files.ca.display()
                    ),
                )
            })?;
    let Err(err) = verifier.verify_client_cert(&chain[0], &chain[1..], UnixTime::now()) else {
        return Ok(());
    };
    let cert = files.cert.display();
    let ca = files.ca.display();
    let problem = match &err {
        rustls::Error::InvalidCertificate(e) => match e {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => Some(format!(
                "the client certificate {cert} is not signed by the CA in {ca}"
            )),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                Some(format!("the client certificate {cert} has expired"))
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => Some(
                format!("the client certificate {cert} is not valid yet (check this host's clock)"),
            ),
            CertificateError::Revoked => Some(format!(
                "the client certificate {cert} is revoked by the CRL {}",
                files
                    .crl
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )),
            _ => None,
        },
        _ => None,
    };
    match problem {
        Some(message) => Err(verification(&files.cert, message).with_hint(
            "use this host's own Puppet certificate and key (ssl/certs/<certname>.pem, \
             ssl/private_keys/<certname>.pem) and the CA certificate of the same Puppet \
             infrastructure (ssl/certs/ca.pem)",
        )),
        None => Ok(()),
    }
}

/// The certname of a certificate: the first common name (CN) of its subject.
pub(crate) fn certname(cert: &CertificateDer<'_>) -> Option<String> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    common_name(parsed.subject())
}

/// One DER element: (tag, contents, rest).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The first CN in the contents of an X.501 `Name` (an RDNSequence).
fn common_name(mut name: &[u8]) -> Option<String> {
    const SET: u8 = 0x31;
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    const CN: &[u8] = &[0x55, 0x04, 0x03]; // 2.5.4.3
    while !name.is_empty() {
        let (tag, mut rdn, rest) = der_element(name)?;
        name = rest;
        if tag != SET {
            return None;
        }
        while !rdn.is_empty() {
            let (tag, attr, rest) = der_element(rdn)?;
            rdn = rest;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, value) = der_element(attr)?;
            if tag != OID || oid != CN {
                continue;
            }
            let (kind, text, _) = der_element(value)?;
            return match kind {
                // UTF8String, PrintableString, TeletexString, IA5String
                0x0c | 0x13 | 0x14 | 0x16 => Some(String::from_utf8_lossy(text).into_owned()),
                // BMPString (UTF-16BE)
                0x1e => {
                    let units: Vec<u16> = text
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect();
                    Some(String::from_utf16_lossy(&units))
                }
                _ => None,
            };
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf8_cn(cn: &str) -> Vec<u8> {
        // SET { SEQUENCE { OID 2.5.4.3, UTF8String cn } }
        let mut value = vec![0x0c, cn.len() as u8];
        value.extend_from_slice(cn.as_bytes());
        let mut seq = vec![0x06, 0x03, 0x55, 0x04, 0x03];
        seq.extend(value);
        let mut attr = vec![0x30, seq.len() as u8];
        attr.extend(seq);
        let mut set = vec![0x31, attr.len() as u8];
        set.extend(attr);
        set
    }

    #[test]
    fn finds_the_common_name() {
        assert_eq!(
            common_name(&utf8_cn("master1.puppet.vm")).as_deref(),
            Some("master1.puppet.vm")
        );
        // O=x first, then CN
        let mut name = vec![
            0x31, 0x0a, 0x30, 0x08, 0x06, 0x03, 0x55, 0x04, 0x0a, 0x13, 0x01, b'x',
        ];
        name.extend(utf8_cn("a.example"));
        assert_eq!(common_name(&name).as_deref(), Some("a.example"));
    }

    #[test]
    fn malformed_names_are_none_never_a_panic() {
        assert_eq!(common_name(&[]), None);
        assert_eq!(common_name(&[0x31]), None);
        assert_eq!(common_name(&[0x31, 0x85, 0, 0, 0, 0, 1]), None);
        assert_eq!(common_name(&[0x30, 0x00]), None);
        let full = utf8_cn("abc");
        for cut in 0..full.len() {
            let _ = common_name(&full[..cut]);
        }
    }
}
