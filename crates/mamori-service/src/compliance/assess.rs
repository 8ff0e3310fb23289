//! The judgement: each requirement's status from the measured facts and
//! the hospital's thresholds (`[compliance]`). Pure: no IO.

use std::collections::BTreeMap;

use mamori_core::bcp::{AccountState, DeclState, Text};
use mamori_core::mode::Phase;
use mamori_core::time::Timestamp;
use mamori_exchange::partner::Status as PartnerStatus;
use serde::{Deserialize, Serialize};

use super::facts::Facts;
use crate::config::Config;

/// A requirement's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Met, with the evidence shown.
    Met,
    /// Met in principle, but something needs someone's attention.
    Attention,
    /// Not met.
    NotMet,
}

impl Status {
    /// Japanese, English.
    pub fn label(self) -> (&'static str, &'static str) {
        match self {
            Status::Met => ("適合", "met"),
            Status::Attention => ("要確認", "attention"),
            Status::NotMet => ("不適合", "not met"),
        }
    }
}

fn t(ja: impl Into<String>, en: impl Into<String>) -> Text {
    Text { ja: ja.into(), en: en.into() }
}

/// One measured fact shown as evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// What it is.
    pub label: Text,
    /// Its value as measured (numbers, names, local times).
    pub value: Text,
}

/// A requirement as measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The catalog ID (EM-C1, ...).
    pub id: String,
    /// Met, attention or not met.
    pub status: Status,
    /// Why, when it is not plainly met (each a reason).
    pub findings: Vec<Text>,
    /// What was measured.
    pub evidence: Vec<Evidence>,
}

struct B {
    id: &'static str,
    status: Status,
    findings: Vec<Text>,
    evidence: Vec<Evidence>,
}

impl B {
    fn new(id: &'static str) -> B {
        B { id, status: Status::Met, findings: Vec::new(), evidence: Vec::new() }
    }
    fn ev(mut self, ja: &str, en: &str, value: impl ToString) -> B {
        let v = value.to_string();
        self.evidence.push(Evidence { label: t(ja, en), value: t(v.clone(), v) });
        self
    }
    /// Evidence whose value is a phrase (given in both languages).
    fn ev2(mut self, ja: &str, en: &str, value_ja: impl Into<String>, value_en: impl Into<String>) -> B {
        self.evidence.push(Evidence { label: t(ja, en), value: t(value_ja, value_en) });
        self
    }
    fn flag(&mut self, s: Status, ja: impl Into<String>, en: impl Into<String>) {
        self.status = self.status.max(s);
        self.findings.push(t(ja, en));
    }
    fn done(self) -> Item {
        Item { id: self.id.to_owned(), status: self.status, findings: self.findings, evidence: self.evidence }
    }
}

fn yes_no(b: bool) -> (&'static str, &'static str) {
    if b {
        ("はい", "yes")
    } else {
        ("いいえ", "no")
    }
}

fn phase_ja(p: &str) -> &str {
    match p {
        "activation" => "初動",
        "resumption" => "業務再開",
        "recovery" => "業務回復",
        "full_recovery" => "全面復旧",
        other => other,
    }
}

/// Japanese for the codes of the partner registry and the ledger.
fn code_ja(c: &str) -> &str {
    match c {
        "delegation" => "委託",
        "third_party" => "第三者提供",
        "explicit_consent" => "明示の同意",
        "implied_consent" => "黙示の同意",
        "protection_of_life" => "生命等の保護",
        "none" => "なし",
        "closed_network" => "閉域網",
        "ip_vpn" => "IP-VPN",
        "internet_tls" => "インターネット（TLS）",
        "carrier" => "通信事業者",
        "institution" => "医療機関",
        "both" => "双方",
        "signing" => "署名用",
        "encryption" => "暗号化用",
        "tls_ca" => "TLS 認証局",
        other => other,
    }
}

fn days(micros: i64) -> i64 {
    micros / 86_400_000_000
}

fn in_period(f: &Facts, ts: Timestamp) -> bool {
    ts >= f.from && ts < f.to
}

/// Assesses every requirement of the catalog, in catalog order.
pub(crate) fn assess(f: &Facts, cfg: &Config, audit: &AuditFacts) -> Vec<Item> {
    // A time as people read it: local date and time with the offset.
    let when = |ts: Timestamp| super::local(&ts.to_rfc3339(), cfg.institution.utc_offset_minutes);
    let c = &cfg.compliance;
    let plan = &f.plan;
    let builtin = f.plan_version == 0;
    let mut out = Vec::new();

    // ---- EM-C1: the plan in force
    let roles = plan.deciders.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ");
    let mut b = B::new("EM-C1")
        .ev2(
            "計画の版",
            "plan version",
            if builtin { "0（組み込みの例）".to_owned() } else { f.plan_version.to_string() },
            if builtin { "0 (built-in example)".to_owned() } else { f.plan_version.to_string() },
        )
        .ev(
            "非常時の判断基準",
            "criteria of an emergency",
            plan.criteria.iter().map(|x| x.id.as_str()).collect::<Vec<_>>().join(", "),
        )
        .ev2(
            "宣言できる者",
            "who may declare",
            format!("利用者: {}／役割: {}", or_dash(&plan.deciders.users.join(", ")), or_dash(&roles)),
            format!("users: {}; roles: {}", or_dash(&plan.deciders.users.join(", ")), or_dash(&roles)),
        )
        .ev2("二人承認", "two-person rule", yes_no(plan.deciders.two_person).0, yes_no(plan.deciders.two_person).1);
    if let Some((by, at)) = &f.plan_imported {
        b = b.ev2("最終変更", "last change", format!("{}（{by}）", when(*at)), format!("{} by {by}", when(*at)));
    }
    if builtin {
        b.flag(
            Status::NotMet,
            "病院の BCP 計画が取り込まれていません（組み込みの例のまま）",
            "no hospital BCP plan imported (the built-in example is in force)",
        );
    }
    if plan.criteria.is_empty() {
        b.flag(Status::NotMet, "非常時の判断基準がありません", "the plan names no criteria");
    }
    if plan.deciders.users.is_empty() && plan.deciders.roles.is_empty() {
        b.flag(Status::NotMet, "宣言できる者が定められていません", "the plan names no deciders");
    }
    out.push(b.done());

    // ---- EM-C2: reconciliation
    let mut b = B::new("EM-C2")
        .ev("未解決の突合タスク", "open reconciliation tasks", f.open_reconcile_tasks)
        .ev(
            "期間内の取り込み（スタンドアロン端末）",
            "imports from standalone nodes in the period",
            f.counts.reconcile_imports,
        )
        .ev("期間内の紙記録の転記", "paper records transcribed in the period", f.counts.transcriptions);
    if f.open_reconcile_tasks > 0 {
        b.flag(
            Status::Attention,
            format!("未解決の突合タスクが {} 件あります", f.open_reconcile_tasks),
            format!("{} reconciliation tasks are open", f.open_reconcile_tasks),
        );
    }
    out.push(b.done());

    // ---- EM-C3a: emergency accounts
    let real: Vec<_> = f.accounts.iter().filter(|a| !a.drill).collect();
    let by_state = |s: AccountState| real.iter().filter(|a| a.state == s).count();
    let mut b = B::new("EM-C3a")
        .ev("封印済み", "sealed", by_state(AccountState::Sealed))
        .ev("封筒未印刷", "envelope not yet printed", by_state(AccountState::AwaitingEnvelope))
        .ev("使用中", "in use", by_state(AccountState::InUse))
        .ev("廃止済み", "retired", by_state(AccountState::Retired));
    if by_state(AccountState::Sealed) == 0 {
        b.flag(Status::NotMet, "封印された非常時用アカウントがありません", "no sealed emergency account exists");
    }
    if by_state(AccountState::AwaitingEnvelope) > 0 {
        b.flag(
            Status::Attention,
            format!("封筒が未印刷のアカウントが {} 件あります", by_state(AccountState::AwaitingEnvelope)),
            format!("{} accounts await their envelope", by_state(AccountState::AwaitingEnvelope)),
        );
    }
    out.push(b.done());

    // ---- EM-C3b: not misusable, announced, audited
    let misuse: Vec<_> = f.open_alerts.iter().filter(|a| a.kind == "emergency-account-misuse").collect();
    let mut b = B::new("EM-C3b")
        .ev("期間内の非常時ログイン", "emergency logins in the period", f.counts.emergency_logins)
        .ev(
            "期間内に拒否された非常時ログイン",
            "emergency logins refused in the period",
            f.counts.emergency_logins_refused,
        )
        .ev("期間内の周知（アナウンス）", "announcements in the period", f.counts.announcements)
        .ev("未確認の不正使用アラート", "unacknowledged misuse alerts", misuse.len());
    if !misuse.is_empty() {
        b.flag(
            Status::Attention,
            format!("非常時用アカウントの不正使用アラートが {} 件未確認です", misuse.len()),
            format!("{} emergency-account misuse alerts are not acknowledged", misuse.len()),
        );
    }
    if f.counts.emergency_logins > 0 && f.counts.announcements == 0 {
        b.flag(Status::NotMet, "非常時ログインが周知されていません", "emergency logins were not announced");
    }
    out.push(b.done());

    // ---- EM-C3c: used accounts replaced
    let normal = f.declarations.iter().all(|d| matches!(d.decl.state, DeclState::Closed | DeclState::StoodDown));
    let in_use: Vec<_> = real.iter().filter(|a| a.state == AccountState::InUse).collect();
    let unreplaced: Vec<_> = real
        .iter()
        .filter(|a| a.state == AccountState::Retired && a.replaced_by.is_none() && a.unsealed_at.is_some())
        .collect();
    let mut b = B::new("EM-C3c")
        .ev("使用中（平常時）", "in use while normal", if normal { in_use.len() } else { 0 })
        .ev("使用後に廃止され後継なし", "used, retired, not replaced", unreplaced.len());
    if normal && !in_use.is_empty() {
        b.flag(
            Status::NotMet,
            format!(
                "平常時に使用中のままの非常時用アカウント: {}",
                in_use.iter().map(|a| a.user.as_str()).collect::<Vec<_>>().join(", ")
            ),
            format!(
                "emergency accounts still in use while normal: {}",
                in_use.iter().map(|a| a.user.as_str()).collect::<Vec<_>>().join(", ")
            ),
        );
    }
    if !unreplaced.is_empty() {
        b.flag(
            Status::Attention,
            format!(
                "後継のない廃止アカウント: {}",
                unreplaced.iter().map(|a| a.user.as_str()).collect::<Vec<_>>().join(", ")
            ),
            format!(
                "retired accounts without a replacement: {}",
                unreplaced.iter().map(|a| a.user.as_str()).collect::<Vec<_>>().join(", ")
            ),
        );
    }
    out.push(b.done());

    // ---- EM-C4: cyber attacks reported
    let cyber: Vec<_> = f
        .declarations
        .iter()
        .filter(|d| {
            !d.decl.drill && d.decl.cause == mamori_core::bcp::Cause::CyberAttack && in_period(f, d.decl.declared_at)
        })
        .collect();
    let mut b =
        B::new("EM-C4").ev("期間内のサイバー攻撃の宣言", "cyber-attack declarations in the period", cyber.len());
    for d in &cyber {
        b = b.ev("報告先", "reported to", format!("#{}: [{}]", d.decl.id, d.reported.join(", ")));
        for who in ["mhlw", "police"] {
            if !d.reported.iter().any(|r| r == who) {
                let (ja, en) = if who == "mhlw" { ("厚生労働省", "MHLW") } else { ("警察", "the police") };
                b.flag(
                    Status::NotMet,
                    format!("宣言 #{} の{ja}への報告が記録されていません", d.decl.id),
                    format!("declaration #{}: no report to {en} recorded", d.decl.id),
                );
            }
        }
    }
    out.push(b.done());

    // ---- EM-B1: known in advance
    let mut b = B::new("EM-B1")
        .ev("検知手段", "detection sources", plan.detection.sources.len())
        .ev("非常時対応チームの連絡先", "team contacts", plan.team.len())
        .ev("委託事業者", "contractors", plan.contractors.len())
        .ev("公開する文書", "documents to publish", plan.documents.len());
    if plan.team.is_empty() {
        b.flag(Status::NotMet, "連絡体制（チームの連絡先）がありません", "the plan has no team contact list");
    }
    if plan.detection.sources.is_empty() {
        b.flag(Status::Attention, "検知手段が定められていません", "the plan names no detection sources");
    }
    if builtin {
        b.flag(Status::NotMet, "組み込みの例の連絡先のままです", "the contacts are the built-in example's");
    }
    out.push(b.done());

    // ---- EM-B2..B5: phases
    for (id, phase) in [
        ("EM-B2", Phase::Activation),
        ("EM-B3", Phase::Resumption),
        ("EM-B4", Phase::Recovery),
        ("EM-B5", Phase::FullRecovery),
    ] {
        let items = plan.checklists.get(&phase).map(Vec::len).unwrap_or(0);
        let required = plan.required_items(phase).len();
        let target = plan.rules(phase).target_minutes;
        let last = last_phase_minutes(f, phase);
        let mut b = B::new(id)
            .ev2(
                "チェックリスト項目",
                "checklist items",
                format!("{items}（必須 {required}）"),
                format!("{items} ({required} required)"),
            )
            .ev("目標時間（分）", "target minutes", target.map(|m| m.to_string()).unwrap_or_else(|| "—".into()));
        if let Some((decl, minutes, within)) = last {
            b = b.ev2(
                "直近の実績（分）",
                "latest actual minutes",
                format!("#{decl}: {minutes}{}", if within == Some(false) { "（目標超過）" } else { "" }),
                format!("#{decl}: {minutes}{}", if within == Some(false) { " (over target)" } else { "" }),
            );
            if within == Some(false) {
                b.flag(
                    Status::Attention,
                    format!("宣言 #{decl} でこのフェーズが目標時間を超えました"),
                    format!("declaration #{decl}: this phase took longer than its target"),
                );
            }
        }
        if items == 0 {
            b.flag(
                Status::NotMet,
                "このフェーズのチェックリストがありません",
                "the plan has no checklist for this phase",
            );
        }
        out.push(b.done());
    }

    // ---- EM-B6: review after return
    let closed: Vec<_> = f
        .declarations
        .iter()
        .filter(|d| matches!(d.decl.state, DeclState::Closed) && d.decl.closed_at.is_some_and(|t| in_period(f, t)))
        .collect();
    let without_lessons: Vec<_> = closed
        .iter()
        .filter(|d| d.review.as_ref().and_then(|r| r.1.as_ref()).is_none_or(|l| l.trim().is_empty()))
        .collect();
    let mut b = B::new("EM-B6")
        .ev("期間内に平常復帰した宣言", "declarations returned to normal in the period", closed.len())
        .ev("教訓が未記入", "without lessons learned", without_lessons.len());
    if !without_lessons.is_empty() {
        b.flag(
            Status::Attention,
            format!(
                "事後レビューの教訓が未記入: {}",
                without_lessons.iter().map(|d| format!("#{}", d.decl.id)).collect::<Vec<_>>().join(", ")
            ),
            format!(
                "after-action reviews without lessons learned: {}",
                without_lessons.iter().map(|d| format!("#{}", d.decl.id)).collect::<Vec<_>>().join(", ")
            ),
        );
    }
    out.push(b.done());

    // ---- EM-B7: drills
    let last_drill = f.declarations.iter().find(|d| d.decl.drill);
    let mut b =
        B::new("EM-B7").ev("訓練の間隔（日、規定）", "drill interval (days, configured)", c.drill_interval_days);
    match last_drill {
        Some(d) => {
            let age = days(f.now.micros() - d.decl.declared_at.micros());
            b = b.ev2(
                "直近の訓練",
                "latest drill",
                format!("#{} {}（{age} 日前）", d.decl.id, when(d.decl.declared_at)),
                format!("#{} {} ({age} days ago)", d.decl.id, when(d.decl.declared_at)),
            );
            if let Some((report, _)) = &d.review {
                let would = report
                    .get("drill_accesses_denied_but_permitted_in_emergency")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0);
                b = b.ev("非常時なら許可されたアクセス", "accesses an emergency would have permitted", would);
                if let Some(phases) = report.get("phases").and_then(|p| p.as_array()) {
                    let fmt = |ja: bool| -> String {
                        phases
                            .iter()
                            .map(|p| {
                                let name = p.get("phase").and_then(|v| v.as_str()).unwrap_or("?");
                                format!(
                                    "{} {}/{} {}",
                                    if ja { phase_ja(name) } else { name },
                                    p.get("minutes").map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
                                    p.get("target_minutes")
                                        .filter(|v| !v.is_null())
                                        .map(|v| v.to_string())
                                        .unwrap_or_else(|| "—".into()),
                                    if ja { "分" } else { "min" }
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("; ")
                    };
                    b = b.ev2("フェーズ時間（実績/目標）", "phase times (actual/target)", fmt(true), fmt(false));
                }
            } else {
                b.flag(
                    Status::Attention,
                    "直近の訓練は終了していません（事後レビューなし）",
                    "the latest drill has not ended (no review yet)",
                );
            }
            if age > c.drill_interval_days {
                b.flag(
                    Status::Attention,
                    format!("直近の訓練は {age} 日前で、規定の {} 日を超えています", c.drill_interval_days),
                    format!(
                        "the latest drill was {age} days ago, beyond the {} days configured",
                        c.drill_interval_days
                    ),
                );
            }
        }
        None => b.flag(Status::NotMet, "訓練の記録がありません", "no drill has been run"),
    }
    out.push(b.done());

    // ---- EM-B8: break-glass and its review
    let in_p: Vec<_> = f.grants.iter().filter(|g| in_period(f, g.started)).collect();
    let pending: Vec<_> = f.grants.iter().filter(|g| g.review == "pending").collect();
    let due = c.break_glass_review_days * 86_400_000_000;
    let overdue: Vec<_> = pending.iter().filter(|g| f.now.micros() - g.expires.micros() > due).collect();
    let mut b = B::new("EM-B8")
        .ev("期間内のブレイクグラス", "break-glass uses in the period", in_p.len())
        .ev("レビュー待ち", "reviews pending", pending.len())
        .ev("レビュー期限切れ", "reviews overdue", overdue.len())
        .ev("レビュー期限（日）", "review due within (days)", c.break_glass_review_days);
    if !overdue.is_empty() {
        b.flag(
            Status::Attention,
            format!(
                "{} 件のブレイクグラスのレビューが {} 日を超えて未実施です",
                overdue.len(),
                c.break_glass_review_days
            ),
            format!("{} break-glass uses not reviewed within {} days", overdue.len(), c.break_glass_review_days),
        );
    }
    out.push(b.done());

    // ---- EM-B9: registration without reception
    let phases_allowing: Vec<_> =
        Phase::ALL.iter().filter(|p| plan.rules(**p).registration_without_reception).map(|p| p.as_str()).collect();
    let mut b = B::new("EM-B9")
        .ev2(
            "受付なし登録を許可するフェーズ",
            "phases allowing registration without reception",
            or_dash(&phases_allowing.iter().map(|p| phase_ja(p)).collect::<Vec<_>>().join(", ")),
            or_dash(&phases_allowing.join(", ")),
        )
        .ev("常時許可の部署", "departments always allowed", or_dash(&plan.registration.always_departments.join(", ")))
        .ev("期間内の仮登録", "provisional registrations in the period", f.counts.provisional_registrations)
        .ev("未統合の仮登録患者", "provisional patients not yet identified", f.open_provisional_patients);
    if phases_allowing.is_empty() && plan.registration.always_departments.is_empty() {
        b.flag(
            Status::NotMet,
            "受付を経ない登録がどのフェーズでも許可されていません",
            "no phase allows registration without reception",
        );
    }
    if normal && f.open_provisional_patients > 0 {
        b.flag(
            Status::Attention,
            format!("平常時に未統合の仮登録患者が {} 名います", f.open_provisional_patients),
            format!("{} provisional patients are not yet identified", f.open_provisional_patients),
        );
    }
    out.push(b.done());

    // ---- EM-B10: emergency functions bounded
    let live: Vec<_> = f.grants.iter().filter(|g| g.live(f.now)).collect();
    let open_phases: Vec<_> = Phase::ALL.iter().filter(|p| plan.rules(**p).open_access).map(|p| p.as_str()).collect();
    let mut b = B::new("EM-B10")
        .ev("ブレイクグラスの上限（分）", "break-glass limit (minutes)", plan.break_glass.max_minutes)
        .ev2(
            "閲覧を開放するフェーズ",
            "phases opening access",
            or_dash(&open_phases.iter().map(|p| phase_ja(p)).collect::<Vec<_>>().join(", ")),
            or_dash(&open_phases.join(", ")),
        )
        .ev("現在有効なブレイクグラス", "break-glass grants live now", live.len());
    if normal && !live.is_empty() {
        b.flag(
            Status::Attention,
            format!("平常時に有効なブレイクグラスが {} 件あります", live.len()),
            format!("{} break-glass grants are live while normal", live.len()),
        );
    }
    out.push(b.done());

    // ---- EX-B1a..e
    let partners: Vec<_> = f.partners.iter().filter_map(|p| p.as_ref().ok()).collect();
    let broken: Vec<_> = f.partners.iter().filter_map(|p| p.as_ref().err()).collect();
    let active: Vec<_> = partners.iter().filter(|p| p.status == PartnerStatus::Active).collect();
    let out_msgs: Vec<_> = f.messages.iter().filter(|m| m.direction == "out" && m.kind == "message").collect();
    let in_msgs: Vec<_> = f.messages.iter().filter(|m| m.direction == "in" && m.kind == "message").collect();

    let mut b = B::new("EX-B1a").ev("有効な連携先", "active partners", active.len());
    let today = f.now.to_rfc3339();
    for p in &active {
        let missing = p.demarcation.missing_terms();
        let until = p.contract.valid_until.clone().unwrap_or_else(|| "—".into());
        b = b.ev2(
            "契約・責任分界",
            "contract and demarcation",
            format!("{}: {}（有効期限 {until}）", p.id, p.contract.reference),
            format!("{}: {} (until {until})", p.id, p.contract.reference),
        );
        if !missing.is_empty() {
            b.flag(
                Status::Attention,
                format!("{}: 責任分界の記載がありません: {}", p.id, missing.join(", ")),
                format!("{}: demarcation terms missing: {}", p.id, missing.join(", ")),
            );
        }
        if let Some(until) = &p.contract.valid_until {
            if until.as_str() < &today[..until.len().min(today.len())] {
                b.flag(
                    Status::NotMet,
                    format!("{}: 契約の有効期限 {until} を過ぎています", p.id),
                    format!("{}: the contract expired on {until}", p.id),
                );
            }
        }
    }
    for e in &broken {
        b.flag(
            Status::Attention,
            format!("読めない連携先登録: {e}"),
            format!("a partner registration cannot be read: {e}"),
        );
    }
    out.push(b.done());

    let mut per_purpose: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for m in &out_msgs {
        let kind = m.basis.as_ref().and_then(|b| b.get("kind")).and_then(|k| k.as_str()).unwrap_or("none").to_owned();
        *per_purpose.entry(m.purpose.clone().unwrap_or_else(|| "—".into())).or_default().entry(kind).or_default() += 1;
    }
    let per = |ja: bool| -> String {
        if per_purpose.is_empty() {
            return "0".into();
        }
        per_purpose
            .iter()
            .map(|(p, k)| {
                let kinds =
                    k.iter().map(|(k, n)| format!("{} {n}", if ja { code_ja(k) } else { k })).collect::<Vec<_>>();
                format!("{p}: {}", kinds.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut b = B::new("EX-B1b")
        .ev2(
            "連携先の関係（委託／第三者提供）",
            "partner relationships (delegation / third party)",
            or_dash(
                &partners
                    .iter()
                    .map(|p| format!("{}: {}", p.id, code_ja(&json_str(&p.relationship))))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            or_dash(
                &partners
                    .iter()
                    .map(|p| format!("{}: {}", p.id, json_str(&p.relationship)))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        )
        .ev2("期間内の送信（目的別の根拠）", "sends in the period (basis per purpose)", per(true), per(false))
        .ev("期間内に拒否された送信", "sends refused in the period", f.counts.sends_refused)
        .ev(
            "うち同意・法的根拠がないため",
            "of which for lack of consent or legal basis",
            f.counts.sends_refused_no_basis,
        );
    let without: usize = out_msgs.iter().filter(|m| m.basis.is_none()).count();
    if without > 0 {
        b.flag(
            Status::NotMet,
            format!("同意・法的根拠の記録がない送信が {without} 件あります"),
            format!("{without} sends have no recorded consent or legal basis"),
        );
    }
    out.push(b.done());

    let mut b = B::new("EX-B1c")
        .ev("期間内の送信（暗号化・署名済み）", "messages sent in the period (encrypted and signed)", out_msgs.len())
        .ev2(
            "連携先のネットワーク",
            "partner networks",
            or_dash(
                &partners
                    .iter()
                    .map(|p| format!("{}: {}", p.id, code_ja(&json_str(&p.network.kind))))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            or_dash(
                &partners
                    .iter()
                    .map(|p| format!("{}: {}", p.id, json_str(&p.network.kind)))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        );
    let plain: Vec<_> = out_msgs.iter().filter(|m| m.algorithms.is_none() && m.state != "failed").collect();
    flag_unrecorded(&mut b, plain.len());
    out.push(b.done());

    let warn = cfg.exchange.cert_expiry_warn_days;
    let mut b = B::new("EX-B1d").ev("登録済みの連携先", "registered partners", partners.len()).ev(
        "停止中",
        "suspended",
        partners.iter().filter(|p| p.status != PartnerStatus::Active).count(),
    );
    for p in &active {
        for ci in p.expiring(f.now, warn) {
            let expired = ci.not_after_unix <= f.now.secs();
            b = b.ev2(
                "証明書の有効期限",
                "certificate expiry",
                format!("{} {}: {}", p.id, code_ja(ci.role), ci.not_after),
                format!("{} {}: {}", p.id, ci.role, ci.not_after),
            );
            if expired {
                b.flag(
                    Status::Attention,
                    format!(
                        "{}: {}証明書の有効期限が切れています（{}）。送信はできません",
                        p.id,
                        code_ja(ci.role),
                        ci.not_after
                    ),
                    format!("{}: the {} certificate expired ({}); nothing can be sent", p.id, ci.role, ci.not_after),
                );
            } else {
                b.flag(
                    Status::Attention,
                    format!(
                        "{}: {}証明書が {warn} 日以内に期限切れになります（{}）",
                        p.id,
                        code_ja(ci.role),
                        ci.not_after
                    ),
                    format!("{}: the {} certificate expires within {warn} days ({})", p.id, ci.role, ci.not_after),
                );
            }
        }
    }
    out.push(b.done());

    let unused_for = c.maintenance_unused_days * 86_400_000_000;
    let windows: Vec<_> = f.requests.iter().filter(|r| in_period(f, r.requested_at)).collect();
    let rev_pending: Vec<_> = f.requests.iter().filter(|r| r.review.as_deref() == Some("pending")).collect();
    let rev_overdue: Vec<_> = rev_pending.iter().filter(|r| r.review_due.is_some_and(|d| d <= f.now)).collect();
    let stale: Vec<_> = f
        .people
        .iter()
        .filter(|p| p.state == "active" && f.now.micros() - p.last_used.unwrap_or(p.created).micros() > unused_for)
        .collect();
    let mut b = B::new("EX-B1e")
        .ev2(
            "リモート保守の受付",
            "remote maintenance listener",
            if cfg.maintenance.listen.is_empty() {
                "なし（無効）".to_owned()
            } else {
                cfg.maintenance.listen.clone()
            },
            if cfg.maintenance.listen.is_empty() { "off".to_owned() } else { cfg.maintenance.listen.clone() },
        )
        .ev("必要な承認数", "approvals required", cfg.maintenance.approvals)
        .ev("期間内の保守枠の申請", "windows requested in the period", windows.len())
        .ev(
            "承認された枠",
            "of which approved",
            windows.iter().filter(|r| r.state == "approved" || r.state == "closed").count(),
        )
        .ev("期間内の保守ログイン", "maintenance logins in the period", f.counts.maintenance_logins)
        .ev("レビュー待ち", "reviews pending", rev_pending.len())
        .ev("レビュー期限切れ", "reviews overdue", rev_overdue.len())
        .ev("長期間未使用の保守要員", "maintenance people unused for long", stale.len());
    if !rev_overdue.is_empty() {
        b.flag(
            Status::Attention,
            format!("保守枠のレビューが {} 件期限切れです", rev_overdue.len()),
            format!("{} maintenance window reviews are overdue", rev_overdue.len()),
        );
    }
    if !stale.is_empty() {
        b.flag(
            Status::Attention,
            format!(
                "{} 日以上使われていない保守要員: {}",
                c.maintenance_unused_days,
                stale.iter().map(|p| p.id.as_str()).collect::<Vec<_>>().join(", ")
            ),
            format!(
                "maintenance people unused for over {} days: {}",
                c.maintenance_unused_days,
                stale.iter().map(|p| p.id.as_str()).collect::<Vec<_>>().join(", ")
            ),
        );
    }
    out.push(b.done());

    // ---- EX-B2a..c
    let mut b = B::new("EX-B2a")
        .ev("期間内の送信（S/MIME で暗号化）", "messages sent in the period (S/MIME enveloped)", out_msgs.len())
        .ev(
            "暗号方式（送信）",
            "algorithms (sent)",
            distinct(out_msgs.iter().filter_map(|m| m.algorithms.as_ref().map(|a| a.to_string()))),
        );
    flag_unrecorded(&mut b, plain.len());
    out.push(b.done());
    let failed_in: Vec<_> = in_msgs.iter().filter(|m| m.state == "refused" || m.state == "quarantined").collect();
    out.push(
        B::new("EX-B2b")
            .ev(
                "期間内の受信（署名検証済み）",
                "messages received in the period (signature verified)",
                in_msgs.len() - failed_in.len(),
            )
            .ev("署名・形式の不備で拒否・隔離", "refused or quarantined", failed_in.len())
            .ev("署名付き受領通知（MDN）", "signed receipts (MDN)", out_msgs.iter().filter(|m| m.mdn.is_some()).count())
            .done(),
    );
    let our = &audit.our_certificate;
    let mut b = B::new("EX-B2c")
        .ev2(
            "AS2 受付の相互認証",
            "AS2 listener mutual TLS",
            "クライアント証明書が必須（登録済み連携先の認証局）",
            "client certificate required (registered partners' CAs)",
        )
        .ev2(
            "当院の証明書",
            "our certificate",
            format!("{our}（有効期限 {}）", audit.our_certificate_until),
            format!("{our} (until {})", audit.our_certificate_until),
        );
    if !audit.our_certificate_valid {
        b.flag(Status::NotMet, "当院の証明書の有効期限が切れています", "our institution certificate has expired");
    }
    out.push(b.done());

    // ---- EX-B3a..c: networks
    for id in ["EX-B3a", "EX-B3b", "EX-B3c"] {
        let nets = |ja: bool| -> String {
            let tr = |c: String| if ja { code_ja(&c).to_owned() } else { c };
            or_dash(
                &partners
                    .iter()
                    .map(|p| {
                        format!("{}: {} / {}", p.id, tr(json_str(&p.network.kind)), tr(json_str(&p.network.secured_by)))
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        };
        let mut b = B::new(id).ev2(
            "連携先のネットワークと保護の主体",
            "partner networks and who secures them",
            nets(true),
            nets(false),
        );
        if id == "EX-B3c" {
            b = b.ev2(
                "情報自体の暗号化",
                "information itself encrypted",
                "常に（S/MIME）、ネットワークを問わず",
                "always (S/MIME), whatever the network",
            );
        }
        out.push(b.done());
    }

    // ---- GL-*
    let suites = &audit.tls_suites;
    let mut b = B::new("GL-TLS")
        .ev("最小 TLS バージョン", "minimum TLS version", &cfg.tls.min_version)
        .ev("暗号スイート", "cipher suites", suites.join(", "))
        .ev("鍵交換", "key exchange groups", audit.tls_groups.join(", "));
    if !matches!(cfg.tls.min_version.as_str(), "1.2" | "1.3") {
        b.flag(Status::NotMet, "TLS 1.2 未満が許可されています", "TLS below 1.2 is allowed");
    }
    out.push(b.done());

    let mut b = B::new("GL-AUDIT")
        .ev("監査ログのイベント数", "audit events", f.audit_size)
        .ev("期間内のイベント", "events in the period", f.counts.events)
        .ev("期間内の拒否", "refusals in the period", f.counts.denied)
        .ev2(
            "検証",
            "verification",
            format!(
                "{}（イベント {}、チェックポイント {}{}{}）",
                if audit.findings.is_empty() { "成功" } else { "失敗" },
                audit.events,
                audit.checkpoints,
                if audit.deep { "、詳細検証" } else { "" },
                audit.records.map(|r| format!("、記録の版 {r}")).unwrap_or_default()
            ),
            format!(
                "{} ({} events, {} checkpoints{}{})",
                if audit.findings.is_empty() { "OK" } else { "FAILED" },
                audit.events,
                audit.checkpoints,
                if audit.deep { ", deep" } else { "" },
                audit.records.map(|r| format!(", {r} record versions")).unwrap_or_default()
            ),
        );
    if let Some((size, at, cosigs)) = f.checkpoint {
        b = b.ev2(
            "最新チェックポイント",
            "latest checkpoint",
            format!("サイズ {size}、{}、証人の副署 {cosigs}", when(at)),
            format!("size {size} at {}; {cosigs} witness cosignatures", when(at)),
        );
    }
    b = b.ev("設定された証人（ウィットネス）", "witnesses configured", cfg.audit.witnesses.len());
    let lag =
        f.syslog_cursor.map(|c| f.audit_size.saturating_sub(u64::try_from(c + 1).unwrap_or(0))).unwrap_or(f.audit_size);
    b = b.ev2(
        "syslog 転送",
        "syslog forwarding",
        if cfg.syslog.collector.is_empty() {
            "なし（無効）".to_owned()
        } else {
            format!("{}、未転送 {lag} 件", cfg.syslog.collector)
        },
        if cfg.syslog.collector.is_empty() {
            "off".to_owned()
        } else {
            format!("{}; {lag} events not yet forwarded", cfg.syslog.collector)
        },
    );
    for finding in &audit.findings {
        b.flag(
            Status::NotMet,
            format!("監査ログの検証に失敗: {finding}"),
            format!("audit log verification failed: {finding}"),
        );
    }
    if cfg.audit.witnesses.is_empty() {
        b.flag(
            Status::Attention,
            "チェックポイントを副署する証人が設定されていません",
            "no witness cosigns the checkpoints",
        );
    }
    if cfg.syslog.collector.is_empty() {
        b.flag(
            Status::Attention,
            "監査ログの外部（syslog）転送が設定されていません",
            "the audit log is not forwarded to a syslog collector",
        );
    } else if lag > c.syslog_max_lag {
        b.flag(
            Status::Attention,
            format!("syslog への未転送が {lag} 件あります（規定 {}）", c.syslog_max_lag),
            format!("{lag} events not yet forwarded to syslog (limit {})", c.syslog_max_lag),
        );
    }
    out.push(b.done());

    let (staff, disabled, locked, totp) = f.users;
    out.push(
        B::new("GL-ACCESS")
            .ev("職員アカウント", "staff accounts", staff)
            .ev("無効化済み", "disabled", disabled)
            .ev("ロック中", "locked now", locked)
            .ev("二要素認証（TOTP）あり", "with a second factor (TOTP)", totp)
            .ev("期間内に拒否されたアクセス", "accesses refused in the period", f.counts.denied)
            .ev("判断点", "decision point", "mamori_core::policy::authorize (every operation)")
            .done(),
    );

    let mut b = B::new("GL-TRUE").ev2(
        "記録の版と監査ログの照合",
        "record versions checked against the audit log",
        audit.records.map(|r| r.to_string()).unwrap_or_else(|| "未照合（--deep で照合）".into()),
        audit.records.map(|r| r.to_string()).unwrap_or_else(|| "not checked (run with --deep)".into()),
    );
    if audit.records.is_none() {
        b.flag(
            Status::Attention,
            "記録の照合は --deep 指定時のみ行います",
            "record versions are checked only with --deep",
        );
    }
    if audit.findings.iter().any(|x| x.contains("record")) {
        b.flag(Status::NotMet, "監査ログと一致しない記録があります", "records do not match what the audit log bound");
    }
    out.push(b.done());

    let max_age = if cfg.snapshot.every_hours > 0 {
        i64::try_from(cfg.snapshot.every_hours).unwrap_or(i64::MAX / 2).saturating_mul(2)
    } else {
        c.snapshot_max_age_hours
    };
    let mut b = B::new("GL-BACKUP")
        .ev2(
            "スナップショットの予定",
            "snapshot schedule",
            if cfg.snapshot.every_hours > 0 {
                format!("{} 時間ごと、{} 世代保持", cfg.snapshot.every_hours, cfg.snapshot.keep)
            } else {
                "要求時のみ".into()
            },
            if cfg.snapshot.every_hours > 0 {
                format!("every {} h, keep {}", cfg.snapshot.every_hours, cfg.snapshot.keep)
            } else {
                "on request".into()
            },
        )
        .ev("スナップショット鍵", "snapshot keys", f.snapshot_keys.iter().filter(|k| k.active).count());
    if let Some(k) = f.snapshot_keys.iter().find(|k| k.active) {
        let n = k.custodians.as_array().map(Vec::len).unwrap_or(0);
        b = b.ev2(
            "保管者（M / N）",
            "custodians (M of N)",
            format!("{n} 名中 {} 名", k.threshold),
            format!("{} of {n}", k.threshold),
        );
    }
    match f.snapshots.first() {
        Some(s) => {
            let age_h = (f.now.micros() - s.created.micros()) / 3_600_000_000;
            b = b.ev2(
                "最新のスナップショット",
                "latest snapshot",
                format!("{} {}（{age_h} 時間前、患者 {} 名）", s.id, when(s.created), s.patients),
                format!("{} {} ({age_h} h old, {} patients)", s.id, when(s.created), s.patients),
            );
            if age_h > max_age {
                b.flag(
                    Status::Attention,
                    format!("最新のスナップショットは {age_h} 時間前です（規定 {max_age} 時間）"),
                    format!("the latest snapshot is {age_h} h old (limit {max_age} h)"),
                );
            }
        }
        None => b.flag(Status::NotMet, "オフラインのスナップショットがありません", "no offline snapshot exists"),
    }
    match f.snapshot_verified {
        Some((at, ok)) => {
            b = b.ev2(
                "直近の検証",
                "latest verification",
                format!("{} {}", when(at), if ok { "成功" } else { "失敗" }),
                format!("{} {}", when(at), if ok { "OK" } else { "FAILED" }),
            );
            if !ok {
                b.flag(
                    Status::NotMet,
                    "直近のスナップショット検証が失敗しました",
                    "the latest snapshot verification failed",
                );
            } else if days(f.now.micros() - at.micros()) > c.snapshot_verify_days {
                b.flag(
                    Status::Attention,
                    format!("スナップショットの検証が {} 日以上行われていません", c.snapshot_verify_days),
                    format!("no snapshot verified within {} days", c.snapshot_verify_days),
                );
            }
        }
        None if !f.snapshots.is_empty() => b.flag(
            Status::Attention,
            "スナップショットが一度も検証されていません",
            "no snapshot has ever been verified",
        ),
        None => {}
    }
    out.push(b.done());
    out
}

/// The facts of the audit verification and the listeners (measured
/// outside the store snapshot).
#[derive(Debug, Clone, Default)]
pub(crate) struct AuditFacts {
    pub(crate) deep: bool,
    pub(crate) events: u64,
    pub(crate) checkpoints: u64,
    pub(crate) records: Option<u64>,
    pub(crate) findings: Vec<String>,
    pub(crate) tls_suites: Vec<String>,
    pub(crate) tls_groups: Vec<String>,
    pub(crate) our_certificate: String,
    pub(crate) our_certificate_until: String,
    pub(crate) our_certificate_valid: bool,
}

/// A phase's minutes in the newest declaration that ran it: (declaration, minutes, within target).
fn last_phase_minutes(f: &Facts, phase: Phase) -> Option<(i64, String, Option<bool>)> {
    for d in &f.declarations {
        let Some((report, _)) = &d.review else { continue };
        let Some(phases) = report.get("phases").and_then(|p| p.as_array()) else { continue };
        if let Some(p) = phases.iter().find(|p| p.get("phase").and_then(|v| v.as_str()) == Some(phase.as_str())) {
            let minutes = p.get("minutes").map(|v| v.to_string()).unwrap_or_else(|| "?".into());
            return Some((d.decl.id, minutes, p.get("within_target").and_then(|v| v.as_bool())));
        }
    }
    None
}

/// Sent messages without recorded algorithms (EX-B1c, EX-B2a).
fn flag_unrecorded(b: &mut B, n: usize) {
    if n > 0 {
        b.flag(
            Status::Attention,
            format!("暗号方式の記録がない送信が {n} 件あります"),
            format!("{n} sent messages have no recorded algorithms"),
        );
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "—".into()
    } else {
        s.to_owned()
    }
}

fn json_str<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

fn distinct(it: impl Iterator<Item = String>) -> String {
    let set: std::collections::BTreeSet<String> = it.collect();
    if set.is_empty() {
        "—".into()
    } else {
        set.into_iter().collect::<Vec<_>>().join("; ")
    }
}
