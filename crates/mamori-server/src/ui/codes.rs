//! Names for people of the codes the system keeps: roles, phases,
//! purposes of use, the policy's bases, audit actions and outcomes, FHIR
//! codes shown in the chart, units, and the API's errors. A Japanese page
//! shows no bare code; an unknown code is shown as it is (never hidden),
//! so that nothing recorded disappears.

use mamori_service::ServiceError;

use super::html::Lang;

/// Looks `code` up in a table of (code, Japanese, English); an unknown
/// code is answered as it is.
fn name(lang: Lang, table: &[(&str, &str, &str)], code: &str) -> String {
    table.iter().find(|(c, _, _)| *c == code).map(|(_, ja, en)| lang.t(ja, en)).unwrap_or(code).to_owned()
}

/// The codes each table names, for the tests that look for codes left on
/// a Japanese page.
#[cfg(test)]
pub(crate) fn all_tables() -> Vec<&'static [(&'static str, &'static str, &'static str)]> {
    vec![
        ROLES,
        GENDERS,
        TRIAGE,
        ARRIVAL,
        ENCOUNTER_STATUS,
        ENCOUNTER_CLASS,
        CRITICALITY,
        SEVERITY,
        PURPOSES,
        BASES,
        ACTIONS,
        HOPS,
        MESSAGE_STATES,
        EXCHANGE_PURPOSES,
        EACCOUNT_STATES,
        MAINTENANCE_STATES,
    ]
}

const ROLES: &[(&str, &str, &str)] = &[
    ("physician", "医師", "physician"),
    ("nurse", "看護師", "nurse"),
    ("pharmacist", "薬剤師", "pharmacist"),
    ("clerk", "医事・事務", "clerk"),
    ("admin", "システム管理者", "administrator"),
    ("auditor", "監査担当", "auditor"),
    ("bcp-decider", "BCP決定者", "BCP decider"),
];

/// A staff role.
pub(crate) fn role(lang: Lang, code: &str) -> String {
    name(lang, ROLES, code)
}

const GENDERS: &[(&str, &str, &str)] = &[
    ("male", "男性", "male"),
    ("female", "女性", "female"),
    ("other", "その他", "other"),
    ("unknown", "不明", "unknown"),
];

/// FHIR administrative gender.
pub(crate) fn gender(lang: Lang, code: &str) -> String {
    name(lang, GENDERS, code)
}

const TRIAGE: &[(&str, &str, &str)] = &[
    ("red", "赤（最優先治療）", "Red (immediate)"),
    ("yellow", "黄（待機的治療）", "Yellow (delayed)"),
    ("green", "緑（軽処置）", "Green (minor)"),
    ("black", "黒（救命困難・死亡）", "Black (expectant or deceased)"),
];

/// A START triage category.
pub(crate) fn triage(lang: Lang, code: &str) -> String {
    name(lang, TRIAGE, code)
}

const ARRIVAL: &[(&str, &str, &str)] = &[
    ("ambulance", "救急車", "ambulance"),
    ("walk-in", "徒歩・自力", "walk-in"),
    ("helicopter", "ヘリコプター", "helicopter"),
    ("transfer", "転院", "transfer"),
];

/// How a patient arrived.
pub(crate) fn arrival(lang: Lang, code: &str) -> String {
    name(lang, ARRIVAL, code)
}

const ENCOUNTER_STATUS: &[(&str, &str, &str)] = &[
    ("planned", "予定", "planned"),
    ("arrived", "到着", "arrived"),
    ("triaged", "トリアージ済", "triaged"),
    ("in-progress", "診療中", "in progress"),
    ("onleave", "外出・外泊中", "on leave"),
    ("finished", "終了", "finished"),
    ("cancelled", "取消", "cancelled"),
    ("entered-in-error", "誤登録", "entered in error"),
    ("unknown", "不明", "unknown"),
];

/// FHIR Encounter.status.
pub(crate) fn encounter_status(lang: Lang, code: &str) -> String {
    name(lang, ENCOUNTER_STATUS, code)
}

const ENCOUNTER_CLASS: &[(&str, &str, &str)] = &[
    ("AMB", "外来", "outpatient"),
    ("EMER", "救急", "emergency"),
    ("IMP", "入院", "inpatient"),
    ("ACUTE", "入院（急性期）", "inpatient acute"),
    ("NONAC", "入院（非急性期）", "inpatient non-acute"),
    ("OBSENC", "経過観察", "observation"),
    ("PRENC", "入院前", "pre-admission"),
    ("SS", "短期滞在", "short stay"),
    ("VR", "オンライン診療", "virtual"),
    ("HH", "在宅", "home health"),
    ("FLD", "院外", "field"),
];

/// The v3 ActCode of Encounter.class.
pub(crate) fn encounter_class(lang: Lang, code: &str) -> String {
    name(lang, ENCOUNTER_CLASS, code)
}

const CRITICALITY: &[(&str, &str, &str)] =
    &[("low", "低", "low"), ("high", "高", "high"), ("unable-to-assess", "評価不能", "unable to assess")];

/// AllergyIntolerance.criticality.
pub(crate) fn criticality(lang: Lang, code: &str) -> String {
    match lang {
        Lang::Ja => format!("重篤度 {}", name(lang, CRITICALITY, code)),
        Lang::En => format!("criticality {}", name(lang, CRITICALITY, code)),
    }
}

const SEVERITY: &[(&str, &str, &str)] =
    &[("info", "お知らせ", "info"), ("warning", "警告", "warning"), ("critical", "重大", "critical")];

/// An alert's or announcement's severity.
pub(crate) fn severity(lang: Lang, code: &str) -> String {
    name(lang, SEVERITY, code)
}

/// A declaration's state.
pub(crate) fn declaration_state(lang: Lang, code: &str) -> String {
    name(
        lang,
        &[
            ("proposed", "提案中（決定待ち）", "proposed (awaiting a decision)"),
            ("declared", "宣言中", "declared"),
            ("ended", "終了", "ended"),
        ],
        code,
    )
}

const PURPOSES: &[(&str, &str, &str)] = &[
    ("TREAT", "診療", "treatment"),
    ("ETREAT", "救急診療", "emergency treatment"),
    ("BTG", "緊急アクセス（ブレークグラス）", "break-glass"),
    ("HOPERAT", "病院運営", "hospital operations"),
    ("HSYSADMIN", "システム管理", "system administration"),
    ("HCOMPL", "監査・コンプライアンス", "compliance"),
    ("HMARKT", "マーケティング", "marketing"),
    ("PATRQT", "患者本人の求め", "patient request"),
    ("HRESCH", "研究", "research"),
];

/// A purpose of use (HL7 v3 PurposeOfUse).
pub(crate) fn purpose(lang: Lang, code: &str) -> String {
    name(lang, PURPOSES, code)
}

const BASES: &[(&str, &str, &str)] = &[
    ("care-relationship", "担当関係あり", "care relationship"),
    ("break-glass", "緊急アクセス（ブレークグラス）", "break-glass"),
    ("emergency-access", "非常時アクセス", "emergency access"),
    ("role-demographics", "役割（基本情報）", "role (demographics)"),
    ("role-reference-data", "役割（参照データ）", "role (reference data)"),
    ("role-auditor", "役割（監査担当）", "role (auditor)"),
    ("role-admin", "役割（管理者）", "role (administrator)"),
    ("role-permitted", "役割により許可", "permitted by role"),
    ("own", "本人のもの", "own"),
    ("authenticated", "ログイン済み", "authenticated"),
    ("restricted-to-care-relationships", "担当患者に限定", "restricted to care relationships"),
    ("plan-decider", "BCP計画の決定者", "plan decider"),
    ("bcp-team", "BCPチーム", "BCP team"),
    ("records-management", "診療録管理", "records management"),
    ("registration-open", "緊急登録の受付中", "registration open"),
    ("maintenance-access", "保守アクセス", "maintenance access"),
    ("maintenance-scope", "保守の範囲内", "maintenance scope"),
    ("system", "システム", "system"),
    ("no-care-relationship", "担当関係なし", "no care relationship"),
    ("role-not-permitted", "役割に権限なし", "role not permitted"),
    ("emergency-account-sealed", "非常用アカウントは封印中", "emergency account sealed"),
    ("not-storable", "保存できない種類", "not storable"),
    ("separation-of-duties", "職務分離", "separation of duties"),
    ("same-person", "同一人物（別の人の承認が必要）", "same person"),
    ("self-lockout", "自分自身の無効化", "self lockout"),
    ("not-own", "他の人のもの", "not own"),
    ("emergency-account-managed", "非常用アカウントの手続外", "emergency account managed"),
    ("not-plan-decider", "BCP計画の決定者ではない", "not a plan decider"),
    ("registration-closed", "緊急登録の受付外", "registration closed"),
    ("not-in-scope", "保守の範囲外", "not in scope"),
    ("password-change-required", "パスワード変更が必要", "password change required"),
    ("not-during-emergency", "非常時には不可", "not during an emergency"),
    ("not-in-app-scope", "アプリの許可範囲外", "not in the app's scope"),
];

/// The policy's basis of a decision.
pub(crate) fn basis(lang: Lang, code: &str) -> String {
    name(lang, BASES, code)
}

/// Why a policy refused, for the person refused (Japanese).
fn basis_reason_ja(code: &str) -> Option<&'static str> {
    Some(match code {
        "no-care-relationship" => {
            "この患者の担当関係がありません。緊急時はカルテ画面から緊急アクセス（ブレークグラス）を申請できます。"
        }
        "role-not-permitted" => "あなたの役割ではこの操作はできません。",
        "emergency-account-sealed" => "非常用アカウントは非常時宣言中のみ使えます。",
        "separation-of-duties" => {
            "職務分離のため、管理者は診療情報を扱えず、一つのアカウントが管理と診療の両方の役割を持つことはできません。"
        }
        "same-person" => "この操作には依頼者とは別の人の承認が必要です。",
        "self-lockout" => "自分自身を無効にしたり、自分の管理者権限を外すことはできません。",
        "not-own" => "他の人のものです。",
        "emergency-account-managed" => "非常用アカウントは専用の手順（払い出し・封筒・廃止）でのみ変更できます。",
        "not-plan-decider" => "有効なBCP計画で、あなたは決定者に指定されていません。",
        "registration-closed" => {
            "現在、受付を通さない緊急登録はできません（非常時宣言中、または計画で指定された部門のみ可能です）。"
        }
        "not-in-scope" => "保守時間枠の許可範囲外です。",
        "not-in-app-scope" => "アプリに許可された範囲外です。",
        "not-during-emergency" => "非常時宣言中はできません。通常運用への復帰後に行ってください。",
        "password-change-required" => "先にパスワードを変更してください。",
        _ => return None,
    })
}

/// An API error as a page shows it: in Japanese, what happened and what
/// to do, with the technical detail after it; in English, the detail.
pub(crate) fn explain(lang: Lang, status: u16, basis: Option<&str>, detail: &str) -> String {
    if lang == Lang::En {
        return detail.to_owned();
    }
    let summary = match (status, basis.and_then(basis_reason_ja)) {
        (403, Some(reason)) => reason,
        (400, _) => "入力内容に誤りがあります。",
        (401, _) => "ログインが必要です。もう一度ログインしてください。",
        (403, None) => "この操作は許可されていません。",
        (404, _) => "見つかりません。",
        (409 | 412, _) => "現在の状態と矛盾するため実行できません。画面を再読み込みして確認してください。",
        (410, _) => "削除済みです。",
        (413, _) => "大きすぎるため処理できません。",
        (422, _) => "内容が規則に合わないため処理できません。",
        (429, _) => "操作が多すぎます。しばらく待ってからやり直してください。",
        (503, _) => "システムが一時的に記録できない状態です。何も変更されていません。少し待ってからやり直してください。",
        (s, _) if s >= 500 => "システムの障害で処理できませんでした。何も変更されていない可能性があります。システム管理者に連絡してください。",
        _ => "処理できませんでした。",
    };
    if detail.is_empty() {
        summary.to_owned()
    } else {
        format!("{summary}{DETAIL_OPEN}{detail}{DETAIL_CLOSE}")
    }
}

/// Where an explanation's technical detail starts and ends (a page shows
/// it folded, under 技術的な詳細).
pub(crate) const DETAIL_OPEN: &str = "（詳細: ";
/// See [`DETAIL_OPEN`].
pub(crate) const DETAIL_CLOSE: &str = "）";

/// A use case's error as a page shows it.
pub(crate) fn error_message(lang: Lang, e: &ServiceError) -> String {
    explain(lang, e.status(), e.basis().map(|b| b.as_str()), &e.message())
}

/// A UCUM unit as people write it (`mm[Hg]` → mmHg, `Cel` → ℃).
pub(crate) fn unit(code: &str) -> String {
    match code {
        "mm[Hg]" => "mmHg",
        "Cel" => "℃",
        "[degF]" => "℉",
        "{beats}/min" | "{breaths}/min" => "/min",
        "%" => "%",
        "kg" => "kg",
        "cm" => "cm",
        "g/dL" => "g/dL",
        "mg/dL" => "mg/dL",
        "mmol/L" => "mmol/L",
        "10*3/uL" => "×10³/µL",
        "10*4/uL" => "×10⁴/µL",
        "10*6/uL" => "×10⁶/µL",
        "U/L" => "U/L",
        "kg/m2" => "kg/m²",
        "1" => "",
        other => other,
    }
    .to_owned()
}

const ACTIONS: &[(&str, &str, &str)] = &[
    ("read", "閲覧", "read"),
    ("vread", "版の閲覧", "version read"),
    ("search", "検索", "search"),
    ("history", "履歴の閲覧", "history"),
    ("history-system", "全体履歴の閲覧", "system history"),
    ("create", "作成", "create"),
    ("update", "更新", "update"),
    ("patch", "部分更新", "patch"),
    ("delete", "削除", "delete"),
    ("everything", "患者記録の一括閲覧", "patient record ($everything)"),
    ("export", "一括エクスポート", "bulk export"),
    ("export-download", "エクスポートのダウンロード", "export download"),
    ("login", "ログイン", "login"),
    ("login-failed", "ログイン失敗", "failed login"),
    ("logout", "ログアウト", "logout"),
    ("token-issue", "トークン発行", "token issued"),
    ("token-revoke", "トークン失効", "token revoked"),
    ("password-change", "パスワード変更", "password change"),
    ("password-reset", "パスワード再発行", "password reset"),
    ("totp-enroll", "ワンタイムコード設定", "one-time code enrolled"),
    ("totp-remove", "ワンタイムコード解除", "one-time code removed"),
    ("user-create", "利用者の作成", "user created"),
    ("user-update", "利用者の変更", "user changed"),
    ("account-request-decide", "権限申請の承認・却下", "role request decided"),
    ("care-assign", "担当登録", "care assigned"),
    ("care-end", "担当終了", "care ended"),
    ("care-list", "担当一覧の閲覧", "care list"),
    ("alert-ack", "アラート確認", "alert acknowledged"),
    ("alert-list", "アラート一覧", "alert list"),
    ("mode-read", "運用モードの確認", "mode read"),
    ("notification-list", "通知一覧", "notification list"),
    ("audit-read", "監査ログの閲覧", "audit log read"),
    ("audit-report", "監査報告の作成", "audit report"),
    ("audit-verify", "監査ログの検証", "audit log verified"),
    ("bcp-checklist", "チェックリスト記入", "checklist item"),
    ("bcp-confirm", "非常時宣言の確認", "declaration confirmed"),
    ("bcp-declare", "非常時宣言", "emergency declared"),
    ("bcp-declaration-list", "宣言一覧", "declaration list"),
    ("bcp-declaration-read", "宣言の閲覧", "declaration read"),
    ("bcp-plan-import", "BCP計画の登録", "BCP plan imported"),
    ("bcp-plan-read", "BCP計画の閲覧", "BCP plan read"),
    ("bcp-review", "事後レビューの記入", "after-action review written"),
    ("bcp-review-read", "事後レビューの閲覧", "after-action review read"),
    ("bcp-transition", "フェーズ移行", "phase change"),
    ("break-glass-start", "緊急アクセス開始", "break-glass started"),
    ("break-glass-end", "緊急アクセス終了", "break-glass ended"),
    ("break-glass-list", "緊急アクセス一覧", "break-glass list"),
    ("break-glass-read", "緊急アクセスの閲覧", "break-glass read"),
    ("break-glass-review", "緊急アクセスの事後確認", "break-glass review"),
    ("emergency-account-envelope", "非常用アカウントの封筒作成", "emergency account envelope"),
    ("emergency-account-list", "非常用アカウント一覧", "emergency account list"),
    ("emergency-account-provision", "非常用アカウントの払い出し", "emergency account provisioned"),
    ("emergency-login", "非常用アカウントでのログイン", "emergency account login"),
    ("incident-report", "サイバー攻撃報告の作成", "incident report"),
    ("incident-reported", "当局への報告の記録", "report to authorities recorded"),
    ("compliance-report", "準拠状況報告の作成", "compliance report"),
    ("compliance-report-read", "準拠状況報告の閲覧", "compliance report read"),
    ("compliance-verify", "準拠状況報告の検証", "compliance report verified"),
    ("exchange-send", "他機関への送信", "sent to a partner"),
    ("exchange-receive", "他機関からの受信", "received from a partner"),
    ("exchange-identity-read", "自機関の証明書の閲覧", "own identity read"),
    ("exchange-inbound-list", "受信文書一覧", "received documents list"),
    ("exchange-inbound-match", "受信文書の患者照合", "received document matched"),
    ("exchange-inbound-read", "受信文書の閲覧", "received document read"),
    ("exchange-ledger-export", "送受信台帳の出力", "exchange ledger export"),
    ("exchange-message-list", "送受信一覧", "message list"),
    ("exchange-message-read", "送受信記録の閲覧", "message read"),
    ("exchange-quarantine-list", "隔離文書一覧", "quarantine list"),
    ("partner-list", "連携先一覧", "partner list"),
    ("partner-read", "連携先の閲覧", "partner read"),
    ("maintenance-request", "保守作業の申請", "maintenance request"),
    ("merge-list", "統合一覧", "merge list"),
    ("merge-read", "統合の閲覧", "merge read"),
    ("merge-review", "統合の事後確認", "merge review"),
    ("patient-merge", "患者の統合", "patients merged"),
    ("patient-merge-preview", "統合内容の確認", "merge preview"),
    ("patient-unmerge", "統合の取消", "merge undone"),
    ("provisional-list", "仮登録患者一覧", "provisional list"),
    ("provisional-register", "緊急登録", "emergency registration"),
    ("reconcile-import", "非常時記録の取込", "records imported"),
    ("reconcile-imports", "取込一覧", "import list"),
    ("reconcile-resolve", "照合の解決", "reconciliation resolved"),
    ("reconcile-tasks", "照合作業一覧", "reconciliation tasks"),
    ("transcribe", "紙記録の転記", "paper record transcribed"),
    ("snapshot-create", "参照用スナップショット作成", "snapshot created"),
    ("snapshot-key-create", "スナップショット鍵の作成", "snapshot key created"),
    ("snapshot-verify", "スナップショット検証", "snapshot verified"),
    ("app-authorize", "アプリの許可", "app authorized"),
    ("app-disable", "アプリの無効化", "app disabled"),
    ("app-launch", "アプリの起動", "app launched"),
    ("app-register", "アプリの登録", "app registered"),
    ("app-token", "アプリのトークン発行", "app token"),
];

/// An audit event's action.
pub(crate) fn action(lang: Lang, code: &str) -> String {
    name(lang, ACTIONS, code)
}

/// An HTTP status as an audit outcome.
pub(crate) fn outcome(lang: Lang, status: u64) -> String {
    let (ja, en) = match status {
        200..=299 => ("成功", "done"),
        400 | 422 => ("入力誤り", "invalid"),
        401 => ("認証失敗", "not authenticated"),
        403 => ("拒否", "refused"),
        404 | 410 => ("該当なし", "not found"),
        409 | 412 => ("競合", "conflict"),
        429 => ("回数制限", "throttled"),
        500..=599 => ("システム障害", "system fault"),
        _ => ("その他", "other"),
    };
    format!("{} ({status})", lang.t(ja, en))
}

/// A review's outcome (break-glass, maintenance, merge).
pub(crate) fn review(lang: Lang, code: &str) -> String {
    name(
        lang,
        &[
            ("pending", "未確認", "pending"),
            ("accepted", "妥当と確認", "accepted"),
            ("questioned", "疑義あり", "questioned"),
        ],
        code,
    )
}

const HOPS: &[(&str, &str, &str)] = &[
    ("signed", "当院で署名", "signed here"),
    ("encrypted", "相手の証明書で暗号化", "encrypted to the partner"),
    ("queued", "送信待ち", "queued"),
    ("attempt", "送信を試行", "send attempted"),
    ("attempt_failed", "送信失敗（再試行）", "attempt failed (retrying)"),
    ("handed_to_network", "ネットワークへ引き渡し", "handed to the network"),
    ("delivered", "相手に配達", "delivered"),
    ("mdn_received", "受領確認を受信", "receipt received"),
    ("mdn_verified", "受領確認の署名を検証", "receipt signature verified"),
    ("responsibility_transferred", "責任が相手に移転", "responsibility transferred"),
    ("failed", "失敗", "failed"),
    ("received", "受信", "received"),
    ("decrypted", "復号", "decrypted"),
    ("verified", "署名を検証", "signature verified"),
    ("stored", "保存", "stored"),
    ("mdn_issued", "受領確認を発行", "receipt issued"),
    ("queued_for_matching", "患者照合待ち", "awaiting patient matching"),
    ("accepted", "受理", "accepted"),
    ("rejected", "拒否", "rejected"),
    ("processed", "処理済み", "processed"),
    ("matched", "患者に紐づけ", "filed under a patient"),
];

/// A step of an exchange message's path.
pub(crate) fn hop(lang: Lang, code: &str) -> String {
    name(lang, HOPS, code)
}

const MESSAGE_STATES: &[(&str, &str, &str)] = &[
    ("queued", "送信待ち", "queued"),
    ("retry", "再送待ち", "retrying"),
    ("awaiting_mdn", "受領確認待ち", "awaiting receipt"),
    ("delivered", "配達済み（受領確認あり）", "delivered (receipt)"),
    ("failed", "失敗", "failed"),
    ("received", "受信済み", "received"),
    ("unmatched", "患者照合待ち", "awaiting matching"),
    ("matched", "患者に紐づけ済み", "filed"),
    ("rejected", "拒否", "rejected"),
    ("quarantined", "隔離", "quarantined"),
];

/// An exchange message's state.
pub(crate) fn message_state(lang: Lang, code: &str) -> String {
    name(lang, MESSAGE_STATES, code)
}

const EXCHANGE_PURPOSES: &[(&str, &str, &str)] = &[
    ("referral", "紹介", "referral"),
    ("referral_reply", "紹介への返書", "referral reply"),
    ("consultation", "対診・相談", "consultation"),
    ("testing", "検査委託", "testing"),
    ("claims", "請求", "claims"),
    ("research", "研究", "research"),
    ("other", "その他", "other"),
];

/// The purpose of an exchange.
pub(crate) fn exchange_purpose(lang: Lang, code: &str) -> String {
    name(lang, EXCHANGE_PURPOSES, code)
}

const LEGAL_BASES: &[(&str, &str, &str)] = &[
    ("implied_consent", "黙示の同意（院内掲示の範囲）", "implied consent (posted notice)"),
    ("explicit_consent", "明示の同意（同意書あり）", "explicit consent"),
    ("delegation", "業務委託", "delegation"),
    ("protection_of_life", "生命・身体の保護（同意取得困難）", "protection of life"),
    ("consent", "同意", "consent"),
    ("law", "法令", "law"),
];

/// The legal basis of an exchange.
pub(crate) fn legal_basis(lang: Lang, code: &str) -> String {
    name(lang, LEGAL_BASES, code)
}

/// A partner's relationship to the institution.
pub(crate) fn relationship(lang: Lang, code: &str) -> String {
    name(
        lang,
        &[("delegation", "委託先", "contractor"), ("third_party", "第三者（他の医療機関など）", "third party")],
        code,
    )
}

/// A partner's registration status.
pub(crate) fn partner_status(lang: Lang, code: &str) -> String {
    name(
        lang,
        &[("active", "有効", "active"), ("suspended", "停止中", "suspended"), ("retired", "廃止", "retired")],
        code,
    )
}

const EACCOUNT_STATES: &[(&str, &str, &str)] = &[
    ("awaiting_envelope", "封筒の印刷待ち", "awaiting its envelope"),
    ("sealed", "封緘済み（保管中）", "sealed"),
    ("in_use", "使用中", "in use"),
    ("retired", "廃止（要交換）", "retired"),
];

/// A sealed emergency account's state.
pub(crate) fn eaccount_state(lang: Lang, code: &str) -> String {
    name(lang, EACCOUNT_STATES, code)
}

const MAINTENANCE_STATES: &[(&str, &str, &str)] = &[
    ("requested", "申請中", "requested"),
    ("approved", "承認済み", "approved"),
    ("active", "作業中", "active"),
    ("rejected", "却下", "rejected"),
    ("revoked", "取り消し", "revoked"),
    ("expired", "期限切れ", "expired"),
    ("ended", "終了", "ended"),
];

/// A remote maintenance request's state.
pub(crate) fn maintenance_state(lang: Lang, code: &str) -> String {
    name(lang, MAINTENANCE_STATES, code)
}

/// The scope of a remote maintenance window.
pub(crate) fn maintenance_scope(lang: Lang, code: &str) -> String {
    name(
        lang,
        &[
            ("configuration", "設定", "configuration"),
            ("logs", "ログ", "logs"),
            ("database", "データベース", "database"),
            ("audit", "監査ログ", "audit log"),
            ("restart", "再起動", "restart"),
            ("patient_data", "患者データ", "patient data"),
        ],
        code,
    )
}

/// An account change waiting for a second administrator: its kind and
/// state.
pub(crate) fn account_request(lang: Lang, code: &str) -> String {
    name(
        lang,
        &[
            ("role-grant", "役割の付与", "role grant"),
            ("password-reset", "パスワード再発行", "password reset"),
            ("pending", "承認待ち", "pending"),
            ("approved", "承認済み", "approved"),
            ("rejected", "却下", "rejected"),
            ("superseded", "置き換え済み", "superseded"),
        ],
        code,
    )
}

/// A reconciliation task's kind.
pub(crate) fn reconcile_kind(lang: Lang, code: &str) -> String {
    name(
        lang,
        &[
            ("conflict", "内容の食い違い", "conflict"),
            ("match", "同一患者の可能性", "possible match"),
            ("unknown_patient", "患者不明の記録", "unknown patient"),
        ],
        code,
    )
}

/// The names of the fields of structured records shown as documents (a
/// hop's detail, a legal basis, a partner's terms, a maintenance summary,
/// a reconciliation task).
const FIELDS: &[(&str, &str, &str)] = &[
    ("address", "アドレス", "address"),
    ("asynchronous", "非同期", "asynchronous"),
    ("asynchronous_receipt_for", "非同期受領確認の対象", "asynchronous receipt for"),
    ("at", "日時", "at"),
    ("attempt", "試行", "attempt"),
    ("attempts", "試行回数", "attempts"),
    ("awaiting", "待機中", "awaiting"),
    ("basis", "法的根拠", "basis"),
    ("bundle", "バンドル", "bundle"),
    ("by", "実施者", "by"),
    ("bytes", "バイト数", "bytes"),
    ("check", "確認", "check"),
    ("cipher", "暗号方式", "cipher"),
    ("claimed_from", "名乗った送信元", "claimed from"),
    ("consent", "同意", "consent"),
    ("content_type", "形式", "content type"),
    ("contract", "契約", "contract"),
    ("count", "件数", "count"),
    ("deadline", "期限", "deadline"),
    ("demarcation", "責任分界", "demarcation"),
    ("detail", "詳細", "detail"),
    ("digest", "ハッシュ", "digest"),
    ("disposition", "処理結果", "disposition"),
    ("document", "文書", "document"),
    ("documents", "文書", "documents"),
    ("error", "エラー", "error"),
    ("expires", "有効期限", "expires"),
    ("filename", "ファイル名", "file name"),
    ("from", "送信元", "from"),
    ("hop", "段階", "hop"),
    ("id", "ID", "id"),
    ("justification", "根拠の説明", "justification"),
    ("key_transport", "鍵の受け渡し", "key transport"),
    ("kind", "種類", "kind"),
    ("matched", "照合", "matched"),
    ("mdn", "受領確認", "receipt (MDN)"),
    ("mdn_message_id", "受領確認のメッセージID", "receipt message id"),
    ("message", "メッセージ", "message"),
    ("message_id", "メッセージID", "message id"),
    ("mic", "内容のハッシュ（MIC）", "content digest (MIC)"),
    ("mic_matches", "ハッシュ一致", "digest matches"),
    ("name", "名称", "name"),
    ("network", "ネットワーク", "network"),
    ("not_after", "有効期限", "not after"),
    ("not_before", "有効開始", "not before"),
    ("note", "メモ", "note"),
    ("partner", "連携先", "partner"),
    ("party", "責任を持つ者", "party"),
    ("path", "経路", "path"),
    ("patient", "患者", "patient"),
    ("purpose", "目的", "purpose"),
    ("purposes", "目的", "purposes"),
    ("quarantine", "隔離", "quarantine"),
    ("queued_for_matching", "患者照合待ち", "awaiting matching"),
    ("reason", "理由", "reason"),
    ("receiver", "受信者", "receiver"),
    ("reference", "参照番号", "reference"),
    ("refused", "拒否", "refused"),
    ("relationship", "関係", "relationship"),
    ("resource", "リソース", "resource"),
    ("retry_at", "再試行予定", "retry at"),
    ("role", "役割", "role"),
    ("segment", "区間", "segment"),
    ("sender", "送信者", "sender"),
    ("seq", "順番", "sequence"),
    ("signature", "署名", "signature"),
    ("signed", "署名", "signed"),
    ("signer", "署名者", "signer"),
    ("signer_certificate", "署名者の証明書", "signer certificate"),
    ("state", "状態", "state"),
    ("status", "状態", "status"),
    ("stored", "保存", "stored"),
    ("suppressed_since_last", "前回以降の抑止件数", "suppressed since last"),
    ("system", "体系", "system"),
    ("tls_client_certificate", "TLSクライアント証明書", "TLS client certificate"),
    ("to", "宛先", "to"),
    ("url", "URL", "URL"),
    ("value", "値", "value"),
    ("verified", "検証済み", "verified"),
    ("version", "版", "version"),
];

/// A field's name for people.
pub(crate) fn field(lang: Lang, key: &str) -> String {
    match FIELDS.iter().find(|(k, _, _)| *k == key) {
        Some((_, ja, en)) => lang.t(ja, en).to_owned(),
        None => key.replace(['_', '-'], " "),
    }
}

/// A field's value for people: the codes the field holds by name.
pub(crate) fn value(lang: Lang, key: &str, v: &str) -> String {
    match key {
        "purpose" | "purposes" => exchange_purpose(lang, v),
        "basis" | "kind" if LEGAL_BASES.iter().any(|(c, _, _)| *c == v) => legal_basis(lang, v),
        "relationship" => relationship(lang, v),
        "state" => message_state(lang, v),
        "hop" => hop(lang, v),
        "party" | "role" => party(lang, v),
        _ => v.to_owned(),
    }
}

/// Who holds responsibility at a hop.
pub(crate) fn party(lang: Lang, code: &str) -> String {
    name(
        lang,
        &[
            ("sender", "送信者（当院）", "sender (us)"),
            ("receiver", "受信者（相手先）", "receiver"),
            ("network", "ネットワーク", "network"),
        ],
        code,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_japanese_name_and_no_code_is_named_twice() {
        for table in all_tables() {
            let mut seen = std::collections::HashSet::new();
            for (code, ja, en) in table {
                assert!(seen.insert(*code), "{code} twice");
                assert!(ja.chars().any(|c| c > '\u{3000}'), "{code}: the Japanese name {ja:?} is not Japanese");
                assert!(!en.is_empty() && en.is_ascii(), "{code}: the English name {en:?}");
                assert_ne!(*ja, *code, "{code} named by itself");
            }
        }
    }

    #[test]
    fn an_unknown_code_is_shown_as_it_is() {
        assert_eq!(role(Lang::Ja, "surgeon"), "surgeon");
        assert_eq!(role(Lang::Ja, "physician"), "医師");
        assert_eq!(unit("mm[Hg]"), "mmHg");
        assert_eq!(unit("Cel"), "℃");
        assert_eq!(unit("mg/dL"), "mg/dL");
        assert_eq!(value(Lang::Ja, "purpose", "referral"), "紹介");
        assert_eq!(value(Lang::Ja, "note", "referral"), "referral", "only the fields that hold codes");
    }

    #[test]
    fn an_error_is_explained_in_japanese_with_its_detail() {
        let e = explain(Lang::Ja, 403, Some("no-care-relationship"), "access denied (no-care-relationship)");
        assert!(e.starts_with("この患者の担当関係がありません"), "{e}");
        assert!(e.contains("access denied"), "the detail stays: {e}");
        assert_eq!(explain(Lang::En, 403, Some("no-care-relationship"), "access denied"), "access denied");
        assert!(explain(Lang::Ja, 503, None, "").starts_with("システムが一時的に"));
    }
}
