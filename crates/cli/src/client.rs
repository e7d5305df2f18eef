//! A small typed client for the control plane's API, over hyper-util's
//! client: plain HTTP, or HTTPS with rustls (hyper-rustls) trusting the
//! system's roots (and `SSL_CERT_FILE`) or the CA file given.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::exit::Exit;

/// An error and its sources, outermost first: hyper's own message
/// ("client error (Connect)") says little without the io error under it.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// The connection maker: HTTP, and HTTPS with rustls.
pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

pub struct Api {
    base: String,
    /// Sent as `Authorization: Bearer`.
    token: Option<String>,
    http: Client<Connector, Full<Bytes>>,
}

impl Api {
    pub fn new(base: &str, token: Option<String>, connector: Connector) -> Self {
        Api {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// A connector trusting the CA certificates in `cacert` (PEM), else the
    /// system's roots (which honour `SSL_CERT_FILE`).
    pub fn connector(cacert: Option<&std::path::Path>) -> Result<Connector, Exit> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = match cacert {
            Some(file) => {
                let pem = std::fs::read(file)
                    .map_err(|e| Exit::bad_input(format!("--cacert {}: {e}", file.display())))?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| {
                        Exit::bad_input(format!("--cacert {}: not PEM: {e}", file.display()))
                    })?;
                    roots.add(cert).map_err(|e| {
                        Exit::bad_input(format!("--cacert {}: {e}", file.display()))
                    })?;
                }
                if roots.is_empty() {
                    return Err(Exit::bad_input(format!(
                        "--cacert {}: no certificate in it",
                        file.display()
                    )));
                }
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| Exit::failure(e.to_string()))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
            None => hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_native_roots(provider)
                .unwrap_or_else(|_| {
                    // No system roots: https fails with a clear error,
                    // plain HTTP works.
                    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default versions")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                    hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
                }),
        };
        Ok(builder.https_or_http().enable_http1().build())
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Exit> {
        let url = format!("{}{path}", self.base);
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| Exit::bad_input(format!("bad server URL {url}: {e}")))?;
        self.http
            .request(req)
            .await
            .map_err(|e| Exit::failure(format!("cannot reach the tandem server at {}: {}; is `tandem up` running? (set --server or TANDEM_SERVER)", self.base, causes(&e))))
    }

    pub async fn get(&self, path: &str) -> Result<serde_json::Value, Exit> {
        let resp = self.send(Method::GET, path, None).await?;
        json_or_exit(resp).await
    }

    /// The body of a GET as it came, for what must keep its bytes (a
    /// canonical report, CSV, HTML).
    pub async fn get_text(&self, path: &str) -> Result<String, Exit> {
        String::from_utf8(self.get_bytes(path).await?)
            .map_err(|_| Exit::failure("the server's answer is not UTF-8"))
    }

    /// The body of a GET as bytes (a PDF).
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, Exit> {
        let resp = self.send(Method::GET, path, None).await?;
        if resp.status() != StatusCode::OK {
            json_or_exit(resp).await?;
            return Err(Exit::failure("the server answered without a body"));
        }
        Ok(resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Exit::failure(format!("connection to the server broke: {e}")))?
            .to_bytes()
            .to_vec())
    }

    pub async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, Exit> {
        let resp = self.send(Method::POST, path, Some(body)).await?;
        json_or_exit(resp).await
    }

    pub async fn put(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, Exit> {
        let resp = self.send(Method::PUT, path, Some(body)).await?;
        json_or_exit(resp).await
    }

    pub async fn delete(&self, path: &str) -> Result<serde_json::Value, Exit> {
        let resp = self.send(Method::DELETE, path, None).await?;
        json_or_exit(resp).await
    }

    /// GETs a Server-Sent Events stream and hands each event (name, data) to
    /// `on_event` as it arrives; returns when the server ends the stream.
    pub async fn get_events(
        &self,
        path: &str,
        mut on_event: impl FnMut(&str, &str),
    ) -> Result<(), Exit> {
        let resp = self.send(Method::GET, path, None).await?;
        for_each_record(resp, b"\n\n", |block| {
            let block = String::from_utf8_lossy(block);
            let mut event = "message";
            let mut lines = Vec::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e;
                } else if let Some(d) = line.strip_prefix("data: ") {
                    lines.push(d);
                }
            }
            on_event(event, &lines.join("\n"));
        })
        .await
    }

    /// GETs `path` into the file `to` (created here, owner-only), as it
    /// arrives; returns the answer's headers.
    pub async fn download(
        &self,
        path: &str,
        to: &std::path::Path,
    ) -> Result<http::HeaderMap, Exit> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let resp = self.send(Method::GET, path, None).await?;
        if resp.status() != StatusCode::OK {
            json_or_exit(resp).await?;
            return Err(Exit::failure("the server sent no backup"));
        }
        let headers = resp.headers().clone();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(to)
            .map_err(|e| Exit::failure(format!("cannot create {}: {e}", to.display())))?;
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| Exit::failure(format!("connection to the server broke: {e}")))?;
            if let Ok(data) = frame.into_data() {
                file.write_all(&data)
                    .map_err(|e| Exit::failure(format!("writing {}: {e}", to.display())))?;
            }
        }
        file.sync_all()
            .map_err(|e| Exit::failure(format!("writing {}: {e}", to.display())))?;
        Ok(headers)
    }

    /// POSTs and hands each NDJSON line of the answer to `on_line` as it arrives.
    pub async fn post_stream(
        &self,
        path: &str,
        body: serde_json::Value,
        mut on_line: impl FnMut(serde_json::Value),
    ) -> Result<(), Exit> {
        let resp = self.send(Method::POST, path, Some(body)).await?;
        for_each_record(resp, b"\n", |line| {
            if let Ok(v) = serde_json::from_slice(line) {
                on_line(v);
            }
        })
        .await
    }
}

/// Splits a streamed 200 answer into records ending in `sep` as they
/// arrive; any other status is turned into the error it carries.
async fn for_each_record(
    resp: hyper::Response<hyper::body::Incoming>,
    sep: &[u8],
    mut on_record: impl FnMut(&[u8]),
) -> Result<(), Exit> {
    if resp.status() != StatusCode::OK {
        json_or_exit(resp).await?;
        return Ok(());
    }
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| Exit::failure(format!("connection to the server broke: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.windows(sep.len()).position(|w| w == sep) {
            let record: Vec<u8> = buf.drain(..end + sep.len()).collect();
            on_record(&record[..end]);
        }
    }
    Ok(())
}

async fn json_or_exit(
    resp: hyper::Response<hyper::body::Incoming>,
) -> Result<serde_json::Value, Exit> {
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| Exit::failure(format!("reading the answer failed: {e}")))?
        .to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::json!({ "error": String::from_utf8_lossy(&bytes) }));
    if status.is_success() {
        return Ok(value);
    }
    let message = value["error"]
        .as_str()
        .unwrap_or("request failed")
        .to_owned();
    let mut full = message;
    if let Some(tail) = value["log_tail"].as_array().filter(|t| !t.is_empty()) {
        full.push_str("\nlast log lines:");
        for l in tail {
            full.push_str("\n  ");
            full.push_str(l.as_str().unwrap_or_default());
        }
    }
    if status == StatusCode::UNAUTHORIZED {
        full.push_str("\n(give a token with --token or TANDEM_TOKEN; on the server's machine the CLI reads <data>/admin.token itself)");
    }
    Err(match status {
        StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND => Exit::bad_input(full),
        _ => Exit::failure(full),
    })
}
