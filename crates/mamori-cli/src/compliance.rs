//! `mamori compliance`: the compliance report for inspections (produce,
//! list, fetch, verify).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use mamori_service::compliance::{self, Signed, Status};
use mamori_service::config::Config;
use mamori_service::init::DataDir;
use openssl::x509::X509;
use serde_json::{json, Value};

use crate::api::{de, Api, Http, Target};
use crate::audit::db_url;

/// Where a report goes besides the printed summary.
#[derive(clap::Args)]
pub(crate) struct Output {
    /// Write the signed report (JSON) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write it as a PDF (A4, in --lang) here.
    #[arg(long)]
    pdf: Option<PathBuf>,
    /// Language of the printed summary and the PDF: ja or en.
    #[arg(long, default_value = "ja")]
    lang: String,
}

#[derive(Subcommand)]
pub(crate) enum ComplianceCmd {
    /// Produce a signed compliance report: every guideline requirement with
    /// the state measured from this system (audited). Prints a summary and
    /// writes the signed JSON to --out.
    Report {
        /// Start of the period: a date (local) or an instant; default 30 days before --to.
        #[arg(long)]
        from: Option<String>,
        /// End of the period: a date (its end, local) or an instant; default now.
        #[arg(long)]
        to: Option<String>,
        /// Also check every stored record version against the audit log.
        #[arg(long)]
        deep: bool,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: Target,
    },
    /// The reports produced so far.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// A stored report: print its summary, write it with --out.
    Show {
        /// Its number.
        id: i64,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: Target,
    },
    /// Verify a signed report file offline: its digest and signature
    /// against the institution's certificate; with --data also that the
    /// audit log records its production and holds its checkpoint. Exit 0
    /// when it verifies against the institution's certificate, 1 when it does
    /// not (or the file is unreadable), 2 when no certificate was given to
    /// pin (the signature then only matches the certificate the file carries).
    Verify {
        /// The report file (JSON).
        file: PathBuf,
        /// The institution's certificate (PEM), obtained independently.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// A data directory: its institution certificate and audit log.
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

fn query(from: &Option<String>, to: &Option<String>, deep: bool) -> String {
    let enc = |s: &str| s.replace('%', "%25").replace('+', "%2B").replace('&', "%26").replace(' ', "%20");
    let mut q = Vec::new();
    if let Some(f) = from {
        q.push(format!("from={}", enc(f)));
    }
    if let Some(t) = to {
        q.push(format!("to={}", enc(t)));
    }
    if deep {
        q.push("deep=true".into());
    }
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

pub(crate) async fn run(cmd: ComplianceCmd) -> Result<u8> {
    match cmd {
        ComplianceCmd::Report { from, to, deep, output, target } => {
            let api = Api::connect(&target).await?;
            let args = json!({"from": from, "to": to, "deep": deep});
            let http = Http::post(format!("/api/v1/compliance/reports{}", query(&from, &to, deep)), &json!({}));
            let v = api
                .exec(http, |s, a| async move {
                    let g = compliance::generate(&s, &a, de(args)?).await?;
                    serde_json::to_value(g.signed)
                        .map_err(|e| mamori_service::ServiceError::internal_from("the report", e))
                })
                .await?;
            let sha = v["signature"]["sha256"].as_str().unwrap_or_default().to_owned();
            let code = emit(v, output.out.as_deref(), &output.lang)?;
            if let Some(path) = &output.pdf {
                let list = api
                    .exec(Http::get("/api/v1/compliance/reports"), |s, a| async move {
                        compliance::list(&s, &a).await.map(|l| json!(l))
                    })
                    .await?;
                let Some(id) = list
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| r["sha256"] == sha.as_str())
                    .and_then(|r| r["id"].as_i64())
                else {
                    bail!("the report just produced is not listed");
                };
                write_pdf(&api, id, &output.lang, path).await?;
            }
            Ok(code)
        }
        ComplianceCmd::List { target } => {
            let api = Api::connect(&target).await?;
            let v = api
                .exec(Http::get("/api/v1/compliance/reports"), |s, a| async move {
                    compliance::list(&s, &a).await.map(|l| json!(l))
                })
                .await?;
            for r in v.as_array().into_iter().flatten() {
                println!(
                    "{:>5}  {}  {:<12} {} .. {}  {}",
                    r["id"],
                    r["created"].as_i64().map(ts).unwrap_or_default(),
                    r["created_by"].as_str().unwrap_or(""),
                    r["from"].as_i64().map(ts).unwrap_or_default(),
                    r["to"].as_i64().map(ts).unwrap_or_default(),
                    r["sha256"].as_str().unwrap_or("")
                );
            }
            Ok(0)
        }
        ComplianceCmd::Show { id, output, target } => {
            let api = Api::connect(&target).await?;
            let v = api
                .exec(Http::get(format!("/api/v1/compliance/reports/{id}")), |s, a| async move {
                    let g = compliance::get(&s, &a, id).await?;
                    serde_json::to_value(g.signed)
                        .map_err(|e| mamori_service::ServiceError::internal_from("the report", e))
                })
                .await?;
            let code = emit(v, output.out.as_deref(), &output.lang)?;
            if let Some(path) = &output.pdf {
                write_pdf(&api, id, &output.lang, path).await?;
            }
            Ok(code)
        }
        ComplianceCmd::Verify { file, cert, data } => verify(&file, cert.as_deref(), data.as_deref()),
    }
}

/// Fetches report `id` as a PDF and writes it to `path`.
async fn write_pdf(api: &Api, id: i64, lang: &str, path: &Path) -> Result<()> {
    let ja = lang != "en";
    let bytes = match api {
        Api::Remote { client, base, token } => {
            let r = client
                .get(format!("{base}/api/v1/compliance/reports/{id}/pdf?lang={}", if ja { "ja" } else { "en" }))
                .bearer_auth(token)
                .send()
                .await
                .with_context(|| format!("cannot reach {base}"))?;
            let status = r.status();
            let body = r.bytes().await?;
            if !status.is_success() {
                bail!("{} (HTTP {})", String::from_utf8_lossy(&body), status.as_u16());
            }
            body.to_vec()
        }
        Api::Local { svc, actor, .. } => match compliance::pdf(svc, actor, id, ja).await {
            Ok(b) => b,
            Err(e) => bail!("{} (HTTP {})", e.message(), e.status()),
        },
    };
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("PDF written to {}", path.display());
    Ok(())
}

fn ts(micros: i64) -> String {
    mamori_core::time::Timestamp(micros).to_rfc3339()
}

/// Prints a report's summary and writes the file.
fn emit(v: Value, out: Option<&Path>, lang: &str) -> Result<u8> {
    let signed: Signed = serde_json::from_value(v.clone()).context("the server's answer is not a report")?;
    if let Some(path) = out {
        let text = serde_json::to_string_pretty(&v)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    print_summary(&signed, lang == "en");
    if let Some(path) = out {
        eprintln!("signed report written to {}", path.display());
    }
    Ok(0)
}

fn print_summary(s: &Signed, en: bool) {
    let r = &s.report;
    let pick = |b: &compliance::Text| if en { b.en.clone() } else { b.ja.clone() };
    let status = |st: Status| {
        let (ja, e) = st.label();
        if en {
            e.to_owned()
        } else {
            ja.to_owned()
        }
    };
    let off = r.utc_offset_minutes;
    let l = |t: &str| compliance::local(t, off);
    if en {
        println!("Compliance report — {}", r.institution.name);
        println!(
            "period {} – {}; produced {} by {}",
            l(&r.period.from),
            l(&r.period.to),
            l(&r.generated_at),
            r.generated_by
        );
        println!("met {}, attention {}, not met {}", r.summary.met, r.summary.attention, r.summary.not_met);
    } else {
        println!("準拠状況報告書 — {}", r.institution.name);
        println!(
            "対象期間 {} – {}／作成 {}（{}）",
            l(&r.period.from),
            l(&r.period.to),
            l(&r.generated_at),
            r.generated_by
        );
        println!("適合 {}、要確認 {}、不適合 {}", r.summary.met, r.summary.attention, r.summary.not_met);
    }
    println!();
    for q in &r.requirements {
        println!("{:<9} {:<10} {}", q.item.id, status(q.item.status), pick(&q.title));
        for f in &q.item.findings {
            println!("          - {}", pick(f));
        }
    }
    println!();
    println!("{}", pick(&r.checklist.title));
    for i in &r.checklist.items {
        println!("  {:<5} {:<10} {}", i.number, status(i.status), pick(&i.title));
    }
    println!();
    println!("SHA-256 {}", s.signature.sha256);
    println!("audit checkpoint {}", r.checkpoint.size);
}

fn verify(file: &Path, cert: Option<&Path>, data: Option<&Path>) -> Result<u8> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let dd = data.map(|d| DataDir(d.to_owned()));
    if let Some(dd) = &dd {
        if !dd.is_initialized() {
            bail!("{} is not an initialized mamori data directory", dd.0.display());
        }
    }
    let pin_path = cert.map(Path::to_owned).or_else(|| dd.as_ref().map(|d| d.0.join("keys/institution.cert.pem")));
    let pin = match &pin_path {
        Some(p) => Some(
            X509::from_pem(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
                .with_context(|| format!("{} is not a PEM certificate", p.display()))?,
        ),
        None => None,
    };
    let v = match compliance::verify(&bytes, pin.as_ref()) {
        Ok(v) => v,
        Err(compliance::VerifyError::Format(m)) => bail!("{}: not a mamori compliance report: {m}", file.display()),
        Err(e) => {
            println!("FAILED: {e}");
            return Ok(1);
        }
    };
    println!("signature OK: signed by {}", v.signer);
    println!("SHA-256 {}", v.sha256);
    println!(
        "report of {} for {} .. {}, generated {} by {}",
        v.report.institution.name,
        v.report.period.from,
        v.report.period.to,
        v.report.generated_at,
        v.report.generated_by
    );
    if !v.pinned && dd.is_none() {
        // Anyone can sign a file with a certificate of their own making:
        // without the institution's certificate this proves integrity only.
        println!("UNPINNED: checked only against the certificate the file carries; give --cert or --data");
        return Ok(2);
    }
    if let Some(dd) = &dd {
        let cfg = Config::load(&dd.0)?;
        let url = db_url(&cfg);
        let mut c = mamori_store::open_conn(&dd.db(), url.as_deref(), true)?;
        let log = compliance::check_against_log(c.as_mut(), &v)?;
        match log.event {
            Some(i) => println!("audit event {i} records its production"),
            None => println!("FAILED: the audit log of {} does not record this report", dd.0.display()),
        }
        if log.checkpoint {
            println!("audit checkpoint {} is in the log", v.report.checkpoint.size);
        } else {
            println!(
                "FAILED: audit checkpoint {} is not in the log as the report carries it",
                v.report.checkpoint.size
            );
        }
        if log.event.is_none() || !log.checkpoint {
            return Ok(1);
        }
    }
    Ok(0)
}
