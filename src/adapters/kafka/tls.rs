//! rustls client configuration for Kafka from PEM files (CA bundle, optional client identity).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::settings::{KafkaSettings, TlsSettings};

/// The Debian/Ubuntu system bundle, used when `kafka.tls.ca_file` is not set.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Reads the files `settings` name for TLS (the CA bundle, the client identity), so that a
/// missing or unreadable one is told as bad configuration at start, not as a failed start.
///
/// # Errors
/// Names the setting and the file.
pub fn read_files(settings: &KafkaSettings) -> Result<(), String> {
    match &settings.tls {
        Some(tls) => client_config(tls).map(drop),
        None => Ok(()),
    }
}

pub(super) fn client_config(tls: &TlsSettings) -> Result<Arc<ClientConfig>, String> {
    let ca_file = tls
        .ca_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&ca_file, "kafka.tls.ca_file")? {
        roots
            .add(cert)
            .map_err(|e| format!("kafka.tls.ca_file: {}: {e}", ca_file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "kafka.tls.ca_file: {} holds no certificate; point it at a PEM CA bundle",
            ca_file.display()
        ));
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("kafka.tls: {e}"))?
            .with_root_certificates(roots);
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let certs = read_certs(cert_file, "kafka.tls.cert_file")?;
            let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
                format!(
                    "kafka.tls.key_file: cannot read a PEM private key from {}: {e}",
                    key_file.display()
                )
            })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("kafka.tls.cert_file/key_file: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn read_certs(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "{field}: cannot read PEM certificates from {}: {e}",
                path.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_file_is_named_in_the_error() {
        let tls = TlsSettings {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let error = client_config(&tls).unwrap_err();
        assert!(error.starts_with("kafka.tls.ca_file"), "{error}");
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
    }
}
