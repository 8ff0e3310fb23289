//! `mamori partner ...` and `mamori exchange ...`: the partner registry and
//! exchanges from the command line (through a running server's API with a
//! token, or offline on the data directory as the local operator).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use clap::Subcommand;
use mamori_exchange::partner::Status;
use mamori_service::exchange::{inbound, partners, send};
use reqwest::Method;
use serde_json::{json, Value};

use crate::api::{de, Api, Http, Target};

#[derive(Subcommand)]
pub(crate) enum PartnerCmd {
    /// Register a partner from a TOML or JSON file (see docs/example-partner.toml).
    /// Certificates may be PEM text or paths relative to the file.
    Add {
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Replace a partner's registration (a new version) from a file.
    Update {
        #[arg(long)]
        file: PathBuf,
        /// The version being replaced (optimistic locking).
        #[arg(long)]
        version: Option<i64>,
        #[command(flatten)]
        target: Target,
    },
    /// List partners, with certificates that expire soon.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Show a partner's registration, certificates and terms.
    Show {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Stop exchanging with a partner (nothing is sent or accepted).
    Suspend {
        id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        target: Target,
    },
    /// Resume exchanging with a partner.
    Activate {
        id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
// Parsed once per run: the size of the largest command does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum ExchangeCmd {
    /// This institution's AS2 identity (what partners register); with
    /// --out, also writes the certificates there as PEM files.
    Identity {
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Send a patient's documents to partners (signed, encrypted, AS2).
    Send {
        #[arg(long)]
        patient: String,
        /// Partner ids (comma-separated); all must be registered and active.
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<String>,
        /// referral | referral_reply | consultation | testing | claims | research | other
        #[arg(long)]
        purpose: String,
        /// Stored resources to include (Type/id; a Composition becomes the document's).
        #[arg(long = "doc")]
        docs: Vec<String>,
        /// Files to attach: PATH:CONTENT-TYPE[:TITLE].
        #[arg(long = "attach")]
        attachments: Vec<String>,
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        note: Option<String>,
        /// delegation | explicit_consent | implied_consent | protection_of_life
        #[arg(long)]
        basis: Option<String>,
        #[arg(long)]
        justification: Option<String>,
        /// The document format: jp-clins composes a JP-CLINS referral
        /// letter from the chart (--note is its purpose).
        #[arg(long)]
        format: Option<String>,
        /// With --format jp-clins: the present illness (現病歴).
        #[arg(long)]
        history: Option<String>,
        /// With --format jp-clins: referral (default) or discharge-summary
        /// (--note is then the hospital course).
        #[arg(long)]
        document: Option<String>,
        /// The admission a discharge summary is about (Encounter/ID).
        #[arg(long)]
        encounter: Option<String>,
        /// A discharge summary's instructions at discharge (退院時方針指示).
        #[arg(long)]
        plan: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// The exchange ledger.
    List {
        /// out | in
        #[arg(long)]
        direction: Option<String>,
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        partner: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// One message with every hop and the partner's terms.
    Show {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Export the ledger for a contract review.
    Ledger {
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        partner: Option<String>,
        /// ndjson | csv
        #[arg(long, default_value = "csv")]
        format: String,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Received documents (matched, or waiting for a person to match them).
    Inbound {
        /// matched | unmatched
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// File a received document into a patient's record.
    Match {
        message: String,
        #[arg(long)]
        patient: String,
        #[command(flatten)]
        target: Target,
    },
    /// What failed verification (kept apart from clinical data).
    Quarantine {
        #[command(flatten)]
        target: Target,
    },
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Reads a registration file (TOML or JSON); certificate values that are
/// not PEM text are read as files relative to it.
pub(crate) fn read_registration(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut v: Value = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?
    } else {
        let t: toml::Value = toml::from_str(&text).with_context(|| format!("{}: not TOML", path.display()))?;
        serde_json::to_value(t)?
    };
    let base = path.parent().unwrap_or(Path::new("."));
    if let Some(certs) = v.get_mut("certificates").and_then(Value::as_object_mut) {
        for (k, c) in certs.iter_mut() {
            if let Some(s) = c.as_str() {
                if !s.contains("-----BEGIN") {
                    let p = base.join(s);
                    let pem = std::fs::read_to_string(&p)
                        .with_context(|| format!("certificates.{k}: cannot read {}", p.display()))?;
                    *c = Value::String(pem);
                }
            }
        }
    }
    Ok(v)
}

fn enc(s: &str) -> String {
    mamori_service::records::enc(s)
}

pub(crate) async fn partner(c: PartnerCmd) -> Result<()> {
    match c {
        PartnerCmd::Add { file, target } => {
            let doc = read_registration(&file)?;
            let api = Api::connect(&target).await?;
            let http = Http::post("/api/v1/partners", &doc);
            let v = api.exec(http, |s, a| async move { partners::save(&s, &a, None, de(doc), None).await }).await?;
            println!("registered partner {} (version {})", v["id"].as_str().unwrap_or(""), v["version"]);
        }
        PartnerCmd::Update { file, version, target } => {
            let doc = read_registration(&file)?;
            let id = doc["id"].as_str().context("the file has no id")?.to_owned();
            let api = Api::connect(&target).await?;
            let path = format!("/api/v1/partners/{}", enc(&id));
            let version = match version {
                Some(v) => v,
                None => {
                    let i2 = id.clone();
                    let cur =
                        api.exec(Http::get(&path), |s, a| async move { partners::show(&s, &a, &i2).await }).await?;
                    cur["version"].as_i64().unwrap_or(0)
                }
            };
            let http = Http::json(Method::PUT, &path, &doc).if_match(Some(version));
            let i2 = id.clone();
            let v = api
                .exec(http, |s, a| async move { partners::save(&s, &a, Some(i2), de(doc), Some(version)).await })
                .await?;
            println!("partner {id} is now version {}", v["version"]);
        }
        PartnerCmd::List { target } => {
            let api = Api::connect(&target).await?;
            let v = api
                .exec(Http::get("/api/v1/partners"), |s, a| async move {
                    partners::list(&s, &a).await.map(|l| json!({"partners": l}))
                })
                .await?;
            for p in v["partners"].as_array().into_iter().flatten() {
                let exp = p["expiring_certificates"].as_array().map_or(0, Vec::len);
                println!(
                    "{:<14} {:<10} {:<12} {:<16} {}{}",
                    p["id"].as_str().unwrap_or(""),
                    p["status"].as_str().unwrap_or(""),
                    p["relationship"].as_str().unwrap_or(""),
                    p["as2_id"].as_str().unwrap_or(""),
                    p["name"].as_str().unwrap_or(""),
                    if exp > 0 { format!("  [{exp} certificate(s) expiring]") } else { String::new() }
                );
            }
        }
        PartnerCmd::Show { id, target } => {
            let api = Api::connect(&target).await?;
            let http = Http::get(format!("/api/v1/partners/{}", enc(&id)));
            let mut v = api.exec(http, |s, a| async move { partners::show(&s, &a, &id).await }).await?;
            if let Some(r) = v.get_mut("registration").and_then(|r| r.get_mut("certificates")) {
                *r = json!("(see certificate details below)");
            }
            print(&v);
        }
        PartnerCmd::Suspend { id, reason, target } => {
            let api = Api::connect(&target).await?;
            set_status(&api, &id, &reason, Status::Suspended).await?;
            println!("exchange with partner {id} suspended");
        }
        PartnerCmd::Activate { id, reason, target } => {
            let api = Api::connect(&target).await?;
            set_status(&api, &id, &reason, Status::Active).await?;
            println!("exchange with partner {id} resumed");
        }
    }
    Ok(())
}

async fn set_status(api: &Api, id: &str, reason: &str, status: Status) -> Result<()> {
    let verb = if status == Status::Suspended { "suspend" } else { "activate" };
    let body = json!({"reason": reason});
    let http = Http::post(format!("/api/v1/partners/{}/{verb}", enc(id)), &body);
    let id = id.to_owned();
    api.exec(http, |s, a| async move { partners::set_status(&s, &a, &id, de(body)?, status).await }).await?;
    Ok(())
}

fn attachment(spec: &str) -> Result<Value> {
    let mut it = spec.splitn(3, ':');
    let path = it.next().unwrap_or_default();
    let Some(ct) = it.next() else { bail!("--attach {spec}: expected PATH:CONTENT-TYPE[:TITLE]") };
    let title = it
        .next()
        .map(str::to_owned)
        .unwrap_or_else(|| Path::new(path).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default());
    let data = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
    Ok(json!({"content_type": ct, "title": title, "data": base64::engine::general_purpose::STANDARD.encode(data)}))
}

pub(crate) async fn exchange(c: ExchangeCmd) -> Result<()> {
    match c {
        ExchangeCmd::Identity { out, target } => {
            let api = Api::connect(&target).await?;
            let v = api
                .exec(Http::get("/api/v1/exchange/identity"), |s, a| async move { partners::identity(&s, &a).await })
                .await?;
            println!("AS2 id:    {}", v["as2_id"].as_str().unwrap_or(""));
            println!("endpoint:  {}", v["endpoint"].as_str().unwrap_or("(no AS2 listener)"));
            for group in v["certificate_info"].as_array().into_iter().flatten() {
                for c in group.as_array().into_iter().flatten() {
                    println!(
                        "{:<9}  {}  expires {}  SHA-256 {}",
                        c["role"].as_str().unwrap_or(""),
                        c["subject"].as_str().unwrap_or(""),
                        c["not_after"].as_str().unwrap_or(""),
                        c["sha256"].as_str().unwrap_or("")
                    );
                }
            }
            if let Some(dir) = out {
                std::fs::create_dir_all(&dir)?;
                for (name, key) in
                    [("signing.pem", "signing"), ("encryption.pem", "encryption"), ("tls-ca.pem", "tls_ca")]
                {
                    std::fs::write(dir.join(name), v["certificates"][key].as_str().unwrap_or(""))?;
                }
                println!("wrote signing.pem, encryption.pem and tls-ca.pem to {}", dir.display());
            }
        }
        ExchangeCmd::Send {
            patient,
            to,
            purpose,
            docs,
            attachments,
            title,
            note,
            basis,
            justification,
            format,
            history,
            document,
            encounter,
            plan,
            target,
        } => {
            let atts = attachments.iter().map(|a| attachment(a)).collect::<Result<Vec<_>>>()?;
            let api = Api::connect(&target).await?;
            let body = json!({"patient": patient, "recipients": to, "purpose": purpose, "documents": docs,
                              "attachments": atts, "title": title, "note": note, "basis": basis, "justification": justification,
                              "format": format, "history": history, "document": document, "encounter": encounter, "plan": plan});
            let http = Http::post("/api/v1/exchange/messages", &body);
            let v = api.exec(http, |s, a| async move { send::send(&s, &a, de(body)).await }).await?;
            for m in v["messages"].as_array().into_iter().flatten() {
                println!(
                    "queued {} to {} (Message-ID {}, basis {})",
                    m["id"].as_str().unwrap_or(""),
                    m["partner"].as_str().unwrap_or(""),
                    m["message_id"].as_str().unwrap_or(""),
                    m["basis"]["kind"].as_str().unwrap_or("")
                );
            }
            if let Some(d) = v.get("document") {
                println!(
                    "JP-CLINS document kept as {}; {} chart resource(s) as structured entries, {} in the text only",
                    d["kept"].as_str().unwrap_or(""),
                    d["structured"].as_array().map_or(0, Vec::len),
                    d["text_only"].as_array().map_or(0, Vec::len)
                );
                for t in d["text_only"].as_array().into_iter().flatten() {
                    println!(
                        "  text only: {}: {}",
                        t["resource"].as_str().unwrap_or(""),
                        t["reason"].as_str().unwrap_or("")
                    );
                }
            }
        }
        ExchangeCmd::List { direction, state, partner, target } => {
            let api = Api::connect(&target).await?;
            let mut q = vec![];
            for (k, v) in [("direction", &direction), ("state", &state), ("partner", &partner)] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", enc(v)));
                }
            }
            let http = Http::get(format!("/api/v1/exchange/messages?{}", q.join("&")));
            let filter = send::MessageFilter { direction, partner, state, ..Default::default() };
            let v = api
                .exec(http, |s, a| async move { send::list(&s, &a, filter).await.map(|m| json!({"messages": m})) })
                .await?;
            for m in v["messages"].as_array().into_iter().flatten() {
                println!(
                    "{}  {:<3} {:<8} {:<14} {:<12} {}{}",
                    m["created_at"].as_str().unwrap_or(""),
                    m["direction"].as_str().unwrap_or(""),
                    m["kind"].as_str().unwrap_or(""),
                    m["partner"].as_str().unwrap_or(""),
                    m["state"].as_str().unwrap_or(""),
                    m["id"].as_str().unwrap_or(""),
                    m["failure"]["reason"].as_str().map(|f| format!("  ({f})")).unwrap_or_default()
                );
            }
        }
        ExchangeCmd::Show { id, target } => {
            let api = Api::connect(&target).await?;
            let http = Http::get(format!("/api/v1/exchange/messages/{}", enc(&id)));
            print(&api.exec(http, |s, a| async move { send::show(&s, &a, &id).await }).await?);
        }
        ExchangeCmd::Ledger { from, to, partner, format, out, target } => {
            let api = Api::connect(&target).await?;
            let mut q = vec![format!("format={}", enc(&format))];
            for (k, v) in [("from", &from), ("to", &to), ("partner", &partner)] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", enc(v)));
                }
            }
            let http = Http::get(format!("/api/v1/exchange/ledger?{}", q.join("&")));
            let lq = send::LedgerQuery { from, to, partner, format: Some(format.clone()) };
            let v = api.exec(http, |s, a| async move { send::ledger(&s, &a, lq).await.map(|(_, body)| body) }).await?;
            let text = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            std::fs::write(&out, &text).with_context(|| format!("cannot write {}", out.display()))?;
            let n = text.lines().count().saturating_sub(usize::from(format == "csv"));
            println!("wrote {n} message(s) to {}", out.display());
        }
        ExchangeCmd::Inbound { state, target } => {
            let api = Api::connect(&target).await?;
            let q = state.as_ref().map(|s| format!("?state={}", enc(s))).unwrap_or_default();
            let http = Http::get(format!("/api/v1/exchange/inbound{q}"));
            print(
                &api.exec(
                    http,
                    |s, a| async move { inbound::list(&s, &a, state).await.map(|i| json!({"inbound": i})) },
                )
                .await?,
            );
        }
        ExchangeCmd::Match { message, patient, target } => {
            let api = Api::connect(&target).await?;
            let body = json!({"patient": patient});
            let http = Http::post(format!("/api/v1/exchange/inbound/{}/match", enc(&message)), &body);
            let v = api
                .exec(http, |s, a| async move {
                    inbound::file(&s, &a, &message, de(body)?)
                        .await
                        .map(|doc| json!({"document": format!("DocumentReference/{doc}")}))
                })
                .await?;
            println!("filed as {} in Patient/{patient}", v["document"].as_str().unwrap_or(""));
        }
        ExchangeCmd::Quarantine { target } => {
            let api = Api::connect(&target).await?;
            let http = Http::get("/api/v1/exchange/quarantine");
            print(
                &api.exec(http, |s, a| async move {
                    inbound::quarantine_list(&s, &a).await.map(|q| json!({"quarantine": q}))
                })
                .await?,
            );
        }
    }
    Ok(())
}
