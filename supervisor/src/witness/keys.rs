//! Keys: this node's signing key, and the pinned public keys of the others.
//!
//! They are the keys of the replication link's TLS identity (ECDSA P-256,
//! `twinfs` generates them with rcgen): the private key file (PKCS#8 PEM) of
//! this node, and the certificate files of the peer and of the witness. Only
//! the public key inside a pinned certificate is used; names and dates in it
//! are ignored, as on the replication link.

use std::fmt;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use rustls_pki_types::CertificateDer;

/// Length of an ECDSA P-256 signature on the wire (r ‖ s).
pub const SIGNATURE_LEN: usize = 64;

/// The DER prefix of a P-256 SubjectPublicKeyInfo: SEQUENCE { SEQUENCE {
/// id-ecPublicKey, prime256v1 }, BIT STRING (no unused bits) }, followed by
/// the 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Why a key or certificate cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The file holds a malformed PEM section.
    #[error("{path} is not valid PEM: {error}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        error: std::io::Error,
    },
    /// No certificate where one was expected.
    #[error("{path} contains no PEM certificate (no \"BEGIN CERTIFICATE\" block){hint}")]
    NoCertificate {
        /// The file.
        path: PathBuf,
        /// Explains a likely mistake (a key file given instead).
        hint: &'static str,
    },
    /// No private key where one was expected.
    #[error("{path} contains no PKCS#8 private key (no \"BEGIN PRIVATE KEY\" block){hint}")]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
        /// Explains a likely mistake (a certificate, or a key in another format).
        hint: &'static str,
    },
    /// The certificate is not DER X.509.
    #[error("{source_name}: not a usable X.509 certificate: {reason}")]
    BadCertificate {
        /// Where the certificate came from (a file, or "certificate bytes").
        source_name: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The certificate's key is not ECDSA P-256.
    #[error("{source_name}: the certificate's public key is not ECDSA P-256 (twinfs generates P-256 keys; regenerate this identity with `twinfs`)")]
    NotP256 {
        /// Where the certificate came from.
        source_name: String,
    },
    /// The private key is not a P-256 PKCS#8 key, or is corrupt.
    #[error("{source_name}: not an ECDSA P-256 PKCS#8 private key: {reason}")]
    BadPrivateKey {
        /// Where the key came from.
        source_name: String,
        /// ring's complaint.
        reason: String,
    },
    /// The system random generator failed while signing or generating.
    #[error("the system random generator failed while {what}")]
    Random {
        /// What was being done.
        what: &'static str,
    },
}

/// This node's private key: signs every datagram it sends.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key itself; the public half identifies it.
        f.debug_struct("SigningKey")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A key from PKCS#8 DER bytes (what `BEGIN PRIVATE KEY` holds).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<SigningKey, KeyError> {
        Self::from_der_named(der, "private key bytes")
    }

    fn from_der_named(der: &[u8], source_name: &str) -> Result<SigningKey, KeyError> {
        let rng = SystemRandom::new();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng).map_err(|e| {
                KeyError::BadPrivateKey {
                    source_name: source_name.to_owned(),
                    reason: e.to_string(),
                }
            })?;
        Ok(SigningKey { pair, rng })
    }

    /// Loads the PKCS#8 PEM key file of the node's TLS identity.
    pub fn from_pem_file(path: &Path) -> Result<SigningKey, KeyError> {
        let items = read_pem(path)?;
        let mut other_hint = "";
        for item in &items {
            match item {
                rustls_pemfile::Item::Pkcs8Key(key) => {
                    return Self::from_der_named(
                        key.secret_pkcs8_der(),
                        &path.display().to_string(),
                    );
                }
                rustls_pemfile::Item::Sec1Key(_) => {
                    other_hint = " but a \"BEGIN EC PRIVATE KEY\" block: convert it with `openssl pkcs8 -topk8 -nocrypt`";
                }
                rustls_pemfile::Item::Pkcs1Key(_) => {
                    other_hint = " but an RSA key: twinfs needs an ECDSA P-256 key";
                }
                rustls_pemfile::Item::X509Certificate(_) if other_hint.is_empty() => {
                    other_hint = " but a certificate: give the key file, not the certificate";
                }
                _ => {}
            }
        }
        Err(KeyError::NoPrivateKey {
            path: path.to_owned(),
            hint: other_hint,
        })
    }

    /// A new random key (tests, and `twinfs witness` when it has no identity yet).
    pub fn generate() -> Result<SigningKey, KeyError> {
        let rng = SystemRandom::new();
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(|_| {
                KeyError::Random {
                    what: "generating a key",
                }
            })?;
        Self::from_der_named(doc.as_ref(), "generated key")
    }

    /// The public half, as the others pin it.
    pub fn public_key(&self) -> PublicKey {
        let mut point = [0u8; 65];
        point.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(point)
    }

    /// Signs `msg` (SHA-256, fixed-length r ‖ s).
    pub(crate) fn sign(&self, msg: &[u8]) -> Result<[u8; SIGNATURE_LEN], KeyError> {
        let sig = self
            .pair
            .sign(&self.rng, msg)
            .map_err(|_| KeyError::Random {
                what: "signing a datagram",
            })?;
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(sig.as_ref());
        Ok(out)
    }
}

/// A pinned ECDSA P-256 public key (the uncompressed point).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey([u8; 65]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl fmt::Display for PublicKey {
    /// `p256:` and the first 8 bytes of the point's x coordinate, in hex:
    /// enough to tell two keys apart in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("p256:")?;
        for b in &self.0[1..9] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

impl PublicKey {
    /// The public key of a DER X.509 certificate.
    pub fn from_cert_der(der: &[u8]) -> Result<PublicKey, KeyError> {
        Self::from_cert_der_named(der, "certificate bytes")
    }

    fn from_cert_der_named(der: &[u8], source_name: &str) -> Result<PublicKey, KeyError> {
        let der = CertificateDer::from(der);
        let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| KeyError::BadCertificate {
            source_name: source_name.to_owned(),
            reason: format!("{e:?}"),
        })?;
        let spki = cert.subject_public_key_info();
        let spki = spki.as_ref();
        match spki.strip_prefix(&P256_SPKI_PREFIX[..]) {
            Some(point) if point.len() == 65 && point[0] == 0x04 => {
                let mut out = [0u8; 65];
                out.copy_from_slice(point);
                Ok(PublicKey(out))
            }
            _ => Err(KeyError::NotP256 {
                source_name: source_name.to_owned(),
            }),
        }
    }

    /// The public key of the single certificate in a PEM file (the file the
    /// peer or the witness gave you, as for the replication link).
    pub fn from_cert_pem_file(path: &Path) -> Result<PublicKey, KeyError> {
        let items = read_pem(path)?;
        let has_key = items.iter().any(|i| {
            matches!(
                i,
                rustls_pemfile::Item::Pkcs8Key(_)
                    | rustls_pemfile::Item::Sec1Key(_)
                    | rustls_pemfile::Item::Pkcs1Key(_)
            )
        });
        let cert = items.iter().find_map(|i| match i {
            rustls_pemfile::Item::X509Certificate(c) => Some(c),
            _ => None,
        });
        match cert {
            Some(c) => Self::from_cert_der_named(c.as_ref(), &path.display().to_string()),
            None => Err(KeyError::NoCertificate {
                path: path.to_owned(),
                hint: if has_key {
                    " but a private key: pin the other node's certificate, and never copy a key"
                } else {
                    ""
                },
            }),
        }
    }

    /// The node name a certificate made by `twinfs keygen` carries: its
    /// subject alternative DNS name other than the shared `twinfs-peer`, or
    /// else its common name. Beacon and witness frames name their sender, and
    /// this is how a node knows its peer's name before they ever talked.
    pub fn node_name_from_cert_pem_file(path: &Path) -> Result<String, KeyError> {
        let items = read_pem(path)?;
        let Some(der) = items.iter().find_map(|i| match i {
            rustls_pemfile::Item::X509Certificate(c) => Some(c.clone()),
            _ => None,
        }) else {
            return Err(KeyError::NoCertificate {
                path: path.to_owned(),
                hint: "",
            });
        };
        let source_name = path.display().to_string();
        let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| KeyError::BadCertificate {
            source_name: source_name.clone(),
            reason: format!("{e:?}"),
        })?;
        if let Some(n) = cert.valid_dns_names().find(|n| *n != "twinfs-peer") {
            return Ok(n.to_owned());
        }
        common_name(cert.subject()).ok_or_else(|| KeyError::BadCertificate {
            source_name,
            reason: "it names no node (no DNS name other than twinfs-peer, no common name)".into(),
        })
    }

    /// Whether `sig` is this key's signature of `msg`.
    pub(crate) fn verifies(&self, msg: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.0[..])
            .verify(msg, sig)
            .is_ok()
    }
}

fn read_pem(path: &Path) -> Result<Vec<rustls_pemfile::Item>, KeyError> {
    let file = std::fs::File::open(path).map_err(|error| KeyError::Read {
        path: path.to_owned(),
        error,
    })?;
    rustls_pemfile::read_all(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| KeyError::Pem {
            path: path.to_owned(),
            error,
        })
}

/// The first common name (OID 2.5.4.3) in a DER-encoded X.509 subject, when
/// it is a short UTF8String or PrintableString (what rcgen writes).
fn common_name(subject: &[u8]) -> Option<String> {
    const CN_OID: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
    let at = subject.windows(CN_OID.len()).position(|w| w == CN_OID)? + CN_OID.len();
    let (&tag, rest) = subject.get(at..)?.split_first()?;
    let (&len, rest) = rest.split_first()?;
    if !matches!(tag, 0x0c | 0x13) || len >= 0x80 {
        return None;
    }
    let value = rest.get(..usize::from(len))?;
    String::from_utf8(value.to_vec())
        .ok()
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_key_is_the_signing_key() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["alpha".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let signer = SigningKey::from_pkcs8_der(&key.serialize_der()).unwrap();
        let pinned = PublicKey::from_cert_der(cert.der()).unwrap();
        assert_eq!(pinned, signer.public_key());
        let sig = signer.sign(b"hello").unwrap();
        assert!(pinned.verifies(b"hello", &sig));
        assert!(!pinned.verifies(b"hellO", &sig));
    }

    #[test]
    fn pem_files_load_and_mistakes_are_named() {
        let dir = std::env::temp_dir().join(format!("twl-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["beta".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (dir.join("beta.crt"), dir.join("beta.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let pinned = PublicKey::from_cert_pem_file(&cert_path).unwrap();
        let signer = SigningKey::from_pem_file(&key_path).unwrap();
        assert_eq!(pinned, signer.public_key());

        let err = PublicKey::from_cert_pem_file(&key_path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("contains no PEM certificate"), "{err}");
        assert!(err.contains("never copy a key"), "{err}");
        let err = SigningKey::from_pem_file(&cert_path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("give the key file, not the certificate"),
            "{err}"
        );
        let missing = dir.join("missing.crt");
        let err = PublicKey::from_cert_pem_file(&missing)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("cannot read {}", missing.display())),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn non_p256_and_garbage_certificates_are_refused() {
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gamma".to_owned()])
            .unwrap()
            .self_signed(&ed)
            .unwrap();
        let err = PublicKey::from_cert_der(cert.der()).unwrap_err();
        assert!(matches!(err, KeyError::NotP256 { .. }), "{err}");
        let err = PublicKey::from_cert_der(b"\x30\x03abc").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("certificate bytes: not a usable X.509 certificate"),
            "{err}"
        );
        let err = SigningKey::from_pkcs8_der(b"nonsense").unwrap_err();
        assert!(
            err.to_string()
                .contains("not an ECDSA P-256 PKCS#8 private key"),
            "{err}"
        );
    }
}
