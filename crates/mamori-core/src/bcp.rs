//! The business-continuity plan as data, and the BCP state machine
//! (guideline 6.9, EM-C1, EM-B1..B7).
//!
//! The plan says what an emergency is (criteria), who may declare one,
//! whom to call, what to publish, what to check in each phase, and which
//! emergency rules apply in which phase. The state machine is the only way
//! the operating mode changes: `normal → activation → resumption →
//! recovery → full_recovery → normal`, one step at a time; a declaration
//! found to be an ordinary fault during activation can be stood down.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::mode::Phase;
use crate::policy::Role;

/// What caused an emergency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A natural disaster (earthquake, flood, fire).
    Disaster,
    /// A cyber attack (ransomware, intrusion).
    CyberAttack,
    /// A failure of the systems themselves (hardware, software, network, power).
    SystemFailure,
    /// Many casualties at once.
    MassCasualty,
    /// Anything else the plan names.
    Other,
}

impl Cause {
    /// The cause's name in plans, the database and the API (`cyber_attack`).
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Disaster => "disaster",
            Cause::CyberAttack => "cyber_attack",
            Cause::SystemFailure => "system_failure",
            Cause::MassCasualty => "mass_casualty",
            Cause::Other => "other",
        }
    }
    /// Parses a name made by [`Cause::as_str`].
    pub fn parse(s: &str) -> Option<Cause> {
        [Cause::Disaster, Cause::CyberAttack, Cause::SystemFailure, Cause::MassCasualty, Cause::Other]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// Text in Japanese and English.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Text {
    /// Japanese.
    pub ja: String,
    /// English.
    pub en: String,
}

/// One criterion of an emergency: a situation the plan says justifies a
/// declaration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Criterion {
    /// Its id, referred to by declarations (1-64 of `a-z`, `0-9`, `-`, `_`).
    pub id: String,
    /// The kind of cause it covers (alerts offer the criteria of their cause).
    pub cause: Cause,
    /// What the situation is.
    pub description: Text,
}

/// Who may declare an emergency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Deciders {
    /// Users entitled to declare (in addition to the roles).
    #[serde(default)]
    pub users: Vec<String>,
    /// Roles entitled to declare.
    #[serde(default)]
    pub roles: Vec<Role>,
    /// A declaration needs a second decider's confirmation.
    #[serde(default)]
    pub two_person: bool,
}

/// A member of the emergency team and how to reach them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    /// The person (name and title).
    pub name: String,
    /// The function in the emergency team (本部長, 情報システム担当, ...).
    pub function: String,
    /// Telephone number(s).
    #[serde(default)]
    pub phone: Option<String>,
    /// E-mail address.
    #[serde(default)]
    pub email: Option<String>,
    /// Other ways to reach them when networks fail (radio, messenger, in person).
    #[serde(default)]
    pub alternate: Vec<String>,
}

/// An outside company the hospital depends on, and how to reach it in an
/// emergency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contractor {
    /// The company.
    pub name: String,
    /// What they provide (EHR vendor, network, data centre, ...).
    pub service: String,
    /// Its emergency contact (hotline, phone number).
    pub contact: String,
    /// The agreed route for joint troubleshooting (窓口・エスカレーション).
    pub escalation: String,
}

/// A document prepared for emergencies (notices, manuals, report forms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// What the document is.
    pub title: Text,
    /// Who it is for (patients, staff, authorities, press).
    pub audience: String,
    /// Where it is kept or published.
    pub location: String,
}

/// One item of a phase's checklist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChecklistItem {
    /// Its id, unique within the phase (1-64 of `a-z`, `0-9`, `-`, `_`).
    pub id: String,
    /// What to do or check.
    pub text: Text,
    /// Must be done before leaving the phase (default true).
    #[serde(default = "yes")]
    pub required: bool,
}

fn yes() -> bool {
    true
}

/// The rules of one phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PhaseRules {
    /// Clinicians may access any patient's record (ETREAT).
    #[serde(default)]
    pub open_access: bool,
    /// Registration without the reception desk.
    #[serde(default)]
    pub registration_without_reception: bool,
    /// Target duration of the phase, in minutes (compared in drill reports).
    #[serde(default)]
    pub target_minutes: Option<u32>,
}

/// The limits of break-glass access under the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassRules {
    /// Duration of a grant when the request names none, in minutes (default 60).
    #[serde(default = "default_bg")]
    pub default_minutes: u32,
    /// Longest grant that may be asked for, in minutes (default 480, at most 1440).
    #[serde(default = "max_bg")]
    pub max_minutes: u32,
}

fn default_bg() -> u32 {
    60
}
fn max_bg() -> u32 {
    480
}

impl Default for BreakGlassRules {
    fn default() -> Self {
        BreakGlassRules { default_minutes: default_bg(), max_minutes: max_bg() }
    }
}

/// How emergencies are noticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detection {
    /// How emergencies are detected and confirmed (EM-B1).
    #[serde(default)]
    pub sources: Vec<Text>,
    /// Writes per minute by one user that raise a possible-emergency alert
    /// (mass modification, typical of ransomware or a stolen account).
    #[serde(default = "mass_rate")]
    pub mass_modification_per_minute: u32,
}

fn mass_rate() -> u32 {
    600
}

impl Default for Detection {
    fn default() -> Self {
        Detection { sources: Vec::new(), mass_modification_per_minute: mass_rate() }
    }
}

/// A BCP plan (the TOML document of `docs/example-bcp-plan.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The plan's title.
    pub title: Text,
    /// The basic policy (基本方針).
    pub policy: Text,
    /// The situations that justify a declaration (at least one).
    pub criteria: Vec<Criterion>,
    /// Who may declare.
    pub deciders: Deciders,
    /// How emergencies are detected, and the mass-modification alert threshold.
    #[serde(default)]
    pub detection: Detection,
    /// The emergency team's contact list (each reachable at least one way).
    pub team: Vec<Contact>,
    /// The outside companies to call.
    #[serde(default)]
    pub contractors: Vec<Contractor>,
    /// The documents prepared for emergencies.
    #[serde(default)]
    pub documents: Vec<Document>,
    /// Per phase: the checklist.
    pub checklists: BTreeMap<Phase, Vec<ChecklistItem>>,
    /// Per phase: the emergency rules in force.
    #[serde(default)]
    pub rules: BTreeMap<Phase, PhaseRules>,
    /// Limits of break-glass access.
    #[serde(default)]
    pub break_glass: BreakGlassRules,
    /// Who may register patients without the reception desk outside
    /// emergencies.
    #[serde(default)]
    pub registration: RegistrationRules,
    /// Who keeps the medical records.
    #[serde(default)]
    pub records: RecordsRules,
}

/// Who keeps the medical records (診療情報管理): merges patients, files
/// received documents into patients' records and brings offline records
/// back, without clinical access otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsRules {
    /// Roles that keep the records.
    #[serde(default)]
    pub roles: Vec<Role>,
    /// Users that keep the records (in addition to the roles).
    #[serde(default)]
    pub users: Vec<String>,
}

impl Default for RecordsRules {
    /// Reception and medical records staff (clerks), as before plans named them.
    fn default() -> Self {
        RecordsRules { roles: vec![Role::Clerk], users: Vec::new() }
    }
}

/// Registration without the reception desk outside declared emergencies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RegistrationRules {
    /// Departments whose staff may register provisional patients at any
    /// time (e.g. the emergency room).
    #[serde(default)]
    pub always_departments: Vec<String>,
}

/// One problem in a plan, by location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanError {
    /// Where: a dotted path into the plan (`criteria[0].id`), or `line N` for
    /// a TOML syntax error.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl Plan {
    /// Parses and validates a TOML plan.
    pub fn from_toml(text: &str) -> Result<Plan, Vec<PlanError>> {
        let plan: Plan = toml::from_str(text).map_err(|e| {
            let path = e.span().map(|s| line_of(text, s.start)).unwrap_or_default();
            vec![PlanError { path, message: e.message().to_owned() }]
        })?;
        plan.validate()?;
        Ok(plan)
    }

    /// The plan as TOML (what [`Plan::from_toml`] reads back).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks what serde cannot: ids, references, completeness.
    pub fn validate(&self) -> Result<(), Vec<PlanError>> {
        let mut errs = Vec::new();
        let mut e = |path: &str, message: &str| errs.push(PlanError { path: path.into(), message: message.into() });
        if self.criteria.is_empty() {
            e("criteria", "define at least one criterion of an emergency");
        }
        let mut ids = BTreeSet::new();
        for (i, c) in self.criteria.iter().enumerate() {
            if !is_slug(&c.id) {
                e(&format!("criteria[{i}].id"), "ids are 1-64 of a-z, 0-9, '-', '_'");
            }
            if !ids.insert(c.id.clone()) {
                e(&format!("criteria[{i}].id"), &format!("duplicate criterion id '{}'", c.id));
            }
            if c.description.ja.trim().is_empty() || c.description.en.trim().is_empty() {
                e(&format!("criteria[{i}].description"), "a description in Japanese and English is required");
            }
        }
        if self.deciders.users.is_empty() && self.deciders.roles.is_empty() {
            e("deciders", "name the users or roles entitled to declare an emergency");
        }
        if self.team.is_empty() {
            e("team", "the emergency team contact list is empty");
        }
        for (i, c) in self.team.iter().enumerate() {
            if c.phone.is_none() && c.email.is_none() && c.alternate.is_empty() {
                e(&format!("team[{i}]"), "give at least one way to reach this person");
            }
        }
        for phase in Phase::ALL {
            match self.checklists.get(&phase) {
                None => e(&format!("checklists.{}", phase.as_str()), "missing: every phase needs its checklist"),
                Some(items) if items.is_empty() => e(&format!("checklists.{}", phase.as_str()), "empty checklist"),
                Some(items) => {
                    let mut seen = BTreeSet::new();
                    for (i, it) in items.iter().enumerate() {
                        let p = format!("checklists.{}[{i}]", phase.as_str());
                        if !is_slug(&it.id) {
                            e(&format!("{p}.id"), "ids are 1-64 of a-z, 0-9, '-', '_'");
                        }
                        if !seen.insert(it.id.clone()) {
                            e(&format!("{p}.id"), &format!("duplicate item id '{}'", it.id));
                        }
                        if it.text.ja.trim().is_empty() || it.text.en.trim().is_empty() {
                            e(&format!("{p}.text"), "text in Japanese and English is required");
                        }
                    }
                }
            }
        }
        if self.break_glass.default_minutes == 0 || self.break_glass.default_minutes > self.break_glass.max_minutes {
            e("break_glass", "default_minutes must be between 1 and max_minutes");
        }
        if self.break_glass.max_minutes > 24 * 60 {
            e("break_glass.max_minutes", "at most 1440 (24 hours)");
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    /// The criterion with this id.
    pub fn criterion(&self, id: &str) -> Option<&Criterion> {
        self.criteria.iter().find(|c| c.id == id)
    }

    /// The rules in force in a phase (all off if the plan gives none).
    pub fn rules(&self, phase: Phase) -> PhaseRules {
        self.rules.get(&phase).copied().unwrap_or_default()
    }

    /// May this user (with these roles) declare an emergency?
    pub fn is_decider(&self, user: &str, roles: &[Role]) -> bool {
        self.deciders.users.iter().any(|u| u == user) || roles.iter().any(|r| self.deciders.roles.contains(r))
    }
    /// Whether the plan names this user (or one of its roles) as keeper of
    /// the medical records.
    pub fn is_records_manager(&self, user: &str, roles: &[Role]) -> bool {
        self.records.users.iter().any(|u| u == user) || roles.iter().any(|r| self.records.roles.contains(r))
    }

    /// The criteria that fit a detected cause (offered with alerts).
    pub fn criteria_for(&self, cause: Cause) -> Vec<&Criterion> {
        self.criteria.iter().filter(|c| c.cause == cause).collect()
    }

    /// The required items of a phase's checklist.
    pub fn required_items(&self, phase: Phase) -> Vec<&ChecklistItem> {
        self.checklists.get(&phase).map(|v| v.iter().filter(|i| i.required).collect()).unwrap_or_default()
    }

    /// The plan every new installation starts with: the guideline's items,
    /// the bcp-decider role, a placeholder team to be replaced.
    pub fn default_plan() -> Plan {
        // The example plan shipped in docs/ is the source of truth for the
        // defaults; it is compiled in so that a new installation has one.
        // An invalid built-in plan is a build defect caught by the tests.
        Plan::from_toml(DEFAULT_PLAN).unwrap_or_else(|_| Plan {
            title: Text { ja: "事業継続計画".into(), en: "Business continuity plan".into() },
            policy: Text::default(),
            criteria: Vec::new(),
            deciders: Deciders::default(),
            detection: Detection::default(),
            team: Vec::new(),
            contractors: Vec::new(),
            documents: Vec::new(),
            checklists: BTreeMap::new(),
            rules: BTreeMap::new(),
            break_glass: BreakGlassRules::default(),
            registration: RegistrationRules::default(),
            records: RecordsRules::default(),
        })
    }
}

/// The example plan for a mid-size hospital (docs/example-bcp-plan.toml).
pub const DEFAULT_PLAN: &str = include_str!("../../../docs/example-bcp-plan.toml");

fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn line_of(text: &str, offset: usize) -> String {
    let line = text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1;
    format!("line {line}")
}

// ---- the state machine ----------------------------------------------------------------

/// Where a declaration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeclState {
    /// Waiting for a second decider's confirmation (two-person rule).
    Proposed,
    /// Declared and in force, in this phase.
    Active(Phase),
    /// Returned to normal after full recovery.
    Closed,
    /// Found during activation to be an ordinary fault, or withdrawn.
    StoodDown,
}

impl DeclState {
    /// The state's name in the database and the API: `proposed`, a phase
    /// name, `closed` or `stood_down`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeclState::Proposed => "proposed",
            DeclState::Active(p) => p.as_str(),
            DeclState::Closed => "closed",
            DeclState::StoodDown => "stood_down",
        }
    }
    /// Parses a name made by [`DeclState::as_str`].
    pub fn parse(s: &str) -> Option<DeclState> {
        match s {
            "proposed" => Some(DeclState::Proposed),
            "closed" => Some(DeclState::Closed),
            "stood_down" => Some(DeclState::StoodDown),
            other => Phase::parse(other).map(DeclState::Active),
        }
    }
    /// Whether the declaration can still change (proposed or active).
    pub fn is_open(self) -> bool {
        matches!(self, DeclState::Proposed | DeclState::Active(_))
    }
}

/// What happens to a declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BcpEvent {
    /// The second decider confirms a proposed declaration.
    Confirm,
    /// Move to the next phase.
    Advance(Phase),
    /// From full recovery back to normal: the full-recovery checklist must
    /// be complete, unless a decider overrides with a reason.
    ReturnToNormal {
        /// Whether every required item of the full-recovery checklist is done.
        checklist_complete: bool,
        /// The decider's reason to return to normal with the checklist
        /// incomplete.
        override_reason: Option<String>,
    },
    /// During activation (or while proposed): not an emergency after all.
    StandDown {
        /// Why (required, not blank).
        reason: String,
    },
}

/// Why a declaration cannot make a transition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    /// A phase skipped or repeated: phases advance one at a time.
    #[error("cannot go from {from} to {to}: phases advance one at a time (activation → resumption → recovery → full_recovery → normal)")]
    Skip {
        /// The declaration's state.
        from: &'static str,
        /// The phase asked for.
        to: &'static str,
    },
    /// The declaration is closed or stood down (its state's name).
    #[error("the declaration is {0}; it cannot change any more")]
    Ended(&'static str),
    /// A confirmation of a declaration that is not proposed.
    #[error("only a proposed declaration can be confirmed")]
    NotProposed,
    /// Return to normal with the checklist incomplete and no override reason.
    #[error("the full-recovery checklist is incomplete: finish it, or override with a reason")]
    ChecklistIncomplete,
    /// Return to normal from a state other than full recovery (its name).
    #[error("return to normal is possible only from full_recovery (now {0})")]
    NotFullRecovery(&'static str),
    /// A stand-down after activation (the state's name).
    #[error("a declaration can be stood down only while proposed or in activation (now {0})")]
    TooLateToStandDown(&'static str),
    /// A stand-down without a reason.
    #[error("a reason is required")]
    ReasonRequired,
}

impl DeclState {
    /// The one transition function of the BCP state machine.
    pub fn apply(self, ev: &BcpEvent) -> Result<DeclState, TransitionError> {
        use DeclState::*;
        if let Closed | StoodDown = self {
            return Err(TransitionError::Ended(self.as_str()));
        }
        match ev {
            BcpEvent::Confirm => match self {
                Proposed => Ok(Active(Phase::Activation)),
                _ => Err(TransitionError::NotProposed),
            },
            BcpEvent::Advance(to) => {
                let next = match self {
                    Active(Phase::Activation) => Some(Phase::Resumption),
                    Active(Phase::Resumption) => Some(Phase::Recovery),
                    Active(Phase::Recovery) => Some(Phase::FullRecovery),
                    _ => None,
                };
                match next {
                    Some(n) if n == *to => Ok(Active(n)),
                    _ => Err(TransitionError::Skip { from: self.as_str(), to: to.as_str() }),
                }
            }
            BcpEvent::ReturnToNormal { checklist_complete, override_reason } => match self {
                Active(Phase::FullRecovery) => {
                    if *checklist_complete {
                        Ok(Closed)
                    } else {
                        match override_reason {
                            Some(r) if !r.trim().is_empty() => Ok(Closed),
                            _ => Err(TransitionError::ChecklistIncomplete),
                        }
                    }
                }
                other => Err(TransitionError::NotFullRecovery(other.as_str())),
            },
            BcpEvent::StandDown { reason } => {
                if reason.trim().is_empty() {
                    return Err(TransitionError::ReasonRequired);
                }
                match self {
                    Proposed | Active(Phase::Activation) => Ok(StoodDown),
                    other => Err(TransitionError::TooLateToStandDown(other.as_str())),
                }
            }
        }
    }
}

// ---- break-glass grants ---------------------------------------------------------------

/// A break-glass request checked against the plan.
pub fn check_break_glass(reason: &str, minutes: Option<u32>, rules: &BreakGlassRules) -> Result<u32, String> {
    if reason.trim().chars().count() < 10 {
        return Err("a reason of at least 10 characters is required (what is happening, why this patient)".into());
    }
    if reason.chars().count() > 2000 {
        return Err("the reason is longer than 2000 characters".into());
    }
    let m = minutes.unwrap_or(rules.default_minutes);
    if m == 0 || m > rules.max_minutes {
        return Err(format!("duration must be between 1 and {} minutes", rules.max_minutes));
    }
    Ok(m)
}

/// Review outcomes of a break-glass use or a maintenance session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewOutcome {
    /// The use was justified.
    Accepted,
    /// The use needs follow-up: the reviewer doubts it was justified.
    Questioned,
}

// ---- emergency accounts -----------------------------------------------------------------

/// The life of a sealed emergency account (EM-B8, EM-C3a/c).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountState {
    /// Provisioned; its sealed envelope has not been printed yet.
    AwaitingEnvelope,
    /// The credential exists only on the printed envelope.
    Sealed,
    /// Unsealed during an emergency.
    InUse,
    /// Used and retired at return to normal (or withdrawn): never works again.
    Retired,
}

impl AccountState {
    /// The state's name in the database and the API (`awaiting_envelope`).
    pub fn as_str(self) -> &'static str {
        match self {
            AccountState::AwaitingEnvelope => "awaiting_envelope",
            AccountState::Sealed => "sealed",
            AccountState::InUse => "in_use",
            AccountState::Retired => "retired",
        }
    }
    /// Parses a name made by [`AccountState::as_str`].
    pub fn parse(s: &str) -> Option<AccountState> {
        [AccountState::AwaitingEnvelope, AccountState::Sealed, AccountState::InUse, AccountState::Retired]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

/// What happens to an emergency account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountEvent {
    /// Its sealed envelope was printed.
    EnvelopePrinted,
    /// A login while an emergency (of the account's kind: real or drill) is declared.
    Unseal,
    /// Return to normal: a used account is retired.
    Retire,
}

impl AccountState {
    /// The one transition function of an emergency account's life; the error
    /// says why the event is not possible.
    pub fn apply(self, ev: AccountEvent) -> Result<AccountState, String> {
        use AccountState::*;
        match (self, ev) {
            (AwaitingEnvelope, AccountEvent::EnvelopePrinted) => Ok(Sealed),
            (Sealed, AccountEvent::Unseal) | (InUse, AccountEvent::Unseal) => Ok(InUse),
            (Retired, _) => Err("the account is retired and can never be used again".into()),
            (_, AccountEvent::Retire) => Ok(Retired),
            (AwaitingEnvelope, AccountEvent::Unseal) => Err("the account's envelope was never printed".into()),
            (s, e) => Err(format!("{e:?} is not possible for an account that is {}", s.as_str())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeclState::*;
    use Phase::*;

    #[test]
    fn example_plan_is_valid_and_complete() {
        let p = Plan::from_toml(DEFAULT_PLAN).unwrap();
        assert!(p.criteria.len() >= 4);
        for phase in Phase::ALL {
            assert!(!p.required_items(phase).is_empty(), "{phase:?}");
        }
        assert!(!p.criteria_for(Cause::CyberAttack).is_empty());
        assert!(p.is_decider("nobody", &[Role::BcpDecider]));
        // round trip
        assert_eq!(Plan::from_toml(&p.to_toml()).unwrap(), p);
    }

    #[test]
    fn plan_errors_name_the_place() {
        let bad = DEFAULT_PLAN.replacen("cause = \"cyber_attack\"", "cause = \"aliens\"", 1);
        let e = Plan::from_toml(&bad).unwrap_err();
        assert!(e[0].path.starts_with("line "), "{e:?}");
        let mut p = Plan::from_toml(DEFAULT_PLAN).unwrap();
        p.checklists.remove(&Recovery);
        p.criteria.push(p.criteria[0].clone());
        p.deciders = Deciders::default();
        p.break_glass.default_minutes = 0;
        let e = p.validate().unwrap_err();
        let paths: Vec<&str> = e.iter().map(|x| x.path.as_str()).collect();
        assert!(paths.contains(&"checklists.recovery"), "{paths:?}");
        assert!(paths.iter().any(|p| p.starts_with("criteria[")), "{paths:?}");
        assert!(paths.contains(&"deciders"));
        assert!(paths.contains(&"break_glass"));
        assert!(Plan::from_toml("title = 1").is_err());
        assert!(Plan::from_toml("not toml [").is_err());
    }

    #[test]
    fn every_legal_transition() {
        let done = BcpEvent::ReturnToNormal { checklist_complete: true, override_reason: None };
        assert_eq!(Proposed.apply(&BcpEvent::Confirm), Ok(Active(Activation)));
        assert_eq!(Active(Activation).apply(&BcpEvent::Advance(Resumption)), Ok(Active(Resumption)));
        assert_eq!(Active(Resumption).apply(&BcpEvent::Advance(Recovery)), Ok(Active(Recovery)));
        assert_eq!(Active(Recovery).apply(&BcpEvent::Advance(FullRecovery)), Ok(Active(FullRecovery)));
        assert_eq!(Active(FullRecovery).apply(&done), Ok(Closed));
        let over = BcpEvent::ReturnToNormal {
            checklist_complete: false,
            override_reason: Some("ward power restored; items verified by phone".into()),
        };
        assert_eq!(Active(FullRecovery).apply(&over), Ok(Closed));
        let sd = BcpEvent::StandDown { reason: "ordinary fault".into() };
        assert_eq!(Active(Activation).apply(&sd), Ok(StoodDown));
        assert_eq!(Proposed.apply(&sd), Ok(StoodDown));
    }

    #[test]
    fn every_illegal_transition_is_refused() {
        let states = [
            Proposed,
            Active(Activation),
            Active(Resumption),
            Active(Recovery),
            Active(FullRecovery),
            Closed,
            StoodDown,
        ];
        let mut legal = 0;
        for s in states {
            for to in Phase::ALL {
                let r = s.apply(&BcpEvent::Advance(to));
                let ok = matches!(
                    (s, to),
                    (Active(Activation), Resumption)
                        | (Active(Resumption), Recovery)
                        | (Active(Recovery), FullRecovery)
                );
                assert_eq!(r.is_ok(), ok, "{s:?} -> {to:?}");
                legal += usize::from(ok);
            }
            let r = s.apply(&BcpEvent::Confirm);
            assert_eq!(r.is_ok(), s == Proposed, "{s:?} confirm");
            let r = s.apply(&BcpEvent::ReturnToNormal { checklist_complete: true, override_reason: None });
            assert_eq!(r.is_ok(), s == Active(FullRecovery), "{s:?} return");
            let r = s.apply(&BcpEvent::StandDown { reason: "x".into() });
            assert_eq!(r.is_ok(), matches!(s, Proposed | Active(Activation)), "{s:?} stand down");
        }
        assert_eq!(legal, 3);
        assert_eq!(
            Active(FullRecovery).apply(&BcpEvent::ReturnToNormal { checklist_complete: false, override_reason: None }),
            Err(TransitionError::ChecklistIncomplete)
        );
        assert_eq!(
            Active(FullRecovery)
                .apply(&BcpEvent::ReturnToNormal { checklist_complete: false, override_reason: Some("  ".into()) }),
            Err(TransitionError::ChecklistIncomplete)
        );
        assert_eq!(
            Active(Activation).apply(&BcpEvent::StandDown { reason: " ".into() }),
            Err(TransitionError::ReasonRequired)
        );
    }

    #[test]
    fn break_glass_limits() {
        let r = BreakGlassRules::default();
        assert_eq!(check_break_glass("unconscious patient in ER, no records", None, &r), Ok(60));
        assert!(check_break_glass("short", None, &r).is_err());
        assert!(check_break_glass("unconscious patient in ER", Some(0), &r).is_err());
        assert!(check_break_glass("unconscious patient in ER", Some(481), &r).is_err());
        assert_eq!(check_break_glass("unconscious patient in ER", Some(480), &r), Ok(480));
    }

    #[test]
    fn account_lifecycle() {
        use AccountEvent::*;
        use AccountState::*;
        assert_eq!(AwaitingEnvelope.apply(EnvelopePrinted), Ok(Sealed));
        assert!(AwaitingEnvelope.apply(Unseal).is_err());
        assert_eq!(Sealed.apply(Unseal), Ok(InUse));
        assert_eq!(InUse.apply(Retire), Ok(Retired));
        assert!(Retired.apply(Unseal).is_err());
        assert!(Retired.apply(EnvelopePrinted).is_err());
        assert!(Sealed.apply(EnvelopePrinted).is_err());
    }
}
