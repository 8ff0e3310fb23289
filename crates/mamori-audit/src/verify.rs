//! The offline verifier: recomputes every leaf hash, rebuilds the tree,
//! and checks every checkpoint's signature and root, in one pass over the
//! events in index order. Used on a data directory and on an export file;
//! it needs nothing but the leaves, the checkpoints and the verifier key.
//!
//! It reports the first problem it finds, by event index or checkpoint
//! size, in words an auditor can act on.

use std::collections::BTreeMap;

use crate::merkle::{leaf_hash, Frontier, Hash};
use crate::note::{Checkpoint, NoteVerifier};

/// Something that does not match.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Finding {
    /// Events are missing between two that are present.
    #[error("event {first}: missing (events {first}..{next} were removed: the log jumps to event {next})")]
    Gap {
        /// The first missing index.
        first: u64,
        /// The index of the next event present.
        next: u64,
    },
    /// An event's bytes do not hash to the leaf hash stored for proofs.
    #[error("event {index}: its bytes do not match its recorded leaf hash (the event was edited)")]
    LeafMismatch {
        /// The event's index.
        index: u64,
    },
    /// An event that is unreadable, not canonical or out of order.
    #[error("event {index}: {why}")]
    BadEvent {
        /// The event's index.
        index: u64,
        /// What is wrong with it.
        why: String,
    },
    /// A checkpoint whose signature does not verify.
    #[error("checkpoint {size}: signature does not verify with {key} ({why})")]
    BadSignature {
        /// The tree size it is stored under.
        size: u64,
        /// The name of the verifier key.
        key: String,
        /// Why it does not verify.
        why: String,
    },
    /// A checkpoint signed for another log.
    #[error("checkpoint {size}: origin '{found}' is not this log's ('{expected}')")]
    WrongOrigin {
        /// The checkpoint's tree size.
        size: u64,
        /// This log's origin.
        expected: String,
        /// The checkpoint's origin.
        found: String,
    },
    /// The events up to a checkpoint's size do not hash to its root.
    #[error("checkpoint {size}: the events up to it hash to a different root (events {from}..{size} were altered, reordered or removed)")]
    RootMismatch {
        /// The checkpoint's tree size.
        size: u64,
        /// The size of the last checkpoint that matched (the change is
        /// after it).
        from: u64,
    },
    /// A checkpoint covers more events than the log has.
    #[error("checkpoint {size}: the log has only {have} events (it was truncated)")]
    Truncated {
        /// The checkpoint's tree size.
        size: u64,
        /// The number of events the log has.
        have: u64,
    },
    /// A checkpoint stored under a size other than its own.
    #[error("checkpoint {size}: stored under size {stored_as}")]
    Misfiled {
        /// The tree size in the signed checkpoint.
        size: u64,
        /// The size it is stored under.
        stored_as: u64,
    },
    /// A Merkle node stored for proofs differs from the recomputed tree.
    #[error("merkle node ({level}, {index}) stored for proofs does not match the events")]
    NodeMismatch {
        /// The node's level (0 for a leaf).
        level: u32,
        /// The node's index within its level.
        index: u64,
    },
    /// Derived data (query columns, the patient index) disagrees with the
    /// events: reports built from it would mislead.
    #[error("event {index}: {why}")]
    IndexMismatch {
        /// The event's index.
        index: u64,
        /// What disagrees.
        why: String,
    },
    /// A stored record version disagrees with the digest the audit log
    /// bound for it, or is stored without one, or is bound but missing.
    #[error("record {reference}: {why}")]
    RecordMismatch {
        /// `Type/id/_history/version`.
        reference: String,
        /// What disagrees.
        why: String,
    },
}

impl Finding {
    /// Problems with the evidence itself come before problems with data
    /// derived from it.
    fn rank(&self) -> u8 {
        match self {
            Finding::NodeMismatch { .. } | Finding::IndexMismatch { .. } | Finding::RecordMismatch { .. } => 1,
            _ => 0,
        }
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The number of events read.
    pub events: u64,
    /// The number of checkpoints read.
    pub checkpoints: u64,
    /// The root hash of the tree the events make (set by [`LogVerifier::finish`]).
    pub root: Option<Hash>,
    /// The newest checkpoint whose root matched.
    pub last_good_checkpoint: Option<u64>,
    /// What did not match: at most 50, problems with the evidence first.
    pub findings: Vec<Finding>,
    /// Deep verification: the number of stored record versions whose bytes
    /// were checked against the digests the log binds.
    pub records: Option<u64>,
}

impl Report {
    /// Whether nothing was found.
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Feeds leaves in order; checkpoints are checked when the tree reaches
/// their size.
pub struct LogVerifier {
    vkey: NoteVerifier,
    origin: String,
    frontier: Frontier,
    pending: BTreeMap<u64, Vec<(u64, String)>>,
    last_good: u64,
    next_index: u64,
    report: Report,
}

const MAX_FINDINGS: usize = 50;

impl LogVerifier {
    /// `start` is the frontier the leaves continue (empty for a whole log).
    pub fn new(vkey: NoteVerifier, origin: &str, start: Frontier) -> Self {
        let next = start.size();
        LogVerifier {
            vkey,
            origin: origin.to_owned(),
            last_good: next,
            next_index: next,
            frontier: start,
            pending: BTreeMap::new(),
            report: Report::default(),
        }
    }

    fn find(&mut self, f: Finding) {
        if self.report.findings.len() < MAX_FINDINGS {
            self.report.findings.push(f);
        }
    }

    /// Registers a checkpoint note as stored under `stored_size`.
    pub fn checkpoint(&mut self, stored_size: u64, note: &str) {
        self.report.checkpoints += 1;
        let cp = match Checkpoint::open(note, &self.vkey) {
            Ok((cp, _)) => cp,
            Err(e) => {
                self.find(Finding::BadSignature { size: stored_size, key: self.vkey.name.clone(), why: e.to_string() });
                return;
            }
        };
        if cp.size != stored_size {
            self.find(Finding::Misfiled { size: cp.size, stored_as: stored_size });
            return;
        }
        if cp.origin != self.origin {
            self.find(Finding::WrongOrigin { size: cp.size, expected: self.origin.clone(), found: cp.origin.clone() });
            return;
        }
        if cp.size < self.frontier.size() {
            // Before the start of an export: covered by the start frontier.
            return;
        }
        self.pending.entry(cp.size).or_default().push((stored_size, mamori_hash_b64(&cp.root)));
        if cp.size == self.frontier.size() {
            self.settle();
        }
    }

    /// Adds the next leaf. `recorded` is the leaf hash the store kept for
    /// proofs, if any, to name an edited event precisely.
    pub fn leaf(&mut self, index: u64, bytes: &[u8], recorded: Option<&Hash>) {
        if index != self.next_index {
            if index > self.next_index {
                self.find(Finding::Gap { first: self.next_index, next: index });
            } else {
                self.find(Finding::BadEvent { index, why: "out of order".into() });
            }
            self.next_index = index;
        }
        let h = leaf_hash(bytes);
        if recorded.is_some_and(|r| *r != h) {
            self.find(Finding::LeafMismatch { index });
        }
        self.frontier.append(h, |_, _| {});
        self.next_index += 1;
        self.report.events += 1;
        if self.pending.contains_key(&self.frontier.size()) {
            self.settle();
        }
    }

    /// A problem found by the caller with one event (e.g. non-canonical).
    pub fn event_problem(&mut self, index: u64, why: String) {
        self.find(Finding::BadEvent { index, why });
    }

    /// Derived data of one event (columns, patient index) is wrong.
    pub fn index_problem(&mut self, index: u64, why: String) {
        self.find(Finding::IndexMismatch { index, why });
    }

    /// A stored record version that does not match the log's binding.
    pub fn record_problem(&mut self, reference: String, why: String) {
        self.find(Finding::RecordMismatch { reference, why });
    }

    /// Deep verification: how many record versions were checked.
    pub fn records_checked(&mut self, n: u64) {
        self.report.records = Some(n);
    }

    /// A stored proof node that does not match the recomputed tree.
    pub fn node_problem(&mut self, level: u32, index: u64) {
        self.find(Finding::NodeMismatch { level, index });
    }

    fn settle(&mut self) {
        let size = self.frontier.size();
        let root = mamori_hash_b64(&self.frontier.root());
        if let Some(list) = self.pending.remove(&size) {
            for (_, expected) in list {
                if expected == root {
                    self.last_good = size;
                    self.report.last_good_checkpoint = Some(size);
                } else {
                    let from = self.last_good;
                    self.find(Finding::RootMismatch { size, from });
                }
            }
        }
    }

    /// Ends the pass: checkpoints never reached are reported as truncation;
    /// returns the report.
    pub fn finish(mut self) -> Report {
        let have = self.frontier.size();
        let pending: Vec<u64> = self.pending.keys().copied().collect();
        for size in pending {
            self.find(Finding::Truncated { size, have });
        }
        self.report.root = Some(self.frontier.root());
        self.report.findings.sort_by_key(Finding::rank);
        self.report
    }

    /// The tree built so far (for node comparisons).
    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }
}

fn mamori_hash_b64(h: &Hash) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::MemTree;
    use crate::note::{generate_pkcs8, NoteSigner};

    fn setup(n: u64, cps: &[u64]) -> (NoteSigner, Vec<Vec<u8>>, Vec<(u64, String)>) {
        let s = NoteSigner::from_pkcs8("t/audit", &generate_pkcs8().unwrap()).unwrap();
        let leaves: Vec<Vec<u8>> = (0..n).map(|i| format!("event {i}").into_bytes()).collect();
        let mut t = MemTree::new();
        let mut notes = Vec::new();
        for (i, l) in leaves.iter().enumerate() {
            t.push(l);
            if cps.contains(&(i as u64 + 1)) {
                let cp = Checkpoint { origin: "t/audit".into(), size: t.size(), root: t.root(), extensions: vec![] };
                notes.push((t.size(), cp.sign(&s)));
            }
        }
        (s, leaves, notes)
    }

    fn run(s: &NoteSigner, leaves: &[(u64, Vec<u8>)], notes: &[(u64, String)]) -> Report {
        let mut v = LogVerifier::new(s.verifier(), "t/audit", Frontier::new());
        for (size, n) in notes {
            v.checkpoint(*size, n);
        }
        for (i, l) in leaves {
            v.leaf(*i, l, None);
        }
        v.finish()
    }

    fn indexed(l: &[Vec<u8>]) -> Vec<(u64, Vec<u8>)> {
        l.iter().cloned().enumerate().map(|(i, b)| (i as u64, b)).collect()
    }

    #[test]
    fn intact_log_verifies() {
        let (s, leaves, notes) = setup(100, &[1, 10, 64, 100]);
        let r = run(&s, &indexed(&leaves), &notes);
        assert!(r.ok(), "{:?}", r.findings);
        assert_eq!(r.last_good_checkpoint, Some(100));
    }

    #[test]
    fn each_tampering_is_named() {
        let (s, leaves, notes) = setup(100, &[10, 50, 100]);
        // edited event 30
        let mut l = indexed(&leaves);
        l[30].1 = b"forged".to_vec();
        let r = run(&s, &l, &notes);
        assert_eq!(r.findings.first(), Some(&Finding::RootMismatch { size: 50, from: 10 }));
        // deleted event 70
        let mut l = indexed(&leaves);
        l.remove(70);
        let r = run(&s, &l, &notes);
        assert_eq!(r.findings.first(), Some(&Finding::Gap { first: 70, next: 71 }));
        // swapped events 5 and 6
        let mut l = indexed(&leaves);
        let a = l[5].1.clone();
        l[5].1 = l[6].1.clone();
        l[6].1 = a;
        let r = run(&s, &l, &notes);
        assert_eq!(r.findings.first(), Some(&Finding::RootMismatch { size: 10, from: 0 }));
        // truncated to 80
        let l = indexed(&leaves[..80]);
        let r = run(&s, &l, &notes);
        assert_eq!(r.findings.first(), Some(&Finding::Truncated { size: 100, have: 80 }));
        // replaced signature
        let mut n = notes.clone();
        let other = NoteSigner::from_pkcs8("t/audit", &generate_pkcs8().unwrap()).unwrap();
        let cp = Checkpoint::parse_body(&crate::note::SignedNote::parse(&n[1].1).unwrap().body).unwrap();
        n[1].1 = cp.sign(&other);
        let r = run(&s, &indexed(&leaves), &n);
        assert!(matches!(r.findings.first(), Some(Finding::BadSignature { size: 50, .. })), "{:?}", r.findings);
    }

    #[test]
    fn export_from_a_frontier() {
        let (s, leaves, notes) = setup(40, &[20, 40]);
        let mut t = MemTree::new();
        for l in &leaves[..20] {
            t.push(l);
        }
        let mut v = LogVerifier::new(s.verifier(), "t/audit", t.frontier().clone());
        for (size, n) in &notes {
            v.checkpoint(*size, n);
        }
        for (i, l) in leaves.iter().enumerate().skip(20) {
            v.leaf(i as u64, l, None);
        }
        let r = v.finish();
        assert!(r.ok(), "{:?}", r.findings);
        assert_eq!(r.events, 20);
    }
}
