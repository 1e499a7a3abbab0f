//! Mutual TLS for peer links (rustls, ring provider, TLS 1.3 only): every
//! node presents a certificate signed by the shared CA and verifies the
//! other's against it; the node name a peer claims must be in its
//! certificate's SAN.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::settings::TlsFiles;

/// Both sides' TLS configuration.
pub struct Tls {
    /// For accepted links: requires and verifies a client certificate.
    pub server: Arc<ServerConfig>,
    /// For dialled links: verifies the server and presents our certificate.
    pub client: Arc<ClientConfig>,
}

/// Loads the PEM files and builds both configurations.
pub fn load(files: &TlsFiles) -> Result<Tls, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("tlsCertFile {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tlsCertFile {}: no certificate",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("tlsKeyFile {}: {e}", files.key.display()))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&files.ca)
        .map_err(|e| format!("tlsCaFile {}: {e}", files.ca.display()))?
    {
        let ca = ca.map_err(|e| format!("tlsCaFile {}: {e}", files.ca.display()))?;
        roots
            .add(ca)
            .map_err(|e| format!("tlsCaFile {}: {e}", files.ca.display()))?;
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::clone(&roots),
        Arc::clone(&provider),
    )
    .build()
    .map_err(|e| format!("tlsCaFile {}: {e}", files.ca.display()))?;
    let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(|e| format!("tlsCertFile/tlsKeyFile: {e}"))?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| format!("tlsCertFile/tlsKeyFile: {e}"))?;
    Ok(Tls {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// Checks that `node`, the name a peer claimed in PEER_HELLO, is one its
/// (already chain-verified) certificate is valid for.
pub fn check_name(certs: Option<&[CertificateDer<'_>]>, node: &str) -> Result<(), String> {
    let cert = certs
        .and_then(|c| c.first())
        .ok_or_else(|| "the peer presented no certificate".to_string())?;
    let name = ServerName::try_from(node.to_string())
        .map_err(|_| format!("node name {node:?} cannot appear in a certificate"))?;
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| e.to_string())?;
    ee.verify_is_valid_for_subject_name(&name)
        .map_err(|_| format!("the peer's certificate is not valid for node name {node:?}"))
}
