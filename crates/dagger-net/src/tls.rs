//! Optional TLS (off by default): rustls with the *ring* provider, TLS 1.3 only,
//! self-signed certificates verified by pinning their SHA-256 fingerprint.
//!
//! Each process generates an identity at start-up ([`TlsIdentity::generate`]) and publishes
//! its [fingerprint](TlsIdentity::fingerprint) (not a secret) to the processes that will
//! connect to it, e.g. in an environment variable of a launched worker, or through the head
//! for worker-to-worker connections. A connecting process must know the fingerprint of the
//! listener it connects to ([`TlsConfig::with_peer_fingerprint`]); it always presents its
//! own certificate, which a listener can restrict to known fingerprints
//! ([`TlsConfig::allow_client`]) and reports in
//! [`PeerHello::tls_fingerprint`](crate::auth::PeerHello).
//!
//! The secret-based authentication of [`crate::auth`] still runs inside TLS, bound to the
//! TLS session (an exporter value enters the proofs), so an attacker relaying the handshake
//! between two honest peers fails even where client certificates are not pinned.
//!
//! ```
//! use dagger_net::{TlsConfig, TlsIdentity};
//!
//! let head = TlsIdentity::generate()?;
//! let worker = TlsIdentity::generate()?;
//! // The worker learns the head's fingerprint (e.g. from its environment) and pins it.
//! let worker_tls = TlsConfig::new(worker).with_peer_fingerprint(&head.fingerprint())?;
//! let head_tls = TlsConfig::new(head);
//! # let _ = (worker_tls, head_tls);
//! # Ok::<(), dagger_net::NetError>(())
//! ```

use std::fmt;
use std::io;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};
use sha2::{Digest, Sha256};

use crate::auth::{decode_hex, hex};
use crate::conn::NetError;

/// The name used for the TLS server name indication (certificates are pinned, not checked
/// against names).
const SERVER_NAME: &str = "dagger";

/// Label of the TLS exporter value that binds authentication to the TLS session.
pub(crate) const EXPORTER_LABEL: &[u8] = b"EXPORTER-dagger-net-auth-v1";

type Fingerprint = [u8; 32];

fn fingerprint_of(cert: &[u8]) -> Fingerprint {
    Sha256::digest(cert).into()
}

fn parse_fingerprint(fp: &str) -> Result<Fingerprint, NetError> {
    let cleaned: String = fp.trim().chars().filter(|&c| c != ':').collect();
    decode_hex(&cleaned)
        .and_then(|b| Fingerprint::try_from(b).ok())
        .ok_or_else(|| {
            NetError::Config(format!(
                "invalid certificate fingerprint {fp:?}: expected 64 hex digits (SHA-256)"
            ))
        })
}

/// Hex SHA-256 fingerprint of a DER certificate.
pub(crate) fn fingerprint_hex(cert: &[u8]) -> String {
    hex(&fingerprint_of(cert))
}

fn tls_err(e: impl fmt::Display) -> NetError {
    NetError::Tls(e.to_string())
}

/// A self-signed certificate and its private key.
///
/// `Debug` shows the fingerprint only.
pub struct TlsIdentity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    fingerprint: Fingerprint,
}

impl TlsIdentity {
    /// Generates a fresh ECDSA P-256 key pair and a self-signed certificate.
    pub fn generate() -> Result<TlsIdentity, NetError> {
        let ck = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
            .map_err(|e| NetError::Tls(format!("cannot generate a certificate: {e}")))?;
        Ok(TlsIdentity::from_der(
            ck.cert.der().to_vec(),
            ck.key_pair.serialize_der(),
        ))
    }

    /// An identity from a DER certificate and its PKCS#8 DER private key (e.g. to keep the
    /// same fingerprint across restarts). A key that does not match the certificate is
    /// reported when a connection is set up.
    pub fn from_der(cert: Vec<u8>, pkcs8_key: Vec<u8>) -> TlsIdentity {
        TlsIdentity {
            fingerprint: fingerprint_of(&cert),
            cert: CertificateDer::from(cert),
            key: PrivatePkcs8KeyDer::from(pkcs8_key),
        }
    }

    /// SHA-256 fingerprint of the certificate, as 64 lowercase hex digits.
    pub fn fingerprint(&self) -> String {
        hex(&self.fingerprint)
    }

    /// The certificate, DER-encoded.
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// TLS settings of a process: its identity, the fingerprint expected from the peer when
/// connecting, and optionally the fingerprints of the clients a listener accepts.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    identity: Arc<TlsIdentity>,
    peer_fingerprint: Option<Fingerprint>,
    allowed_clients: Option<Vec<Fingerprint>>,
}

impl TlsConfig {
    /// TLS with this identity; no peer pinned yet, any client certificate accepted.
    pub fn new(identity: impl Into<Arc<TlsIdentity>>) -> TlsConfig {
        TlsConfig {
            identity: identity.into(),
            peer_fingerprint: None,
            allowed_clients: None,
        }
    }

    /// Pins the certificate fingerprint (64 hex digits, `:` separators allowed) of the
    /// listener to connect to. Connecting with TLS requires one.
    pub fn with_peer_fingerprint(mut self, fingerprint: &str) -> Result<TlsConfig, NetError> {
        self.peer_fingerprint = Some(parse_fingerprint(fingerprint)?);
        Ok(self)
    }

    /// Restricts a listener to clients presenting a certificate with one of the fingerprints
    /// given this way (by default any client certificate is accepted, and the client is
    /// authenticated by the cluster secret).
    pub fn allow_client(mut self, fingerprint: &str) -> Result<TlsConfig, NetError> {
        let fp = parse_fingerprint(fingerprint)?;
        self.allowed_clients.get_or_insert_with(Vec::new).push(fp);
        Ok(self)
    }

    /// The identity of this process.
    pub fn identity(&self) -> &TlsIdentity {
        &self.identity
    }

    /// The pinned peer fingerprint, if any (hex).
    pub fn peer_fingerprint(&self) -> Option<String> {
        self.peer_fingerprint.map(|f| hex(&f))
    }

    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, NetError> {
        let expected = self.peer_fingerprint.ok_or_else(|| {
            NetError::Config(
                "TLS is on but no fingerprint is pinned for the peer (TlsConfig::with_peer_fingerprint)"
                    .into(),
            )
        })?;
        let provider = provider();
        let verifier = PinnedServer {
            expected,
            algs: provider.signature_verification_algorithms,
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(vec![self.identity.cert.clone()], self.identity.key())
            .map_err(|e| NetError::Tls(format!("invalid TLS identity: {e}")))?;
        Ok(Arc::new(config))
    }

    pub(crate) fn server_config(&self) -> Result<Arc<ServerConfig>, NetError> {
        let provider = provider();
        let verifier = PinnedClients {
            allowed: self.allowed_clients.clone(),
            algs: provider.signature_verification_algorithms,
        };
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(vec![self.identity.cert.clone()], self.identity.key())
            .map_err(|e| NetError::Tls(format!("invalid TLS identity: {e}")))?;
        Ok(Arc::new(config))
    }
}

pub(crate) fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME).expect("a valid DNS name")
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The pinned fingerprint did not match: carried through rustls to [`map_io_error`].
#[derive(Debug)]
struct PinMismatch {
    expected: Fingerprint,
    actual: Fingerprint,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate fingerprint {} does not match the pinned {}",
            hex(&self.actual),
            hex(&self.expected)
        )
    }
}

impl std::error::Error for PinMismatch {}

/// A client certificate not in the listener's allow-list.
#[derive(Debug)]
struct ClientNotAllowed(Fingerprint);

impl fmt::Display for ClientNotAllowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the client certificate fingerprint {} is not among the allowed clients",
            hex(&self.0)
        )
    }
}

impl std::error::Error for ClientNotAllowed {}

/// Turns an I/O error of a TLS handshake into a clear [`NetError`].
pub(crate) fn map_io_error(e: io::Error) -> NetError {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return NetError::Io(e);
    };
    match tls {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(other))) => {
            match other.downcast_ref::<PinMismatch>() {
                Some(m) => NetError::FingerprintMismatch {
                    expected: hex(&m.expected),
                    actual: hex(&m.actual),
                },
                None => NetError::Tls(format!("peer certificate refused: {other}")),
            }
        }
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => NetError::Tls(
            "the peer does not speak TLS (is TLS off in the peer's configuration?)".into(),
        ),
        rustls::Error::AlertReceived(alert) => NetError::Tls(format!(
            "the peer aborted the TLS handshake ({alert:?}); does it pin our certificate fingerprint?"
        )),
        other => NetError::Tls(other.to_string()),
    }
}

fn check_signature_13(
    algs: &WebPkiSupportedAlgorithms,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
}

fn check_signature_12(
    algs: &WebPkiSupportedAlgorithms,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
}

/// Accepts exactly the server certificate with the pinned fingerprint (the handshake
/// signature is still verified, proving the server holds the key).
#[derive(Debug)]
struct PinnedServer {
    expected: Fingerprint,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = fingerprint_of(end_entity);
        if actual == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PinMismatch {
                    expected: self.expected,
                    actual,
                })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_signature_12(&self.algs, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_signature_13(&self.algs, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Requires a client certificate; accepts any, or only the allowed fingerprints.
#[derive(Debug)]
struct PinnedClients {
    allowed: Option<Vec<Fingerprint>>,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match &self.allowed {
            Some(allowed) if !allowed.contains(&fingerprint_of(end_entity)) => {
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(ClientNotAllowed(fingerprint_of(end_entity)))),
                )))
            }
            _ => Ok(ClientCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_signature_12(&self.algs, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_signature_13(&self.algs, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_and_fingerprints() {
        let id = TlsIdentity::generate().unwrap();
        let fp = id.fingerprint();
        assert_eq!(fp.len(), 64);
        assert_eq!(
            parse_fingerprint(&fp.to_uppercase()).unwrap(),
            id.fingerprint
        );
        assert!(parse_fingerprint("abc").is_err());
        assert!(format!("{id:?}").contains(&fp));
        let cfg = TlsConfig::new(id);
        assert!(matches!(cfg.client_config(), Err(NetError::Config(_))));
        cfg.server_config().unwrap();
        let cfg = cfg.with_peer_fingerprint(&fp).unwrap();
        cfg.client_config().unwrap();
        assert_eq!(cfg.peer_fingerprint(), Some(fp));
    }
}
