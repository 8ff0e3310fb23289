//! Care without the normal system (guideline 6.9 EM-B9, EM-C2,
//! GL-BACKUP), the rules without IO: provisional patient identifiers and
//! who may register without the reception desk, the reference rewriting of
//! a patient merge, the reconciliation decision for an entry recorded
//! offline, and Shamir secret sharing for the custodians of snapshot keys.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::mode::Mode;

// ---- registration without reception ---------------------------------------------------

/// The identifier system of provisional patient ids.
pub const PROVISIONAL_SYSTEM: &str = "urn:mamori:provisional-id";
/// The meta tag that marks provisional patients and standalone entries.
pub const TAG_SYSTEM: &str = "urn:mamori:tags";

/// `T-<yyyymmdd>-<node>-<nnnn>`: unique per day and node, so that
/// standalone nodes never collide with each other or with the centre.
pub fn provisional_id(ymd: (i64, u32, u32), node: &str, n: u64) -> String {
    format!("T-{:04}{:02}{:02}-{}-{:04}", ymd.0, ymd.1, ymd.2, node, n)
}

/// Whether a node id is usable in identifiers (1-12 letters/digits).
pub fn valid_node(node: &str) -> bool {
    (1..=12).contains(&node.len()) && node.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// START triage categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Triage {
    /// 赤: immediate.
    Red,
    /// 黄: delayed.
    Yellow,
    /// 緑: minor.
    Green,
    /// 黒: expectant / deceased.
    Black,
}

impl Triage {
    /// The category's code in the patient's triage extension and audit detail (`red`).
    pub fn as_str(self) -> &'static str {
        match self {
            Triage::Red => "red",
            Triage::Yellow => "yellow",
            Triage::Green => "green",
            Triage::Black => "black",
        }
    }
    /// The category as shown to staff, in Japanese and English.
    pub fn label(self) -> &'static str {
        match self {
            Triage::Red => "赤 / immediate",
            Triage::Yellow => "黄 / delayed",
            Triage::Green => "緑 / minor",
            Triage::Black => "黒 / expectant",
        }
    }
}

/// May this user register a patient without the reception desk now?
/// In an emergency phase whose rules allow it (real or drill), or at any
/// time for the departments the plan names (e.g. the ER).
pub fn may_register_provisionally(mode: &Mode, department: Option<&str>, always: &[String]) -> Result<(), String> {
    if matches!(mode, Mode::Emergency { registration: true, .. }) {
        return Ok(());
    }
    if department.is_some_and(|d| always.iter().any(|a| a == d)) {
        return Ok(());
    }
    Err(format!(
        "registration without the reception desk is available while the emergency plan allows it{}",
        if always.is_empty() { String::new() } else { format!(", or to the departments {}", always.join(", ")) }
    ))
}

// ---- merge ---------------------------------------------------------------------------

/// Re-points every reference to `Patient/<from>` (relative, or an absolute
/// URL ending in it) to `Patient/<to>`; returns how many were changed.
pub fn repoint_patient(v: &mut Value, from: &str, to: &str) -> usize {
    let rel = format!("Patient/{from}");
    let suffix = format!("/Patient/{from}");
    let mut n = 0;
    fn walk(v: &mut Value, rel: &str, suffix: &str, to: &str, n: &mut usize) {
        match v {
            Value::Object(o) => {
                for (k, val) in o.iter_mut() {
                    if k == "reference" {
                        if let Value::String(s) = val {
                            let bare = s.split("/_history/").next().unwrap_or(s);
                            if bare == rel || bare.ends_with(suffix) {
                                *s = format!("Patient/{to}");
                                *n += 1;
                            }
                            continue;
                        }
                    }
                    walk(val, rel, suffix, to, n);
                }
            }
            Value::Array(a) => {
                for x in a {
                    walk(x, rel, suffix, to, n);
                }
            }
            _ => {}
        }
    }
    walk(v, &rel, &suffix, to, &mut n);
    n
}

// ---- reconciliation ------------------------------------------------------------------

/// The central state of a resource an offline entry concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Central {
    /// The resource's current version number centrally.
    pub version: u64,
    /// Whether the current central version is a deletion.
    pub deleted: bool,
    /// The central content equals the offline content.
    pub same_content: bool,
}

/// What to do with one entry recorded offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Reconcile {
    /// New at the node: create it centrally.
    Create,
    /// Changed offline, unchanged centrally since the snapshot: add the
    /// offline version on top.
    FastForward,
    /// Nothing to do (already applied, or the same content).
    Unchanged,
    /// Changed on both sides (or deleted centrally): keep both, ask a person.
    Conflict {
        /// What was changed where, for the person who resolves it.
        reason: String,
    },
}

/// The data-consistency rule of docs/reconciliation.md: never overwrite a
/// change made elsewhere.
pub fn reconcile(base: Option<u64>, central: Option<Central>) -> Reconcile {
    match (base, central) {
        (_, Some(c)) if c.same_content && !c.deleted => Reconcile::Unchanged,
        (None, None) => Reconcile::Create,
        (None, Some(_)) => {
            Reconcile::Conflict { reason: "a resource with this id exists centrally with other content".into() }
        }
        (Some(b), None) => Reconcile::Conflict {
            reason: format!("the snapshot had version {b}, but the resource no longer exists centrally"),
        },
        (Some(_), Some(c)) if c.deleted => Reconcile::Conflict { reason: "deleted centrally, changed offline".into() },
        (Some(b), Some(c)) if c.version == b => Reconcile::FastForward,
        (Some(b), Some(c)) => Reconcile::Conflict {
            reason: format!("changed centrally (version {} now, {b} in the snapshot) and offline", c.version),
        },
    }
}

// ---- Shamir secret sharing over GF(2^8) ---------------------------------------------------

fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            p ^= a;
        }
        let hi = a & 0x80;
        a <<= 1;
        if hi != 0 {
            a ^= 0x1B;
        }
        b >>= 1;
    }
    p
}

fn gf_inv(a: u8) -> u8 {
    // a^254 = a^-1 in GF(2^8).
    let mut r = 1u8;
    let mut base = a;
    let mut e = 254u32;
    while e > 0 {
        if e & 1 != 0 {
            r = gf_mul(r, base);
        }
        base = gf_mul(base, base);
        e >>= 1;
    }
    r
}

/// One share: its x coordinate (1..=255) and the y bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The x coordinate, 1..=255; distinct for each share of a secret.
    pub x: u8,
    /// The polynomials' values at `x`, one byte per byte of the secret.
    pub y: Vec<u8>,
}

/// Splits `secret` into `n` shares, any `k` of which recover it.
/// `random` must hold `(k - 1) * secret.len()` uniformly random bytes.
pub fn split(secret: &[u8], k: u8, n: u8, random: &[u8]) -> Result<Vec<Share>, String> {
    if k < 1 || n < k {
        return Err(format!("a threshold of {k} of {n} is not possible"));
    }
    let need = (k as usize - 1) * secret.len();
    if random.len() < need {
        return Err("not enough random bytes".into());
    }
    let mut shares: Vec<Share> = (1..=n).map(|x| Share { x, y: Vec::with_capacity(secret.len()) }).collect();
    for (i, &s) in secret.iter().enumerate() {
        let coeffs: Vec<u8> = (0..k as usize - 1).map(|j| random[j * secret.len() + i]).collect();
        for sh in shares.iter_mut() {
            // Horner: s + c1 x + c2 x^2 + ...
            let mut y = 0u8;
            for &c in coeffs.iter().rev() {
                y = gf_mul(y, sh.x) ^ c;
            }
            y = gf_mul(y, sh.x) ^ s;
            sh.y.push(y);
        }
    }
    Ok(shares)
}

/// Recovers the secret from at least the threshold of distinct shares.
/// (With fewer shares the result is simply wrong; callers check it.)
pub fn combine(shares: &[Share]) -> Result<Vec<u8>, String> {
    let len = shares.first().map(|s| s.y.len()).ok_or("no shares")?;
    if shares.iter().any(|s| s.y.len() != len || s.x == 0) {
        return Err("shares of different secrets".into());
    }
    for (i, a) in shares.iter().enumerate() {
        if shares[..i].iter().any(|b| b.x == a.x) {
            return Err(format!("share {} given twice", a.x));
        }
    }
    let mut out = vec![0u8; len];
    for (i, si) in shares.iter().enumerate() {
        // Lagrange basis at 0: prod x_j / (x_j - x_i); subtraction is XOR.
        let mut num = 1u8;
        let mut den = 1u8;
        for (j, sj) in shares.iter().enumerate() {
            if i != j {
                num = gf_mul(num, sj.x);
                den = gf_mul(den, sj.x ^ si.x);
            }
        }
        let l = gf_mul(num, gf_inv(den));
        for (o, &y) in out.iter_mut().zip(&si.y) {
            *o ^= gf_mul(y, l);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mode::Phase;
    use serde_json::json;

    #[test]
    fn shamir_any_k_of_n() {
        let secret: Vec<u8> = (0..32).map(|i| (i * 37 + 11) as u8).collect();
        let random: Vec<u8> = (0..64).map(|i| (i * 101 + 7) as u8).collect();
        let shares = split(&secret, 3, 5, &random).unwrap();
        assert_eq!(shares.len(), 5);
        for combo in [[0, 1, 2], [0, 2, 4], [4, 3, 1], [1, 2, 3]] {
            let pick: Vec<Share> = combo.iter().map(|&i| shares[i].clone()).collect();
            assert_eq!(combine(&pick).unwrap(), secret);
        }
        // Two shares of a 3-threshold give something else.
        assert_ne!(combine(&shares[..2]).unwrap(), secret);
        assert!(combine(&[shares[0].clone(), shares[0].clone()]).is_err());
        assert!(split(&secret, 4, 3, &random).is_err());
        assert!(split(&secret, 3, 5, &random[..10]).is_err());
        // 1-of-n is the secret itself.
        assert_eq!(split(&secret, 1, 2, &[]).unwrap()[1].y, secret);
    }

    #[test]
    fn gf_arithmetic() {
        for a in 1..=255u8 {
            assert_eq!(gf_mul(a, gf_inv(a)), 1);
        }
        assert_eq!(gf_mul(0x57, 0x83), 0xC1); // FIPS-197 example
    }

    #[test]
    fn provisional_ids_and_who_may_register() {
        assert_eq!(provisional_id((2026, 11, 26), "HQ", 42), "T-20261126-HQ-0042");
        assert!(valid_node("ER1") && !valid_node("a-b") && !valid_node(""));
        let em = Mode::Emergency { phase: Phase::Activation, drill: false, open_access: true, registration: true };
        let em_no = Mode::Emergency { phase: Phase::Recovery, drill: false, open_access: false, registration: false };
        let er = vec!["ER".to_owned()];
        assert!(may_register_provisionally(&em, None, &[]).is_ok());
        assert!(may_register_provisionally(&em_no, None, &er).is_err());
        assert!(may_register_provisionally(&Mode::Normal, Some("ER"), &er).is_ok());
        assert!(may_register_provisionally(&Mode::Normal, Some("ICU"), &er).is_err());
    }

    #[test]
    fn merge_repoints_every_reference_form() {
        let mut v = json!({"subject": {"reference": "Patient/a"}, "performer": [{"reference": "Practitioner/a"}],
            "x": [{"reference": "https://h.example/fhir/Patient/a"}, {"reference": "Patient/a/_history/2"}, {"reference": "Patient/ab"}]});
        assert_eq!(repoint_patient(&mut v, "a", "b"), 3);
        assert_eq!(v["subject"]["reference"], "Patient/b");
        assert_eq!(v["performer"][0]["reference"], "Practitioner/a");
        assert_eq!(v["x"][2]["reference"], "Patient/ab");
    }

    #[test]
    fn reconcile_never_overwrites() {
        let c = |version, deleted, same_content| Some(Central { version, deleted, same_content });
        assert_eq!(reconcile(None, None), Reconcile::Create);
        assert_eq!(reconcile(Some(3), c(3, false, false)), Reconcile::FastForward);
        assert!(matches!(reconcile(Some(3), c(4, false, false)), Reconcile::Conflict { .. }));
        assert!(matches!(reconcile(Some(3), c(3, true, false)), Reconcile::Conflict { .. }));
        assert!(matches!(reconcile(Some(3), None), Reconcile::Conflict { .. }));
        assert!(matches!(reconcile(None, c(1, false, false)), Reconcile::Conflict { .. }));
        assert_eq!(reconcile(None, c(1, false, true)), Reconcile::Unchanged);
        assert_eq!(reconcile(Some(3), c(4, false, true)), Reconcile::Unchanged);
    }
}
