//! How CLI commands reach the system: a running server over HTTPS with a
//! bearer token, or, when no server runs, the same API in-process on the
//! data directory (as the local operator; audited like any caller).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use axum::body::Body;
use axum::http::{Method, Request};
use mamori_core::time::SystemClock;
use mamori_server::state::LocalOperator;
use serde_json::Value;
use tower::ServiceExt;

pub enum Api {
    Remote { client: reqwest::Client, base: String, token: String },
    Local { router: axum::Router, _lock: mamori_server::server::DirLock, _state: mamori_server::state::AppState },
}

/// Where to send commands: `--server URL --token T`, or `--data DIR`.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// Data directory of a stopped server (commands run in-process).
    #[arg(long, env = "MAMORI_DATA")]
    pub data: Option<PathBuf>,
    /// Base URL of a running server, e.g. https://localhost:8443.
    #[arg(long, env = "MAMORI_SERVER")]
    pub server: Option<String>,
    /// Bearer token for --server (prefer MAMORI_TOKEN or --token-file).
    #[arg(long, env = "MAMORI_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, env = "MAMORI_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for --server; defaults to DIR/tls/cert.pem when --data is also given.
    #[arg(long, env = "MAMORI_CA")]
    pub ca: Option<PathBuf>,
}

impl Api {
    pub async fn connect(t: &Target) -> Result<Api> {
        if let Some(server) = &t.server {
            let token = match (&t.token, &t.token_file) {
                (Some(tok), _) => tok.clone(),
                (None, Some(f)) => {
                    std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?.trim().to_owned()
                }
                (None, None) => {
                    bail!("--server needs a token (--token, MAMORI_TOKEN or --token-file)")
                }
            };
            let ca = t.ca.clone().or_else(|| t.data.as_ref().map(|d| d.join("tls/cert.pem")));
            let client = client(ca.as_deref())?;
            return Ok(Api::Remote { client, base: server.trim_end_matches('/').to_owned(), token });
        }
        let Some(dir) = &t.data else {
            bail!("say where: --data DIR (server stopped) or --server URL --token TOKEN (server running)");
        };
        let (state, lock) = mamori_server::server::open_local(dir, Arc::new(SystemClock)).await?;
        let router = mamori_server::app::router(state.clone());
        Ok(Api::Local { router, _lock: lock, _state: state })
    }

    /// Calls the API; returns the status and the JSON body.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        self.call_raw(method, path, body.map(|b| (b.to_string(), "application/json"))).await
    }

    /// Calls with a raw body of the given content type.
    pub async fn call_raw(&self, method: Method, path: &str, body: Option<(String, &str)>) -> Result<(u16, Value)> {
        self.call_with(method, path, body.map(|(b, ct)| (b.into_bytes(), ct)), None).await
    }

    /// Calls with a binary body; fails with the server's message on a non-2xx status.
    pub async fn ok_bytes(&self, method: Method, path: &str, body: Vec<u8>, ct: &str) -> Result<Value> {
        let (status, v) = self.call_with(method, path, Some((body, ct)), None).await?;
        check(status, v)
    }

    async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
        if_match: Option<i64>,
    ) -> Result<(u16, Value)> {
        let etag = if_match.map(|v| format!("W/\"{v}\""));
        match self {
            Api::Remote { client, base, token } => {
                let mut rb = client.request(method, format!("{base}{path}")).bearer_auth(token);
                if let Some(e) = &etag {
                    rb = rb.header("if-match", e);
                }
                if let Some((b, ct)) = body {
                    rb = rb.header("content-type", ct).body(b);
                }
                let resp = rb.send().await.with_context(|| format!("cannot reach {base}"))?;
                let status = resp.status().as_u16();
                let text = resp.text().await?;
                Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
            }
            Api::Local { router, .. } => {
                let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
                let ct = body.as_ref().map_or("application/json", |(_, c)| *c);
                let mut req = Request::builder().method(method).uri(path).header("content-type", ct);
                if let Some(e) = &etag {
                    req = req.header("if-match", e);
                }
                if let Some(ext) = req.extensions_mut() {
                    ext.insert(LocalOperator(format!("OS user {user}")));
                }
                let req = req.body(body.map_or_else(Body::empty, |(b, _)| Body::from(b)))?;
                let resp = router.clone().oneshot(req).await.map_err(|e| anyhow!("{e}"))?;
                let status = resp.status().as_u16();
                let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20).await?;
                Ok((
                    status,
                    serde_json::from_slice(&bytes)
                        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned())),
                ))
            }
        }
    }

    /// Calls and fails with the server's message on a non-2xx status.
    pub async fn ok(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let (status, v) = self.call(method, path, body).await?;
        check(status, v)
    }

    /// Calls with `If-Match: W/"<version>"` (optimistic locking).
    pub async fn ok_etag(&self, method: Method, path: &str, body: &Value, version: i64) -> Result<Value> {
        let (status, v) = self
            .call_with(method, path, Some((body.to_string().into_bytes(), "application/json")), Some(version))
            .await?;
        check(status, v)
    }

    pub async fn ok_raw(&self, method: Method, path: &str, body: Option<(String, &str)>) -> Result<Value> {
        let (status, v) = self.call_raw(method, path, body).await?;
        check(status, v)
    }
}

fn check(status: u16, v: Value) -> Result<Value> {
    if (200..300).contains(&status) {
        return Ok(v);
    }
    let msg = v
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| v.pointer("/issue/0/diagnostics").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| v.to_string());
    bail!("{msg} (HTTP {status})")
}

/// An HTTPS client trusting only `ca` (or the system's roots if none).
pub fn client(ca: Option<&std::path::Path>) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().use_rustls_tls().https_only(true);
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading CA certificate {}", ca.display()))?;
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
    }
    Ok(b.build()?)
}
