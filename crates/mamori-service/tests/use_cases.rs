//! Use cases on a temporary SQLite store, without HTTP: the service layer
//! decides, audits before it hands data out, and refuses with the audit
//! event already written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use mamori_core::ids::ResourceType;
use mamori_core::time::{Clock, SystemClock};
use mamori_service::records::write::{self, Step, WriteOp};
use mamori_service::{accounts, init, records, Actor, RequestCtx, Services};
use serde_json::{json, Value};

struct Env {
    svc: Services,
    op: Actor,
    dir: PathBuf,
    _lock: init::DirLock,
}

impl Drop for Env {
    fn drop(&mut self) {
        // Best effort: a leftover temporary directory harms no test.
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

async fn env(tag: &str) -> Env {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("mamori-svc-{tag}-{}-{n}", std::process::id()));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    init::initialize(&dir, clock.clone()).await.unwrap();
    let (svc, lock) = init::open_local(&dir, clock).await.unwrap();
    let op = Actor::local_operator("test", RequestCtx::background(svc.mode.get()));
    Env { svc, op, dir, _lock: lock }
}

fn de<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

async fn login(svc: &Services, name: &str, pw: &str) -> Actor {
    let ctx = || RequestCtx::background(svc.mode.get());
    let s = accounts::login(svc, ctx(), de(json!({"username": name, "password": pw}))).await.unwrap();
    accounts::authenticate(svc, s.token, ctx()).await.unwrap()
}

/// An account made by `by`, its first password changed; its actor.
async fn person(e: &Env, by: &Actor, name: &str, roles: &[&str]) -> (Actor, Option<i64>) {
    let c = accounts::create_user(
        &e.svc,
        by,
        de(json!({"name": name, "display": name, "roles": roles, "password": "First pass phrase 1"})),
    )
    .await
    .unwrap();
    let a = login(&e.svc, name, "First pass phrase 1").await;
    accounts::change_password(&e.svc, &a, de(json!({"current": "First pass phrase 1", "new": "Second pass phrase 2"})))
        .await
        .unwrap();
    (login(&e.svc, name, "Second pass phrase 2").await, c.pending_request)
}

async fn create(e: &Env, a: &Actor, rtype: ResourceType, body: Value) -> String {
    let step = write::write(&e.svc, a, rtype, WriteOp::Create { if_none_exist: None }, Some(body)).await.unwrap();
    match step.into_inner() {
        Step::Done { written, .. } => written.id,
        _ => panic!("not written"),
    }
}

async fn audit_size(e: &Env) -> i64 {
    e.svc.store.read(|c| mamori_store::audit_log::size(c)).await.unwrap() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_is_audited_before_the_data_is_handed_out() {
    let e = env("read").await;
    let (dr_a, _) = person(&e, &e.op, "dr.a", &["physician"]).await;
    let (dr_b, _) = person(&e, &e.op, "dr.b", &["physician"]).await;
    let p =
        create(&e, &dr_a, ResourceType::PATIENT, json!({"resourceType": "Patient", "name": [{"family": "A"}]})).await;
    let o = create(
        &e,
        &dr_a,
        ResourceType::OBSERVATION,
        json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "pulse"}, "subject": {"reference": format!("Patient/{p}")}, "valueQuantity": {"value": 70}}),
    )
    .await;
    let before = audit_size(&e).await;
    let r = records::read::read(&e.svc, &dr_a, "Observation", &o).await.unwrap();
    // The value comes with the index of the event that recorded its read.
    assert_eq!(r.event() as i64, before, "the read's event is the next leaf");
    assert_eq!(audit_size(&e).await, before + 1);
    // Refused: an error, and the refusal is in the log already.
    let err = records::read::read(&e.svc, &dr_b, "Observation", &o).await.unwrap_err();
    assert_eq!(err.status(), 403, "{err}");
    assert_eq!(audit_size(&e).await, before + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clinical_grant_by_an_admin_waits_for_a_second_admin() {
    let e = env("grant").await;
    let (adm1, none) = person(&e, &e.op, "adm1", &["admin"]).await;
    assert_eq!(none, None, "an admin grant needs no approval");
    let (adm2, _) = person(&e, &e.op, "adm2", &["admin"]).await;
    let c = accounts::create_user(&e.svc, &adm1, de(json!({"name": "ns.x", "display": "N", "roles": ["nurse"]})))
        .await
        .unwrap();
    let req = c.pending_request.expect("a nurse grant waits");
    assert!(c.roles.is_empty(), "no clinical role until approved: {:?}", c.roles);
    let err = accounts::decide_request(&e.svc, &adm1, req, true).await.unwrap_err();
    assert_eq!(err.status(), 403, "the requester cannot approve: {err}");
    accounts::decide_request(&e.svc, &adm2, req, true).await.unwrap();
    let err = accounts::decide_request(&e.svc, &adm2, req, true).await.unwrap_err();
    assert_eq!(err.status(), 409, "decided once: {err}");
    // No admin gets a token for a clinician (separation of duties).
    let err = accounts::issue_token(&e.svc, &adm1, de(json!({"user": "ns.x"}))).await.unwrap_err();
    assert_eq!(err.status(), 403, "{err}");
}

/// A FHIR create's own audit event binds the stored bytes; the periodic
/// sample check finds a record changed behind mamori's back and the health
/// check reports it (EM-B1 detection, GL-TRUE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_changed_behind_the_logs_back_is_found_by_the_self_check() {
    let e = env("integrity").await;
    let (dr, _) = person(&e, &e.op, "dr.i", &["physician"]).await;
    let p = create(&e, &dr, ResourceType::PATIENT, json!({"resourceType": "Patient", "name": [{"family": "Before"}]}))
        .await;
    let last = audit_size(&e).await as u64 - 1;
    let leaf = e.svc.store.read(move |c| mamori_store::audit_log::leaf(c, last)).await.unwrap().unwrap();
    let rec = mamori_audit::event::AuditRecord::from_leaf(&leaf).unwrap();
    assert_eq!(rec.action, "create");
    assert_eq!(rec.versions.len(), 1, "the create's own event binds the version: {rec:?}");
    assert_eq!(rec.versions[0].reference, format!("Patient/{p}/_history/1"));
    assert_eq!(mamori_service::detect::check_records(&e.svc).await, None);
    assert_eq!(mamori_service::jobs::health(&e.svc).await.unwrap().status, "ok");

    let id = p.clone();
    e.svc
        .store
        .writer()
        .write(
            move |w| {
                w.conn.exec(
                    "UPDATE resource_versions SET body = replace(body, 'Before', 'Bxfore') WHERE id = $1",
                    mamori_store::p![id],
                )?;
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await
        .unwrap();
    let found = mamori_service::detect::check_records(&e.svc).await.expect("the change is found");
    assert!(found.contains(&format!("record Patient/{p}/_history/1: its stored bytes differ")), "{found}");
    let h = mamori_service::jobs::health(&e.svc).await.unwrap();
    assert_eq!(h.status, "degraded");
    assert!(h.problems.iter().any(|x| x.contains(&format!("Patient/{p}/_history/1"))), "{:?}", h.problems);
}
