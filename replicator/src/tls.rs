//! Mutual TLS between the two nodes, by certificate pinning.
//!
//! Each node has a self-signed certificate and its key ([`generate`],
//! [`write_identity`], [`Identity::load`]). Each node pins the other's
//! certificate, as a file or as its SHA-256 fingerprint ([`PeerTrust`]). A
//! handshake succeeds only if the peer presents exactly the pinned certificate
//! and proves that it holds the matching key. Names, CA chains and validity
//! dates are ignored: there is no CA to trust and no expiry to renew, and a
//! certificate is replaced by replacing the pinned file on the other node.
//!
//! Both directions are checked by [`PinnedPeerVerifier`]: as the client it
//! checks the server's certificate, as the server it requires and checks the
//! client's. Only TLS 1.3 is offered, with the ALPN protocol [`ALPN`].
//!
//! Fingerprints are written the way `openssl x509 -noout -fingerprint -sha256`
//! prints them, prefixed with `sha256:`, so an administrator can cross-check a
//! certificate file against a configured or logged fingerprint.

use std::fmt::{self, Write as _};
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use thiserror::Error;

/// The ALPN protocol both sides must agree on.
pub const ALPN: &[u8] = b"twinfs/1";

/// The server name a client asks for and every generated certificate carries.
///
/// The verifier ignores names (the certificate is pinned), but rustls needs a
/// name to send, and a fixed one keeps peer addresses out of the certificate.
pub const SERVER_NAME: &str = "twinfs-peer";

/// Why a certificate, key or fingerprint cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rcgen could not build the certificate.
    #[error("cannot generate a certificate for node {node:?}: {error}")]
    Generate {
        /// The node name given.
        node: String,
        /// rcgen's error.
        error: rcgen::Error,
    },
    /// [`write_identity`] found a file where it would write.
    #[error("refusing to overwrite {path}: it already exists")]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// [`write_identity`] was given the same path for the certificate and the key.
    #[error("certificate and key must be different files, both are {path}")]
    SamePath {
        /// The path given twice.
        path: PathBuf,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {error}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// A file could not be read (missing, unreadable).
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// A file holds a malformed PEM section.
    #[error("{path} is not valid PEM: {error}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        error: io::Error,
    },
    /// A certificate file holds no certificate.
    #[error("{path} contains no PEM certificate (no \"BEGIN CERTIFICATE\" block){hint}")]
    NoCertificate {
        /// The file.
        path: PathBuf,
        /// A hint when the file holds something else that explains the mistake.
        hint: &'static str,
    },
    /// A pinned peer certificate file holds more than one certificate.
    #[error("{path} contains {count} certificates, expected exactly the peer's one")]
    ManyCertificates {
        /// The file.
        path: PathBuf,
        /// How many it holds.
        count: usize,
    },
    /// A key file holds no private key.
    #[error("{path} contains no PEM private key (no \"BEGIN PRIVATE KEY\" block){hint}")]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
        /// A hint when the file holds something else that explains the mistake.
        hint: &'static str,
    },
    /// The private key is of a kind the crypto provider cannot sign with.
    #[error("{path}: unusable private key: {error}")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// rustls's error.
        error: rustls::Error,
    },
    /// The key does not belong to the certificate.
    #[error("private key {key_path} does not match certificate {cert_path}")]
    KeyMismatch {
        /// The certificate file.
        cert_path: PathBuf,
        /// The key file.
        key_path: PathBuf,
    },
    /// A configured fingerprint cannot be parsed.
    #[error("invalid certificate fingerprint {input:?}: {reason}")]
    BadFingerprint {
        /// The string given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls or quinn refused the configuration built from an identity.
    #[error("cannot build the TLS configuration: {reason}")]
    Config {
        /// The library's complaint.
        reason: String,
    },
}

/// A freshly generated certificate and key, PEM-encoded.
#[derive(Clone)]
pub struct GeneratedIdentity {
    /// The self-signed certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
    /// The certificate's [`fingerprint`], for the peer's configuration.
    pub fingerprint: String,
}

impl fmt::Debug for GeneratedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key, not even in a debug log.
        f.debug_struct("GeneratedIdentity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Generates a self-signed ECDSA P-256 certificate and key for `node_name`.
///
/// The certificate names `node_name` (common name and subject alternative
/// name) and [`SERVER_NAME`], and is valid from last year for a hundred years:
/// peers pin it, so expiry would only add an outage without adding safety.
pub fn generate(node_name: &str) -> Result<GeneratedIdentity, TlsError> {
    let err = |error| TlsError::Generate {
        node: node_name.to_owned(),
        error,
    };
    let mut names = vec![node_name.to_owned()];
    if node_name != SERVER_NAME {
        names.push(SERVER_NAME.to_owned());
    }
    let mut params = rcgen::CertificateParams::new(names).map_err(err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node_name);
    // Calendar years from the clock, without a date library: an average
    // Gregorian year is 365.2425 days. Starting a year back keeps a clock that
    // is slightly behind (or the rounding) from producing a not-yet-valid cert.
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let year = 1970 + i32::try_from(secs / 31_556_952).unwrap_or(0);
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 100, 1, 1);
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    Ok(GeneratedIdentity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        fingerprint: fingerprint(cert.der()),
    })
}

/// Writes a generated identity: the certificate with mode 0644, the key with 0600.
///
/// Never overwrites: if either file exists, nothing is written. Both files are
/// fsync'ed, and so are their directories, before this returns. If writing
/// fails half-way, the files this call created are removed again.
pub fn write_identity(
    gen: &GeneratedIdentity,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), TlsError> {
    if cert_path == key_path {
        return Err(TlsError::SamePath {
            path: cert_path.to_owned(),
        });
    }
    // Check both before creating either, so a refusal leaves nothing behind.
    for path in [cert_path, key_path] {
        if path.symlink_metadata().is_ok() {
            return Err(TlsError::Exists {
                path: path.to_owned(),
            });
        }
    }
    write_new(cert_path, gen.cert_pem.as_bytes(), 0o644)?;
    if let Err(e) = write_new(key_path, gen.key_pem.as_bytes(), 0o600) {
        let _ = std::fs::remove_file(cert_path);
        return Err(e);
    }
    for path in [cert_path, key_path] {
        sync_parent(path).map_err(|error| TlsError::Write {
            path: path.to_owned(),
            error,
        })?;
    }
    Ok(())
}

/// Creates `path` (which must not exist) with `mode`, writes `data` and fsyncs it.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let err = |error: io::Error| match error.kind() {
        // Lost a race with another writer since the check above.
        io::ErrorKind::AlreadyExists => TlsError::Exists {
            path: path.to_owned(),
        },
        _ => TlsError::Write {
            path: path.to_owned(),
            error,
        },
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    let written = (|| {
        // The umask may have removed bits from `mode`; the modes are part of
        // the contract (0644 lets an admin copy the certificate to the peer).
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(data)?;
        file.sync_all()
    })();
    written.map_err(|error| {
        let _ = std::fs::remove_file(path);
        err(error)
    })
}

/// Makes the directory entry of `path` durable.
fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

/// A node's own certificate chain and private key, ready for rustls.
pub struct Identity {
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads a PEM certificate (chain, end-entity first) and its PEM private key.
    ///
    /// Checks that the key can sign and belongs to the certificate. Every error
    /// names the file at fault. Warns if the key file is readable by others.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Identity, TlsError> {
        let cert_items = read_pem(cert_path)?;
        let cert_chain: Vec<CertificateDer<'static>> = cert_items
            .iter()
            .filter_map(|item| match item {
                rustls_pemfile::Item::X509Certificate(c) => Some(c.clone()),
                _ => None,
            })
            .collect();
        if cert_chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: cert_path.to_owned(),
                hint: if cert_items.iter().any(is_key) {
                    " but a private key: are the certificate and key paths swapped?"
                } else {
                    ""
                },
            });
        }

        let key_items = read_pem(key_path)?;
        let has_cert = key_items
            .iter()
            .any(|i| matches!(i, rustls_pemfile::Item::X509Certificate(_)));
        let key = key_items
            .into_iter()
            .find_map(|item| match item {
                rustls_pemfile::Item::Pkcs1Key(k) => Some(PrivateKeyDer::Pkcs1(k)),
                rustls_pemfile::Item::Pkcs8Key(k) => Some(PrivateKeyDer::Pkcs8(k)),
                rustls_pemfile::Item::Sec1Key(k) => Some(PrivateKeyDer::Sec1(k)),
                _ => None,
            })
            .ok_or_else(|| TlsError::NoPrivateKey {
                path: key_path.to_owned(),
                hint: if has_cert {
                    " but a certificate: are the certificate and key paths swapped?"
                } else {
                    ""
                },
            })?;
        warn_if_key_exposed(key_path);

        let provider = provider();
        let signing_key = provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|error| TlsError::BadKey {
                path: key_path.to_owned(),
                error,
            })?;
        rustls::sign::CertifiedKey::new(cert_chain.clone(), signing_key)
            .keys_match()
            .map_err(|error| match error {
                rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                    cert_path: cert_path.to_owned(),
                    key_path: key_path.to_owned(),
                },
                // The end-entity certificate itself did not parse.
                error => TlsError::Pem {
                    path: cert_path.to_owned(),
                    error: io::Error::new(io::ErrorKind::InvalidData, error.to_string()),
                },
            })?;
        Ok(Identity { cert_chain, key })
    }

    /// The end-entity certificate, DER-encoded.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_chain[0]
    }

    /// The [`fingerprint`] of the end-entity certificate: what the peer pins.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.cert_der())
    }
}

fn is_key(item: &rustls_pemfile::Item) -> bool {
    matches!(
        item,
        rustls_pemfile::Item::Pkcs1Key(_)
            | rustls_pemfile::Item::Pkcs8Key(_)
            | rustls_pemfile::Item::Sec1Key(_)
    )
}

/// Reads every PEM section of `path`; text outside sections is ignored.
fn read_pem(path: &Path) -> Result<Vec<rustls_pemfile::Item>, TlsError> {
    let data = std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.to_owned(),
        error,
    })?;
    rustls_pemfile::read_all(&mut &data[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem {
            path: path.to_owned(),
            error,
        })
}

fn warn_if_key_exposed(path: &Path) {
    if let Ok(meta) = path.metadata() {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:04o}"),
                "private key is readable by other users; chmod 600 it"
            );
        }
    }
}

/// The SHA-256 fingerprint of a DER certificate: `sha256:AB:CD:…`.
///
/// After the `sha256:` prefix this is exactly what
/// `openssl x509 -noout -fingerprint -sha256` prints after `=`.
pub fn fingerprint(cert_der: &[u8]) -> String {
    format_fingerprint(&sha256(cert_der))
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    digest
        .as_ref()
        .try_into()
        .expect("SHA-256 digests are 32 bytes")
}

fn format_fingerprint(digest: &[u8; 32]) -> String {
    let mut s = String::with_capacity(7 + 3 * 32);
    s.push_str("sha256:");
    for (i, b) in digest.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        write!(s, "{b:02X}").expect("writing to a String cannot fail");
    }
    s
}

/// The one certificate a node accepts from its peer.
#[derive(Clone, Debug)]
pub enum PeerTrust {
    /// The peer's certificate file, as copied from the peer.
    Certificate {
        /// The certificate, DER-encoded.
        der: CertificateDer<'static>,
        /// Where it was read from, for error messages.
        path: PathBuf,
    },
    /// The SHA-256 digest of the peer's certificate, as configured.
    Fingerprint([u8; 32]),
}

impl PeerTrust {
    /// Pins the single certificate in the PEM file `path`.
    pub fn from_cert_file(path: &Path) -> Result<PeerTrust, TlsError> {
        let items = read_pem(path)?;
        let has_key = items.iter().any(is_key);
        let mut certs: Vec<CertificateDer<'static>> = items
            .into_iter()
            .filter_map(|item| match item {
                rustls_pemfile::Item::X509Certificate(c) => Some(c),
                _ => None,
            })
            .collect();
        match certs.len() {
            1 => Ok(PeerTrust::Certificate {
                der: certs.remove(0),
                path: path.to_owned(),
            }),
            0 => Err(TlsError::NoCertificate {
                path: path.to_owned(),
                hint: if has_key {
                    " but a private key: pin the peer's certificate, and never copy a key"
                } else {
                    ""
                },
            }),
            count => Err(TlsError::ManyCertificates {
                path: path.to_owned(),
                count,
            }),
        }
    }

    /// Pins a SHA-256 fingerprint.
    ///
    /// Accepts `sha256:AB:CD:…` as [`fingerprint`] prints it, with or without
    /// the prefix and the colons, in any case, and openssl's own output
    /// (`sha256 Fingerprint=AB:CD:…`).
    pub fn from_fingerprint(s: &str) -> Result<PeerTrust, TlsError> {
        parse_fingerprint(s)
            .map(PeerTrust::Fingerprint)
            .map_err(|reason| TlsError::BadFingerprint {
                input: s.to_owned(),
                reason,
            })
    }

    /// The SHA-256 digest of the pinned certificate.
    pub fn sha256(&self) -> [u8; 32] {
        match self {
            PeerTrust::Certificate { der, .. } => sha256(der),
            PeerTrust::Fingerprint(digest) => *digest,
        }
    }

    /// The expected peer fingerprint, formatted like [`fingerprint`].
    pub fn fingerprint(&self) -> String {
        format_fingerprint(&self.sha256())
    }
}

impl fmt::Display for PeerTrust {
    /// The fingerprint, and the file it comes from if any.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerTrust::Certificate { path, .. } => {
                write!(f, "{} (from {})", self.fingerprint(), path.display())
            }
            PeerTrust::Fingerprint(_) => f.write_str(&self.fingerprint()),
        }
    }
}

fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let mut rest = s.trim();
    // openssl prints "sha256 Fingerprint=" (3.x) or "SHA256 Fingerprint=" (1.1).
    for prefix in ["sha256 fingerprint=", "sha256:"] {
        if rest.len() >= prefix.len()
            && rest.is_char_boundary(prefix.len())
            && rest[..prefix.len()].eq_ignore_ascii_case(prefix)
        {
            rest = &rest[prefix.len()..];
            break;
        }
    }
    if rest.is_empty() {
        return Err("no hex digits".to_owned());
    }
    let digits: Vec<char> = if rest.contains(':') {
        let groups: Vec<&str> = rest.split(':').collect();
        let first = groups[0];
        if first.len() > 2 && first.chars().any(|c| !c.is_ascii_hexdigit()) {
            return Err(format!(
                "{first:?} fingerprints are not accepted, only sha256 ones"
            ));
        }
        if let Some((i, g)) = groups.iter().enumerate().find(|(_, g)| g.len() != 2) {
            return Err(format!(
                "group {} is {g:?}; with colons, every group must be two hex digits",
                i + 1
            ));
        }
        groups.iter().flat_map(|g| g.chars()).collect()
    } else {
        rest.chars().collect()
    };
    if let Some(c) = digits.iter().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("{c:?} is not a hex digit"));
    }
    if digits.len() != 64 {
        return Err(format!(
            "a SHA-256 fingerprint has 32 bytes (64 hex digits), this has {} hex digits",
            digits.len()
        ));
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks(2)) {
        let hex: String = pair.iter().collect();
        *byte = u8::from_str_radix(&hex, 16).expect("checked hex digits");
    }
    Ok(out)
}

/// Accepts exactly the pinned peer certificate, in either direction.
///
/// The end-entity certificate's SHA-256 must equal the pinned one; server
/// names, intermediates and validity dates are ignored. The TLS 1.3
/// handshake signature is still verified against that certificate, so the
/// peer proves it holds the key. As a [`ClientCertVerifier`] it requires a
/// client certificate.
#[derive(Debug)]
pub struct PinnedPeerVerifier {
    pinned: [u8; 32],
    /// How the pin is shown in rejections: fingerprint and source file.
    pinned_desc: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedPeerVerifier {
    /// A verifier for `trust`, using the ring provider's signature algorithms.
    pub fn new(trust: &PeerTrust) -> Arc<PinnedPeerVerifier> {
        Arc::new(PinnedPeerVerifier {
            pinned: trust.sha256(),
            pinned_desc: trust.to_string(),
            algorithms: provider().signature_verification_algorithms,
        })
    }

    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let got = sha256(end_entity);
        if got == self.pinned {
            return Ok(());
        }
        Err(rejection(format!(
            "peer certificate {} is not the pinned peer certificate {}",
            format_fingerprint(&got),
            self.pinned_desc
        )))
    }

    /// Checks the handshake signature: the peer holds the certificate's key.
    fn check_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms).map_err(|e| {
            // Say what it means: a copy of a (public) certificate is not enough.
            rejection(format!(
                "peer presented certificate {} but did not prove it holds its private key ({e})",
                fingerprint(cert)
            ))
        })
    }

    fn tls13_only() -> rustls::Error {
        rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic)
    }
}

/// A certificate rejection carrying `reason`.
///
/// `CertificateError::Other` makes rustls send the certificate_unknown alert
/// and keeps our text in the error that quinn reports locally and sends to the
/// peer in its CONNECTION_CLOSE frame.
fn rejection(reason: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        Rejection(reason),
    ))))
}

/// A rejection reason, as a standard error for [`rustls::OtherError`].
struct Rejection(String);

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Rejection {
    // rustls 0.23 formats `CertificateError::Other` with `Debug`, and that
    // string is what reaches the logs of both nodes: keep it the plain text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Rejection {}

impl ServerCertVerifier for PinnedPeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(Self::tls13_only())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for PinnedPeerVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(Self::tls13_only())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The crypto provider used everywhere: ring, as quinn's `rustls-ring` feature expects.
///
/// AES-128-GCM comes first (ring's default puts AES-256-GCM first): every
/// replicated byte is encrypted once and decrypted once, and AES-128 does 10
/// rounds per block against 14. Both are TLS 1.3 suites with 128-bit or better
/// security; the others stay acceptable, so a peer that prefers them still
/// connects.
fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(p)
}

fn config_error(e: impl fmt::Display) -> TlsError {
    TlsError::Config {
        reason: e.to_string(),
    }
}

/// The QUIC server configuration: presents `identity`, requires the pinned client
/// certificate; `transport` carries the QUIC timers and windows (the transport module's).
pub fn server_config(
    identity: &Identity,
    trust: &PeerTrust,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_client_cert_verifier(PinnedPeerVerifier::new(trust))
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())
        .map_err(config_error)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(config_error)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// The QUIC client configuration: presents `identity`, accepts only the pinned server
/// certificate; `transport` as for [`server_config`].
pub fn client_config(
    identity: &Identity,
    trust: &PeerTrust,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .dangerous() // the pinned verifier replaces WebPKI validation on purpose
        .with_custom_certificate_verifier(PinnedPeerVerifier::new(trust))
        .with_client_auth_cert(identity.cert_chain.clone(), identity.key.clone_key())
        .map_err(config_error)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(config_error)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_gcm_is_offered_first_and_the_others_stay() {
        let suites: Vec<rustls::CipherSuite> =
            provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert!(suites.contains(&rustls::CipherSuite::TLS13_AES_256_GCM_SHA384));
        assert_eq!(
            suites.len(),
            rustls::crypto::ring::default_provider().cipher_suites.len()
        );
    }

    const HEX: &str = "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF";

    fn expected() -> [u8; 32] {
        let mut b = [0u8; 32];
        for (i, x) in b.iter_mut().enumerate() {
            *x = u8::from_str_radix(&HEX[2 * i..2 * i + 2], 16).unwrap();
        }
        b
    }

    fn colons(s: &str) -> String {
        s.as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":")
    }

    #[test]
    fn fingerprint_formats_round_trip() {
        let formatted = format_fingerprint(&expected());
        assert_eq!(formatted, format!("sha256:{}", colons(HEX)));
        for s in [
            formatted.clone(),
            formatted.to_lowercase(),
            HEX.to_owned(),
            HEX.to_lowercase(),
            format!("SHA256:{HEX}"),
            colons(HEX),
            format!("sha256 Fingerprint={}", colons(HEX)),
            format!("  {formatted}\n"),
        ] {
            assert_eq!(parse_fingerprint(&s), Ok(expected()), "{s}");
        }
    }

    #[test]
    fn bad_fingerprints_say_what_is_wrong() {
        let cases = [
            ("", "no hex digits"),
            ("sha256:", "no hex digits"),
            (&HEX[..62], "this has 62 hex digits"),
            ("sha256:AB:CD", "this has 4 hex digits"),
            ("AB:CDE:01", "group 2 is \"CDE\""),
            ("AB::CD", "group 2 is \"\""),
            (&HEX.replace('A', "G"), "'G' is not a hex digit"),
            (
                "md5:AB:CD",
                "\"md5\" fingerprints are not accepted, only sha256 ones",
            ),
            ("sha1:AB:CD", "\"sha1\" fingerprints are not accepted"),
        ];
        for (input, want) in cases {
            let err = PeerTrust::from_fingerprint(input).unwrap_err().to_string();
            assert!(err.contains(want), "{input:?}: {err}");
            assert!(err.starts_with("invalid certificate fingerprint"), "{err}");
        }
    }

    #[test]
    fn verifier_rejection_names_both_fingerprints_and_the_file() {
        let trust = PeerTrust::Certificate {
            der: CertificateDer::from(b"pinned".to_vec()),
            path: "/etc/twinfs/beta.crt".into(),
        };
        let verifier = PinnedPeerVerifier::new(&trust);
        assert!(verifier
            .check(&CertificateDer::from(&b"pinned"[..]))
            .is_ok());
        let err = verifier
            .check(&CertificateDer::from(&b"other"[..]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "peer certificate {} is not the pinned peer certificate {} (from /etc/twinfs/beta.crt)",
                fingerprint(b"other"),
                fingerprint(b"pinned")
            )),
            "{err}"
        );
    }
}
