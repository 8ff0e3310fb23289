//! Test harness: a real mamori server on an ephemeral loopback port, with
//! real TLS, a fresh data directory, and staff accounts of every role.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use mamori_core::time::{Clock, ManualClock, SystemClock, Timestamp};
use mamori_server::server::{start, Running, ServeOptions};
use reqwest::redirect::Policy;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

pub(crate) struct TestServer {
    pub running: Option<Running>,
    pub dir: PathBuf,
    pub base: String,
    pub client: reqwest::Client,
    pub admin: String,
    /// A second administrator: approves the clinical role grants the
    /// first one asks for (separation of duties).
    pub admin2: String,
    pub clock: Option<ManualClock>,
    /// Whether dropping this value removes the data directory.
    pub owns_dir: bool,
    /// PostgreSQL: the server's URL and schema (dropped with the directory).
    pub pg: Option<(String, String)>,
}

pub(crate) struct Resp {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    pub(crate) fn header(&self, k: &str) -> Option<String> {
        self.headers.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }
}

pub(crate) const PASSWORD: &str = "Correct horse 42!";

/// The backend the suite runs on: `MAMORI_TEST_BACKEND=postgres` runs every
/// server of the suite on PostgreSQL (`MAMORI_TEST_PG`, default the local
/// `postgres://postgres@127.0.0.1:5432/test`), each in a schema of its own
/// that is dropped afterwards; otherwise on SQLite.
pub(crate) fn pg_base() -> Option<String> {
    match std::env::var("MAMORI_TEST_BACKEND").as_deref() {
        Ok("postgres") => {
            Some(std::env::var("MAMORI_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()))
        }
        _ => None,
    }
}

/// Runs `f` on a fresh connection to a PostgreSQL URL, on a thread of its
/// own (the synchronous client must not run on the test's runtime).
pub(crate) fn on_pg<T: Send>(url: &str, f: impl FnOnce(&mut mamori_store::pg::PgConn) -> T + Send) -> T {
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let mut c = mamori_store::pg::PgConn::connect(url).expect("PostgreSQL for the tests is reachable");
            f(&mut c)
        })
        .join()
        .expect("PostgreSQL helper thread")
    })
}

/// A schema of its own for one test server: its URL, and the schema name.
pub(crate) fn pg_schema(base: &str, tag: &str) -> (String, String) {
    let n: u64 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let tag: String =
        tag.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    let schema = format!("t_{tag}_{}_{n:x}", std::process::id());
    on_pg(base, |c| {
        use mamori_store::sql::Conn;
        c.batch(&format!("CREATE SCHEMA {schema}")).unwrap();
    });
    let sep = if base.contains('?') { '&' } else { '?' };
    (format!("{base}{sep}options=-csearch_path%3D{schema}"), schema)
}

pub(crate) fn drop_pg_schema(base: &str, schema: &str) {
    on_pg(base, |c| {
        use mamori_store::sql::Conn;
        // Best effort: a leftover schema harms no test.
        c.batch(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).ok();
    });
}

/// Copies a data directory for a second server on the same database
/// (keys, TLS, configuration; not the lock).
pub(crate) fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == "mamori.lock" {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(&name));
        } else {
            std::fs::copy(&p, to.join(&name)).unwrap();
        }
    }
}

pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    let n: u64 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let d = std::env::temp_dir().join(format!("mamori-test-{tag}-{}-{n}", std::process::id()));
    // A leftover with the same name, if any (there normally is none).
    std::fs::remove_dir_all(&d).ok();
    d
}

impl TestServer {
    pub(crate) async fn start(tag: &str) -> TestServer {
        Self::start_with(tag, None).await
    }

    /// With a manual clock starting now (for expiry tests).
    pub(crate) async fn start_manual(tag: &str) -> TestServer {
        Self::start_with(tag, Some(ManualClock::new(SystemClock.now()))).await
    }

    pub(crate) async fn start_with(tag: &str, clock: Option<ManualClock>) -> TestServer {
        Self::start_cfg(tag, "", clock).await
    }

    /// With extra configuration (TOML sections appended).
    pub(crate) async fn start_cfg(tag: &str, extra: &str, clock: Option<ManualClock>) -> TestServer {
        Self::start_server_cfg(tag, "", extra, clock).await
    }

    /// With extra keys of `[server]` and extra sections.
    pub(crate) async fn start_server_cfg(
        tag: &str,
        server: &str,
        extra: &str,
        clock: Option<ManualClock>,
    ) -> TestServer {
        let dir = temp_dir(tag);
        std::fs::create_dir_all(&dir).unwrap();
        let url = pg_base().map(|b| pg_schema(&b, tag).0).unwrap_or_default();
        // Two readers are plenty for a test, and keep the tests that run at
        // once well under PostgreSQL's connection limit.
        let readers = if url.is_empty() { "" } else { "readers = 2\n" };
        std::fs::write(
            dir.join("mamori.toml"),
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n[database]\nsynchronous = \"normal\"\nurl = \"{url}\"\n{readers}{extra}"
            ),
        )
        .unwrap();
        Self::boot(dir, clock).await
    }

    /// The PostgreSQL URL in a data directory's configuration, if any.
    pub(crate) fn pg_of(dir: &std::path::Path) -> Option<(String, String)> {
        let t = std::fs::read_to_string(dir.join("mamori.toml")).ok()?;
        let line = t.lines().find(|l| l.trim_start().starts_with("url = \"postgres"))?;
        let url = line.split('"').nth(1)?.to_owned();
        let schema = url.rsplit("search_path%3D").next()?.to_owned();
        Some((url, schema))
    }

    pub(crate) async fn boot(dir: PathBuf, clock: Option<ManualClock>) -> TestServer {
        let c: Arc<dyn Clock> = match &clock {
            Some(m) => Arc::new(m.clone()),
            None => Arc::new(SystemClock),
        };
        let running = start(ServeOptions { data: dir.clone(), listen: None, as2_listen: None, clock: c })
            .await
            .expect("server starts");
        let base = format!("https://localhost:{}", running.addr.port());
        let pem = std::fs::read(dir.join("tls/cert.pem")).unwrap();
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .build()
            .unwrap();
        let pg = Self::pg_of(&dir);
        let mut s = TestServer {
            running: None,
            dir,
            base,
            client,
            admin: String::new(),
            admin2: String::new(),
            clock,
            owns_dir: true,
            pg,
        };
        if let Some(init) = running.init.as_ref() {
            let pw = init.admin_password.to_string();
            s.running = Some(running);
            let tok = s.login("admin", &pw).await;
            let r = s
                .req(Method::POST, "/api/v1/auth/password", Some(&tok), Some(json!({"current": pw, "new": PASSWORD})))
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            s.admin = s.login("admin", PASSWORD).await;
            s.admin2 = s.second_admin().await;
        } else {
            s.running = Some(running);
            s.admin = s.login("admin", PASSWORD).await;
            s.admin2 = s.login("admin2", PASSWORD).await;
        }
        s
    }

    /// Creates `admin2` (an administrator grant needs no approval) and
    /// returns its token.
    async fn second_admin(&self) -> String {
        let r = self
            .post(
                "/api/v1/users",
                &self.admin,
                json!({"name": "admin2", "display": "Second Admin", "roles": ["admin"]}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        assert!(r.body.get("pending_request").is_none(), "{}", r.text);
        let otp = r.body["one_time_password"].as_str().unwrap().to_owned();
        let t = self.login("admin2", &otp).await;
        let r = self
            .req(Method::POST, "/api/v1/auth/password", Some(&t), Some(json!({"current": otp, "new": PASSWORD})))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        self.login("admin2", PASSWORD).await
    }

    /// Boots an initialized directory whose admin still has the one-time
    /// password `otp` (e.g. a standalone node just made from a snapshot).
    pub(crate) async fn boot_otp(dir: PathBuf, otp: &str) -> TestServer {
        let c: Arc<dyn Clock> = Arc::new(SystemClock);
        let running = start(ServeOptions { data: dir.clone(), listen: None, as2_listen: None, clock: c })
            .await
            .expect("server starts");
        let base = format!("https://localhost:{}", running.addr.port());
        let pem = std::fs::read(dir.join("tls/cert.pem")).unwrap();
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .build()
            .unwrap();
        let pg = Self::pg_of(&dir);
        let mut s = TestServer {
            running: Some(running),
            dir,
            base,
            client,
            admin: String::new(),
            admin2: String::new(),
            clock: None,
            owns_dir: true,
            pg,
        };
        let tok = s.login("admin", otp).await;
        let r = s
            .req(Method::POST, "/api/v1/auth/password", Some(&tok), Some(json!({"current": otp, "new": PASSWORD})))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        s.admin = s.login("admin", PASSWORD).await;
        s.admin2 = s.second_admin().await;
        s
    }

    pub(crate) async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    pub(crate) async fn restart(&mut self) {
        self.stop().await;
        let dir = self.dir.clone();
        let clock = self.clock.clone();
        let s = Self::boot(dir, clock).await;
        let mut old = std::mem::replace(self, s);
        old.owns_dir = false;
    }

    /// Runs `f` on a connection to the server's database, whichever
    /// backend it is on (SQLite read-only; PostgreSQL in its schema).
    pub(crate) fn with_db<T: Send>(&self, f: impl FnOnce(&mut dyn mamori_store::sql::Conn) -> T + Send) -> T {
        match &self.pg {
            Some((url, _)) => on_pg(url, |c| f(c)),
            None => {
                let mut c = rusqlite::Connection::open_with_flags(
                    self.dir.join("mamori.db"),
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
                .unwrap();
                f(&mut c)
            }
        }
    }

    /// The first column of the rows of a query with text parameters.
    pub(crate) fn col(&self, sql: &str, params: &[&str]) -> Vec<mamori_store::sql::Cell> {
        let params: Vec<String> = params.iter().map(|p| (*p).to_owned()).collect();
        self.with_db(|c| {
            let vals: Vec<mamori_store::sql::Val<'_>> = params.iter().map(|p| p.as_str().into()).collect();
            c.query(sql, &vals).unwrap().into_iter().map(|r| r.0.into_iter().next().unwrap()).collect()
        })
    }

    /// One text (or blob as UTF-8) value.
    pub(crate) fn text(&self, sql: &str, params: &[&str]) -> String {
        match self.col(sql, params).into_iter().next().expect("a row") {
            mamori_store::sql::Cell::Text(t) => t,
            mamori_store::sql::Cell::Blob(b) => String::from_utf8(b).unwrap(),
            other => panic!("not text: {other:?}"),
        }
    }

    pub(crate) fn count(&self, sql: &str) -> i64 {
        match self.col(sql, &[]).into_iter().next().expect("a row") {
            mamori_store::sql::Cell::Int(v) => v,
            other => panic!("not an integer: {other:?}"),
        }
    }

    /// Rows that a change would touch: versions, current pointers, index.
    pub(crate) fn snapshot(&self) -> (i64, i64, i64, i64) {
        (
            self.count("SELECT COUNT(*) FROM resource_versions"),
            self.count("SELECT COUNT(*) FROM resources"),
            self.count("SELECT COUNT(*) FROM idx_token") + self.count("SELECT COUNT(*) FROM idx_string"),
            self.count("SELECT COUNT(*) FROM users") + self.count("SELECT COUNT(*) FROM care_assignments"),
        )
    }

    pub(crate) fn audit_count(&self) -> i64 {
        self.count("SELECT COUNT(*) FROM audit_events")
    }

    /// The decoded leaf of the newest audit event.
    pub(crate) fn last_audit(&self) -> Value {
        let s = self.text("SELECT leaf FROM audit_events ORDER BY seq DESC LIMIT 1", &[]);
        serde_json::from_str(s.split_once('\n').unwrap().1).unwrap()
    }

    pub(crate) fn audits_where(&self, action: &str) -> Vec<Value> {
        self.col("SELECT leaf FROM audit_events WHERE action = $1 ORDER BY seq", &[action])
            .into_iter()
            .map(|c| {
                let l = match c {
                    mamori_store::sql::Cell::Blob(b) => b,
                    mamori_store::sql::Cell::Text(t) => t.into_bytes(),
                    other => panic!("leaf: {other:?}"),
                };
                let s = String::from_utf8(l).unwrap();
                serde_json::from_str(s.split_once('\n').unwrap().1).unwrap()
            })
            .collect()
    }

    pub(crate) async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(String, &str)>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut rb = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some((b, ct)) = body {
            rb = rb.header("content-type", ct).body(b);
        }
        let r = rb.send().await.expect("request sent");
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp { status, headers, body, text }
    }

    pub(crate) async fn req(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Resp {
        let ct = if path.starts_with("/fhir") { "application/fhir+json" } else { "application/json" };
        self.raw(method, path, token, body.map(|b| (b.to_string(), ct)), &[]).await
    }

    /// A GET whose answer is bytes (a PDF): the status and the body.
    pub(crate) async fn get_bytes(&self, path: &str, token: &str) -> (u16, Vec<u8>) {
        let r = self.client.get(format!("{}{path}", self.base)).bearer_auth(token).send().await.expect("request sent");
        (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
    }

    pub(crate) async fn get(&self, path: &str, token: &str) -> Resp {
        self.req(Method::GET, path, Some(token), None).await
    }
    pub(crate) async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.req(Method::POST, path, Some(token), Some(body)).await
    }
    pub(crate) async fn put(&self, path: &str, token: &str, body: Value) -> Resp {
        self.req(Method::PUT, path, Some(token), Some(body)).await
    }
    pub(crate) async fn delete(&self, path: &str, token: &str) -> Resp {
        self.req(Method::DELETE, path, Some(token), None).await
    }

    pub(crate) async fn login(&self, user: &str, pw: &str) -> String {
        let r =
            self.req(Method::POST, "/api/v1/auth/login", None, Some(json!({"username": user, "password": pw}))).await;
        assert_eq!(r.status, 200, "login {user}: {}", r.text);
        r.body["token"].as_str().unwrap().to_owned()
    }

    /// Creates a user with roles and returns a ready token (password set).
    pub(crate) async fn user(&self, name: &str, roles: &[&str]) -> String {
        self.user_in(name, roles, None).await
    }

    pub(crate) async fn user_in(&self, name: &str, roles: &[&str], dept: Option<&str>) -> String {
        let r = self
            .post(
                "/api/v1/users",
                &self.admin,
                json!({"name": name, "display": format!("Test {name}"), "roles": roles, "department": dept}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        // Clinical roles wait for the second administrator.
        if let Some(req) = r.body["pending_request"].as_i64() {
            let a = self.post(&format!("/api/v1/account-requests/{req}/approve"), &self.admin2, json!({})).await;
            assert_eq!(a.status, 200, "{}", a.text);
        }
        let otp = r.body["one_time_password"].as_str().unwrap().to_owned();
        let t = self.login(name, &otp).await;
        let r = self
            .req(Method::POST, "/api/v1/auth/password", Some(&t), Some(json!({"current": otp, "new": PASSWORD})))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        self.login(name, PASSWORD).await
    }

    pub(crate) async fn assign(&self, patient: &str, user: &str) {
        let r = self.post("/api/v1/care-assignments", &self.admin, json!({"patient": patient, "user": user})).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }

    /// Creates a Patient as `token`; returns its id.
    pub(crate) async fn patient(&self, token: &str, family: &str, given: &str) -> String {
        let r = self
            .post("/fhir/Patient", token, json!({"resourceType": "Patient", "name": [{"family": family, "given": [given]}], "gender": "female", "birthDate": "1970-01-01"}))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.body["id"].as_str().unwrap().to_owned()
    }

    pub(crate) fn now(&self) -> Timestamp {
        match &self.clock {
            Some(c) => c.now(),
            None => SystemClock.now(),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.owns_dir && !std::thread::panicking() {
            // Best effort: a leftover temporary directory harms no test.
            std::fs::remove_dir_all(&self.dir).ok();
            if let (Some((_, schema)), Some(base)) = (&self.pg, pg_base()) {
                drop_pg_schema(&base, schema);
            }
        }
    }
}

pub(crate) fn observation(patient: &str, code: &str, value: f64) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": "2026-11-26T09:00:00+09:00",
        "valueQuantity": {"value": value, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}
    })
}

/// Edits audit event `seq` in place, behind the log's back (its status
/// byte changes; its recorded leaf hash does not): what an attacker with
/// database access would do.
pub(crate) fn tamper_audit_event(s: &TestServer, seq: i64) {
    let edit = |leaf: Vec<u8>| -> Vec<u8> {
        let text = String::from_utf8(leaf).unwrap();
        let changed = text.replacen("\"status\":201", "\"status\":200", 1);
        assert_ne!(changed, text, "the event has a status 201 to change");
        changed.into_bytes()
    };
    match &s.pg {
        Some((url, _)) => on_pg(url, |c| {
            use mamori_store::sql::Conn;
            let leaf = c
                .query_one("SELECT leaf FROM audit_events WHERE seq = $1", mamori_store::p![seq])
                .unwrap()
                .unwrap()
                .blob(0)
                .unwrap();
            c.exec("UPDATE audit_events SET leaf = $1 WHERE seq = $2", mamori_store::p![edit(leaf), seq]).unwrap();
        }),
        None => {
            let c = rusqlite::Connection::open(s.dir.join("mamori.db")).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            let leaf: Vec<u8> =
                c.query_row("SELECT leaf FROM audit_events WHERE seq = ?1", [seq], |r| r.get(0)).unwrap();
            c.execute("UPDATE audit_events SET leaf = ?1 WHERE seq = ?2", rusqlite::params![edit(leaf), seq]).unwrap();
        }
    }
}

/// Runs one statement on the server's database behind its back (read-write,
/// either backend): what an attacker with database access would do.
pub(crate) fn exec_behind_the_back(s: &TestServer, sql: &str) {
    match &s.pg {
        Some((url, _)) => on_pg(url, |c| {
            use mamori_store::sql::Conn;
            c.exec(sql, mamori_store::p![]).unwrap();
        }),
        None => {
            let c = rusqlite::Connection::open(s.dir.join("mamori.db")).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            c.execute_batch(sql).unwrap();
        }
    }
}

/// A cookie-keeping client that does not follow redirects.
pub(crate) struct Browser {
    pub client: reqwest::Client,
    pub base: String,
    pub cookies: HashMap<String, String>,
    pub lang: &'static str,
}

pub(crate) struct Page {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub set_cookies: Vec<String>,
    pub text: String,
}

impl Page {
    pub(crate) fn location(&self) -> String {
        self.headers.get("location").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
    }
    pub(crate) fn header(&self, k: &str) -> String {
        self.headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
    }
}

impl Browser {
    pub(crate) fn new(s: &TestServer) -> Browser {
        let pem = std::fs::read(s.dir.join("tls/cert.pem")).unwrap();
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .redirect(Policy::none())
            .build()
            .unwrap();
        Browser { client, base: s.base.clone(), cookies: HashMap::new(), lang: "ja" }
    }

    pub(crate) async fn send(&mut self, method: Method, path: &str, form: Option<&[(&str, &str)]>) -> Page {
        let mut rb = self.client.request(method, format!("{}{path}", self.base)).header("accept-language", self.lang);
        if !self.cookies.is_empty() {
            let c: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            rb = rb.header("cookie", c.join("; "));
        }
        if let Some(f) = form {
            rb = rb.form(f);
        }
        let r = rb.send().await.unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        let set_cookies: Vec<String> =
            headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
        for sc in &set_cookies {
            let kv = sc.split(';').next().unwrap();
            let (k, v) = kv.split_once('=').unwrap();
            if v.is_empty() {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
        let text = r.text().await.unwrap();
        Page { status, headers, set_cookies, text }
    }

    pub(crate) async fn get(&mut self, path: &str) -> Page {
        self.send(Method::GET, path, None).await
    }

    /// Posts a form with the CSRF token of the cookie.
    pub(crate) async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let csrf = self.cookies.get("mamori_csrf").cloned().unwrap_or_default();
        let mut f: Vec<(&str, &str)> = vec![("csrf", csrf.as_str())];
        f.extend_from_slice(fields);
        self.send(Method::POST, path, Some(&f)).await
    }

    pub(crate) async fn login(&mut self, user: &str, pw: &str) -> Page {
        let p = self.get("/ui/login").await;
        assert_eq!(p.status, 200);
        self.post("/ui/login", &[("username", user), ("password", pw), ("next", "/ui/")]).await
    }
}
