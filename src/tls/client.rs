//! Clients of the gRPC server (tollgate-polar, `tollgate health`): an
//! `https://` target is reached over TLS only (system roots, plus a CA file
//! when given; a client certificate when the server asks for one), never
//! in the clear; `http://` stays in the clear, on purpose.
use std::path::PathBuf;

use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// What a client trusts and shows.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// PEM certificates trusted besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM), for servers that ask.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the
    /// target's host (an address, say).
    pub server_name: Option<String>,
}

fn read(path: &PathBuf, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

/// The endpoint for `target`, `http://…` or `https://…`.
pub fn endpoint(target: &str, tls: &ClientTls) -> anyhow::Result<Endpoint> {
    let endpoint = Endpoint::from_shared(target.to_owned())
        .with_context(|| format!("{target:?} is not a URL such as https://tollgate:50051"))?;
    match endpoint.uri().scheme_str() {
        Some("http") => {
            anyhow::ensure!(
                tls.ca_file.is_none() && tls.cert_file.is_none() && tls.server_name.is_none(),
                "{target} is http:// (no TLS), yet TLS settings were given: use https://"
            );
            Ok(endpoint)
        }
        Some("https") => {
            let mut config = ClientTlsConfig::new().with_native_roots();
            if let Some(ca) = &tls.ca_file {
                config = config.ca_certificate(Certificate::from_pem(read(ca, "CA file")?));
            }
            match (&tls.cert_file, &tls.key_file) {
                (Some(cert), Some(key)) => {
                    config = config.identity(Identity::from_pem(
                        read(cert, "client certificate")?,
                        read(key, "client key")?,
                    ));
                }
                (None, None) => {}
                _ => anyhow::bail!("a client certificate needs both its file and its key's"),
            }
            if let Some(name) = &tls.server_name {
                config = config.domain_name(name.clone());
            }
            endpoint
                .tls_config(config)
                .with_context(|| format!("TLS for {target}"))
        }
        _ => anyhow::bail!("{target:?} must start with http:// or https://"),
    }
}
