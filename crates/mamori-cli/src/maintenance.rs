//! `mamori maintenance ...`: vendors, maintenance people, windows,
//! approvals, revocation, reviews and the accounts report (the hospital
//! side; maintenance people use the maintenance listener).

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use mamori_service::maintenance as maint;
use serde_json::{json, Value};

use crate::api::{de, Api, Http, Target};

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

#[derive(Subcommand)]
pub(crate) enum MaintenanceCmd {
    /// Register a vendor organisation.
    VendorAdd {
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        contact: String,
        #[command(flatten)]
        target: Target,
    },
    /// Add a named maintenance person: writes their client certificate and
    /// key (mode 0600) to --out DIR and prints the TOTP secret once.
    PersonAdd {
        id: String,
        #[arg(long)]
        vendor: String,
        #[arg(long)]
        display: String,
        /// Allowed source address blocks (CIDR), repeatable.
        #[arg(long = "source", required = true)]
        sources: Vec<String>,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Mark a person as having left: account closed, certificates revoked, sessions ended.
    PersonLeave {
        id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        target: Target,
    },
    /// Request a maintenance window on a person's behalf.
    Request {
        #[arg(long)]
        person: String,
        #[arg(long)]
        reason: String,
        /// configuration, logs, database, audit, restart, patient_data (comma-separated)
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// RFC 3339 times.
        #[arg(long)]
        start: String,
        #[arg(long)]
        end: String,
        /// Emergency maintenance (a BCP decider may approve during a declared emergency).
        #[arg(long)]
        emergency: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Maintenance windows.
    List {
        /// requested | approved | rejected | revoked | closed
        #[arg(long)]
        state: Option<String>,
        /// pending | accepted | questioned
        #[arg(long)]
        review: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// One window with its sessions and summary.
    Show {
        id: i64,
        #[command(flatten)]
        target: Target,
    },
    Approve {
        id: i64,
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    Reject {
        id: i64,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        target: Target,
    },
    /// Revoke a window now, cutting live sessions.
    Revoke {
        id: i64,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        target: Target,
    },
    /// Review a closed window: accepted or questioned, with a note.
    Review {
        id: i64,
        #[arg(long)]
        outcome: String,
        #[arg(long)]
        note: String,
        #[command(flatten)]
        target: Target,
    },
    /// Maintenance accounts and their last use.
    Report {
        #[command(flatten)]
        target: Target,
    },
}

pub(crate) async fn run(c: MaintenanceCmd) -> Result<()> {
    match c {
        MaintenanceCmd::VendorAdd { id, name, contact, target } => {
            let api = Api::connect(&target).await?;
            let body = json!({"id": id, "name": name, "contact": contact});
            let http = Http::post("/api/v1/maintenance/vendors", &body);
            api.exec(http, |s, a| async move { maint::add_vendor(&s, &a, de(body)?).await }).await?;
            println!("vendor {id} registered");
        }
        MaintenanceCmd::PersonAdd { id, vendor, display, sources, out, target } => {
            let api = Api::connect(&target).await?;
            let body = json!({"id": id, "vendor": vendor, "display": display, "sources": sources});
            let http = Http::post("/api/v1/maintenance/people", &body);
            let v = api.exec(http, |s, a| async move { maint::add_person(&s, &a, de(body)?).await }).await?;
            std::fs::create_dir_all(&out)?;
            let write = |name: &str, text: &str, mode: u32| -> Result<()> {
                let p = out.join(name);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&p)
                    .with_context(|| format!("cannot create {}", p.display()))?;
                std::io::Write::write_all(&mut f, text.as_bytes())?;
                Ok(())
            };
            write(&format!("{id}.cert.pem"), v["certificate"].as_str().unwrap_or(""), 0o644)?;
            write(&format!("{id}.key.pem"), v["private_key"].as_str().unwrap_or(""), 0o600)?;
            println!(
                "maintenance person {id}: certificate and key written to {} (valid until {})",
                out.display(),
                v["not_after"].as_str().unwrap_or("")
            );
            println!("TOTP secret (shown once): {}", v["totp_secret"].as_str().unwrap_or(""));
            println!("{}", v["notice"].as_str().unwrap_or(""));
        }
        MaintenanceCmd::PersonLeave { id, reason, target } => {
            let api = Api::connect(&target).await?;
            let body = json!({"reason": reason});
            let http = Http::post(format!("/api/v1/maintenance/people/{id}/leave"), &body);
            let i2 = id.clone();
            let v = api.exec(http, |s, a| async move { maint::person_leaves(&s, &a, &i2, de(body)?).await }).await?;
            println!(
                "{id} has left: {} certificate(s) revoked, {} session(s) ended",
                v["certificates_revoked"], v["sessions_ended"]
            );
        }
        MaintenanceCmd::Request { person, reason, scopes, start, end, emergency, target } => {
            let api = Api::connect(&target).await?;
            let body = json!({"person": person, "reason": reason, "scopes": scopes, "start": start, "end": end, "emergency": emergency});
            let http = Http::post("/api/v1/maintenance/requests", &body);
            let v = api.exec(http, |s, a| async move { maint::staff_request(&s, &a, de(body)?).await }).await?;
            println!("maintenance request {} awaits {} approval(s)", v["id"], v["needs_approvals"]);
        }
        MaintenanceCmd::List { state, review, target } => {
            let api = Api::connect(&target).await?;
            let mut q = vec![];
            if let Some(s) = &state {
                q.push(format!("state={s}"));
            }
            if let Some(r) = &review {
                q.push(format!("review={r}"));
            }
            let http = Http::get(format!("/api/v1/maintenance/requests?{}", q.join("&")));
            let v = api
                .exec(http, |s, a| async move {
                    maint::list_requests(&s, &a, state, review).await.map(|r| json!({"requests": r}))
                })
                .await?;
            for r in v["requests"].as_array().into_iter().flatten() {
                println!(
                    "{:>4}  {:<9} {:<16} review={:<10} {}  {}",
                    r["id"],
                    r["state"].as_str().unwrap_or(""),
                    r["person"].as_str().unwrap_or(""),
                    r["review"].as_str().unwrap_or("-"),
                    r["scopes"],
                    if r["review_overdue"] == true { "OVERDUE" } else { "" }
                );
            }
        }
        MaintenanceCmd::Show { id, target } => {
            let api = Api::connect(&target).await?;
            let http = Http::get(format!("/api/v1/maintenance/requests/{id}"));
            print(&api.exec(http, |s, a| async move { maint::show_request(&s, &a, id).await }).await?);
        }
        MaintenanceCmd::Approve { id, note, target } => {
            let api = Api::connect(&target).await?;
            let body = json!({"note": note});
            let http = Http::post(format!("/api/v1/maintenance/requests/{id}/approve"), &body);
            let v = api.exec(http, |s, a| async move { maint::approve(&s, &a, id, de(body)?).await }).await?;
            println!(
                "request {id}: {} ({} of {} approvals)",
                v["state"].as_str().unwrap_or(""),
                v["approvals"],
                v["needed"]
            );
        }
        MaintenanceCmd::Reject { id, reason, target } => {
            let api = Api::connect(&target).await?;
            let body = json!({"reason": reason});
            let http = Http::post(format!("/api/v1/maintenance/requests/{id}/reject"), &body);
            api.exec(http, |s, a| async move { maint::decide_as(&s, &a, id, de(body)?, "rejected").await }).await?;
            println!("request {id} rejected");
        }
        MaintenanceCmd::Revoke { id, reason, target } => {
            let api = Api::connect(&target).await?;
            let body = json!({"reason": reason});
            let http = Http::post(format!("/api/v1/maintenance/requests/{id}/revoke"), &body);
            api.exec(http, |s, a| async move { maint::decide_as(&s, &a, id, de(body)?, "revoked").await }).await?;
            println!("request {id} revoked; its sessions are cut");
        }
        MaintenanceCmd::Review { id, outcome, note, target } => {
            let api = Api::connect(&target).await?;
            let body = json!({"outcome": outcome, "note": note});
            let http = Http::post(format!("/api/v1/maintenance/requests/{id}/review"), &body);
            api.exec(http, |s, a| async move { maint::review(&s, &a, id, de(body)?).await }).await?;
            println!("request {id} reviewed: {outcome}");
        }
        MaintenanceCmd::Report { target } => {
            let api = Api::connect(&target).await?;
            let v = api
                .exec(Http::get("/api/v1/maintenance/report"), |s, a| async move { maint::report(&s, &a).await })
                .await?;
            for p in v["people"].as_array().into_iter().flatten() {
                println!(
                    "{:<20} {:<10} {:<7} last used: {:<25} windows: {:>3}  pending reviews: {}",
                    p["person"].as_str().unwrap_or(""),
                    p["vendor"].as_str().unwrap_or(""),
                    p["state"].as_str().unwrap_or(""),
                    p["last_used"].as_str().unwrap_or("never"),
                    p["windows"],
                    p["pending_reviews"]
                );
            }
        }
    }
    Ok(())
}
