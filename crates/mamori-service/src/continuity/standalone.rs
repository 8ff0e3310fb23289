//! Standalone operation: a laptop without network, started from a
//! snapshot (with the custodians' key material), serving it as a reference
//! copy and recording new entries locally with its own audit trail, each
//! stamped with the node's id; `export` hands everything recorded locally
//! back to the centre as a file signed by the node and encrypted to the
//! institution.

use std::io::BufWriter;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use mamori_core::bcp::{Cause, DeclState, Plan};
use mamori_core::continuity::{valid_node, TAG_SYSTEM};
use mamori_core::ids::ResourceType;
use mamori_core::mode::Phase;
use mamori_core::time::{Clock, Timestamp};
use mamori_exchange::cms::{self, Identity};
use mamori_store::continuity::{self as cs, Standalone};
use mamori_store::{emergency, records, Store, StoreError};
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, KeyUsage};
use openssl::x509::{X509NameBuilder, X509};
use serde_json::{json, Value};

use super::container::{self, b64, ContainerError, EXPORT_MAGIC};
use super::snapshot::{self, KeyMaterial, SnapError};
use crate::actor::RequestCtx;
use crate::init::{self as server, DataDir, InitError as ServeError, InitReport};
use crate::keys;

/// The node's signing key (PEM), inside the data directory.
pub const NODE_KEY: &str = "keys/node.key.pem";
/// The node's certificate (PEM), inside the data directory.
pub const NODE_CERT: &str = "keys/node.cert.pem";
/// The central institution's certificate (PEM), which signs snapshots,
/// inside the data directory.
pub const CENTRAL_CERT: &str = "keys/central-institution.cert.pem";

/// Marks a resource recorded on a standalone node.
pub fn stamp(body: &mut Value, node: &str) {
    let Some(o) = body.as_object_mut() else { return };
    let meta = o.entry("meta").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta["source"] = json!(format!("urn:mamori:node:{node}"));
    let mut tags = meta["tag"].as_array().cloned().unwrap_or_default();
    if !tags.iter().any(|t| t["system"] == TAG_SYSTEM && t["code"] == "standalone") {
        tags.push(json!({"system": TAG_SYSTEM, "code": "standalone", "display": format!("スタンドアロン記録 / recorded on standalone node {node}")}));
    }
    meta["tag"] = json!(tags);
}

fn e<T: std::fmt::Display>(x: T) -> ServeError {
    ServeError::DataDir(x.to_string())
}

/// A node certificate issued by the snapshot key: the centre accepts the
/// node's exports because custodians opened the snapshot for it.
pub fn node_identity(
    node: &str,
    institution: &str,
    key_id: &str,
    sk: &PKey<Private>,
) -> Result<(String, String), ServeError> {
    let key = PKey::from_rsa(Rsa::generate(3072).map_err(e)?).map_err(e)?;
    let mut subject = X509NameBuilder::new().map_err(e)?;
    subject.append_entry_by_nid(Nid::COMMONNAME, &format!("mamori standalone node {node}")).map_err(e)?;
    subject.append_entry_by_nid(Nid::ORGANIZATIONNAME, institution).map_err(e)?;
    let subject = subject.build();
    let mut issuer = X509NameBuilder::new().map_err(e)?;
    issuer.append_entry_by_nid(Nid::COMMONNAME, &format!("mamori snapshot key {key_id}")).map_err(e)?;
    let issuer = issuer.build();
    let mut b = X509::builder().map_err(e)?;
    b.set_version(2).map_err(e)?;
    let mut sn = BigNum::new().map_err(e)?;
    sn.rand(127, MsbOption::MAYBE_ZERO, false).map_err(e)?;
    let serial = sn.to_asn1_integer().map_err(e)?;
    b.set_serial_number(&serial).map_err(e)?;
    b.set_subject_name(&subject).map_err(e)?;
    b.set_issuer_name(&issuer).map_err(e)?;
    b.set_pubkey(&key).map_err(e)?;
    b.set_not_before(&*Asn1Time::days_from_now(0).map_err(e)?).map_err(e)?;
    b.set_not_after(&*Asn1Time::days_from_now(365).map_err(e)?).map_err(e)?;
    b.append_extension(BasicConstraints::new().critical().build().map_err(e)?).map_err(e)?;
    b.append_extension(KeyUsage::new().critical().digital_signature().build().map_err(e)?).map_err(e)?;
    b.sign(sk, MessageDigest::sha256()).map_err(e)?;
    let cert = String::from_utf8(b.build().to_pem().map_err(e)?).map_err(e)?;
    let key_pem = String::from_utf8(key.private_key_to_pem_pkcs8().map_err(e)?).map_err(e)?;
    Ok((cert, key_pem))
}

/// Initializes a standalone node's data directory from a snapshot.
pub async fn init(
    dir: &Path,
    snapshot_path: &Path,
    material: KeyMaterial,
    node: &str,
    clock: Arc<dyn Clock>,
) -> Result<(InitReport, Value), ServeError> {
    if !valid_node(node) {
        return Err(e("--node: 1-12 letters or digits"));
    }
    let dd = DataDir(dir.to_owned());
    if dd.is_initialized() {
        return Err(e(format!(
            "{} is already a data directory; start it with `mamori standalone --data {}`",
            dir.display(),
            dir.display()
        )));
    }
    // Check the snapshot (and the key material) before touching anything.
    let sp = snapshot_path.to_owned();
    let info =
        tokio::task::spawn_blocking(move || snapshot::verify_file(&sp, None, None)).await.map_err(e)?.map_err(e)?;
    std::fs::create_dir_all(dir).map_err(e)?;
    let name = info["institution"]["name"].as_str().unwrap_or("mamori hospital").to_owned();
    std::fs::write(
        dir.join("mamori.toml"),
        format!(
            "# A standalone node started from snapshot {}.\n[institution]\nname = {}\nnode = \"{node}\"\n",
            info["id"].as_str().unwrap_or(""),
            toml::Value::String(name.clone())
        ),
    )
    .map_err(e)?;
    let report = server::initialize(dir, clock.clone()).await?;
    let lock = server::lock_dir(dir)?;
    let cfg = crate::config::Config::load(dir)?;
    let (signer, _) = server::load_signer(&dd)?;
    let store = Store::open(&server::store_config(&dd, &cfg)?, clock, signer)?;

    // Stream the snapshot into the store in batches.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<snapshot::Record>>(4);
    let (sp, meta_tx) = (snapshot_path.to_owned(), std::sync::Arc::new(std::sync::Mutex::new(Value::Null)));
    let meta2 = meta_tx.clone();
    let reader = tokio::task::spawn_blocking(move || {
        let mut batch = Vec::with_capacity(1000);
        let r = snapshot::open_file(
            &sp,
            &material,
            None,
            |m| {
                if let Ok(mut g) = meta2.lock() {
                    *g = m.clone();
                }
                Ok(())
            },
            |rec| {
                batch.push(rec);
                if batch.len() >= 1000 {
                    tx.blocking_send(std::mem::take(&mut batch))
                        .map_err(|_| SnapError::Other("import stopped".into()))?;
                }
                Ok(())
            },
        );
        if r.is_ok() && !batch.is_empty() {
            // The importing loop only stops early on an error it returns.
            tx.blocking_send(batch).ok();
        }
        r
    });
    let mut count = 0u64;
    while let Some(batch) = rx.recv().await {
        count += batch.len() as u64;
        store
            .writer()
            .write(
                move |w| {
                    for rec in batch {
                        let rt = ResourceType::parse(&rec.t).map_err(|x| StoreError::invalid("", x.to_string()))?;
                        let body: Value =
                            serde_json::from_str(rec.r.get()).map_err(|x| StoreError::invalid("", x.to_string()))?;
                        let written = records::put(w, rt, &rec.id, body, None, "snapshot", w.now)?;
                        cs::add_reference(w.conn, &rec.t, &rec.id, rec.v, written.version)?;
                    }
                    Ok(())
                },
                |_, _| Ok(()),
            )
            .await?;
    }
    let (header, sk) = reader.await.map_err(e)?.map_err(e)?;
    let meta = meta_tx.lock().map(|g| g.clone()).unwrap_or(Value::Null);
    let key_id = header["encryption"]["key_id"].as_str().unwrap_or("").to_owned();
    let (node_cert, node_key) = node_identity(node, &name, &key_id, &sk)?;
    keys::write_secret(&dir.join(NODE_KEY), node_key.as_bytes())?;
    keys::write_public(&dir.join(NODE_CERT), node_cert.as_bytes())?;
    keys::write_public(&dir.join(CENTRAL_CERT), header["signer_cert"].as_str().unwrap_or("").as_bytes())?;
    // Standalone operation is an emergency: the plan's activation rules apply.
    let plan_toml =
        meta["plan"].as_str().map(str::to_owned).unwrap_or_else(|| mamori_core::bcp::DEFAULT_PLAN.to_owned());
    let plan = Plan::from_toml(&plan_toml)
        .map_err(|x| e(format!("the snapshot's BCP plan: {}", x.first().map(|p| p.to_string()).unwrap_or_default())))?;
    let criterion = plan.criteria.first().map(|c| c.id.clone()).unwrap_or_else(|| "standalone".into());
    let (node2, snap_id, inst) = (node.to_owned(), header["id"].as_str().unwrap_or("").to_owned(), name.clone());
    let h2 = header.clone();
    store
        .writer()
        .write(
            move |w| {
                cs::set_standalone(w.conn, &Standalone { node: node2.clone(), snapshot: snap_id.clone(), institution: inst, key_id, created: w.now })?;
                let pv = emergency::import_plan(w.conn, &plan_toml, "system", w.now)?;
                let reason = format!("スナップショット {snap_id} からのスタンドアロン運用 / standalone operation of node {node2} from snapshot {snap_id}");
                let id = emergency::insert_declaration(w.conn, Cause::SystemFailure, &[criterion], &reason, false, DeclState::Active(Phase::Activation), pv, "system", w.now)?;
                emergency::set_confirmed(w.conn, id, "system")?;
                emergency::record_transition(w.conn, id, "proposed", DeclState::Active(Phase::Activation), "system", w.now, Some(&reason), None)?;
                let ctx = RequestCtx { addr: None, request_id: None, mode: emergency::current_mode(w.conn)? };
                let mut rec = ctx.record("system", "system", "standalone-init", 201, w.now);
                rec.detail = Some(json!({"node": node2, "snapshot": snap_id, "resources": count,
                    "snapshot_checkpoint": h2["audit"]["checkpoint"], "institution": h2["institution"]}));
                w.audit(&rec)?;
                w.checkpoint("standalone-init")?;
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await?;
    drop(store);
    drop(lock);
    Ok((report, json!({"node": node, "snapshot": header["id"], "resources": count, "institution": name})))
}

/// Writes everything recorded on this node since the snapshot to `out`.
pub async fn export(dir: &Path, out: &Path, clock: Arc<dyn Clock>) -> Result<Value, ServeError> {
    let dd = DataDir(dir.to_owned());
    if !dd.is_initialized() {
        return Err(e(format!("{} is not a data directory", dir.display())));
    }
    let _lock = server::lock_dir(dir)?;
    let cfg = crate::config::Config::load(dir)?;
    let (signer, _) = server::load_signer(&dd)?;
    let store = Store::open(&server::store_config(&dd, &cfg)?, clock.clone(), signer)?;
    let sa =
        store.read(cs::standalone).await?.ok_or_else(|| e(format!("{} is not a standalone node", dir.display())))?;
    let node_id =
        Identity::from_pem(&std::fs::read(dir.join(NODE_CERT)).map_err(e)?, &keys::read_secret(&dir.join(NODE_KEY))?)
            .map_err(e)?;
    let central = X509::from_pem(&std::fs::read(dir.join(CENTRAL_CERT)).map_err(e)?).map_err(e)?;
    let checkpoint = store.writer().write(|w| w.checkpoint("standalone-export"), |_, _| Ok(())).await?;
    let vkey = std::fs::read_to_string(dd.audit_vkey()).unwrap_or_default();
    let (k, wrapped, prefix) = snapshot::data_key(&central.public_key().map_err(e)?).map_err(e)?;
    let now = clock.now();
    let id = mamori_store::accounts::new_id()?;
    let header = json!({
        "format": "mamori-export/1", "id": id, "created": now.to_rfc3339(), "node": sa.node, "snapshot": sa.snapshot,
        "institution": sa.institution, "node_cert": String::from_utf8(node_id.cert.to_pem().map_err(e)?).unwrap_or_default(),
        "audit": {"vkey": vkey.trim(), "checkpoint": checkpoint},
        "encryption": {"cipher": "AES-256-GCM", "nonce_prefix": b64(&prefix), "wrapped_key": b64(&wrapped), "key_wrap": "RSAES-OAEP-SHA256 to the institution certificate"},
    });
    let (key_bytes, outp, node) = (*k, out.to_owned(), sa.node.clone());
    let manifest = store
        .read(move |c| {
            let f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&outp)
                .map_err(|x| StoreError::Internal(format!("{}: {x}", outp.display())))?;
            let ce = |x: ContainerError| StoreError::Internal(x.to_string());
            let mut w = container::Writer::new(BufWriter::new(f), EXPORT_MAGIC, &header, key_bytes, prefix).map_err(ce)?;
            let rows = c.query(
                "SELECT v.rtype, v.id, v.version, v.last_updated, v.deleted, v.author, v.body FROM resources r \
                 JOIN resource_versions v ON v.seq = r.seq WHERE v.author <> 'snapshot' ORDER BY CASE v.rtype WHEN 'Patient' THEN 0 ELSE 1 END, v.seq",
                mamori_store::p![],
            )?;
            let mut n = 0u64;
            for r in rows {
                let (rt, rid, v) = (r.text(0)?, r.text(1)?, r.u64(2)?);
                let base = cs::reference(c, &rt, &rid)?;
                let deleted = r.bool(4)?;
                if deleted && base.is_none() {
                    continue; // made and discarded locally
                }
                let body = r.text(6)?;
                let entry = json!({
                    "entry": format!("{node}:{rt}/{rid}/_history/{v}"), "t": rt, "id": rid, "local_version": v,
                    "base": base.map(|b| b.0), "deleted": deleted, "author": r.text(5)?,
                    "recorded_at": Timestamp(r.i64(3)?).to_rfc3339(),
                    "r": if deleted { Value::Null } else { serde_json::from_str::<Value>(&body).unwrap_or(Value::Null) },
                });
                w.line(entry.to_string().as_bytes()).map_err(ce)?;
                n += 1;
            }
            let (out, manifest) = w
                .finish(json!({"format": "mamori-export-manifest/1", "entries": n}), |m| {
                    cms::sign_detached(&node_id, m).map_err(|x| ContainerError::Crypto(x.to_string()))
                })
                .map_err(ce)?;
            out.into_inner().map_err(|x| StoreError::Internal(x.to_string()))?.sync_all().map_err(|x| StoreError::Internal(x.to_string()))?;
            Ok(manifest)
        })
        .await?;
    let (m2, node2, out2) = (manifest.clone(), sa.node.clone(), out.display().to_string());
    store
        .writer()
        .write(
            move |w| {
                let ctx = RequestCtx { addr: None, request_id: None, mode: emergency::current_mode(w.conn)? };
                let mut rec = ctx.record("system", "system", "standalone-export", 201, w.now);
                rec.detail =
                    Some(json!({"node": node2, "file": out2, "entries": m2["entries"], "sha256": m2["sha256"]}));
                w.audit(&rec).map(|_| ())
            },
            |_, _| Ok(()),
        )
        .await?;
    Ok(
        json!({"export": id, "node": sa.node, "file": out.display().to_string(), "entries": manifest["entries"], "sha256": manifest["sha256"]}),
    )
}
