//! The `mamori` command: runs the server and administers a hospital's
//! installation. Thin: everything it does goes through the same API and
//! policy as any other client, and is audited.
#![forbid(unsafe_code)]

mod api;
mod audit;
mod bcp;
mod compliance;
mod continuity;
mod db;
mod exchange;
mod maintenance;
mod packages;
mod witness;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use clap::{Parser, Subcommand};
use mamori_core::time::SystemClock;
use mamori_service::accounts;
use reqwest::Method;
use serde_json::{json, Value};

use api::{de, Api, Http, Target};

#[derive(Parser)]
#[command(
    name = "mamori",
    version,
    about = "mamori (守り): the safety core of a hospital information system — FHIR R4 record store, tamper-evident audit, emergency operations and secure exchange."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Initialize a data directory: configuration, keys, TLS certificate,
    /// database and the `admin` account, whose one-time password is
    /// printed and kept in DIR/initial-admin-password (readable only by
    /// this user) until it is changed.
    Init {
        /// Data directory (created; must be empty or not exist).
        #[arg(long, env = "MAMORI_DATA")]
        data: PathBuf,
    },
    /// Ask a running server whether it is healthy (`GET /healthz`): exit 0
    /// when it answers ok, 1 otherwise. For container health checks and
    /// monitoring scripts.
    Health {
        /// The server's base URL.
        #[arg(long, default_value = "https://localhost:8443")]
        server: String,
        /// CA certificate to trust (default: DIR/tls/cert.pem of --data).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// The server's data directory (for its certificate).
        #[arg(long, env = "MAMORI_DATA")]
        data: Option<PathBuf>,
    },
    /// Run the server (HTTPS) on an initialized data directory (see
    /// `mamori init`; `--init` does both).
    Serve {
        /// Data directory.
        #[arg(long, env = "MAMORI_DATA")]
        data: PathBuf,
        /// Initialize DIR first if it is not initialized (as `mamori init`).
        #[arg(long)]
        init: bool,
        /// Listen address (default from mamori.toml: 127.0.0.1:8443).
        #[arg(long, env = "MAMORI_LISTEN")]
        listen: Option<String>,
        /// AS2 listen address for partner institutions (mutual TLS, path
        /// /as2); default from mamori.toml `exchange.listen` (off).
        #[arg(long, env = "MAMORI_AS2_LISTEN")]
        as2_listen: Option<String>,
        /// Remote-maintenance listen address (client certificates); default
        /// from mamori.toml `maintenance.listen` (off).
        #[arg(long, env = "MAMORI_MAINT_LISTEN")]
        maint_listen: Option<String>,
        /// Seed a synthetic demo hospital (staff, ~50 patients, BCP plan,
        /// emergency accounts, a partner clinic node) on an empty directory;
        /// refused on a directory that holds real data.
        #[arg(long)]
        demo: bool,
    },
    /// Users and roles.
    #[command(subcommand)]
    User(UserCmd),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Care relationships between staff and patients.
    #[command(subcommand)]
    Care(CareCmd),
    /// The tamper-evident audit log: verify, export, witness.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Bring the database (SQLite or PostgreSQL, per mamori.toml) of a
    /// stopped server to this version's schema: a SQLite database is first
    /// copied to DIR/backups/ (the way back); a database newer than this
    /// build is refused. `--check` only says what would run. `mamori
    /// serve` upgrades at start the same way.
    #[command(alias = "migrate")]
    Upgrade {
        /// Data directory.
        #[arg(long)]
        data: PathBuf,
        /// Only say which migrations would run, and how to back up first.
        #[arg(long)]
        check: bool,
    },
    /// Move a stopped SQLite data directory's database into an empty
    /// PostgreSQL database, then check it: row counts per table and the
    /// audit log verified on the target. The SQLite file is left as it was.
    CopyToPostgres {
        /// Data directory (on SQLite; its server stopped).
        #[arg(long)]
        data: PathBuf,
        /// The target: postgres://user@host:port/dbname
        #[arg(long)]
        url: String,
    },
    /// The emergency procedure (BCP): plan, declarations, phases, checklists, reviews.
    #[command(subcommand)]
    Bcp(bcp::BcpCmd),
    /// Sealed emergency accounts.
    #[command(subcommand, name = "emergency-accounts")]
    EmergencyAccounts(bcp::AccountsCmd),
    /// The partner registry (institutions mamori exchanges with).
    #[command(subcommand)]
    Partner(exchange::PartnerCmd),
    /// Exchanges with partners: send, ledger, received documents.
    #[command(subcommand)]
    Exchange(exchange::ExchangeCmd),
    /// Offline reference snapshots sealed for custodians.
    #[command(subcommand)]
    Snapshot(continuity::SnapshotCmd),
    /// Run a standalone node from a snapshot (no network), or export what it recorded.
    Standalone(continuity::StandaloneArgs),
    /// Bring what standalone nodes recorded into the central system.
    #[command(subcommand)]
    Reconcile(continuity::ReconcileCmd),
    /// Registration without the reception desk, merges.
    #[command(subcommand)]
    Patient(continuity::PatientCmd),
    /// Remote maintenance: vendors, people, windows, approvals, reviews.
    #[command(subcommand)]
    Maintenance(maintenance::MaintenanceCmd),
    /// FHIR packages (JP Core, JP-CLINS, ...): install, list.
    #[command(subcommand)]
    Packages(packages::PackagesCmd),
    /// Compliance reports for inspections: produce, list, show, verify.
    #[command(subcommand)]
    Compliance(compliance::ComplianceCmd),
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Verify the audit log offline: of a data directory (every event,
    /// checkpoint, signature, index and proof node), or of an export file
    /// with only a pinned key. Names the first problem; exits 1 if any.
    Verify {
        /// Data directory (readable while the server runs).
        #[arg(long, conflicts_with = "export", required_unless_present = "export")]
        data: Option<PathBuf>,
        /// An export file made by `mamori audit export`.
        #[arg(long, requires = "key")]
        export: Option<PathBuf>,
        /// The log's verifier key (name+id+base64) or a file holding it.
        #[arg(long)]
        key: Option<String>,
        /// Also check the data derived from the events: the query columns,
        /// the patient index behind "who looked at this patient", and every
        /// stored proof node.
        #[arg(long)]
        deep: bool,
        /// A signed checkpoint kept outside the database (a witness's copy,
        /// or `GET /api/v1/audit/checkpoint` saved by the operator): the log
        /// must still contain its tree. Names events lost by a restore from
        /// an older backup or an asynchronous standby. Repeatable.
        #[arg(long = "checkpoint", value_name = "FILE", requires = "data")]
        checkpoints: Vec<PathBuf>,
    },
    /// Export events and the checkpoints covering them to a self-contained
    /// file an external auditor verifies with `mamori audit verify --export`.
    Export {
        #[arg(long)]
        data: PathBuf,
        /// Output file (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// First event index (default 0).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Stop at this tree size (clipped to the newest checkpoint).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Run a witness: fetch checkpoints, check consistency, cosign, and
    /// raise an alert on any fork. Prints its own key on start.
    Witness {
        /// The witness's own directory (key and store).
        #[arg(long)]
        data: PathBuf,
        /// The witness's name (its key name), e.g. witness.example-hospital.jp/w1.
        #[arg(long, default_value = "mamori-witness")]
        name: String,
        /// The log's base URL, e.g. https://ehr.example:8443.
        #[arg(long)]
        log: String,
        /// The log's verifier key (pinned), or a file holding it.
        #[arg(long)]
        log_key: String,
        /// CA certificate to trust for the log's TLS.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Seconds between rounds.
        #[arg(long, default_value_t = 60)]
        interval: u64,
        /// One round, then exit (non-zero on an alert).
        #[arg(long)]
        once: bool,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create a user; prints the one-time password (changed at first login).
    Add {
        name: String,
        #[arg(long)]
        display: String,
        /// Comma-separated roles: physician, nurse, pharmacist, clerk, admin, auditor, bcp-decider.
        #[arg(long, value_delimiter = ',')]
        role: Vec<String>,
        #[arg(long)]
        department: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Replace a user's roles.
    Role {
        name: String,
        #[arg(long, value_delimiter = ',', required = true)]
        set: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// List users.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Account changes awaiting a second administrator (clinical role
    /// grants, password resets of clinical accounts).
    Requests {
        /// Decided ones too.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Approve an account request (an administrator other than the one who asked).
    Approve {
        id: i64,
        #[command(flatten)]
        target: Target,
    },
    /// Reject an account request.
    Reject {
        id: i64,
        #[command(flatten)]
        target: Target,
    },
    /// Give a user a new one-time password (and end their sessions).
    ResetPassword {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Disable a user (their tokens are revoked at once).
    Disable {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Enable a disabled user.
    Enable {
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Issue a bearer token; prints only the token (for scripts).
    Issue {
        #[arg(long)]
        user: String,
        #[arg(long)]
        label: Option<String>,
        #[arg(long)]
        ttl_hours: Option<i64>,
        #[command(flatten)]
        target: Target,
    },
    /// List tokens (ids, never secrets).
    List {
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Revoke a token by id.
    Revoke {
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum CareCmd {
    /// Assign a user (or a department) to a patient's care.
    Assign {
        #[arg(long)]
        patient: String,
        #[arg(long, conflicts_with = "department")]
        user: Option<String>,
        #[arg(long)]
        department: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// List care assignments.
    List {
        #[arg(long)]
        patient: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// End a care assignment.
    End {
        id: i64,
        #[command(flatten)]
        target: Target,
    },
}

/// The log: level and format from the environment (`MAMORI_LOG_LEVEL`,
/// `MAMORI_LOG_FORMAT`), else from the data directory's `[log]` when the
/// command names one; colours only on a terminal (and never with
/// `NO_COLOR`), so that a log written to a file or the journal is plain.
fn init_logging(data: Option<&std::path::Path>) {
    use std::io::IsTerminal;
    let cfg = data
        .filter(|d| d.join("mamori.toml").exists())
        .and_then(|d| mamori_service::config::Config::load(d).ok())
        .map(|c| c.log);
    let level = std::env::var("MAMORI_LOG_LEVEL")
        .ok()
        .or_else(|| cfg.as_ref().map(|l| l.level.clone()))
        .unwrap_or_else(|| "info".into());
    let filter =
        tracing_subscriber::EnvFilter::try_new(&level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let format = std::env::var("MAMORI_LOG_FORMAT")
        .ok()
        .or_else(|| cfg.as_ref().map(|l| l.format.clone()))
        .unwrap_or_else(|| "text".into());
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn q(s: &str) -> String {
    mamori_service::records::enc(s)
}

async fn decide_request(target: &Target, id: i64, approve: bool) -> Result<()> {
    let api = Api::connect(target).await?;
    let verb = if approve { "approve" } else { "reject" };
    let http = Http::post(format!("/api/v1/account-requests/{id}/{verb}"), &json!({}));
    let v = api.exec(http, |s, a| async move { accounts::decide_request(&s, &a, id, approve).await }).await?;
    println!("account request {id}: {}", v["request"]["state"].as_str().unwrap_or(""));
    if let Some(p) = v.get("one_time_password").and_then(Value::as_str) {
        println!("one-time password: {p}   (shown once; it must be changed at first login)");
    }
    Ok(())
}

async fn set_disabled(target: &Target, name: &str, disabled: bool) -> Result<()> {
    let api = Api::connect(target).await?;
    let body = json!({"disabled": disabled});
    let http = Http::json(Method::PATCH, format!("/api/v1/users/{}", q(name)), &body);
    let n = name.to_owned();
    api.exec(http, |s, a| async move { accounts::update_user(&s, &a, &n, de(body)?).await }).await?;
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Init { data } => init_dir(&data).await?,
        Cmd::Health { server, ca, data } => {
            let ca = ca.or_else(|| data.map(|d| d.join("tls/cert.pem")));
            let client = api::client(ca.as_deref())?;
            let url = format!("{}/healthz", server.trim_end_matches('/'));
            let r = client.get(&url).timeout(std::time::Duration::from_secs(5)).send().await;
            match r {
                Ok(r) if r.status().is_success() => println!("{}", r.text().await.unwrap_or_default()),
                Ok(r) => {
                    let status = r.status();
                    anyhow::bail!("{url}: {status} {}", r.text().await.unwrap_or_default())
                }
                Err(e) => anyhow::bail!("{url}: {e}"),
            }
        }
        Cmd::Serve { data, init, listen, as2_listen, maint_listen, demo } => {
            if let Some(m) = maint_listen {
                std::env::set_var("MAMORI_MAINTENANCE_LISTEN", m);
            }
            let dd = mamori_service::init::DataDir(data.clone());
            if !demo && !init && !dd.is_initialized() {
                anyhow::bail!(
                    "{} is not an initialized mamori data directory: run `mamori init --data {}` first (or `mamori serve --init`)",
                    data.display(),
                    data.display()
                );
            }
            let opts = mamori_server::server::ServeOptions { data, listen, as2_listen, clock: Arc::new(SystemClock) };
            let r = if demo {
                mamori_server::demo::run_demo(opts).await.map_err(anyhow::Error::from)
            } else {
                mamori_server::server::run(opts).await.map_err(anyhow::Error::from)
            };
            if let Err(e) = r {
                // Never lose the administrator's first password.
                let f = dd.admin_password_file();
                if f.exists() {
                    anyhow::bail!(
                        "{e:#}\nthe admin one-time password is in {} (or set a new one: mamori user reset-password admin --data {})",
                        f.display(),
                        dd.0.display()
                    );
                }
                return Err(e);
            }
        }
        Cmd::User(c) => match c {
            UserCmd::Add { name, display, role, department, target } => {
                let api = Api::connect(&target).await?;
                let body = json!({"name": name, "display": display, "roles": role, "department": department});
                let http = Http::post("/api/v1/users", &body);
                let v = api.exec(http, |s, a| async move { accounts::create_user(&s, &a, de(body)?).await }).await?;
                println!("created user {name}");
                if let Some(p) = v.get("one_time_password").and_then(Value::as_str) {
                    println!("one-time password: {p}   (shown once; it must be changed at first login)");
                }
                if let Some(r) = v.get("pending_request").and_then(Value::as_i64) {
                    println!(
                        "clinical roles await a second administrator: account request {r} \
                         (mamori user approve {r}); the account holds {} until then",
                        v["roles"]
                    );
                }
            }
            UserCmd::Role { name, set, target } => {
                let api = Api::connect(&target).await?;
                let body = json!({"roles": set});
                let http = Http::json(Method::PATCH, format!("/api/v1/users/{}", q(&name)), &body);
                print(
                    &api.exec(http, |s, a| async move { accounts::update_user(&s, &a, &name, de(body)?).await })
                        .await?,
                );
            }
            UserCmd::Requests { all, target } => {
                let api = Api::connect(&target).await?;
                let path = if all { "/api/v1/account-requests?state=all" } else { "/api/v1/account-requests" };
                print(
                    &api.exec(Http::get(path), |s, a| async move {
                        accounts::list_requests(&s, &a, !all).await.map(|r| json!({"requests": r}))
                    })
                    .await?,
                );
            }
            UserCmd::Approve { id, target } => decide_request(&target, id, true).await?,
            UserCmd::Reject { id, target } => decide_request(&target, id, false).await?,
            UserCmd::List { target } => {
                let api = Api::connect(&target).await?;
                let v = api
                    .exec(Http::get("/api/v1/users"), |s, a| async move {
                        accounts::list_users(&s, &a).await.map(|u| json!({"users": u}))
                    })
                    .await?;
                for u in v.get("users").and_then(Value::as_array).into_iter().flatten() {
                    println!(
                        "{:<20} {:<12} {:<40} {}",
                        u["name"].as_str().unwrap_or(""),
                        if u["disabled"].as_bool() == Some(true) {
                            "disabled"
                        } else {
                            u["kind"].as_str().unwrap_or("")
                        },
                        u["roles"]
                            .as_array()
                            .map(|r| r.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
                            .unwrap_or_default(),
                        u["display"].as_str().unwrap_or("")
                    );
                }
            }
            UserCmd::ResetPassword { name, target } => {
                let api = Api::connect(&target).await?;
                let http = Http::post(format!("/api/v1/users/{}/reset-password", q(&name)), &json!({}));
                let n2 = name.clone();
                let v = api.exec(http, |s, a| async move { accounts::reset_password(&s, &a, &n2).await }).await?;
                match (v["one_time_password"].as_str(), v["pending_request"].as_i64()) {
                    (Some(p), _) => println!("one-time password for {name}: {p}"),
                    (None, Some(r)) => println!("a second administrator approves the reset: account request {r}"),
                    _ => println!("{v}"),
                }
            }
            UserCmd::Disable { name, target } => {
                set_disabled(&target, &name, true).await?;
                println!("disabled {name}; their tokens were revoked");
            }
            UserCmd::Enable { name, target } => {
                set_disabled(&target, &name, false).await?;
                println!("enabled {name}");
            }
        },
        Cmd::Token(c) => match c {
            TokenCmd::Issue { user, label, ttl_hours, target } => {
                let api = Api::connect(&target).await?;
                let body = json!({"user": user, "label": label, "ttl_hours": ttl_hours});
                let http = Http::post("/api/v1/tokens", &body);
                let v = api.exec(http, |s, a| async move { accounts::issue_token(&s, &a, de(body)?).await }).await?;
                println!("{}", v["token"].as_str().unwrap_or(""));
                eprintln!(
                    "token id {} for {user}, expires {}",
                    v["id"].as_str().unwrap_or(""),
                    v["expires_at"].as_str().unwrap_or("")
                );
            }
            TokenCmd::List { user, target } => {
                let api = Api::connect(&target).await?;
                let path = match &user {
                    Some(u) => format!("/api/v1/tokens?user={}", q(u)),
                    None => "/api/v1/tokens".into(),
                };
                print(
                    &api.exec(Http::get(path), |s, a| async move {
                        accounts::list_tokens(&s, &a, user).await.map(|t| json!({"tokens": t}))
                    })
                    .await?,
                );
            }
            TokenCmd::Revoke { id, target } => {
                let api = Api::connect(&target).await?;
                let http = Http::delete(format!("/api/v1/tokens/{}", q(&id)));
                let i2 = id.clone();
                api.exec(http, |s, a| async move { accounts::revoke_token(&s, &a, &i2).await }).await?;
                println!("revoked {id}");
            }
        },
        Cmd::Care(c) => match c {
            CareCmd::Assign { patient, user, department, reason, target } => {
                let api = Api::connect(&target).await?;
                let body = json!({"patient": patient, "user": user, "department": department, "reason": reason});
                let http = Http::post("/api/v1/care-assignments", &body);
                let id = api.exec(http, |s, a| async move { accounts::assign_care(&s, &a, de(body)?).await }).await?;
                // The server answers {"id": n}; in process, the id itself.
                println!("care assignment {} created", id.get("id").unwrap_or(&id));
            }
            CareCmd::List { patient, user, target } => {
                let api = Api::connect(&target).await?;
                let mut qs = Vec::new();
                if let Some(p) = &patient {
                    qs.push(format!("patient={}", q(p)));
                }
                if let Some(u) = &user {
                    qs.push(format!("user={}", q(u)));
                }
                let http = Http::get(format!("/api/v1/care-assignments?{}", qs.join("&")));
                print(
                    &api.exec(http, |s, a| async move {
                        accounts::list_care(&s, &a, patient, user).await.map(|l| json!({"assignments": l}))
                    })
                    .await?,
                );
            }
            CareCmd::End { id, target } => {
                let api = Api::connect(&target).await?;
                let http = Http::delete(format!("/api/v1/care-assignments/{id}"));
                api.exec(http, |s, a| async move { accounts::end_care(&s, &a, id).await }).await?;
                println!("care assignment {id} ended");
            }
        },
        Cmd::Bcp(c) => bcp::run(c).await?,
        Cmd::EmergencyAccounts(c) => bcp::accounts(c).await?,
        Cmd::Partner(c) => exchange::partner(c).await?,
        Cmd::Exchange(c) => exchange::exchange(c).await?,
        Cmd::Snapshot(c) => continuity::snapshot_cmd(c).await?,
        Cmd::Standalone(c) => continuity::standalone_cmd(c).await?,
        Cmd::Reconcile(c) => continuity::reconcile_cmd(c).await?,
        Cmd::Patient(c) => continuity::patient_cmd(c).await?,
        Cmd::Maintenance(c) => maintenance::run(c).await?,
        Cmd::Compliance(c) => {
            let code = compliance::run(c).await?;
            if code != 0 {
                use std::io::Write;
                std::io::stdout().flush().ok(); // exiting next; nothing left to report a failed flush to
                std::process::exit(i32::from(code));
            }
        }
        Cmd::Upgrade { data, check } => off_runtime(|| upgrade(&data, check))?,
        Cmd::CopyToPostgres { data, url } => off_runtime(|| db::copy_to_postgres(&data, &url))?,
        Cmd::Packages(c) => off_runtime(|| packages::run(c))?,
        Cmd::Audit(c) => match c {
            AuditCmd::Verify { data, export, key, deep, checkpoints } => match (data, export) {
                (Some(d), None) => off_runtime(|| audit::verify_data(&d, key.as_deref(), deep, &checkpoints))?,
                (None, Some(f)) => audit::verify_export(&f, key.as_deref().unwrap_or_default())?,
                _ => anyhow::bail!("give --data DIR or --export FILE --key KEY"),
            },
            AuditCmd::Export { data, out, from, to } => off_runtime(|| audit::export(&data, &out, from, to))?,
            AuditCmd::Witness { data, name, log, log_key, ca, interval, once } => {
                witness::run(data, name, log, log_key, ca, interval, once).await?
            }
        },
    }
    Ok(())
}

/// `mamori init`: initializes an empty data directory and says where
/// everything is.
async fn init_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    let dd = mamori_service::init::DataDir(dir.to_owned());
    if dd.is_initialized() {
        anyhow::bail!(
            "{} is already initialized (start it with `mamori serve --data {}`)",
            dir.display(),
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)?;
    let _lock = mamori_service::init::lock_dir(dir)?;
    let r = mamori_service::init::initialize(dir, Arc::new(SystemClock)).await?;
    println!("mamori: initialized {}", dir.display());
    println!("  admin user:               admin");
    println!("  one-time password:        {}   (it must be changed at first login)", r.admin_password.as_str());
    println!("  (also in {}, readable only by this user, until it is changed)", dd.admin_password_file().display());
    println!("  audit log verifier key:   {}   (record it: `mamori audit verify --key`)", r.vkey);
    println!("  TLS certificate SHA-256:  {}", r.tls_fingerprint);
    println!("next: mamori serve --data {}", dir.display());
    Ok(())
}

/// Runs blocking database work on a thread of its own (PostgreSQL's
/// synchronous client must not block the runtime's thread).
fn off_runtime<T: Send>(f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| s.spawn(f).join().map_err(|_| anyhow::anyhow!("worker thread panicked"))?)
}

/// `mamori upgrade [--check]`: brings the database of a stopped server's
/// data directory to this build's schema (SQLite or PostgreSQL), with a
/// copy first on SQLite, and says where it stands.
fn upgrade(dir: &std::path::Path, check: bool) -> anyhow::Result<()> {
    let dd = mamori_service::init::DataDir(dir.to_owned());
    if !dd.is_initialized() {
        anyhow::bail!("{} is not an initialized mamori data directory", dir.display());
    }
    let cfg = mamori_service::config::Config::load(dir)?;
    let url = audit::db_url(&cfg);
    let what = url.as_deref().map_or_else(|| dd.db().display().to_string(), mamori_store::redact_url);
    // A running server holds the directory; upgrades happen with it stopped.
    let _lock = if check { None } else { Some(mamori_service::init::lock_dir(dir)?) };
    let mut c = mamori_store::open_conn(&dd.db(), url.as_deref(), check)?;
    let before = mamori_store::schema::current(c.as_mut())?;
    let pending = mamori_store::schema::pending(c.as_mut()).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    let latest = before + pending.len();
    if pending.is_empty() {
        println!("{what}: schema version {before}, up to date");
        return Ok(());
    }
    if check {
        println!("{what}: schema version {before}; this mamori expects {latest}");
        for p in &pending {
            println!("  will run: {p}");
        }
        match &url {
            None => println!(
                "a copy of the database is taken first, to {}/mamori-schema{before}-<time>.db (the way back: docs/operations.md)",
                dd.db().parent().unwrap_or(dir).join("backups").display()
            ),
            Some(_) => println!("PostgreSQL: take a backup first, e.g. pg_dump -Fc -f mamori-schema{before}.dump <database> (docs/operations.md)"),
        }
        return Ok(());
    }
    if url.is_none() {
        let stamp = mamori_store::backup_stamp(mamori_core::time::Clock::now(&SystemClock));
        if let Some(copy) = mamori_store::schema::backup_before_migrating(c.as_mut(), &dd.db(), &stamp)? {
            println!("copied the database (schema {before}) to {}", copy.display());
        }
    }
    let after = mamori_store::schema::migrate(c.as_mut())?;
    println!("{what}: schema version {before} -> {after}");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let data = match &cli.cmd {
        Cmd::Serve { data, .. } => Some(data.clone()),
        _ => None,
    };
    init_logging(data.as_deref());
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mamori: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mamori: {e:#}");
            ExitCode::FAILURE
        }
    }
}
