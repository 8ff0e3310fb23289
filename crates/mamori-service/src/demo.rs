//! The demo hospital's data: staff of every role with known passwords,
//! about 50 synthetic patients with Japanese names and coherent records,
//! care assignments, the example BCP plan, sealed emergency accounts, and
//! the partner link between the hospital and its clinic. `mamori serve
//! --demo` (in `mamori-server`) starts the two nodes and calls this on an
//! empty directory.
//!
//! Every seeded resource carries `meta.security` HTEST (test data). The
//! charts are loaded as the system (a data load, like a migration):
//! validated like any write and audited per patient; everything else goes
//! through the ordinary use cases as the local operator.

use mamori_core::ids::UserId;
use mamori_core::policy::{Role, SubjectKind};
use mamori_core::time::Timestamp;
use mamori_store::accounts::{self, NewUser};
use serde_json::{json, Value};

use crate::exchange::partners;
use crate::{accounts as acc, bcp, eaccounts, Actor, RequestCtx, ServiceError, Services};

/// A seeded account and its demo password.
#[derive(Debug, Clone)]
pub struct Credential {
    /// Which node it is on: "hospital" or "clinic".
    pub node: &'static str,
    /// The user name.
    pub user: String,
    /// The demo password (no change is forced).
    pub password: String,
    /// Its roles, comma-separated, as shown to the newcomer.
    pub roles: String,
    /// The display name (Japanese / English).
    pub display: String,
}

fn seeding(what: &'static str) -> impl Fn(ServiceError) -> ServiceError {
    move |e| ServiceError::internal(format!("demo seeding: {what}: {}", e.message()))
}

/// The local operator seeding the demo (an administrator on the host).
fn operator(st: &Services) -> Actor {
    Actor::local_operator("demo seeding", RequestCtx::background(st.mode.get()))
}

async fn staff(
    st: &Services,
    node: &'static str,
    people: &[(&str, &str, &[Role], Option<&str>)],
) -> Result<Vec<Credential>, ServiceError> {
    let mut out = Vec::new();
    let mut rows = Vec::new();
    for (name, display, roles, dept) in people {
        let pw = accounts::random_password()?.chars().take(14).collect::<String>();
        let p2 = pw.clone();
        let hash = tokio::task::spawn_blocking(move || accounts::hash_password(&p2))
            .await
            .map_err(|e| ServiceError::internal_from("hashing a demo password", e))??;
        rows.push((name.to_string(), display.to_string(), roles.to_vec(), dept.map(str::to_owned), hash));
        out.push(Credential {
            node,
            user: name.to_string(),
            password: pw,
            roles: roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(","),
            display: display.to_string(),
        });
    }
    st.store
        .writer()
        .write(
            move |w| {
                for (name, display, roles, dept, hash) in &rows {
                    let id =
                        UserId::parse(name).map_err(|e| mamori_store::StoreError::invalid("name", e.to_string()))?;
                    accounts::create_user(
                        w.conn,
                        &NewUser {
                            name: &id,
                            display,
                            kind: SubjectKind::Staff,
                            department: dept.as_deref(),
                            roles,
                            password_hash: Some(hash),
                            must_change: false,
                            created_by: "system",
                        },
                        w.now,
                    )?;
                    let ctx = RequestCtx::background(mamori_core::mode::Mode::Normal);
                    let mut rec = ctx.record("system", "system", "user-create", 201, w.now);
                    rec.detail =
                        Some(json!({"user": name, "roles": roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                                             "department": dept, "demo": true}));
                    w.audit(&rec)?;
                }
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await?;
    Ok(out)
}

/// Seeds the hospital node: staff, the BCP plan, the patients' charts,
/// care assignments and two sealed emergency accounts.
pub async fn seed_hospital(st: &Services, now: Timestamp) -> Result<Vec<Credential>, ServiceError> {
    use Role::*;
    let mut creds = staff(
        st,
        "hospital",
        &[
            ("dr.sato", "佐藤 健一 / Sato Kenichi", &[Physician], Some("内科")),
            ("dr.tanaka", "田中 美咲 / Tanaka Misaki", &[Physician], Some("ER")),
            ("ns.suzuki", "鈴木 花子 / Suzuki Hanako", &[Nurse], Some("内科")),
            ("ph.ito", "伊藤 翔 / Ito Sho", &[Pharmacist], Some("薬剤部")),
            ("clerk.kato", "加藤 由美 / Kato Yumi", &[Clerk], Some("医事課")),
            ("aud.yamamoto", "山本 誠 / Yamamoto Makoto", &[Auditor], Some("医療安全管理室")),
            ("bcp.kobayashi", "小林 隆 / Kobayashi Takashi", &[BcpDecider], Some("病院長室")),
            ("it.watanabe", "渡辺 直樹 / Watanabe Naoki", &[Admin], Some("情報システム部")),
            ("it.kimura", "木村 彩 / Kimura Aya", &[Admin], Some("情報システム部")),
        ],
    )
    .await?;
    // The BCP plan.
    put_plan(st).await?;
    // Patients and their records.
    // Written as the system (a data load, like a migration), validated like
    // any write and audited per patient.
    let id_system = mamori_core::fhir::jp::patient_id_system(&st.cfg.institution.id);
    for chart in patients(now, &id_system) {
        let pid0 = chart[0]["id"].as_str().unwrap_or("").to_owned();
        for r in &chart {
            let t = mamori_core::ids::ResourceType::parse(r["resourceType"].as_str().unwrap_or(""))
                .map_err(|e| ServiceError::internal(e.to_string()))?;
            crate::records::validate_body(t, r)
                .map_err(|e| ServiceError::internal(format!("demo record {}: {}", r["id"], e.message())))?;
        }
        st.store
            .writer()
            .write(
                move |w| {
                    for r in &chart {
                        let t = mamori_core::ids::ResourceType::parse(r["resourceType"].as_str().unwrap_or(""))
                            .map_err(|e| mamori_store::StoreError::Internal(e.to_string()))?;
                        mamori_store::records::put(
                            w,
                            t,
                            r["id"].as_str().unwrap_or(""),
                            r.clone(),
                            None,
                            "system",
                            w.now,
                        )?;
                    }
                    let ctx = RequestCtx::background(mamori_core::mode::Mode::Normal);
                    let mut rec = ctx.record("system", "system", "demo-seed", 201, w.now);
                    rec.patients = vec![pid0.clone()];
                    rec.detail = Some(json!({"resources": chart.len(), "security": "HTEST"}));
                    w.audit(&rec)?;
                    Ok(())
                },
                |_, _| Ok(()),
            )
            .await?;
    }
    // Care: internal medicine looks after patients 1-20, the ER doctor
    // after 21-25; 26-50 have no care relationship here (break-glass).
    let me = operator(st);
    for i in 1..=25 {
        let req = if i <= 20 {
            acc::CareRequest {
                patient: pid(i),
                user: None,
                department: Some("内科".into()),
                reason: Some("外来主治 / outpatient care (demo)".into()),
            }
        } else {
            acc::CareRequest {
                patient: pid(i),
                user: Some("dr.tanaka".into()),
                department: None,
                reason: Some("救急外来 / ER (demo)".into()),
            }
        };
        acc::assign_care(st, &me, req).await.map_err(seeding("care"))?;
    }
    // Two sealed emergency accounts, their envelopes "printed" here.
    let req = eaccounts::Provision { count: 2, roles: vec!["physician".into()], drill: false };
    let v = eaccounts::provision(st, &me, req).await.map_err(seeding("emergency accounts"))?;
    for name in &v.accounts {
        let e = eaccounts::envelope(st, &me, name).await.map_err(seeding("envelope"))?;
        creds.push(Credential {
            node: "hospital",
            user: name.clone(),
            password: e.password.clone(),
            roles: "physician (sealed emergency account: emergencies only)".into(),
            display: "非常用アカウント / sealed emergency account".into(),
        });
    }
    Ok(creds)
}

async fn put_plan(st: &Services) -> Result<(), ServiceError> {
    let text = include_str!("../../../docs/example-bcp-plan.toml").to_owned();
    bcp::put_plan(st, &operator(st), text).await.map_err(seeding("the BCP plan"))?;
    Ok(())
}

/// Seeds the clinic node's staff.
pub async fn seed_clinic(st: &Services) -> Result<Vec<Credential>, ServiceError> {
    staff(
        st,
        "clinic",
        &[
            ("dr.minato", "港 一郎 / Minato Ichiro", &[Role::Physician], Some("内科")),
            ("clerk.minato", "港 明美 / Minato Akemi", &[Role::Clerk], Some("受付")),
        ],
    )
    .await
}

/// Registers (or updates, e.g. for new ports) `other` as a partner of `at`.
pub async fn link(at: &Services, other: &Services, id: &str, name: &str) -> Result<(), ServiceError> {
    let ident = partners::identity(other, &operator(other)).await.map_err(seeding("identity"))?;
    let code = Some(other.cfg.institution.id.clone()).filter(|c| !c.is_empty());
    let doc = json!({
        "id": id, "name": name, "institution_code": code, "as2_id": ident["as2_id"], "endpoint": ident["endpoint"],
        "relationship": "third_party",
        "contract": {"reference": "デモ地域連携契約 / demo regional care contract"},
        "demarcation": {
            "sender_side": "送信側機器の障害は送信元が対応 / the sender handles its own equipment",
            "path": "ループバック（デモ）/ loopback (demo)",
            "recipient_side": "受信側機器の障害は受信側が対応 / the recipient handles its own equipment",
            "fault_isolation": "双方の窓口が台帳の区間記録で切り分け / both contacts isolate faults with the ledger",
            "stopping": "いずれの当事者も連絡で停止できる / either party may stop on notice",
            "patient_enquiries": "各施設の患者相談窓口 / each institution's patient desk",
            "operations_contact": "demo"
        },
        "network": {"kind": "internet_tls", "secured_by": "institution"},
        "purposes": ["referral", "referral_reply", "consultation"],
        "certificates": {"signing": ident["certificates"]["signing"], "encryption": ident["certificates"]["encryption"], "tls_ca": ident["certificates"]["tls_ca"]}
    });
    let me = operator(at);
    let p = || serde_json::from_value(doc.clone()).map_err(|e| ServiceError::invalid("", e.to_string()));
    let saved = match partners::show(at, &me, id).await {
        Ok(existing)
            if existing["endpoint"] == ident["endpoint"]
                && existing["registration"]["institution_code"] == json!(code) =>
        {
            return Ok(())
        }
        Ok(_) => partners::save(at, &me, Some(id.to_owned()), p(), None).await,
        Err(_) => partners::save(at, &me, None, p(), None).await,
    };
    saved.map(|_| ()).map_err(seeding("partner"))
}

// ---- synthetic patients -----------------------------------------------------------------------

/// The id of the demo's `i`-th patient (`demo-p001`, ...).
fn pid(i: usize) -> String {
    format!("demo-p{i:03}")
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (self.next() % 10_000) as f64 / 10_000.0 * (hi - lo)
    }
}

const FAMILY: [(&str, &str, &str); 20] = [
    ("山田", "ヤマダ", "Yamada"),
    ("高橋", "タカハシ", "Takahashi"),
    ("中村", "ナカムラ", "Nakamura"),
    ("佐々木", "ササキ", "Sasaki"),
    ("松本", "マツモト", "Matsumoto"),
    ("井上", "イノウエ", "Inoue"),
    ("木村", "キムラ", "Kimura"),
    ("林", "ハヤシ", "Hayashi"),
    ("清水", "シミズ", "Shimizu"),
    ("山口", "ヤマグチ", "Yamaguchi"),
    ("森", "モリ", "Mori"),
    ("阿部", "アベ", "Abe"),
    ("池田", "イケダ", "Ikeda"),
    ("橋本", "ハシモト", "Hashimoto"),
    ("石川", "イシカワ", "Ishikawa"),
    ("前田", "マエダ", "Maeda"),
    ("藤田", "フジタ", "Fujita"),
    ("小川", "オガワ", "Ogawa"),
    ("岡田", "オカダ", "Okada"),
    ("後藤", "ゴトウ", "Goto"),
];

const MALE: [(&str, &str, &str); 10] = [
    ("大輔", "ダイスケ", "Daisuke"),
    ("健太", "ケンタ", "Kenta"),
    ("翔太", "ショウタ", "Shota"),
    ("浩", "ヒロシ", "Hiroshi"),
    ("誠", "マコト", "Makoto"),
    ("隆", "タカシ", "Takashi"),
    ("拓也", "タクヤ", "Takuya"),
    ("勇", "イサム", "Isamu"),
    ("修", "オサム", "Osamu"),
    ("和夫", "カズオ", "Kazuo"),
];

const FEMALE: [(&str, &str, &str); 10] = [
    ("陽子", "ヨウコ", "Yoko"),
    ("恵子", "ケイコ", "Keiko"),
    ("美咲", "ミサキ", "Misaki"),
    ("由美", "ユミ", "Yumi"),
    ("直美", "ナオミ", "Naomi"),
    ("幸子", "サチコ", "Sachiko"),
    ("明美", "アケミ", "Akemi"),
    ("愛", "アイ", "Ai"),
    ("真由美", "マユミ", "Mayumi"),
    ("久美子", "クミコ", "Kumiko"),
];

/// A chronic condition, its usual medicine and the lab value that follows it.
struct Problem {
    icd: &'static str,
    ja: &'static str,
    en: &'static str,
    drug: &'static str,
    lab: Option<(&'static str, &'static str, &'static str, f64, f64)>,
}

const PROBLEMS: [Problem; 8] = [
    Problem {
        icd: "E11.9",
        ja: "2型糖尿病",
        en: "Type 2 diabetes mellitus",
        drug: "メトホルミン塩酸塩錠250mg 1回2錠 1日2回 / metformin 500 mg bid",
        lab: Some(("4548-4", "HbA1c", "%", 6.6, 8.6)),
    },
    Problem {
        icd: "I10",
        ja: "本態性高血圧症",
        en: "Essential hypertension",
        drug: "アムロジピン錠5mg 1日1回 / amlodipine 5 mg daily",
        lab: None,
    },
    Problem {
        icd: "N18.3",
        ja: "慢性腎臓病 ステージ3",
        en: "Chronic kidney disease, stage 3",
        drug: "球形吸着炭カプセル / AST-120",
        lab: Some(("33914-3", "eGFR", "mL/min/1.73m2", 35.0, 55.0)),
    },
    Problem {
        icd: "J45.9",
        ja: "気管支喘息",
        en: "Asthma",
        drug: "フルチカゾン吸入 1日2回 / fluticasone inhaler bid",
        lab: None,
    },
    Problem {
        icd: "I48.9",
        ja: "心房細動",
        en: "Atrial fibrillation",
        drug: "アピキサバン錠5mg 1日2回 / apixaban 5 mg bid",
        lab: None,
    },
    Problem {
        icd: "E78.5",
        ja: "脂質異常症",
        en: "Dyslipidaemia",
        drug: "アトルバスタチン錠10mg 1日1回 / atorvastatin 10 mg daily",
        lab: Some(("2089-1", "LDLコレステロール / LDL cholesterol", "mg/dL", 110.0, 175.0)),
    },
    Problem {
        icd: "K21.9",
        ja: "胃食道逆流症",
        en: "Gastro-oesophageal reflux disease",
        drug: "ランソプラゾールOD錠15mg 1日1回 / lansoprazole 15 mg daily",
        lab: None,
    },
    Problem {
        icd: "M81.0",
        ja: "骨粗鬆症",
        en: "Osteoporosis",
        drug: "アレンドロン酸錠35mg 週1回 / alendronate 35 mg weekly",
        lab: None,
    },
];

const ALLERGIES: [(&str, &str, &str); 4] = [
    ("ペニシリン系抗菌薬", "Penicillins", "high"),
    ("ヨード造影剤", "Iodinated contrast media", "high"),
    ("卵", "Egg", "low"),
    ("スギ花粉", "Japanese cedar pollen", "low"),
];

fn test_meta() -> Value {
    json!({"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST", "display": "test health data"}]})
}

fn date(t: Timestamp) -> String {
    let (y, m, d) = t.ymd();
    format!("{y:04}-{m:02}-{d:02}")
}

fn datetime(t: Timestamp) -> String {
    t.to_rfc3339()
}

#[allow(clippy::too_many_arguments)]
fn obs(
    id: String,
    p: &str,
    loinc: &str,
    display: &str,
    unit: &str,
    value: f64,
    at: Timestamp,
    category: &str,
) -> Value {
    json!({
        "resourceType": "Observation", "id": id, "meta": test_meta(), "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc, "display": display}], "text": display},
        "subject": {"reference": format!("Patient/{p}")},
        "effectiveDateTime": datetime(at),
        "valueQuantity": {"value": (value * 10.0).round() / 10.0, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    })
}

/// About 50 patients, each with the resources of their chart.
/// Their record numbers are in the institution's JP Core patient-id
/// system (`id_system`).
pub fn patients(now: Timestamp, id_system: &str) -> Vec<Vec<Value>> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let day = 86_400_000_000i64;
    let mut out = Vec::new();
    for i in 1..=50 {
        let p = pid(i);
        let female = rng.below(2) == 0;
        let fam = FAMILY[rng.below(FAMILY.len())];
        let giv = if female { FEMALE[rng.below(FEMALE.len())] } else { MALE[rng.below(MALE.len())] };
        let age = 25 + rng.below(65) as i64;
        let birth = Timestamp(now.micros() - age * 365 * day - rng.below(365) as i64 * day);
        let ide =
            json!([{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "IDE"}]);
        let syl =
            json!([{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "SYL"}]);
        let mut res = vec![json!({
            "resourceType": "Patient", "id": p, "meta": test_meta(), "active": true,
            "identifier": [
                {"system": id_system, "value": format!("{:08}", 10_000 + i * 37)},
                // 被保険者個人識別子 (insurer:symbol:number:branch), which
                // JP-CLINS documents require.
                {"system": "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID",
                 "value": format!("06139990:デモ{}:{}:01", i % 7 + 1, 100_000 + i * 53)}
            ],
            "name": [
                {"use": "official", "extension": ide, "text": format!("{} {}", fam.0, giv.0), "family": fam.0, "given": [giv.0]},
                {"use": "official", "extension": syl, "text": format!("{} {}", fam.1, giv.1), "family": fam.1, "given": [giv.1]},
                {"use": "usual", "text": format!("{} {}", giv.2, fam.2), "family": fam.2, "given": [giv.2]}
            ],
            "gender": if female { "female" } else { "male" },
            "birthDate": date(birth),
            "telecom": [{"system": "phone", "value": format!("03-5550-{:04}", 1000 + i)}],
            "address": [{"text": format!("東京都港区デモ町{}-{}", 1 + i % 9, 1 + i % 20), "country": "JP"}]
        })];
        // Problems: one to three, older patients more.
        let n = 1 + rng.below(if age > 60 { 3 } else { 2 });
        let mut chosen: Vec<usize> = Vec::new();
        while chosen.len() < n {
            let k = rng.below(PROBLEMS.len());
            if !chosen.contains(&k) {
                chosen.push(k);
            }
        }
        let visits: Vec<Timestamp> =
            [150, 120, 90, 60, 30, 3].iter().map(|d| Timestamp(now.micros() - d * day + 10 * 3_600_000_000)).collect();
        for (j, k) in chosen.iter().enumerate() {
            let pr = &PROBLEMS[*k];
            let onset = Timestamp(now.micros() - (1 + rng.below(10) as i64) * 365 * day);
            res.push(json!({
                "resourceType": "Condition", "id": format!("{p}-c{j}"), "meta": test_meta(),
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": pr.icd, "display": pr.en}], "text": format!("{} / {}", pr.ja, pr.en)},
                "subject": {"reference": format!("Patient/{p}")},
                "onsetDateTime": date(onset)
            }));
            res.push(json!({
                "resourceType": "MedicationRequest", "id": format!("{p}-m{j}"), "meta": test_meta(),
                "status": "active", "intent": "order",
                "medicationCodeableConcept": {"text": pr.drug},
                "subject": {"reference": format!("Patient/{p}")},
                "authoredOn": datetime(visits[4]),
                "requester": {"display": "佐藤 健一 / Sato Kenichi"}
            }));
            if let Some((loinc, name, unit, lo, hi)) = pr.lab {
                for (v, t) in visits.iter().enumerate() {
                    let value = rng.range(lo, hi);
                    res.push(obs(format!("{p}-l{j}-{v}"), &p, loinc, name, unit, value, *t, "laboratory"));
                }
            }
        }
        // Vital signs at each visit; hypertensive patients run higher.
        let hypertensive = chosen.contains(&1);
        let af = chosen.contains(&4);
        for (v, t) in visits.iter().enumerate() {
            let sys = if hypertensive { rng.range(138.0, 165.0) } else { rng.range(108.0, 134.0) };
            let hr = if af { rng.range(82.0, 112.0) } else { rng.range(60.0, 84.0) };
            res.push(obs(
                format!("{p}-bp-{v}"),
                &p,
                "8480-6",
                "収縮期血圧 / Systolic blood pressure",
                "mm[Hg]",
                sys,
                *t,
                "vital-signs",
            ));
            res.push(obs(format!("{p}-hr-{v}"), &p, "8867-4", "脈拍 / Heart rate", "/min", hr, *t, "vital-signs"));
            res.push(obs(
                format!("{p}-bt-{v}"),
                &p,
                "8310-5",
                "体温 / Body temperature",
                "Cel",
                rng.range(36.0, 37.2),
                *t,
                "vital-signs",
            ));
        }
        if rng.below(3) == 0 {
            let a = ALLERGIES[rng.below(ALLERGIES.len())];
            res.push(json!({
                "resourceType": "AllergyIntolerance", "id": format!("{p}-a0"), "meta": test_meta(),
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
                "criticality": a.2,
                "code": {"text": format!("{} / {}", a.0, a.1)},
                "patient": {"reference": format!("Patient/{p}")}
            }));
        }
        for (v, t) in visits.iter().enumerate().skip(3) {
            res.push(json!({
                "resourceType": "Encounter", "id": format!("{p}-e{v}"), "meta": test_meta(), "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"},
                "subject": {"reference": format!("Patient/{p}")},
                "period": {"start": datetime(*t), "end": datetime(Timestamp(t.micros() + 1_800_000_000))}
            }));
        }
        let summary = format!(
            "外来経過記録（デモ）: {} の経過は安定。内服継続。/ Outpatient note (demo): {} stable; continue medication.",
            chosen.iter().map(|k| PROBLEMS[*k].ja).collect::<Vec<_>>().join("、"),
            chosen.iter().map(|k| PROBLEMS[*k].en).collect::<Vec<_>>().join(", ")
        );
        res.push(json!({
            "resourceType": "DocumentReference", "id": format!("{p}-d0"), "meta": test_meta(), "status": "current",
            "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}], "text": "外来経過記録 / Progress note"},
            "subject": {"reference": format!("Patient/{p}")},
            "date": datetime(visits[5]),
            "description": "外来経過記録 / Outpatient progress note",
            "content": [{"attachment": {"contentType": "text/plain; charset=utf-8", "title": "progress-note.txt",
                "data": crate::continuity::container::b64(summary.as_bytes())}}]
        }));
        out.push(res);
    }
    out
}
