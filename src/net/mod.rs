//! HTTP plumbing every client of the service shares (the SQS JSON client, the `http` target):
//! rustls with the system's roots (aws-lc-rs, as the AWS SDK uses it), optional extra roots and a
//! client certificate, and errors printed with their sources.

use std::path::Path;
use std::sync::Arc;

use hyper_util::client::legacy::connect::HttpConnector;
use rustls_pki_types::pem::PemObject;

pub mod proxy;
mod serve;

pub use serve::{serve_connections, Limits};

/// The TLS settings: the system's roots, `ca_file`'s, and a client certificate with its key.
///
/// # Errors
/// When a file cannot be read or holds no usable certificate or key.
pub fn tls_config(ca_file: Option<&Path>, client_cert: Option<(&Path, &Path)>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(file) = ca_file {
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(file)
            .map_err(|e| format!("ca_file {}: {e}", file.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("ca_file {}: {e}", file.display()))?;
            roots.add(cert).map_err(|e| format!("ca_file {}: {e}", file.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match client_cert {
        Some((cert, key)) => {
            let chain = rustls_pki_types::CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("client_cert_file {}: {e}", cert.display()))?;
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("client_key_file {}: {e}", key.display()))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| format!("client certificate: {e}"))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// An HTTP/1 connector for `http://` and `https://` with [`tls_config`], through the
/// environment's egress proxy when it names one for the destination ([`proxy`]).
///
/// # Errors
/// When the TLS files cannot be used.
pub fn https_connector(
    ca_file: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<proxy::ProxyConnector, String> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
    connector.enforce_http(false);
    Ok(proxy::ProxyConnector::new(connector, tls_config(ca_file, client_cert)?))
}

/// An error with its sources, `outer: inner: …`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let next = inner.to_string();
        // some errors repeat their source in their own message
        if !s.ends_with(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cur = inner.source();
    }
    s
}
