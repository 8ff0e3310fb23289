//! Offline reference snapshots (GL-BACKUP, EM-B9): the recent records of
//! every active patient, signed by the institution and encrypted to a key
//! only the custodians can recover together (Shamir M-of-N shares and/or
//! a passphrase), bound to an audit checkpoint. The key handling and the
//! file format here; the use cases below.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use mamori_audit::note::{Checkpoint, NoteVerifier};
use mamori_core::continuity::{combine, split, Share};
use mamori_core::policy::{Facts, Operation};
use mamori_core::time::Timestamp;
use mamori_exchange::cms;
use mamori_store::continuity::{self as cs, SnapshotFile, SnapshotKey};
use mamori_store::{accounts, emergency, p, StoreError};
use openssl::encrypt::{Decrypter, Encrypter};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private, Public};
use openssl::rsa::{Padding, Rsa};
use openssl::symm::{self, Cipher};
use openssl::x509::X509;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::container::{self, b64, unb64, ContainerError, SNAPSHOT_MAGIC};
use crate::actor::{Actor, RequestCtx};
use crate::authz;
use crate::error::ServiceError;
use crate::init::DataDir;
use crate::services::Services;

/// Why a snapshot (or export) cannot be made or opened.
#[derive(Debug, thiserror::Error)]
pub enum SnapError {
    /// The file itself (format, integrity, decryption).
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// The signature is not valid (why).
    #[error("the signature is not valid: {0}")]
    Signature(String),
    /// The file was signed by another institution than the one expected
    /// (the signer).
    #[error("the snapshot comes from another institution (signer {0}), not from the one expected")]
    OtherInstitution(String),
    /// The audit checkpoint in the file does not verify (why).
    #[error("the audit checkpoint in the snapshot does not verify: {0}")]
    Checkpoint(String),
    /// The key material does not open the snapshot key (why).
    #[error("key material: {0}")]
    Key(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

fn sha256_hex(b: &[u8]) -> String {
    openssl::sha::sha256(b).iter().map(|x| format!("{x:02x}")).collect()
}

fn ossl(e: openssl::error::ErrorStack) -> SnapError {
    SnapError::Other(e.to_string())
}

fn gcm_seal(key: &[u8], aad: &[u8], plain: &[u8]) -> Result<Value, SnapError> {
    let mut nonce = [0u8; 12];
    openssl::rand::rand_bytes(&mut nonce).map_err(ossl)?;
    let mut tag = [0u8; 16];
    let mut ct = symm::encrypt_aead(Cipher::aes_256_gcm(), key, Some(&nonce), aad, plain, &mut tag).map_err(ossl)?;
    ct.extend_from_slice(&tag);
    Ok(json!({"nonce": b64(&nonce), "ct": b64(&ct)}))
}

fn gcm_open(key: &[u8], aad: &[u8], sealed: &Value) -> Result<Zeroizing<Vec<u8>>, SnapError> {
    let nonce = unb64(sealed["nonce"].as_str().unwrap_or(""))?;
    let ct = unb64(sealed["ct"].as_str().unwrap_or(""))?;
    if ct.len() < 16 {
        return Err(SnapError::Key("sealed value too short".into()));
    }
    let (body, tag) = ct.split_at(ct.len() - 16);
    symm::decrypt_aead(Cipher::aes_256_gcm(), key, Some(&nonce), aad, body, tag).map(Zeroizing::new).map_err(|_| {
        SnapError::Key("the key material does not open this snapshot key (wrong shares or passphrase)".into())
    })
}

const ARGON_M_KIB: u32 = 19_456;
const ARGON_T: u32 = 2;

fn passphrase_kek(pass: &str, salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, SnapError> {
    let params = argon2::Params::new(ARGON_M_KIB, ARGON_T, 1, Some(32)).map_err(|e| SnapError::Other(e.to_string()))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    a.hash_password_into(pass.as_bytes(), salt, out.as_mut()).map_err(|e| SnapError::Other(e.to_string()))?;
    Ok(out)
}

/// A custodian's share as printed: `mamori-share:<key id>:<threshold>:<x>:<base64url>:<check>`.
pub fn share_text(key_id: &str, k: u8, s: &Share) -> String {
    let y = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&s.y);
    let check = &sha256_hex(format!("{key_id}:{k}:{}:{y}", s.x).as_bytes())[..8];
    format!("mamori-share:{key_id}:{k}:{}:{y}:{check}", s.x)
}

fn parse_share(text: &str) -> Result<(String, u8, Share), SnapError> {
    let parts: Vec<&str> = text.trim().split(':').collect();
    let [tag, key_id, k, x, y, check] = parts.as_slice() else {
        return Err(SnapError::Key("a share looks like mamori-share:<key>:<k>:<n>:<data>:<check>".into()));
    };
    if *tag != "mamori-share" {
        return Err(SnapError::Key("not a mamori share".into()));
    }
    let want = &sha256_hex(format!("{key_id}:{k}:{x}:{y}").as_bytes())[..8];
    if want != *check {
        return Err(SnapError::Key(format!("share {x} of key {key_id} is mistyped (check digits differ)")));
    }
    let k: u8 = k.parse().map_err(|_| SnapError::Key("bad threshold in share".into()))?;
    let x: u8 = x.parse().map_err(|_| SnapError::Key("bad share number".into()))?;
    let y = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(y)
        .map_err(|_| SnapError::Key("bad share data".into()))?;
    Ok(((*key_id).to_owned(), k, Share { x, y }))
}

/// What opens a snapshot: custodians' shares and/or the passphrase.
#[derive(Default)]
pub struct KeyMaterial {
    /// Custodians' shares (as handed out).
    pub shares: Vec<String>,
    /// The passphrase, if the key was also wrapped with one.
    pub passphrase: Option<Zeroizing<String>>,
}

/// A new snapshot key, sealed for custodians; returns the key row and the
/// shares (to be handed out once, never stored).
pub fn new_key(
    threshold: u8,
    names: &[String],
    passphrase: Option<&str>,
    by: &str,
    now: Timestamp,
) -> Result<(SnapshotKey, Vec<(String, String)>), SnapError> {
    let n = u8::try_from(names.len()).map_err(|_| SnapError::Other("at most 255 custodians".into()))?;
    if n == 0 && passphrase.is_none() {
        return Err(SnapError::Other("name custodians, give a passphrase, or both".into()));
    }
    if n > 0 && (threshold < 1 || threshold > n) {
        return Err(SnapError::Other(format!("a threshold of {threshold} of {n} custodians is not possible")));
    }
    if let Some(p) = passphrase {
        if p.chars().count() < 16 {
            return Err(SnapError::Other("the snapshot passphrase needs at least 16 characters".into()));
        }
    }
    let rsa = Rsa::generate(3072).map_err(ossl)?;
    let key = PKey::from_rsa(rsa).map_err(ossl)?;
    let public_pem =
        String::from_utf8(key.public_key_to_pem().map_err(ossl)?).map_err(|e| SnapError::Other(e.to_string()))?;
    let key_id = sha256_hex(&key.public_key_to_der().map_err(ossl)?)[..16].to_owned();
    let mut secret = Zeroizing::new([0u8; 32]);
    openssl::rand::rand_bytes(secret.as_mut()).map_err(ossl)?;
    let private_der = Zeroizing::new(key.private_key_to_der().map_err(ossl)?);
    let sealed_private = gcm_seal(secret.as_ref(), key_id.as_bytes(), &private_der)?;
    let mut shares = Vec::new();
    if n > 0 {
        let mut random = Zeroizing::new(vec![0u8; (threshold as usize - 1) * 32]);
        openssl::rand::rand_bytes(&mut random).map_err(ossl)?;
        for (s, name) in split(secret.as_ref(), threshold, n, &random).map_err(SnapError::Other)?.iter().zip(names) {
            shares.push((name.clone(), share_text(&key_id, threshold, s)));
        }
    }
    let pass = match passphrase {
        Some(p) => {
            let mut salt = [0u8; 16];
            openssl::rand::rand_bytes(&mut salt).map_err(ossl)?;
            let kek = passphrase_kek(p, &salt)?;
            json!({"kdf": "argon2id", "m_kib": ARGON_M_KIB, "t": ARGON_T, "p": 1, "salt": b64(&salt),
                   "wrapped_secret": gcm_seal(kek.as_ref(), key_id.as_bytes(), secret.as_ref())?})
        }
        None => Value::Null,
    };
    let row = SnapshotKey {
        id: key_id,
        created: now,
        created_by: by.to_owned(),
        threshold: i64::from(if n > 0 { threshold } else { 0 }),
        custodians: json!(names),
        public_pem,
        sealed: json!({"private": sealed_private, "passphrase": pass}),
        active: true,
    };
    Ok((row, shares))
}

/// Recovers a snapshot key's private half from the key material.
pub fn recover(key_id: &str, threshold: i64, sealed: &Value, m: &KeyMaterial) -> Result<PKey<Private>, SnapError> {
    let secret: Zeroizing<Vec<u8>> = if !m.shares.is_empty() {
        let mut shares = Vec::new();
        for s in &m.shares {
            let (kid, k, sh) = parse_share(s)?;
            if kid != key_id {
                return Err(SnapError::Key(format!("share {} belongs to snapshot key {kid}, not {key_id}", sh.x)));
            }
            if i64::from(k) != threshold {
                return Err(SnapError::Key("shares of different key sets".into()));
            }
            shares.push(sh);
        }
        if (shares.len() as i64) < threshold {
            return Err(SnapError::Key(format!(
                "{} of the {threshold} custodians' shares needed were given",
                shares.len()
            )));
        }
        Zeroizing::new(combine(&shares).map_err(SnapError::Key)?)
    } else if let Some(p) = &m.passphrase {
        let pp = &sealed["passphrase"];
        if pp.is_null() {
            return Err(SnapError::Key("this snapshot key has no passphrase; custodians' shares are needed".into()));
        }
        let salt = unb64(pp["salt"].as_str().unwrap_or(""))?;
        let kek = passphrase_kek(p, &salt)?;
        gcm_open(kek.as_ref(), key_id.as_bytes(), &pp["wrapped_secret"])?
    } else {
        return Err(SnapError::Key("give the custodians' shares or the passphrase".into()));
    };
    let der = gcm_open(&secret, key_id.as_bytes(), &sealed["private"])?;
    PKey::private_key_from_der(&der).map_err(ossl)
}

fn rsa_oaep(key: &PKey<Public>, data: &[u8]) -> Result<Vec<u8>, SnapError> {
    let mut e = Encrypter::new(key).map_err(ossl)?;
    e.set_rsa_padding(Padding::PKCS1_OAEP).map_err(ossl)?;
    e.set_rsa_oaep_md(MessageDigest::sha256()).map_err(ossl)?;
    e.set_rsa_mgf1_md(MessageDigest::sha256()).map_err(ossl)?;
    let mut out = vec![0u8; e.encrypt_len(data).map_err(ossl)?];
    let n = e.encrypt(data, &mut out).map_err(ossl)?;
    out.truncate(n);
    Ok(out)
}

/// Decrypts RSA-OAEP (SHA-256, MGF1-SHA-256) with `key`.
pub fn rsa_oaep_open(key: &PKey<Private>, data: &[u8]) -> Result<Zeroizing<Vec<u8>>, SnapError> {
    let mut d = Decrypter::new(key).map_err(ossl)?;
    d.set_rsa_padding(Padding::PKCS1_OAEP).map_err(ossl)?;
    d.set_rsa_oaep_md(MessageDigest::sha256()).map_err(ossl)?;
    d.set_rsa_mgf1_md(MessageDigest::sha256()).map_err(ossl)?;
    let mut out = Zeroizing::new(vec![0u8; d.decrypt_len(data).map_err(ossl)?]);
    let n = d
        .decrypt(data, &mut out)
        .map_err(|_| SnapError::Key("the data key cannot be unwrapped with this key".into()))?;
    out.truncate(n);
    Ok(out)
}

/// A fresh data key, wrapped for its recipient, and a chunk-nonce prefix.
pub type DataKey = (Zeroizing<[u8; 32]>, Vec<u8>, [u8; 4]);

/// Wraps a fresh data key for `recipient`; returns (key, wrapped, prefix).
pub fn data_key(recipient: &PKey<Public>) -> Result<DataKey, SnapError> {
    let mut k = Zeroizing::new([0u8; 32]);
    openssl::rand::rand_bytes(k.as_mut()).map_err(ossl)?;
    let wrapped = rsa_oaep(recipient, k.as_ref())?;
    Ok((k, wrapped, container::new_prefix()?))
}

/// Checks a container's signature against the certificate in its header
/// (`cert_field`), and that certificate against `pin` if given.
pub fn check_signature(v: &container::Verified, cert_field: &str, pin: Option<&X509>) -> Result<X509, SnapError> {
    let pem = v.header[cert_field].as_str().ok_or_else(|| SnapError::Other(format!("header has no {cert_field}")))?;
    let cert = X509::from_pem(pem.as_bytes()).map_err(|e| SnapError::Other(format!("{cert_field}: {e}")))?;
    cms::verify_detached(&v.signature, &v.manifest_bytes, &cert, &[cms::Digest::Sha256])
        .map_err(|e| SnapError::Signature(e.to_string()))?;
    if let Some(p) = pin {
        let a = cert.digest(MessageDigest::sha256()).map_err(ossl)?;
        let b = p.digest(MessageDigest::sha256()).map_err(ossl)?;
        if a.as_ref() != b.as_ref() {
            return Err(SnapError::OtherInstitution(
                cert.subject_name().entries().filter_map(|e| e.data().to_string().ok()).collect::<Vec<_>>().join(", "),
            ));
        }
    }
    Ok(cert)
}

/// Verifies a snapshot file without any key: structure, digest, the
/// institution's signature (pinned with `pin`), the audit checkpoint.
pub fn verify_file(path: &Path, pin: Option<&X509>, pin_vkey: Option<&str>) -> Result<Value, SnapError> {
    let f = File::open(path).map_err(ContainerError::Io)?;
    let v = container::verify(BufReader::new(f), SNAPSHOT_MAGIC, "mamori snapshot")?;
    let cert = check_signature(&v, "signer_cert", pin)?;
    let vkey = v.header["audit"]["vkey"].as_str().unwrap_or("");
    if let Some(p) = pin_vkey {
        if p.trim() != vkey {
            return Err(SnapError::Checkpoint("made under another audit log key".into()));
        }
    }
    let verifier = NoteVerifier::parse(vkey).map_err(|e| SnapError::Checkpoint(e.to_string()))?;
    let (cp, _) = Checkpoint::open(v.header["audit"]["checkpoint"].as_str().unwrap_or(""), &verifier)
        .map_err(|e| SnapError::Checkpoint(e.to_string()))?;
    let fp: String = cert
        .digest(MessageDigest::sha256())
        .map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
        .unwrap_or_default();
    Ok(json!({
        "id": v.header["id"], "created": v.header["created"], "institution": v.header["institution"],
        "signer_sha256": fp, "key_id": v.header["encryption"]["key_id"], "threshold": v.header["encryption"]["threshold"],
        "custodians": v.header["encryption"]["custodians"],
        "audit_checkpoint": {"origin": cp.origin, "size": cp.size},
        "patients": v.manifest["patients"], "resources": v.manifest["resources"],
        "bytes": v.manifest["bytes"], "sha256": v.manifest["sha256"],
    }))
}

/// One resource from a snapshot.
#[derive(Debug, Deserialize)]
pub struct Record {
    /// The resource type.
    pub t: String,
    /// The resource id.
    pub id: String,
    /// The resource's version at the centre.
    pub v: u64,
    /// The resource, as JSON text.
    pub r: Box<serde_json::value::RawValue>,
}

/// Opens a snapshot: verifies it, recovers the key from the material,
/// decrypts, and calls `meta` once and `record` for every resource.
/// Returns the header and the recovered snapshot private key.
pub fn open_file(
    path: &Path,
    m: &KeyMaterial,
    pin: Option<&X509>,
    mut meta: impl FnMut(&Value) -> Result<(), SnapError>,
    mut record: impl FnMut(Record) -> Result<(), SnapError>,
) -> Result<(Value, PKey<Private>), SnapError> {
    let f = File::open(path).map_err(ContainerError::Io)?;
    let v = container::verify(BufReader::new(f), SNAPSHOT_MAGIC, "mamori snapshot")?;
    check_signature(&v, "signer_cert", pin)?;
    let enc = &v.header["encryption"];
    let key_id = enc["key_id"].as_str().unwrap_or("");
    let sk = recover(key_id, enc["threshold"].as_i64().unwrap_or(0), &enc["sealed"], m)?;
    let k = rsa_oaep_open(&sk, &unb64(enc["wrapped_key"].as_str().unwrap_or(""))?)?;
    let key: [u8; 32] = k.as_slice().try_into().map_err(|_| SnapError::Key("data key of the wrong size".into()))?;
    let prefix: [u8; 4] = unb64(enc["nonce_prefix"].as_str().unwrap_or(""))?
        .try_into()
        .map_err(|_| SnapError::Other("bad nonce prefix".into()))?;
    let f = File::open(path).map_err(ContainerError::Io)?;
    let mut err: Option<SnapError> = None;
    container::decrypt(BufReader::new(f), SNAPSHOT_MAGIC, "mamori snapshot", &key, &prefix, |line| {
        let r = if line.starts_with(b"{\"meta\"") {
            serde_json::from_slice::<Value>(line)
                .map_err(|e| SnapError::Other(e.to_string()))
                .and_then(|v| meta(&v["meta"]))
        } else {
            serde_json::from_slice::<Record>(line)
                .map_err(|e| SnapError::Other(format!("record: {e}")))
                .and_then(&mut record)
        };
        r.map_err(|e| {
            let msg = e.to_string();
            err = Some(e);
            ContainerError::Corrupt(msg)
        })
    })
    .map_err(|e| err.take().unwrap_or(SnapError::Container(e)))?;
    Ok((v.header, sk))
}

/// The snapshot directory.
pub fn dir_of(st: &Services) -> PathBuf {
    DataDir(st.data_dir.clone()).resolve(&st.cfg.snapshot.dir)
}

/// Creates a snapshot file now, as `actor` (an admin, or the server on
/// its schedule).
async fn create(st: &Services, actor: &Actor) -> Result<SnapshotFile, ServiceError> {
    let key = st.store.read(cs::active_key).await?.ok_or_else(|| {
        ServiceError::Precondition("no snapshot key: set up custodians first (mamori snapshot custodians init)".into())
    })?;
    let checkpoint = st.store.writer().write(|w| w.checkpoint("snapshot"), |_, _| Ok(())).await?;
    let (_, plan) = st.store.read(emergency::current_plan_toml).await?;
    let dir = dir_of(st);
    std::fs::create_dir_all(&dir).map_err(|e| ServiceError::internal_from(format!("{}", dir.display()), e))?;
    let now = st.now();
    let id = accounts::new_id()?;
    let stamp = now.to_rfc3339().replace([':', '-'], "").chars().take(15).collect::<String>();
    let name = format!("mamori-snapshot-{stamp}-{}.msnap", &id[..8]);
    let final_path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.partial"));
    let public = PKey::public_key_from_pem(key.public_pem.as_bytes())
        .map_err(|e| ServiceError::internal_from("the snapshot key", e))?;
    let (k, wrapped, prefix) = data_key(&public).map_err(|e| ServiceError::internal_from("the data key", e))?;
    let x = st.exchange.clone();
    let cert_pem =
        x.identity.cert.to_pem().map_err(|e| ServiceError::internal_from("the institution certificate", e))?;
    let cert_pem = String::from_utf8(cert_pem).unwrap_or_default();
    let vkey = std::fs::read_to_string(DataDir(st.data_dir.clone()).audit_vkey()).unwrap_or_default();
    let cfg = st.cfg.snapshot.clone();
    let header = json!({
        "format": "mamori-snapshot/1", "id": id, "created": now.to_rfc3339(),
        "institution": {"name": st.cfg.institution.name, "id": st.cfg.institution.id, "node": st.cfg.institution.node},
        "signer_cert": cert_pem,
        "audit": {"origin": st.cfg.audit.origin, "vkey": vkey.trim(), "checkpoint": checkpoint},
        "selection": {"activity_days": cfg.activity_days, "types": cfg.types, "recent_types": cfg.recent_types, "recent_days": cfg.recent_days},
        "encryption": {"cipher": "AES-256-GCM", "chunk_bytes": container::CHUNK, "nonce_prefix": b64(&prefix),
                       "key_id": key.id, "wrapped_key": b64(&wrapped), "key_wrap": "RSAES-OAEP-SHA256",
                       "threshold": key.threshold, "custodians": key.custodians, "sealed": key.sealed},
    });
    let (tmp2, key_bytes) = (tmp.clone(), *k);
    let inst = st.cfg.institution.clone();
    let written = st
        .store
        .read(move |c| {
            let out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp2)
                .map_err(|e| StoreError::Internal(format!("{}: {e}", tmp2.display())))?;
            let ce = |e: ContainerError| StoreError::Internal(e.to_string());
            let mut w =
                container::Writer::new(BufWriter::new(out), SNAPSHOT_MAGIC, &header, key_bytes, prefix).map_err(ce)?;
            c.batch("BEGIN")?;
            let since = now.plus_secs(-cfg.activity_days * 86_400).micros();
            let recent = now.plus_secs(-cfg.recent_days * 86_400).micros();
            let pats: Vec<String> = c
                .query(
                    "SELECT DISTINCT rc.patient FROM resource_compartments rc JOIN resources r ON r.rtype = rc.rtype AND r.id = rc.id \
                     WHERE r.deleted = 0 AND r.last_updated >= $1 \
                     UNION SELECT id FROM resources WHERE rtype = 'Patient' AND deleted = 0 AND last_updated >= $1 \
                     UNION SELECT rc.patient FROM idx_token t JOIN resource_compartments rc ON rc.rtype = t.rtype AND rc.id = t.id \
                     JOIN resources r ON r.rtype = t.rtype AND r.id = t.id \
                     WHERE t.rtype = 'Encounter' AND t.param = 'status' AND t.code = 'in-progress' AND r.deleted = 0 \
                     ORDER BY 1",
                    p![since],
                )?
                .iter()
                .map(|r| r.text(0))
                .collect::<Result<_, _>>()?;
            let meta = json!({"meta": {"plan": plan, "institution": inst.name, "node": inst.node, "patients": pats.len()}});
            w.line(meta.to_string().as_bytes()).map_err(ce)?;
            let mut n = 0u64;
            let mut line = Vec::with_capacity(4096);
            // A resource naming several patients is written once.
            let mut seen = std::collections::HashSet::new();
            for p in &pats {
                let mut err = None;
                c.for_each(
                    "SELECT v.rtype, v.id, v.version, v.last_updated, v.body FROM \
                     (SELECT rtype, id FROM resource_compartments WHERE patient = $1 UNION ALL SELECT 'Patient', $1) rc \
                     JOIN resources r ON r.rtype = rc.rtype AND r.id = rc.id JOIN resource_versions v ON v.seq = r.seq \
                     WHERE r.deleted = 0",
                    p![p.as_str()],
                    &mut |row| {
                        let rt = row[0].text().unwrap_or("");
                        let lu = row[3].i64().unwrap_or(0);
                        if !cfg.types.iter().any(|t| t == rt)
                            || (cfg.recent_types.iter().any(|t| t == rt) && lu < recent && rt != "Encounter")
                        {
                            return Ok(true);
                        }
                        let rid = row[1].text().unwrap_or("");
                        if !seen.insert((rt.to_owned(), rid.to_owned())) {
                            return Ok(true);
                        }
                        line.clear();
                        line.extend_from_slice(b"{\"t\":");
                        line.extend_from_slice(serde_json::to_string(rt).unwrap_or_default().as_bytes());
                        line.extend_from_slice(b",\"id\":");
                        line.extend_from_slice(serde_json::to_string(rid).unwrap_or_default().as_bytes());
                        line.extend_from_slice(format!(",\"v\":{},\"r\":", row[2].i64().unwrap_or(0)).as_bytes());
                        line.extend_from_slice(row[4].text().unwrap_or("null").as_bytes());
                        line.push(b'}');
                        if let Err(e) = w.line(&line) {
                            err = Some(e);
                            return Ok(false);
                        }
                        n += 1;
                        Ok(true)
                    },
                )?;
                if let Some(e) = err {
                    return Err(ce(e));
                }
            }
            c.batch("COMMIT")?;
            let counts = json!({"patients": pats.len(), "resources": n, "format": "mamori-snapshot-manifest/1"});
            let (out, manifest) = w
                .finish(counts, |m| cms::sign_detached(&x.identity, m).map_err(|e| ContainerError::Crypto(e.to_string())))
                .map_err(ce)?;
            let f = out.into_inner().map_err(|e| StoreError::Internal(e.to_string()))?;
            f.sync_all().map_err(|e| StoreError::Internal(e.to_string()))?;
            Ok((pats, n as i64, manifest))
        })
        .await;
    let (patients, resources, manifest) = written.map_err(|e| {
        if let Err(r) = std::fs::remove_file(&tmp) {
            tracing::warn!(file = %tmp.display(), error = %r, "cannot remove an unfinished snapshot file");
        }
        ServiceError::from(e)
    })?;
    std::fs::rename(&tmp, &final_path).map_err(|e| ServiceError::internal_from("renaming the snapshot", e))?;
    let file = SnapshotFile {
        id: id.clone(),
        created: now,
        file: final_path.display().to_string(),
        bytes: manifest["bytes"].as_i64().unwrap_or(0),
        sha256: manifest["sha256"].as_str().unwrap_or("").to_owned(),
        patients: patients.len() as i64,
        resources,
        key_id: key.id.clone(),
        by_user: actor.name().to_owned(),
    };
    // Retention: the newest `keep` snapshot files stay.
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    files.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("mamori-snapshot-") && n.ends_with(".msnap"))
    });
    files.sort();
    let excess = files.len().saturating_sub(st.cfg.snapshot.keep);
    let removed: Vec<String> = files
        .iter()
        .take(excess)
        .filter(|p| std::fs::remove_file(p).is_ok())
        .map(|p| p.display().to_string())
        .collect();
    let (f2, a2) = (file.clone(), actor.clone());
    st.change(actor, "snapshot-create", move |w| {
        cs::insert_snapshot(w.conn, &f2)?;
        // Every patient whose records went into the file.
        let mut rec = a2.record("snapshot-create", 201, w.now);
        crate::actor::set_patients(&mut rec, patients);
        rec.basis = Some(mamori_core::policy::Basis::System.as_str().to_owned());
        rec.detail = Some(json!({"snapshot": f2.id, "file": f2.file, "bytes": f2.bytes, "sha256": f2.sha256,
            "patients": f2.patients, "resources": f2.resources, "key": f2.key_id, "removed_by_retention": removed}));
        w.audit(&rec)?;
        Ok(())
    })
    .await?;
    Ok(file)
}

/// Makes a snapshot now (admins).
pub async fn create_now(st: &Services, actor: &Actor) -> Result<SnapshotFile, ServiceError> {
    const ACTION: &str = "snapshot-create";
    if let Err(e) = authz::require(actor, &Operation::SnapshotManage, Facts::default(), "making a snapshot") {
        return Err(st.refused(actor, ACTION, e).await);
    }
    match create(st, actor).await {
        Ok(f) => Ok(f),
        Err(e) => Err(st.refused(actor, ACTION, e).await),
    }
}

/// Takes scheduled snapshots (`snapshot.every_hours`).
pub async fn schedule(st: Services, mut stop: tokio::sync::watch::Receiver<bool>) {
    let hours = st.cfg.snapshot.every_hours;
    if hours == 0 {
        return;
    }
    let every = std::time::Duration::from_secs(hours * 3600);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let system = Actor::system(RequestCtx::background(st.mode.get()));
        match create(&st, &system).await {
            Ok(f) => tracing::info!(file = %f.file, "scheduled snapshot written"),
            Err(e) => {
                crate::notify::raise_alert(
                    &st,
                    "snapshot-failed",
                    "warning",
                    &format!("定期スナップショットに失敗しました / A scheduled snapshot failed: {}", e.message()),
                    json!({}),
                )
                .await;
            }
        }
    }
}

/// Sets up the custodians' key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustodiansInit {
    /// How many custodians must come together (M of N).
    pub threshold: u8,
    /// The custodians' names.
    pub custodians: Vec<String>,
    /// A passphrase that opens snapshots alone (optional).
    #[serde(default)]
    pub passphrase: Option<String>,
}

/// The new key and each custodian's share (shown once).
#[derive(Debug, Clone, Serialize)]
pub struct CustodiansKey {
    /// The key's id.
    pub key_id: String,
    /// M.
    pub threshold: i64,
    /// The custodians.
    pub custodians: Value,
    /// One share per custodian.
    pub shares: Vec<CustodianShare>,
    /// What to do with them.
    pub notice: &'static str,
}

/// One custodian's share.
#[derive(Debug, Clone, Serialize)]
pub struct CustodianShare {
    /// Who.
    pub custodian: String,
    /// The share's text.
    pub share: String,
}

/// Creates the custodians' key; returns the shares once (admins).
pub async fn init_custodians(st: &Services, actor: &Actor, req: CustodiansInit) -> Result<CustodiansKey, ServiceError> {
    const ACTION: &str = "snapshot-key-create";
    let pre =
        authz::require(actor, &Operation::SnapshotManage, Facts::default(), "managing snapshot keys").and_then(|d| {
            if req.custodians.iter().any(|c| c.trim().is_empty()) {
                return Err(ServiceError::invalid("custodians", "names must not be empty"));
            }
            Ok(d)
        });
    let decision = match pre {
        Ok(d) => d,
        Err(e) => return Err(st.refused(actor, ACTION, e).await),
    };
    let now = st.now();
    let by = actor.name().to_owned();
    let made = tokio::task::spawn_blocking(move || {
        new_key(req.threshold, &req.custodians, req.passphrase.as_deref(), &by, now)
    })
    .await
    .map_err(|e| ServiceError::internal_from("key generation", e))?;
    let (row, shares) = match made {
        Ok(x) => x,
        Err(e) => return Err(st.refused(actor, ACTION, ServiceError::invalid("", e.to_string())).await),
    };
    let (a2, r2) = (actor.clone(), row.clone());
    st.change(actor, ACTION, move |w| {
        cs::insert_key(w.conn, &r2)?;
        let mut rec = a2.decided(ACTION, 201, &decision, w.now);
        rec.detail = Some(json!({"key": r2.id, "threshold": r2.threshold, "custodians": r2.custodians,
                                 "passphrase": !r2.sealed["passphrase"].is_null()}));
        w.audit(&rec)?;
        Ok(())
    })
    .await?;
    Ok(CustodiansKey {
        key_id: row.id,
        threshold: row.threshold,
        custodians: row.custodians,
        shares: shares.into_iter().map(|(custodian, share)| CustodianShare { custodian, share }).collect(),
        notice: "各保管者に一度だけ渡してください。mamori は保存しません / Hand each share to its custodian once; mamori does not keep them.",
    })
}

/// A snapshot key as listed (never its secret parts).
#[derive(Debug, Clone, Serialize)]
pub struct KeyListing {
    /// Its id.
    pub id: String,
    /// When it was made.
    pub created: String,
    /// By whom.
    pub created_by: String,
    /// M.
    pub threshold: i64,
    /// The custodians.
    pub custodians: Value,
    /// Whether a passphrase opens it too.
    pub passphrase: bool,
    /// Whether new snapshots use it.
    pub active: bool,
}

async fn read_gate(st: &Services, actor: &Actor, action: &str, what: &str) -> Result<(), ServiceError> {
    st.read_gate(actor, action, Operation::SnapshotRead, Facts::default(), what).await.map(|_| ())
}

/// The custodians' keys (admins, auditors).
pub async fn custodians(st: &Services, actor: &Actor) -> Result<Vec<KeyListing>, ServiceError> {
    read_gate(st, actor, "snapshot-key-list", "snapshot keys").await?;
    let keys = st.store.read(cs::keys).await?;
    Ok(keys
        .iter()
        .map(|k| KeyListing {
            id: k.id.clone(),
            created: k.created.to_rfc3339(),
            created_by: k.created_by.clone(),
            threshold: k.threshold,
            custodians: k.custodians.clone(),
            passphrase: !k.sealed["passphrase"].is_null(),
            active: k.active,
        })
        .collect())
}

/// The snapshots made, and where they are (admins, auditors).
pub async fn list(st: &Services, actor: &Actor) -> Result<(Vec<SnapshotFile>, String), ServiceError> {
    read_gate(st, actor, "snapshot-list", "snapshots").await?;
    let rows = st.store.read(|c| cs::snapshots(c, 200)).await?;
    Ok((rows, dir_of(st).display().to_string()))
}

/// The outcome of verifying a listed snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// The snapshot.
    pub snapshot: String,
    /// Whether it verified.
    pub ok: bool,
    /// Its header, when it verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<Value>,
    /// What failed, when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long it took.
    pub seconds: f64,
}

/// Verifies a listed snapshot file as an outside reader would: structure,
/// digest, the institution's signature (pinned to this institution's
/// certificate) and the audit checkpoint (pinned to this log's key).
pub async fn verify_one(st: &Services, actor: &Actor, id: &str) -> Result<Verification, ServiceError> {
    const ACTION: &str = "snapshot-verify";
    let decision = match authz::require(actor, &Operation::SnapshotRead, Facts::default(), "verifying snapshots") {
        Ok(d) => d,
        Err(e) => return Err(st.refused(actor, ACTION, e).await),
    };
    let rows = st.store.read(|c| cs::snapshots(c, 10_000)).await?;
    let Some(row) = rows.into_iter().find(|r| r.id == id) else {
        return Err(st.refused(actor, ACTION, ServiceError::NotFound(format!("snapshot {id}"))).await);
    };
    let dd = DataDir(st.data_dir.clone());
    let pin = std::fs::read(dd.0.join("keys/institution.cert.pem"))
        .ok()
        .and_then(|p| X509::from_pem(&p).ok())
        .ok_or_else(|| ServiceError::internal("the institution certificate is unreadable"))?;
    let vkey = std::fs::read_to_string(dd.0.join("keys/audit.vkey"))
        .map_err(|e| ServiceError::internal_from("the audit key", e))?;
    let path = PathBuf::from(&row.file);
    let started = std::time::Instant::now();
    let res = tokio::task::spawn_blocking(move || verify_file(&path, Some(&pin), Some(&vkey)))
        .await
        .map_err(|e| ServiceError::internal_from("verification", e))?;
    let seconds = started.elapsed().as_secs_f64();
    let v = match res {
        Ok(h) => Verification { snapshot: id.to_owned(), ok: true, header: Some(h), error: None, seconds },
        Err(e) => {
            Verification { snapshot: id.to_owned(), ok: false, header: None, error: Some(e.to_string()), seconds }
        }
    };
    let mut rec = actor.decided(ACTION, if v.ok { 200 } else { 422 }, &decision, st.now());
    rec.detail = Some(json!({"snapshot": id, "ok": v.ok, "error": v.error}));
    st.audit(vec![rec]).await?;
    Ok(v)
}
