//! Key sets over HTTPS (`jwks_url`, `oidc_issuer`): a small GET client on
//! hyper's HTTP/1 connection and rustls (the ring provider already in the
//! tree through sqlx and fred), OIDC discovery, and `Cache-Control` reading.
//!
//! Every fetch is bounded: one overall timeout (connect, TLS, redirects and
//! body together), a body cap, at most [`MAX_REDIRECTS`] redirects, HTTPS
//! only — also after a redirect. Trust is the system's root store plus an
//! optional CA file, never "accept any certificate". A fetch opens its own
//! connection: key sets are fetched a few times an hour, so pooling would
//! only keep sockets open.
//!
//! Errors carry a stable [`FetchError::reason`] for the metric label and a
//! message for the log line; neither includes a URL's query or user info
//! ([`display_url`]), where a secret could hide.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Redirects followed per fetch (each to an `https` URL).
pub(super) const MAX_REDIRECTS: usize = 3;

/// Largest key set or discovery document accepted. Real ones are a few KiB
/// (Google's JWKS is under 2 KiB, a large Keycloak realm's ~10 KiB).
pub(super) const MAX_BODY_BYTES: usize = 512 * 1024;

/// The HTTPS client every remote key set uses.
pub(super) struct HttpsClient {
    /// rustls with the system roots plus the configured CA file.
    tls: TlsConnector,
    /// Bound on one whole fetch, redirects included.
    timeout: Duration,
}

/// A body fetched, with how long its server says it may be kept.
pub(super) struct Fetched {
    /// The response body (at most [`MAX_BODY_BYTES`]).
    pub(super) body: Bytes,
    /// `Cache-Control: max-age` in seconds; `Some(0)` for `no-cache` /
    /// `no-store`; `None` when the header says neither.
    pub(super) max_age: Option<u64>,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// DNS or TCP connect failed.
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    /// The TLS handshake failed (untrusted certificate, wrong name, ...).
    #[error("TLS with {0} failed: {1}")]
    Tls(String, String),
    /// The fetch did not finish within the configured timeout.
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    /// The HTTP exchange failed.
    #[error("HTTP error: {0}")]
    Http(String),
    /// A status other than 200 (after redirects).
    #[error("HTTP status {0}")]
    Status(u16),
    /// Too many redirects, or one to a URL that is not `https`.
    #[error("redirect refused: {0}")]
    Redirect(String),
    /// The body is over [`MAX_BODY_BYTES`].
    #[error("body over {MAX_BODY_BYTES} bytes")]
    TooLarge,
    /// Not a discovery document or key set we can use.
    #[error("{0}")]
    Invalid(String),
}

impl FetchError {
    /// Stable code for the `result` label of `velro_authz_jwks_fetches_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            FetchError::Connect(..) => "connect",
            FetchError::Tls(..) => "tls",
            FetchError::Timeout(_) => "timeout",
            FetchError::Http(_) => "http",
            FetchError::Status(_) => "status",
            FetchError::Redirect(_) => "redirect",
            FetchError::TooLarge => "too_large",
            FetchError::Invalid(_) => "invalid",
        }
    }
}

/// The members of an OpenID Provider Configuration we read.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

impl HttpsClient {
    /// A client trusting the system roots and, when given, every certificate
    /// in `ca_file` (PEM). An error names the problem for the config report;
    /// an empty root store is one (nothing could be verified).
    pub(super) fn new(ca_file: Option<&Path>, timeout: Duration) -> Result<HttpsClient, String> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (system, _) = roots.add_parsable_certificates(native.certs);
        if let Some(path) = ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<_, _>>())
                .map_err(|e| {
                    format!("cannot read PEM certificates from {}: {e}", path.display())
                })?;
            if certs.is_empty() {
                return Err(format!("{}: no PEM certificate in it", path.display()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
            }
        }
        if roots.is_empty() {
            return Err(format!(
                "no trusted root certificate: the system store is empty or unreadable ({} found) \
                 and no CA file is set",
                system
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(HttpsClient {
            tls: TlsConnector::from(Arc::new(config)),
            timeout,
        })
    }

    /// GETs `url`, following up to [`MAX_REDIRECTS`] `https` redirects, all
    /// within the timeout.
    pub(super) async fn get(&self, url: &Uri) -> Result<Fetched, FetchError> {
        tokio::time::timeout(self.timeout, self.get_unbounded(url))
            .await
            .map_err(|_| FetchError::Timeout(self.timeout))?
    }

    /// The discovery document at `{issuer}/.well-known/openid-configuration`:
    /// its `issuer` must be `issuer` exactly (OpenID Connect Discovery §4.3)
    /// and its `jwks_uri` an `https` URL, which is returned.
    pub(super) async fn discover(&self, issuer: &str) -> Result<Uri, FetchError> {
        let url = discovery_url(issuer)
            .ok_or_else(|| FetchError::Invalid("oidc_issuer is not an https URL".to_owned()))?;
        let fetched = self.get(&url).await?;
        let doc: Discovery = serde_json::from_slice(&fetched.body).map_err(|e| {
            FetchError::Invalid(format!("not an OpenID provider configuration ({e})"))
        })?;
        if doc.issuer != issuer {
            return Err(FetchError::Invalid(format!(
                "discovery document names issuer {:?}, not the configured {issuer:?}",
                doc.issuer
            )));
        }
        https_uri(&doc.jwks_uri)
            .ok_or_else(|| FetchError::Invalid("jwks_uri is not an https URL".to_owned()))
    }

    async fn get_unbounded(&self, url: &Uri) -> Result<Fetched, FetchError> {
        let mut url = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let response = self.get_once(&url).await?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| FetchError::Redirect(format!("{status} without Location")))?;
                url = redirect_target(&url, location).ok_or_else(|| {
                    FetchError::Redirect(format!("to {:?}, not https", strip_query(location)))
                })?;
                continue;
            }
            if status != StatusCode::OK {
                return Err(FetchError::Status(status.as_u16()));
            }
            let max_age = response
                .headers()
                .get_all(header::CACHE_CONTROL)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .fold(None, |found, v| found.or(cache_max_age(v)));
            let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        FetchError::TooLarge
                    } else {
                        FetchError::Http(e.to_string())
                    }
                })?
                .to_bytes();
            return Ok(Fetched { body, max_age });
        }
        Err(FetchError::Redirect(format!(
            "more than {MAX_REDIRECTS} redirects"
        )))
    }

    async fn get_once(
        &self,
        url: &Uri,
    ) -> Result<hyper::Response<hyper::body::Incoming>, FetchError> {
        let (host, port) = host_port(url).ok_or_else(|| FetchError::Invalid("no host".into()))?;
        let shown = format!("{host}:{port}");
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| FetchError::Connect(shown.clone(), e.kind().to_string()))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host.clone())
            .map_err(|e| FetchError::Tls(shown.clone(), e.to_string()))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| FetchError::Tls(shown.clone(), e.to_string()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| FetchError::Http(e.to_string()))?;
        // Drives the connection; ends when the response is read and `sender`
        // dropped, and in any case after one more timeout, so a server that
        // never finishes cannot keep it open.
        let bound = self.timeout;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(bound, connection).await;
        });
        let path = url.path_and_query().map_or("/", |p| p.as_str());
        let authority = url.authority().map_or(host.as_str(), |a| a.as_str());
        let request = Request::get(path)
            .header(header::HOST, authority)
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("velro-authz/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Http(e.to_string()))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| FetchError::Http(e.to_string()))
    }
}

/// `url` parsed, if it is an absolute `https` URL with a host and no user info.
pub(super) fn https_uri(url: &str) -> Option<Uri> {
    let uri: Uri = url.parse().ok()?;
    let ok = uri.scheme_str() == Some("https")
        && uri.host().is_some_and(|h| !h.is_empty())
        && !uri.authority().is_some_and(|a| a.as_str().contains('@'));
    ok.then_some(uri)
}

/// `{issuer}/.well-known/openid-configuration` (a trailing `/` of the issuer
/// not doubled), if the issuer is an `https` URL.
pub(super) fn discovery_url(issuer: &str) -> Option<Uri> {
    https_uri(&format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    ))
}

/// A URL for logs: scheme, host and path; no user info, no query.
pub(super) fn display_url(url: &Uri) -> String {
    format!(
        "{}://{}{}",
        url.scheme_str().unwrap_or("?"),
        url.host().unwrap_or("?"),
        match url.port_u16() {
            Some(p) => format!(":{p}{}", url.path()),
            None => url.path().to_owned(),
        }
    )
}

/// `Cache-Control` → seconds: `max-age=N` → `Some(N)`, `no-cache` or
/// `no-store` → `Some(0)`, else `None`. `s-maxage` is for shared caches.
pub(super) fn cache_max_age(value: &str) -> Option<u64> {
    let mut found = None;
    for directive in value.split(',') {
        let directive = directive.trim().to_ascii_lowercase();
        if directive == "no-cache" || directive == "no-store" {
            return Some(0);
        }
        if let Some(n) = directive.strip_prefix("max-age=") {
            found = n.trim_matches('"').parse::<u64>().ok().or(found);
        }
    }
    found
}

fn strip_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or_default()
}

/// Host (IPv6 brackets removed) and port (443 by default).
fn host_port(url: &Uri) -> Option<(String, u16)> {
    let host = url.host()?.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), url.port_u16().unwrap_or(443)))
}

/// Where a redirect goes: an absolute `https` URL, or a path on the same
/// origin. Anything else (`http`, another scheme, a relative path) is refused.
fn redirect_target(from: &Uri, location: &str) -> Option<Uri> {
    if location.starts_with('/') && !location.starts_with("//") {
        let authority = from.authority()?.as_str();
        return https_uri(&format!("https://{authority}{location}"));
    }
    https_uri(location)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_max_age_reads_max_age_and_no_cache() {
        assert_eq!(cache_max_age("public, max-age=3600"), Some(3600));
        assert_eq!(cache_max_age("max-age=15, must-revalidate"), Some(15));
        assert_eq!(cache_max_age("no-cache"), Some(0));
        assert_eq!(cache_max_age("max-age=600, no-store"), Some(0));
        assert_eq!(cache_max_age("public"), None);
        assert_eq!(cache_max_age("s-maxage=60"), None);
        assert_eq!(cache_max_age("max-age=soon"), None);
    }

    #[test]
    fn https_uri_refuses_http_user_info_and_relative() {
        assert!(https_uri("https://idp.example/.well-known/jwks.json").is_some());
        assert!(https_uri("https://127.0.0.1:8443/jwks").is_some());
        assert!(https_uri("http://idp.example/jwks").is_none());
        assert!(https_uri("https://user:pw@idp.example/jwks").is_none());
        assert!(https_uri("/jwks").is_none());
        assert!(https_uri("file:///etc/jwks.json").is_none());
    }

    #[test]
    fn discovery_url_does_not_double_the_slash() {
        let with = discovery_url("https://tenant.auth0.com/").expect("url");
        let without = discovery_url("https://kc.example/realms/velro").expect("url");
        assert_eq!(
            with.to_string(),
            "https://tenant.auth0.com/.well-known/openid-configuration"
        );
        assert_eq!(
            without.to_string(),
            "https://kc.example/realms/velro/.well-known/openid-configuration"
        );
        assert!(discovery_url("http://kc.example").is_none());
    }

    #[test]
    fn redirect_target_stays_on_https() {
        let from: Uri = "https://idp.example/a/jwks".parse().expect("uri");
        assert_eq!(
            redirect_target(&from, "/b/jwks").map(|u| u.to_string()),
            Some("https://idp.example/b/jwks".to_owned())
        );
        assert!(redirect_target(&from, "https://cdn.example/jwks").is_some());
        assert!(redirect_target(&from, "http://idp.example/jwks").is_none());
        assert!(redirect_target(&from, "//evil.example/jwks").is_none());
        assert!(redirect_target(&from, "jwks2").is_none());
    }

    #[test]
    fn display_url_drops_query_and_user_info() {
        let url: Uri = "https://idp.example:8443/jwks?token=secret"
            .parse()
            .expect("uri");
        assert_eq!(display_url(&url), "https://idp.example:8443/jwks");
    }
}
