//! The operating mode every request is decided under (rule 3, "the mode is
//! explicit"): normal, or a phase of a declared emergency, or a drill.

use std::fmt;

/// The phases of a declared emergency (guideline 6.9 EM-B2..B5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Initial response: confirm the event, set up the HQ, switch to alternate
    /// operation (EM-B2).
    Activation,
    /// Core functions resume with alternate means (EM-B3).
    Resumption,
    /// The scope widens and full recovery is planned (EM-B4).
    Recovery,
    /// Switch-back, restore and reconciliation; its checklist is required
    /// before the return to normal (EM-B5).
    FullRecovery,
}

impl Phase {
    /// The phases in order.
    pub const ALL: [Phase; 4] = [Phase::Activation, Phase::Resumption, Phase::Recovery, Phase::FullRecovery];
    /// The phase's name in plans, the database and the API (`full_recovery`).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Activation => "activation",
            Phase::Resumption => "resumption",
            Phase::Recovery => "recovery",
            Phase::FullRecovery => "full_recovery",
        }
    }
    /// Parses a name made by [`Phase::as_str`].
    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// The current operating mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Mode {
    /// No emergency is declared.
    Normal,
    /// An emergency (or a drill of one) is declared and in force.
    Emergency {
        /// The phase it is in.
        phase: Phase,
        /// Whether it is a drill: rules are exercised but grant nothing real.
        drill: bool,
        /// Whether the plan opens clinical access to all patients in this
        /// phase (ETREAT). In a drill this is evaluated but never granted.
        open_access: bool,
        /// Whether registration without the reception desk is allowed.
        registration: bool,
    },
}

impl Mode {
    /// No emergency or drill is declared.
    pub fn is_normal(&self) -> bool {
        matches!(self, Mode::Normal)
    }
    /// A real (not drill) emergency is declared.
    pub fn is_real_emergency(&self) -> bool {
        matches!(self, Mode::Emergency { drill: false, .. })
    }
    /// A drill is declared.
    pub fn is_drill(&self) -> bool {
        matches!(self, Mode::Emergency { drill: true, .. })
    }
    /// The value of the `Mamori-Mode` header and of the audit event's mode:
    /// `normal`, `emergency; phase=activation`, `drill; phase=activation`.
    pub fn header_value(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Normal => f.write_str("normal"),
            Mode::Emergency { phase, drill: false, .. } => write!(f, "emergency; phase={}", phase.as_str()),
            Mode::Emergency { phase, drill: true, .. } => write!(f, "drill; phase={}", phase.as_str()),
        }
    }
}
