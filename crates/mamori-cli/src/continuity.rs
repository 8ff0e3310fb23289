//! `mamori snapshot ...`, `mamori standalone ...`, `mamori reconcile ...`
//! and `mamori patient ...`: care without the normal system from the
//! command line.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use mamori_core::time::SystemClock;
use mamori_service::continuity::merge::{self as merge_svc};
use mamori_service::continuity::snapshot::{self, KeyMaterial};
use mamori_service::continuity::standalone;
use mamori_service::continuity::{merge, reconcile, registration};
use reqwest::Method;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::api::{de, Api, Http, Target};

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

#[derive(Subcommand)]
pub(crate) enum SnapshotCmd {
    /// The custodians who can open snapshots.
    #[command(subcommand)]
    Custodians(CustodiansCmd),
    /// Write a snapshot now (to `snapshot.dir`).
    Create {
        #[command(flatten)]
        target: Target,
    },
    /// Snapshots written so far.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Check a snapshot file offline, without any key: structure, digest,
    /// the institution's signature, the audit checkpoint.
    Verify {
        file: PathBuf,
        /// Require this institution certificate (PEM)...
        #[arg(long)]
        cert: Option<PathBuf>,
        /// ...or the one of this data directory (and its audit key).
        #[arg(long, conflicts_with = "cert")]
        data: Option<PathBuf>,
    },
    /// Decrypt a snapshot to NDJSON with the custodians' key material.
    Open {
        file: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum CustodiansCmd {
    /// Make a new snapshot key and print each custodian's share once.
    Init {
        /// How many custodians must come together.
        #[arg(long)]
        threshold: u8,
        /// A custodian's name (repeat).
        #[arg(long = "custodian")]
        custodians: Vec<String>,
        /// Also allow opening with a passphrase read from this file.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// The snapshot keys and their custodians.
    List {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Args, Clone)]
pub(crate) struct KeyArgs {
    /// A custodian's share (repeat; prefer --share-file).
    #[arg(long = "share")]
    shares: Vec<String>,
    /// A file holding one share per line (repeatable).
    #[arg(long = "share-file")]
    share_files: Vec<PathBuf>,
    /// A file holding the snapshot passphrase.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

impl KeyArgs {
    fn material(&self) -> Result<KeyMaterial> {
        let mut shares = self.shares.clone();
        for f in &self.share_files {
            let text = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
            shares.extend(text.lines().map(str::trim).filter(|l| l.starts_with("mamori-share:")).map(str::to_owned));
        }
        let passphrase = match &self.passphrase_file {
            Some(f) => Some(Zeroizing::new(
                std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read {}", f.display()))?
                    .trim_end()
                    .to_owned(),
            )),
            None => None,
        };
        Ok(KeyMaterial { shares, passphrase })
    }
}

pub(crate) async fn snapshot_cmd(c: SnapshotCmd) -> Result<()> {
    match c {
        SnapshotCmd::Custodians(CustodiansCmd::Init { threshold, custodians, passphrase_file, target }) => {
            let passphrase = match passphrase_file {
                Some(f) => Some(
                    std::fs::read_to_string(&f)
                        .with_context(|| format!("cannot read {}", f.display()))?
                        .trim_end()
                        .to_owned(),
                ),
                None => None,
            };
            let api = Api::connect(&target).await?;
            let body = json!({"threshold": threshold, "custodians": custodians, "passphrase": passphrase});
            let http = Http::post("/api/v1/snapshots/custodians", &body);
            let v = api.exec(http, |s, a| async move { snapshot::init_custodians(&s, &a, de(body)?).await }).await?;
            let line = "=".repeat(72);
            println!(
                "snapshot key {} (any {} of {} custodians)",
                v["key_id"].as_str().unwrap_or(""),
                threshold,
                custodians.len()
            );
            for s in v["shares"].as_array().into_iter().flatten() {
                println!("{line}");
                println!("  スナップショット鍵の分割鍵 / SNAPSHOT KEY SHARE — 封をして保管 / seal and keep");
                println!("  保管者 / Custodian : {}", s["custodian"].as_str().unwrap_or(""));
                println!("  {}", s["share"].as_str().unwrap_or(""));
                println!("  他の保管者 {} 名と揃えるとスナップショットを開けます / With {} other custodians' shares this opens the snapshots.", threshold.saturating_sub(1), threshold.saturating_sub(1));
            }
            println!("{line}");
            println!("{}", v["notice"].as_str().unwrap_or(""));
        }
        SnapshotCmd::Custodians(CustodiansCmd::List { target }) => {
            let api = Api::connect(&target).await?;
            let http = Http::get("/api/v1/snapshots/custodians");
            print(
                &api.exec(http, |s, a| async move { snapshot::custodians(&s, &a).await.map(|k| json!({"keys": k})) })
                    .await?,
            );
        }
        SnapshotCmd::Create { target } => {
            let api = Api::connect(&target).await?;
            let http = Http::post("/api/v1/snapshots", &json!({}));
            let v = api.exec(http, |s, a| async move { snapshot::create_now(&s, &a).await }).await?;
            println!(
                "wrote {} ({} patients, {} resources, {} bytes, SHA-256 {})",
                v["file"].as_str().unwrap_or(""),
                v["patients"],
                v["resources"],
                v["bytes"],
                v["sha256"].as_str().unwrap_or("")
            );
        }
        SnapshotCmd::List { target } => {
            let api = Api::connect(&target).await?;
            let http = Http::get("/api/v1/snapshots");
            print(
                &api.exec(http, |s, a| async move {
                    snapshot::list(&s, &a).await.map(|(rows, dir)| json!({"snapshots": rows, "dir": dir}))
                })
                .await?,
            );
        }
        SnapshotCmd::Verify { file, cert, data } => {
            let (pin, vkey) = match (&cert, &data) {
                (Some(c), _) => (
                    Some(openssl::x509::X509::from_pem(
                        &std::fs::read(c).with_context(|| format!("cannot read {}", c.display()))?,
                    )?),
                    None,
                ),
                (None, Some(d)) => (
                    Some(openssl::x509::X509::from_pem(
                        &std::fs::read(d.join("keys/institution.cert.pem"))
                            .context("the data directory's institution certificate")?,
                    )?),
                    Some(std::fs::read_to_string(d.join("keys/audit.vkey")).context("the data directory's audit key")?),
                ),
                (None, None) => (None, None),
            };
            let f2 = file.clone();
            let v = tokio::task::spawn_blocking(move || snapshot::verify_file(&f2, pin.as_ref(), vkey.as_deref()))
                .await??;
            println!("OK: {} is intact and signed", file.display());
            print(&v);
            if cert.is_none() && data.is_none() {
                println!("note: the signer was not pinned; compare signer_sha256 with your institution certificate, or pass --cert/--data");
            }
        }
        SnapshotCmd::Open { file, key, out } => {
            let m = key.material()?;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let n = tokio::task::spawn_blocking(move || -> Result<u64> {
                let w = std::cell::RefCell::new(std::io::BufWriter::new(f));
                let mut n = 0u64;
                let e = |x: std::io::Error| snapshot::SnapError::Other(x.to_string());
                snapshot::open_file(
                    &file,
                    &m,
                    None,
                    |meta| writeln!(w.borrow_mut(), "{}", json!({"meta": meta})).map_err(e),
                    |r| {
                        n += 1;
                        writeln!(
                            w.borrow_mut(),
                            "{{\"resourceType\":{},\"id\":{},\"version\":{},\"resource\":{}}}",
                            json!(r.t),
                            json!(r.id),
                            r.v,
                            r.r.get()
                        )
                        .map_err(e)
                    },
                )?;
                w.borrow_mut().flush()?;
                Ok(n)
            })
            .await??;
            println!(
                "decrypted {n} resources to {} (plaintext: keep it on encrypted media, delete it after use)",
                out.display()
            );
        }
    }
    Ok(())
}

/// `mamori standalone`: start (initializing from a snapshot the first time) or export.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct StandaloneArgs {
    #[command(subcommand)]
    cmd: Option<StandaloneCmd>,
    /// The node's data directory.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The snapshot to start from (first start only).
    #[arg(long)]
    snapshot: Option<PathBuf>,
    /// This node's id (1-12 letters/digits), used in provisional ids and stamps.
    #[arg(long, default_value = "SA1")]
    node: String,
    #[command(flatten)]
    key: KeyArgs,
    /// Listen address.
    #[arg(long)]
    listen: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum StandaloneCmd {
    /// Export everything recorded on this node (the server must be stopped).
    Export {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

pub(crate) async fn standalone_cmd(a: StandaloneArgs) -> Result<()> {
    if let Some(StandaloneCmd::Export { data, out }) = a.cmd {
        let v = standalone::export(&data, &out, Arc::new(SystemClock)).await?;
        println!(
            "exported {} entries from node {} to {}",
            v["entries"],
            v["node"].as_str().unwrap_or(""),
            out.display()
        );
        println!("SHA-256 {}", v["sha256"].as_str().unwrap_or(""));
        return Ok(());
    }
    let Some(data) = a.data else { bail!("--data DIR is required") };
    let initialized = data.join("mamori.db").exists() && !data.join(".initializing").exists();
    if !initialized {
        let Some(snap) = &a.snapshot else {
            bail!("{} is not a node yet: give --snapshot FILE and the custodians' key material", data.display())
        };
        let (init, info) = standalone::init(&data, snap, a.key.material()?, &a.node, Arc::new(SystemClock)).await?;
        println!(
            "mamori: standalone node {} initialized from snapshot {}",
            a.node,
            info["snapshot"].as_str().unwrap_or("")
        );
        println!("  resources from the snapshot: {}", info["resources"]);
        println!("  admin user:               admin");
        println!(
            "  one-time password:        {}   (shown once; it must be changed at first login)",
            init.admin_password.as_str()
        );
    } else if a.snapshot.is_some() {
        bail!("{} is already a node; start it without --snapshot", data.display());
    }
    mamori_server::server::run(mamori_server::server::ServeOptions {
        data,
        listen: a.listen,
        as2_listen: None,
        clock: Arc::new(SystemClock),
    })
    .await?;
    Ok(())
}

#[derive(Subcommand)]
pub(crate) enum ReconcileCmd {
    /// Import a standalone node's export under the reconciliation rules.
    Import {
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Reports of past imports.
    Imports {
        #[command(flatten)]
        target: Target,
    },
    /// Tasks waiting for a person (conflicts, patients to match, unknown patients).
    Tasks {
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Resolve a task.
    Resolve {
        id: i64,
        /// conflict: central | offline | merged (with --resource-file)
        #[arg(long)]
        keep: Option<String>,
        #[arg(long)]
        resource_file: Option<PathBuf>,
        /// match: merge the provisional patient into this patient
        #[arg(long)]
        merge_into: Option<String>,
        /// match: the provisional patient is a new patient
        #[arg(long)]
        keep_as_new: bool,
        /// unknown patient: file the entry under this patient
        #[arg(long)]
        assign_to: Option<String>,
        /// unknown patient: drop the entry
        #[arg(long)]
        discard: bool,
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

pub(crate) async fn reconcile_cmd(c: ReconcileCmd) -> Result<()> {
    match c {
        ReconcileCmd::Import { file, target } => {
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let api = Api::connect(&target).await?;
            let http = Http::raw(Method::POST, "/api/v1/reconcile/imports", bytes.clone(), "application/octet-stream");
            let v = api.exec(http, |s, a| async move { reconcile::import(&s, &a, bytes).await }).await?;
            if v["already_imported"] == true {
                println!("already imported; nothing changed");
            }
            let r = &v["report"];
            println!(
                "export {} from node {}: {}",
                r["export"].as_str().unwrap_or(""),
                r["node"].as_str().unwrap_or(""),
                r["counts"]
            );
            for e in r["entries"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["outcome"] != "created" && e["outcome"] != "updated")
            {
                println!(
                    "  {:<10} {}  {}",
                    e["outcome"].as_str().unwrap_or(""),
                    e["entry"].as_str().unwrap_or(""),
                    e["reason"].as_str().unwrap_or("")
                );
            }
        }
        ReconcileCmd::Imports { target } => {
            let api = Api::connect(&target).await?;
            let http = Http::get("/api/v1/reconcile/imports");
            print(
                &api.exec(http, |s, a| async move { reconcile::imports(&s, &a).await.map(|i| json!({"imports": i})) })
                    .await?,
            );
        }
        ReconcileCmd::Tasks { all, target } => {
            let api = Api::connect(&target).await?;
            let http = Http::get(if all { "/api/v1/reconcile/tasks?state=all" } else { "/api/v1/reconcile/tasks" });
            let state = all.then(|| "all".to_owned());
            let v = api
                .exec(http, |s, a| async move { reconcile::tasks(&s, &a, state).await.map(|t| json!({"tasks": t})) })
                .await?;
            for t in v["tasks"].as_array().into_iter().flatten() {
                println!(
                    "{:>5}  {:<16} {:<9} {}/{}  {}",
                    t["id"],
                    t["kind"].as_str().unwrap_or(""),
                    t["state"].as_str().unwrap_or(""),
                    t["rtype"].as_str().unwrap_or(""),
                    t["rid"].as_str().unwrap_or(""),
                    t["detail"]["reason"].as_str().unwrap_or("")
                );
            }
        }
        ReconcileCmd::Resolve {
            id,
            keep,
            resource_file,
            merge_into,
            keep_as_new,
            assign_to,
            discard,
            note,
            target,
        } => {
            let resource = match resource_file {
                Some(f) => Some(
                    serde_json::from_slice::<Value>(&std::fs::read(&f)?)
                        .with_context(|| format!("{}: not JSON", f.display()))?,
                ),
                None => None,
            };
            let mut body = json!({"note": note});
            for (k, v) in [
                ("keep", keep.map(Value::from)),
                ("resource", resource),
                ("merge_into", merge_into.map(Value::from)),
                ("assign_to", assign_to.map(Value::from)),
            ] {
                if let Some(v) = v {
                    body[k] = v;
                }
            }
            if keep_as_new {
                body["keep_as_new"] = json!(true);
            }
            if discard {
                body["discard"] = json!(true);
            }
            let api = Api::connect(&target).await?;
            let http = Http::post(format!("/api/v1/reconcile/tasks/{id}/resolve"), &body);
            let v = api.exec(http, |s, a| async move { reconcile::resolve(&s, &a, id, de(body)?).await }).await?;
            println!("task {id} resolved: {}", v["resolution"]);
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub(crate) enum PatientCmd {
    /// Register a patient without the reception desk (provisional id).
    Register {
        /// red | yellow | green | black (START triage)
        #[arg(long)]
        triage: String,
        /// male | female | other | unknown
        #[arg(long)]
        sex: String,
        #[arg(long)]
        age: Option<u32>,
        #[arg(long)]
        age_band: Option<String>,
        #[arg(long)]
        features: Option<String>,
        #[arg(long)]
        found_at: Option<String>,
        #[arg(long)]
        arrival: Option<String>,
        #[arg(long)]
        note: Option<String>,
        /// Name in kanji, "family given".
        #[arg(long)]
        kanji: Option<String>,
        /// Name in kana.
        #[arg(long)]
        kana: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Provisional patients still to be identified.
    Provisional {
        #[command(flatten)]
        target: Target,
    },
    /// Merge a patient into another (FHIR $merge).
    Merge {
        #[arg(long)]
        source: String,
        #[arg(long)]
        target_patient: String,
        #[arg(long)]
        preview: bool,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Undo a merge.
    Unmerge {
        merge: i64,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        target: Target,
    },
    /// Merges, for review.
    Merges {
        #[arg(long)]
        patient: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

pub(crate) async fn patient_cmd(c: PatientCmd) -> Result<()> {
    match c {
        PatientCmd::Register { triage, sex, age, age_band, features, found_at, arrival, note, kanji, kana, target } => {
            let api = Api::connect(&target).await?;
            let mut body = json!({"triage": triage, "sex": sex, "estimated_age": age, "age_band": age_band, "features": features,
                                  "found_at": found_at, "arrival": arrival, "note": note});
            if kanji.is_some() || kana.is_some() {
                body["name"] = json!({"kanji": kanji, "kana": kana});
            }
            let http = Http::post("/api/v1/registrations", &body);
            let v = api.exec(http, |s, a| async move { registration::register(&s, &a, de(body)?).await }).await?;
            println!(
                "registered Patient/{} as {}",
                v["id"].as_str().unwrap_or(""),
                v["provisional_id"].as_str().unwrap_or("")
            );
        }
        PatientCmd::Provisional { target } => {
            let api = Api::connect(&target).await?;
            let http = Http::get("/api/v1/registrations");
            let v =
                api.exec(http, |s, a| async move {
                    registration::list(&s, &a, true).await.map(|p| json!({"provisional": p}))
                })
                .await?;
            for p in v["provisional"].as_array().into_iter().flatten() {
                println!(
                    "{}  {:<6} {:<7} {:<6} {}  {}",
                    p["provisional_id"].as_str().unwrap_or(""),
                    p["triage"].as_str().unwrap_or(""),
                    p["sex"].as_str().unwrap_or(""),
                    p["estimated_age"]
                        .as_i64()
                        .map(|a| a.to_string())
                        .or_else(|| p["age_band"].as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    p["id"].as_str().unwrap_or(""),
                    p["features"].as_str().unwrap_or("")
                );
            }
        }
        PatientCmd::Merge { source, target_patient, preview, reason, target } => {
            let api = Api::connect(&target).await?;
            let mut params = vec![
                json!({"name": "source-patient", "valueReference": {"reference": format!("Patient/{}", source.trim_start_matches("Patient/"))}}),
                json!({"name": "target-patient", "valueReference": {"reference": format!("Patient/{}", target_patient.trim_start_matches("Patient/"))}}),
                json!({"name": "preview", "valueBoolean": preview}),
            ];
            if let Some(r) = reason {
                params.push(json!({"name": "reason", "valueString": r}));
            }
            let body = json!({"resourceType": "Parameters", "parameter": params});
            let http =
                Http::raw(Method::POST, "/fhir/Patient/$merge", body.to_string().into_bytes(), "application/fhir+json");
            let v = api.exec(http, |s, a| async move { merge::fhir_merge(&s, &a, Ok(body)).await }).await?;
            for p in v["parameter"].as_array().into_iter().flatten().filter(|p| p["name"] == "outcome") {
                println!("{}", p["resource"]["issue"][0]["diagnostics"].as_str().unwrap_or(""));
            }
        }
        PatientCmd::Unmerge { merge, reason, target } => {
            let api = Api::connect(&target).await?;
            let body = json!({"reason": reason});
            let http = Http::post(format!("/api/v1/merges/{merge}/undo"), &body);
            let v = api.exec(http, |s, a| async move { merge_svc::undo(&s, &a, merge, de(body)?).await }).await?;
            println!("merge {merge} undone; restored {}", v["restored"]);
        }
        PatientCmd::Merges { patient, target } => {
            let api = Api::connect(&target).await?;
            let q =
                patient.as_ref().map(|p| format!("?patient={}", mamori_service::records::enc(p))).unwrap_or_default();
            let http = Http::get(format!("/api/v1/merges{q}"));
            print(
                &api.exec(
                    http,
                    |s, a| async move { merge_svc::list(&s, &a, patient).await.map(|m| json!({"merges": m})) },
                )
                .await?,
            );
        }
    }
    Ok(())
}
