//! The authenticated, encrypted control channel: TLS 1.3 (rustls with the ring provider).
//!
//! The publisher presents a certificate from PEM files, or a self-signed one it generates
//! on first start and keeps in its data directory. A subscriber verifies it against a CA
//! file or a pinned SHA-256 fingerprint. The only plaintext alternative is
//! `InsecureLoopback`, which refuses any address outside 127.0.0.0/8 and ::1.

use crate::{Error, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the publisher's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerIdentity {
    /// Generate a self-signed certificate on first start and keep it (with its key, mode
    /// 0600) in `<data_dir>/tls/`. The default.
    SelfSigned,
    /// Certificate chain and private key in PEM files.
    Files {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// PKCS#8, PKCS#1 or SEC1 private key.
        key: PathBuf,
    },
    /// No TLS: plaintext, and only on loopback addresses. For tests and local tools.
    InsecureLoopback,
}

/// How a subscriber checks the publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTrust {
    /// Accept only a certificate whose SHA-256 fingerprint (64 hex digits; colons allowed)
    /// is this one.
    Fingerprint(String),
    /// Verify the chain against the CA certificates in this PEM file, and the name.
    CaFile(PathBuf),
    /// No TLS: plaintext, and only to loopback addresses.
    InsecureLoopback,
}

/// A byte stream the control protocol runs over (TLS or plaintext loopback TCP).
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: &str) -> impl Fn(rustls::Error) -> Error + '_ {
    move |e| Error::Config(format!("{what}: {e}"))
}

/// SHA-256 of a DER certificate, as 64 lowercase hex digits.
pub fn fingerprint(cert_der: &[u8]) -> String {
    Sha256::digest(cert_der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Refuses non-loopback addresses for the plaintext mode.
pub fn require_loopback(addr: SocketAddr, what: &str) -> Result<()> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "insecure_loopback {what} {addr} refused: plaintext control is allowed on loopback only"
        )))
    }
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| Error::Config(format!("reading certificates {}: {e}", path.display())))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Config(format!("parsing certificates {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "no certificate in {}",
            path.display()
        )));
    }
    Ok(certs)
}

fn write_private(path: &Path, data: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    f.write_all(data.as_bytes())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// The publisher's TLS side: its configuration and certificate fingerprint.
#[derive(Clone)]
pub struct ServerTls {
    /// `None` in insecure loopback mode.
    pub config: Option<Arc<ServerConfig>>,
    /// SHA-256 fingerprint of the leaf certificate (`None` in insecure loopback mode).
    pub fingerprint: Option<String>,
}

impl ServerTls {
    /// Loads or creates the publisher's identity.
    pub fn load(identity: &ServerIdentity, data_dir: &Path) -> Result<ServerTls> {
        let (cert, key) = match identity {
            ServerIdentity::InsecureLoopback => {
                return Ok(ServerTls {
                    config: None,
                    fingerprint: None,
                })
            }
            ServerIdentity::Files { cert, key } => (cert.clone(), key.clone()),
            ServerIdentity::SelfSigned => {
                let dir = data_dir.join("tls");
                let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
                if !cert.exists() {
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
                    let names = vec![
                        "localhost".to_owned(),
                        "127.0.0.1".to_owned(),
                        "::1".to_owned(),
                    ];
                    let ck = rcgen::generate_simple_self_signed(names)
                        .map_err(|e| Error::Config(format!("generating certificate: {e}")))?;
                    write_private(&key, &ck.signing_key.serialize_pem())?;
                    write_private(&cert, &ck.cert.pem())?;
                }
                (cert, key)
            }
        };
        let certs = read_pem_certs(&cert)?;
        let key = PrivateKeyDer::from_pem_file(&key)
            .map_err(|e| Error::Config(format!("reading private key {}: {e}", key.display())))?;
        let fp = fingerprint(&certs[0]);
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err("TLS versions"))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(tls_err("certificate and key"))?;
        Ok(ServerTls {
            config: Some(Arc::new(config)),
            fingerprint: Some(fp),
        })
    }

    /// Wraps an accepted connection (the handshake runs on first read or write).
    pub fn accept(&self, tcp: TcpStream) -> Result<Box<dyn Stream>> {
        match &self.config {
            None => Ok(Box::new(tcp)),
            Some(c) => {
                let conn =
                    rustls::ServerConnection::new(c.clone()).map_err(tls_err("TLS session"))?;
                Ok(Box::new(rustls::StreamOwned::new(conn, tcp)))
            }
        }
    }
}

#[derive(Debug)]
struct PinnedVerifier {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "publisher certificate does not match the pinned fingerprint".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The subscriber's TLS side.
#[derive(Clone)]
pub struct ClientTls {
    config: Option<Arc<ClientConfig>>,
    server_name: Option<ServerName<'static>>,
}

impl ClientTls {
    /// Builds the client side for `server`, checking it as `trust` says. `server_name` is
    /// the name verified against the certificate (default: the server's IP address).
    pub fn new(
        trust: &ServerTrust,
        server: SocketAddr,
        server_name: Option<&str>,
    ) -> Result<ClientTls> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err("TLS versions"))?;
        let config = match trust {
            ServerTrust::InsecureLoopback => {
                require_loopback(server, "server")?;
                return Ok(ClientTls {
                    config: None,
                    server_name: None,
                });
            }
            ServerTrust::Fingerprint(f) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                    fingerprint: crate::config::limits::parse_fingerprint(f)?,
                    provider: provider(),
                }))
                .with_no_client_auth(),
            ServerTrust::CaFile(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in read_pem_certs(path)? {
                    roots.add(c).map_err(tls_err("CA certificate"))?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
        };
        let name = match server_name {
            Some(n) => ServerName::try_from(n.to_owned())
                .map_err(|_| Error::Config(format!("invalid server name {n:?}")))?,
            None => ServerName::IpAddress(server.ip().into()),
        };
        Ok(ClientTls {
            config: Some(Arc::new(config)),
            server_name: Some(name),
        })
    }

    /// Wraps a connected socket.
    pub fn connect(&self, tcp: TcpStream) -> Result<Box<dyn Stream>> {
        match (&self.config, &self.server_name) {
            (Some(c), Some(n)) => {
                let conn = rustls::ClientConnection::new(c.clone(), n.clone())
                    .map_err(tls_err("TLS session"))?;
                Ok(Box::new(rustls::StreamOwned::new(conn, tcp)))
            }
            _ => Ok(Box::new(tcp)),
        }
    }
}
