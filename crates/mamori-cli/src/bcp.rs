//! `mamori bcp ...` and `mamori emergency-accounts ...`: the emergency
//! procedure from the command line (a decider's token, or offline on the
//! data directory as the local operator).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use mamori_service::{bcp, eaccounts};
use reqwest::Method;
use serde_json::{json, Value};

use crate::api::{de, Api, Http, Target};

#[derive(Subcommand)]
pub(crate) enum BcpCmd {
    /// The BCP plan.
    #[command(subcommand)]
    Plan(PlanCmd),
    /// The current mode and the open declaration.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Declare an emergency (or a drill) naming the plan's criteria met.
    Declare {
        /// disaster | cyber_attack | system_failure | mass_casualty | other
        #[arg(long)]
        cause: String,
        /// Comma-separated criterion ids from the plan.
        #[arg(long, value_delimiter = ',', required = true)]
        criteria: Vec<String>,
        #[arg(long)]
        reason: String,
        /// A drill: the whole procedure, without relaxing real access.
        #[arg(long)]
        drill: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Confirm a proposed declaration (second decider).
    Confirm {
        id: i64,
        #[command(flatten)]
        target: Target,
    },
    /// Move to the next phase, return to normal, or stand down.
    Transition {
        id: i64,
        /// resumption | recovery | full_recovery | normal | stand_down
        #[arg(long)]
        to: String,
        #[arg(long)]
        note: Option<String>,
        /// Return to normal with the full-recovery checklist incomplete.
        #[arg(long = "override")]
        override_reason: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Tick a checklist item.
    Check {
        id: i64,
        phase: String,
        item: String,
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Show the after-action review, or complete it with lessons learned.
    Review {
        id: i64,
        #[arg(long)]
        lessons: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// The draft report to the authorities for a cyber attack.
    IncidentReport {
        id: i64,
        /// Record that the report was made: mhlw | police | patients.
        #[arg(long)]
        reported: Option<String>,
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Alerts (possible emergencies, misuse of emergency accounts).
    Alerts {
        #[arg(long)]
        open: bool,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub(crate) enum PlanCmd {
    /// Validate and import a TOML plan (see docs/example-bcp-plan.toml).
    Import {
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Print the plan in force (TOML).
    Show {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub(crate) enum AccountsCmd {
    /// Provision sealed emergency accounts (then print each envelope).
    Provision {
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Comma-separated clinical roles (default physician).
        #[arg(long, value_delimiter = ',', default_value = "physician")]
        role: Vec<String>,
        /// Accounts for drills only.
        #[arg(long)]
        drill: bool,
        #[command(flatten)]
        target: Target,
    },
    /// List emergency accounts and their states.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Generate the credential and print the sealed envelope (once).
    Envelope {
        account: String,
        #[command(flatten)]
        target: Target,
    },
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub(crate) async fn run(cmd: BcpCmd) -> Result<()> {
    match cmd {
        BcpCmd::Plan(PlanCmd::Import { file, target }) => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let api = Api::connect(&target).await?;
            let http = Http::raw(Method::PUT, "/api/v1/bcp/plan", text.clone().into_bytes(), "application/toml");
            let v = api
                .exec(http, |s, a| async move { bcp::put_plan(&s, &a, text).await.map(|v| json!({"version": v})) })
                .await?;
            println!("imported the BCP plan as version {}", v["version"]);
        }
        BcpCmd::Plan(PlanCmd::Show { target }) => {
            let api = Api::connect(&target).await?;
            let http = Http::get("/api/v1/bcp/plan?format=toml");
            let v = api.exec(http, |s, a| async move { bcp::plan(&s, &a, true).await }).await?;
            println!("{}", v.as_str().unwrap_or_default());
        }
        BcpCmd::Status { target } => {
            let api = Api::connect(&target).await?;
            let mode = api.exec(Http::get("/api/v1/mode"), |s, a| async move { bcp::mode(&s, &a).await }).await?;
            println!("mode: {}", mode["mode"].as_str().unwrap_or(""));
            let list = api
                .exec(Http::get("/api/v1/bcp/declarations"), |s, a| async move {
                    bcp::list(&s, &a).await.map(|d| json!({"declarations": d}))
                })
                .await?;
            if let Some(open) = list["declarations"]
                .as_array()
                .and_then(|a| a.iter().find(|d| !matches!(d["state"].as_str(), Some("closed" | "stood_down"))))
            {
                let id = open["id"].as_i64().unwrap_or(0);
                let http = Http::get(format!("/api/v1/bcp/declarations/{id}"));
                print(&api.exec(http, |s, a| async move { bcp::show(&s, &a, id).await }).await?);
            } else {
                println!("no open declaration");
            }
        }
        BcpCmd::Declare { cause, criteria, reason, drill, target } => {
            let api = Api::connect(&target).await?;
            let body = json!({"cause": cause, "criteria": criteria, "reason": reason, "drill": drill});
            let http = Http::post("/api/v1/bcp/declarations", &body);
            let v = api.exec(http, |s, a| async move { bcp::declare(&s, &a, de(body)?).await }).await?;
            println!(
                "declaration {} is {}{}",
                v["id"],
                v["state"].as_str().unwrap_or(""),
                if drill { " (DRILL)" } else { "" }
            );
        }
        BcpCmd::Confirm { id, target } => {
            let api = Api::connect(&target).await?;
            let http = Http::post(format!("/api/v1/bcp/declarations/{id}/confirm"), &json!({}));
            let v = api.exec(http, |s, a| async move { bcp::confirm(&s, &a, id).await }).await?;
            println!("declaration {id} is {}", v["state"].as_str().unwrap_or(""));
        }
        BcpCmd::Transition { id, to, note, override_reason, target } => {
            let api = Api::connect(&target).await?;
            let body = json!({"to": to, "note": note, "override_reason": override_reason});
            let http = Http::post(format!("/api/v1/bcp/declarations/{id}/transitions"), &body);
            let v = api.exec(http, |s, a| async move { bcp::transition(&s, &a, id, de(body)?).await }).await?;
            println!("declaration {id} is {}", v["state"].as_str().unwrap_or(""));
        }
        BcpCmd::Check { id, phase, item, note, target } => {
            let api = Api::connect(&target).await?;
            let body = json!({"note": note});
            let http = Http::post(format!("/api/v1/bcp/declarations/{id}/checklist/{phase}/{item}"), &body);
            let (p2, i2) = (phase.clone(), item.clone());
            api.exec(http, |s, a| async move { bcp::tick(&s, &a, id, &p2, &i2, de(body)?).await }).await?;
            println!("ticked {phase}/{item}");
        }
        BcpCmd::Review { id, lessons, target } => {
            let api = Api::connect(&target).await?;
            if let Some(l) = lessons {
                let body = json!({"lessons": l});
                let http = Http::json(Method::PUT, format!("/api/v1/bcp/declarations/{id}/review"), &body);
                api.exec(http, |s, a| async move { bcp::put_review(&s, &a, id, de(body)?).await }).await?;
                println!("review of declaration {id} completed");
            } else {
                let http = Http::get(format!("/api/v1/bcp/declarations/{id}/review"));
                print(&api.exec(http, |s, a| async move { bcp::get_review(&s, &a, id).await }).await?);
            }
        }
        BcpCmd::IncidentReport { id, reported, note, target } => {
            let api = Api::connect(&target).await?;
            if let Some(r) = reported {
                let body = json!({"note": note});
                let http = Http::post(format!("/api/v1/bcp/declarations/{id}/incident-report/{r}"), &body);
                let r2 = r.clone();
                api.exec(http, |s, a| async move { bcp::reported(&s, &a, id, &r2, de(body)?).await }).await?;
                println!("recorded: reported to {r}");
            } else {
                let http = Http::get(format!("/api/v1/bcp/declarations/{id}/incident-report"));
                let v = api.exec(http, |s, a| async move { bcp::incident_report(&s, &a, id).await }).await?;
                println!("{}", v["text"].as_str().unwrap_or_default());
            }
        }
        BcpCmd::Alerts { open, target } => {
            let api = Api::connect(&target).await?;
            let http = Http::get(format!("/api/v1/alerts?open={open}"));
            print(
                &api.exec(http, |s, a| async move { bcp::alerts(&s, &a, open).await.map(|l| json!({"alerts": l})) })
                    .await?,
            );
        }
    }
    Ok(())
}

pub(crate) async fn accounts(cmd: AccountsCmd) -> Result<()> {
    match cmd {
        AccountsCmd::Provision { count, role, drill, target } => {
            let api = Api::connect(&target).await?;
            let body = json!({"count": count, "roles": role, "drill": drill});
            let http = Http::post("/api/v1/emergency-accounts", &body);
            let v = api.exec(http, |s, a| async move { eaccounts::provision(&s, &a, de(body)?).await }).await?;
            for a in v["accounts"].as_array().into_iter().flatten() {
                println!("{}", a.as_str().unwrap_or(""));
            }
            eprintln!("print each envelope: mamori emergency-accounts envelope ACCOUNT");
        }
        AccountsCmd::List { target } => {
            let api = Api::connect(&target).await?;
            let v = api
                .exec(Http::get("/api/v1/emergency-accounts"), |s, a| async move {
                    eaccounts::list(&s, &a).await.map(|l| json!({"accounts": l}))
                })
                .await?;
            for a in v["accounts"].as_array().into_iter().flatten() {
                println!(
                    "{:<12} {:<18} {:<6} {:<20} {}",
                    a["account"].as_str().unwrap_or(""),
                    a["state"].as_str().unwrap_or(""),
                    if a["drill"].as_bool() == Some(true) { "drill" } else { "real" },
                    a["roles"]
                        .as_array()
                        .map(|r| r.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
                        .unwrap_or_default(),
                    a["declared_person"].as_str().unwrap_or("")
                );
            }
        }
        AccountsCmd::Envelope { account, target } => {
            let api = Api::connect(&target).await?;
            let http = Http::post(format!("/api/v1/emergency-accounts/{account}/envelope"), &json!({}));
            let v = api.exec(http, |s, a| async move { eaccounts::envelope(&s, &a, &account).await }).await?;
            let line = "=".repeat(64);
            println!("{line}");
            println!(
                "  非常用アカウント（封緘）/ SEALED EMERGENCY ACCOUNT{}",
                if v["drill"].as_bool() == Some(true) { "  [訓練用 / DRILL]" } else { "" }
            );
            println!("  {}", v["institution"].as_str().unwrap_or(""));
            println!("{line}");
            println!("  アカウント / Account : {}", v["account"].as_str().unwrap_or(""));
            println!("  パスワード / Password: {}", v["password"].as_str().unwrap_or(""));
            println!(
                "  権限 / Roles        : {}",
                v["roles"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            );
            println!("  印刷日時 / Printed   : {}", v["printed_at"].as_str().unwrap_or(""));
            println!("{line}");
            println!("  {}", v["instructions"]["ja"].as_str().unwrap_or(""));
            println!("  {}", v["instructions"]["en"].as_str().unwrap_or(""));
            println!("{line}");
        }
    }
    Ok(())
}
