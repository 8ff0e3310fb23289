//! Signed checkpoints in the C2SP formats:
//! - `c2sp.org/tlog-checkpoint`: origin line, tree size, base64 root hash,
//!   optional extension lines;
//! - `c2sp.org/signed-note`: a blank line, then signature lines
//!   `— <key name> base64(key id || signature)`, Ed25519 (type 0x01) with
//!   key id `SHA-256(name || "\n" || 0x01 || pubkey)[:4]`;
//! - `c2sp.org/tlog-cosignature`: witness cosignatures (type 0x04) over
//!   `cosignature/v1\ntime <t>\n` followed by the checkpoint body.
//!
//! Private keys live in [`NoteSigner`] only; they are never printed.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::digest::{digest, SHA256};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

use crate::merkle::Hash;

const SIG_ED25519: u8 = 0x01;
const SIG_COSIGNATURE_V1: u8 = 0x04;
const EM_DASH: &str = "\u{2014}";

/// Why a note, a key or a signature is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// The text is not a well-formed signed note or checkpoint (what is wrong).
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    /// A key name or verifier key that does not parse, or a private key that is
    /// not PKCS#8 Ed25519.
    #[error("malformed verifier key")]
    BadKey,
    /// No signature line by this key name verifies.
    #[error("no valid signature by {0}")]
    NoSignature(String),
    /// The system's random generator failed to make a key.
    #[error("key generation failed")]
    KeyGen,
}

fn key_id(name: &str, alg: u8, pubkey: &[u8]) -> [u8; 4] {
    let mut buf = Vec::with_capacity(name.len() + 2 + pubkey.len());
    buf.extend_from_slice(name.as_bytes());
    buf.push(b'\n');
    buf.push(alg);
    buf.extend_from_slice(pubkey);
    let d = digest(&SHA256, &buf);
    let mut id = [0u8; 4];
    id.copy_from_slice(&d.as_ref()[..4]);
    id
}

fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('+') && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// An Ed25519 note signer (the institution's audit key, or a witness key).
pub struct NoteSigner {
    name: String,
    pair: Ed25519KeyPair,
    alg: u8,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteSigner").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Generates a new Ed25519 private key as PKCS#8 DER.
pub fn generate_pkcs8() -> Result<zeroize::Zeroizing<Vec<u8>>, NoteError> {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| NoteError::KeyGen)?;
    Ok(zeroize::Zeroizing::new(doc.as_ref().to_vec()))
}

impl NoteSigner {
    /// A checkpoint signer from a PKCS#8 Ed25519 key.
    pub fn from_pkcs8(name: &str, pkcs8: &[u8]) -> Result<Self, NoteError> {
        Self::new(name, pkcs8, SIG_ED25519)
    }
    /// A witness (cosignature/v1) signer from a PKCS#8 Ed25519 key.
    pub fn cosigner_from_pkcs8(name: &str, pkcs8: &[u8]) -> Result<Self, NoteError> {
        Self::new(name, pkcs8, SIG_COSIGNATURE_V1)
    }
    fn new(name: &str, pkcs8: &[u8], alg: u8) -> Result<Self, NoteError> {
        if !valid_key_name(name) {
            return Err(NoteError::BadKey);
        }
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| NoteError::BadKey)?;
        Ok(NoteSigner { name: name.to_owned(), pair, alg })
    }
    /// The key name (for the institution's audit key, the log's origin).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The public key that verifies this signer's signatures.
    pub fn verifier(&self) -> NoteVerifier {
        let mut pk = [0u8; 32];
        pk.copy_from_slice(self.pair.public_key().as_ref());
        NoteVerifier { name: self.name.clone(), pubkey: pk, alg: self.alg }
    }
    /// Signs a note body, returning the signature line (with newline).
    pub fn sign_line(&self, body: &str) -> String {
        let v = self.verifier();
        let id = key_id(&self.name, self.alg, &v.pubkey);
        let mut blob = id.to_vec();
        blob.extend_from_slice(self.pair.sign(body.as_bytes()).as_ref());
        format!("{EM_DASH} {} {}\n", self.name, B64.encode(blob))
    }
    /// Signs a cosignature over `body` at time `t` (seconds since the epoch).
    pub fn cosign_line(&self, body: &str, t: u64) -> String {
        let v = self.verifier();
        let id = key_id(&self.name, SIG_COSIGNATURE_V1, &v.pubkey);
        let msg = format!("cosignature/v1\ntime {t}\n{body}");
        let mut blob = id.to_vec();
        blob.extend_from_slice(&t.to_be_bytes());
        blob.extend_from_slice(self.pair.sign(msg.as_bytes()).as_ref());
        format!("{EM_DASH} {} {}\n", self.name, B64.encode(blob))
    }
}

/// A public verifier key, encoded as a C2SP vkey `name+hexid+base64(alg||pk)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    /// The key name, as it appears in signature lines.
    pub name: String,
    /// The raw Ed25519 public key.
    pub pubkey: [u8; 32],
    alg: u8,
}

impl NoteVerifier {
    /// Parses a vkey (`name+hexid+base64(alg||pk)`), checking its key id.
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        // The base64 key may itself contain '+': split off name and id only.
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(id_hex), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::BadKey);
        };
        if !valid_key_name(name) {
            return Err(NoteError::BadKey);
        }
        let raw = B64.decode(b64).map_err(|_| NoteError::BadKey)?;
        let (&alg, pk) = raw.split_first().ok_or(NoteError::BadKey)?;
        if (alg != SIG_ED25519 && alg != SIG_COSIGNATURE_V1) || pk.len() != 32 {
            return Err(NoteError::BadKey);
        }
        let mut pubkey = [0u8; 32];
        pubkey.copy_from_slice(pk);
        let v = NoteVerifier { name: name.to_owned(), pubkey, alg };
        if crate::merkle::to_hex(&key_id(name, alg, &pubkey)) != id_hex {
            return Err(NoteError::BadKey);
        }
        Ok(v)
    }
    /// The vkey text: `name+hexid+base64(alg||pk)`.
    pub fn vkey(&self) -> String {
        let id = key_id(&self.name, self.alg, &self.pubkey);
        let mut raw = vec![self.alg];
        raw.extend_from_slice(&self.pubkey);
        format!("{}+{}+{}", self.name, crate::merkle::to_hex(&id), B64.encode(raw))
    }
    /// Whether this is a witness key (cosignature/v1) rather than a
    /// checkpoint signer.
    pub fn is_cosigner(&self) -> bool {
        self.alg == SIG_COSIGNATURE_V1
    }
    /// Checks one signature line's blob against `body`. For cosignatures,
    /// returns the cosignature's timestamp.
    fn check(&self, body: &str, blob: &[u8]) -> Option<Option<u64>> {
        let id = key_id(&self.name, self.alg, &self.pubkey);
        let (got_id, rest) = blob.split_at_checked(4)?;
        if got_id != id {
            return None;
        }
        let pk = UnparsedPublicKey::new(&ED25519, &self.pubkey);
        if self.alg == SIG_COSIGNATURE_V1 {
            let (ts, sig) = rest.split_at_checked(8)?;
            let mut t = [0u8; 8];
            t.copy_from_slice(ts);
            let t = u64::from_be_bytes(t);
            let msg = format!("cosignature/v1\ntime {t}\n{body}");
            pk.verify(msg.as_bytes(), sig).ok().map(|_| Some(t))
        } else {
            pk.verify(body.as_bytes(), rest).ok().map(|_| None)
        }
    }
}

/// A parsed signed note: its body and signature lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNote {
    /// The note's text up to and including the last newline before the blank
    /// line.
    pub body: String,
    /// Each signature line's key name and decoded blob (key id, then for a
    /// cosignature its timestamp, then the signature).
    pub signatures: Vec<(String, Vec<u8>)>,
}

impl SignedNote {
    /// Parses a note's text (at most 1 MiB): body, blank line, signature lines.
    /// Signatures are not checked here: see [`SignedNote::verified_by`].
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        if text.len() > 1 << 20 {
            return Err(NoteError::Malformed("too large"));
        }
        let idx = text.rfind("\n\n").ok_or(NoteError::Malformed("no blank line before signatures"))?;
        let (body, sigs) = text.split_at(idx + 1);
        let sigs = sigs.strip_prefix('\n').ok_or(NoteError::Malformed("no blank line"))?;
        if !sigs.ends_with('\n') {
            return Err(NoteError::Malformed("signature block must end with a newline"));
        }
        let mut signatures = Vec::new();
        for line in sigs.lines() {
            let rest = line
                .strip_prefix(EM_DASH)
                .and_then(|r| r.strip_prefix(' '))
                .ok_or(NoteError::Malformed("bad signature line"))?;
            let (name, b64) = rest.split_once(' ').ok_or(NoteError::Malformed("bad signature line"))?;
            let blob = B64.decode(b64).map_err(|_| NoteError::Malformed("bad signature base64"))?;
            signatures.push((name.to_owned(), blob));
        }
        if signatures.is_empty() {
            return Err(NoteError::Malformed("no signatures"));
        }
        Ok(SignedNote { body: body.to_owned(), signatures })
    }

    /// Is there a valid signature by `v`? For cosigners, returns its time.
    pub fn verified_by(&self, v: &NoteVerifier) -> Result<Option<u64>, NoteError> {
        self.signatures
            .iter()
            .filter(|(n, _)| *n == v.name)
            .find_map(|(_, blob)| v.check(&self.body, blob))
            .ok_or_else(|| NoteError::NoSignature(v.name.clone()))
    }

    /// The note's text again (body, blank line, signature lines).
    pub fn text(&self) -> String {
        let mut s = self.body.clone();
        s.push('\n');
        for (name, blob) in &self.signatures {
            s.push_str(&format!("{EM_DASH} {name} {}\n", B64.encode(blob)));
        }
        s
    }
}

/// A checkpoint body: origin, size, root, extension lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line (its name).
    pub origin: String,
    /// The number of leaves in the tree.
    pub size: u64,
    /// The tree's root hash.
    pub root: Hash,
    /// Extension lines after the root, as given (`key value`).
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The checkpoint's body text (each line ending in a newline).
    pub fn body(&self) -> String {
        let mut s = format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root));
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// Parses a checkpoint body (what [`Checkpoint::body`] writes).
    pub fn parse_body(body: &str) -> Result<Self, NoteError> {
        let mut lines =
            body.strip_suffix('\n').ok_or(NoteError::Malformed("body must end with a newline"))?.split('\n');
        let origin = lines.next().filter(|o| !o.is_empty()).ok_or(NoteError::Malformed("missing origin"))?;
        let size_s = lines.next().ok_or(NoteError::Malformed("missing size"))?;
        if size_s.is_empty()
            || (size_s.len() > 1 && size_s.starts_with('0'))
            || !size_s.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(NoteError::Malformed("bad tree size"));
        }
        let size = size_s.parse().map_err(|_| NoteError::Malformed("bad tree size"))?;
        let root_v = B64
            .decode(lines.next().ok_or(NoteError::Malformed("missing root"))?)
            .map_err(|_| NoteError::Malformed("bad root hash"))?;
        let root: Hash = root_v.try_into().map_err(|_| NoteError::Malformed("root hash must be 32 bytes"))?;
        let extensions: Vec<String> = lines.map(str::to_owned).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(NoteError::Malformed("empty extension line"));
        }
        Ok(Checkpoint { origin: origin.to_owned(), size, root, extensions })
    }

    /// Signs the checkpoint: the full signed-note text.
    pub fn sign(&self, signer: &NoteSigner) -> String {
        let body = self.body();
        format!("{body}\n{}", signer.sign_line(&body))
    }

    /// Parses a signed checkpoint and checks the signature of `v`.
    pub fn open(text: &str, v: &NoteVerifier) -> Result<(Checkpoint, SignedNote), NoteError> {
        let note = SignedNote::parse(text)?;
        note.verified_by(v)?;
        let cp = Checkpoint::parse_body(&note.body)?;
        if cp.origin.is_empty() {
            return Err(NoteError::Malformed("missing origin"));
        }
        Ok((cp, note))
    }

    /// The value of an extension line `key value`, if present.
    pub fn extension(&self, key: &str) -> Option<&str> {
        self.extensions.iter().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> NoteSigner {
        NoteSigner::from_pkcs8("mamori.test/audit", &generate_pkcs8().unwrap()).unwrap()
    }

    #[test]
    fn sign_and_open() {
        let s = signer();
        let cp = Checkpoint {
            origin: "mamori.test/audit".into(),
            size: 42,
            root: [7u8; 32],
            extensions: vec!["mode normal".into()],
        };
        let text = cp.sign(&s);
        assert!(text.starts_with("mamori.test/audit\n42\nBwcH"));
        let v = NoteVerifier::parse(&s.verifier().vkey()).unwrap();
        let (back, _) = Checkpoint::open(&text, &v).unwrap();
        assert_eq!(back, cp);
        assert_eq!(back.extension("mode"), Some("normal"));
    }

    #[test]
    fn tampering_detected() {
        let s = signer();
        let v = s.verifier();
        let cp = Checkpoint { origin: "o".into(), size: 1, root: [1u8; 32], extensions: vec![] };
        let text = cp.sign(&s);
        let forged = text.replacen("\n1\n", "\n2\n", 1);
        assert!(Checkpoint::open(&forged, &v).is_err());
        let other = signer();
        assert!(matches!(Checkpoint::open(&text, &other.verifier()), Err(NoteError::NoSignature(_))));
        assert!(Checkpoint::open("garbage", &v).is_err());
        assert!(Checkpoint::open(&text.replace('\u{2014}', "-"), &v).is_err());
    }

    #[test]
    fn cosignatures() {
        let log = signer();
        let w = NoteSigner::cosigner_from_pkcs8("witness.test/w1", &generate_pkcs8().unwrap()).unwrap();
        let cp = Checkpoint { origin: "o".into(), size: 3, root: [2u8; 32], extensions: vec![] };
        let text = cp.sign(&log);
        let note = SignedNote::parse(&text).unwrap();
        let line = w.cosign_line(&note.body, 1_700_000_000);
        let cosigned = format!("{text}{line}");
        let note2 = SignedNote::parse(&cosigned).unwrap();
        assert_eq!(note2.verified_by(&w.verifier()).unwrap(), Some(1_700_000_000));
        assert!(note2.verified_by(&log.verifier()).is_ok());
        let vk = w.verifier().vkey();
        assert!(NoteVerifier::parse(&vk).unwrap().is_cosigner());
    }

    #[test]
    fn vkey_parsing_rejects_garbage() {
        assert!(NoteVerifier::parse("x").is_err());
        assert!(NoteVerifier::parse("a+00000000+AAAA").is_err());
        let v = signer().verifier().vkey();
        let bad = v.replacen('+', "+f", 1);
        assert!(NoteVerifier::parse(&bad).is_err());
    }

    /// Known answer from golang.org/x/mod/sumdb/note's documentation example
    /// key "PeterNeumann": the vkey encodes the key id computed as specified.
    #[test]
    fn key_id_known_answer() {
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let v = NoteVerifier::parse(vkey).unwrap();
        assert_eq!(v.vkey(), vkey);
    }
}

#[cfg(test)]
mod known_answer {
    use super::*;

    /// The signed-note example of golang.org/x/mod/sumdb/note.
    #[test]
    fn go_sumdb_note_example_verifies() {
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let text = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let note = SignedNote::parse(text).unwrap();
        assert!(note.verified_by(&NoteVerifier::parse(vkey).unwrap()).is_ok());
        let tampered = text.replace("problem,", "problem!");
        assert!(SignedNote::parse(&tampered).unwrap().verified_by(&NoteVerifier::parse(vkey).unwrap()).is_err());
    }
}
