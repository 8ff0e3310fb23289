//! How CLI commands reach the system: a running server over HTTPS with a
//! bearer token, or, when no server runs, the use cases themselves
//! (`mamori-service`) in process on the data directory, as the local
//! operator (an administrator on the server's host; audited like any
//! caller). Each command names both: the HTTP request, and the use case it
//! stands for.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use mamori_core::time::SystemClock;
use mamori_service::init::DirLock;
use mamori_service::{Actor, RequestCtx, ServiceError, Services};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Where commands go.
pub(crate) enum Api {
    /// A running server.
    Remote { client: reqwest::Client, base: String, token: String },
    /// The data directory of a stopped server, opened in process.
    Local { svc: Services, actor: Box<Actor>, _lock: DirLock },
}

/// Where to send commands: `--server URL --token T`, or `--data DIR`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Target {
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

/// The HTTP request of a command (for a running server).
pub(crate) struct Http {
    method: Method,
    path: String,
    body: Option<(Vec<u8>, &'static str)>,
    if_match: Option<i64>,
}

impl Http {
    /// `GET path`.
    pub(crate) fn get(path: impl Into<String>) -> Self {
        Http { method: Method::GET, path: path.into(), body: None, if_match: None }
    }
    /// `DELETE path`.
    pub(crate) fn delete(path: impl Into<String>) -> Self {
        Http { method: Method::DELETE, path: path.into(), body: None, if_match: None }
    }
    /// `method path` with a JSON body.
    pub(crate) fn json(method: Method, path: impl Into<String>, body: &Value) -> Self {
        Http {
            method,
            path: path.into(),
            body: Some((body.to_string().into_bytes(), "application/json")),
            if_match: None,
        }
    }
    /// `POST path` with a JSON body.
    pub(crate) fn post(path: impl Into<String>, body: &Value) -> Self {
        Http::json(Method::POST, path, body)
    }
    /// `method path` with a raw body of a content type.
    pub(crate) fn raw(method: Method, path: impl Into<String>, body: Vec<u8>, ct: &'static str) -> Self {
        Http { method, path: path.into(), body: Some((body, ct)), if_match: None }
    }
    /// With `If-Match: W/"<version>"` (optimistic locking).
    pub(crate) fn if_match(mut self, version: Option<i64>) -> Self {
        self.if_match = version;
        self
    }
}

/// A command's JSON arguments as its use case's typed command.
pub(crate) fn de<T: DeserializeOwned>(v: Value) -> Result<T, ServiceError> {
    serde_json::from_value(v).map_err(|e| ServiceError::invalid("", format!("invalid arguments: {e}")))
}

impl Api {
    pub(crate) async fn connect(t: &Target) -> Result<Api> {
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
        let (svc, lock) = mamori_service::init::open_local(dir, Arc::new(SystemClock)).await?;
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        let mut actor = Actor::local_operator(&format!("OS user {user}"), RequestCtx::background(svc.mode.get()));
        actor.node = svc.node();
        Ok(Api::Local { svc, actor: Box::new(actor), _lock: lock })
    }

    /// Runs a command: its HTTP request on a running server, or its use
    /// case in process. Returns the JSON answer; fails with the server's
    /// message on a refusal.
    pub(crate) async fn exec<T, F, Fut>(&self, http: Http, local: F) -> Result<Value>
    where
        T: Serialize,
        F: FnOnce(Services, Actor) -> Fut,
        Fut: Future<Output = Result<T, ServiceError>>,
    {
        match self {
            Api::Remote { .. } => {
                let (status, v) = self.send(http).await?;
                check(status, v)
            }
            Api::Local { svc, actor, .. } => match local(svc.clone(), (**actor).clone()).await {
                Ok(v) => Ok(serde_json::to_value(v)?),
                Err(e) => bail!("{} (HTTP {})", e.message(), e.status()),
            },
        }
    }

    /// Sends an HTTP request to the running server (status and JSON, or
    /// the text of a non-JSON answer).
    async fn send(&self, http: Http) -> Result<(u16, Value)> {
        let Api::Remote { client, base, token } = self else { bail!("no server to send to") };
        let mut rb = client.request(http.method, format!("{base}{}", http.path)).bearer_auth(token);
        if let Some(v) = http.if_match {
            rb = rb.header("if-match", format!("W/\"{v}\""));
        }
        if let Some((b, ct)) = http.body {
            rb = rb.header("content-type", ct).body(b);
        }
        let resp = rb.send().await.with_context(|| format!("cannot reach {base}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
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
pub(crate) fn client(ca: Option<&std::path::Path>) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().use_rustls_tls().https_only(true);
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading CA certificate {}", ca.display()))?;
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
    }
    Ok(b.build()?)
}
