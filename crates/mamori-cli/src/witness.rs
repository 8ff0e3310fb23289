//! `mamori audit witness`: an independent party that watches a mamori
//! audit log. Each round it fetches the newest signed checkpoint, checks
//! the log's signature, checks that it is consistent with the last one it
//! saw (an RFC 6962 consistency proof), cosigns it (C2SP cosignature/v1)
//! and hands the cosignature back. A fork — two roots for one size, an
//! inconsistent extension, a log that shrank — is reported loudly, kept
//! with its evidence in the witness's own store, and never cosigned.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use mamori_audit::merkle::{verify_consistency, Hash};
use mamori_audit::note::{generate_pkcs8, Checkpoint, NoteSigner, NoteVerifier};
use mamori_core::time::{Clock, SystemClock};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

pub(crate) struct Witness {
    db: Connection,
    signer: NoteSigner,
    log_key: NoteVerifier,
    log: String,
    client: reqwest::Client,
}

/// What one round found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Round {
    FirstSeen(u64),
    Unchanged(u64),
    Extended { from: u64, to: u64 },
    Alert(String),
}

fn private_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    Ok(())
}

impl Witness {
    /// Opens (creating on first use) the witness's store and key in `dir`.
    pub(crate) fn open(dir: &Path, name: &str, log: &str, log_key: NoteVerifier, ca: Option<&Path>) -> Result<Witness> {
        std::fs::create_dir_all(dir)?;
        let key_path = dir.join("witness.key");
        if !key_path.exists() {
            let pkcs8 = generate_pkcs8()?;
            private_file(&key_path, &pkcs8)?;
            let s = NoteSigner::cosigner_from_pkcs8(name, &pkcs8)?;
            std::fs::write(dir.join("witness.vkey"), format!("{}\n", s.verifier().vkey()))?;
        }
        let pkcs8 = mamori_service::keys::read_secret(&key_path)?;
        let vk = std::fs::read_to_string(dir.join("witness.vkey"))?;
        let v = NoteVerifier::parse(vk.trim())?;
        let signer = NoteSigner::cosigner_from_pkcs8(&v.name, &pkcs8)?;
        let db = Connection::open(dir.join("witness.db"))?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS seen (origin TEXT NOT NULL, size INTEGER NOT NULL, root BLOB NOT NULL, note TEXT NOT NULL, cosigned_at INTEGER NOT NULL, PRIMARY KEY (origin, size));
             CREATE TABLE IF NOT EXISTS alerts (id INTEGER PRIMARY KEY, time INTEGER NOT NULL, origin TEXT NOT NULL, what TEXT NOT NULL, evidence TEXT NOT NULL);",
        )?;
        let client = crate::api::client(ca)?;
        Ok(Witness { db, signer, log_key, log: log.trim_end_matches('/').to_owned(), client })
    }

    pub(crate) fn vkey(&self) -> String {
        self.signer.verifier().vkey()
    }

    async fn get_text(&self, path: &str) -> Result<String> {
        let r = self
            .client
            .get(format!("{}{path}", self.log))
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.log))?;
        if !r.status().is_success() {
            bail!("{path}: HTTP {}", r.status());
        }
        Ok(r.text().await?)
    }

    fn alert(&self, origin: &str, what: &str, evidence: &str) -> Result<Round> {
        let now = SystemClock.now().micros();
        self.db.execute(
            "INSERT INTO alerts (time, origin, what, evidence) VALUES (?1, ?2, ?3, ?4)",
            params![now, origin, what, evidence],
        )?;
        eprintln!("\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        eprintln!("!!! WITNESS ALERT for {origin}: {what}");
        eprintln!("!!! The audit log is not append-only as promised. Evidence kept in the witness store.");
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n");
        Ok(Round::Alert(what.to_owned()))
    }

    /// One round: fetch, check, cosign, hand back.
    pub(crate) async fn round(&self) -> Result<Round> {
        let text = self.get_text("/api/v1/audit/checkpoint").await?;
        let (cp, note) = Checkpoint::open(&text, &self.log_key)
            .map_err(|e| anyhow!("the log's checkpoint does not verify with the pinned log key: {e}"))?;
        let origin = cp.origin.clone();
        let last: Option<(u64, Vec<u8>, String)> = self
            .db
            .query_row(
                "SELECT size, root, note FROM seen WHERE origin = ?1 ORDER BY size DESC LIMIT 1",
                params![origin],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        // The same size seen before must have the same root.
        let same: Option<(Vec<u8>, String)> = self
            .db
            .query_row(
                "SELECT root, note FROM seen WHERE origin = ?1 AND size = ?2",
                params![origin, cp.size as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((root, old)) = same {
            if root != cp.root {
                return self.alert(
                    &origin,
                    &format!("fork: two different roots for tree size {}", cp.size),
                    &format!("{old}\n---\n{text}"),
                );
            }
            return Ok(Round::Unchanged(cp.size));
        }
        let round = match &last {
            None => Round::FirstSeen(cp.size),
            Some((size, _, old)) if *size > cp.size => {
                return self.alert(
                    &origin,
                    &format!("the log shrank: it now presents size {} after {size}", cp.size),
                    &format!("{old}\n---\n{text}"),
                );
            }
            Some((size, root, old)) => {
                // The log must still stand by what it signed at the old size...
                let again = self.get_text(&format!("/api/v1/audit/checkpoints/{size}")).await;
                if let Ok(again) = again {
                    if let Ok((cp_again, _)) = Checkpoint::open(&again, &self.log_key) {
                        if cp_again.root.as_slice() != root.as_slice() {
                            return self.alert(
                                &origin,
                                &format!("fork: the log re-signed size {size} with a different root"),
                                &format!("{old}\n---\n{again}"),
                            );
                        }
                    }
                }
                // ...and the new tree must extend the old one.
                let proof: Value = serde_json::from_str(
                    &self.get_text(&format!("/api/v1/audit/proof/consistency?first={size}&second={}", cp.size)).await?,
                )?;
                let hashes: Vec<Hash> = proof["proof"]
                    .as_array()
                    .ok_or_else(|| anyhow!("malformed consistency proof"))?
                    .iter()
                    .map(|h| {
                        h.as_str()
                            .and_then(|s| B64.decode(s).ok())
                            .and_then(|b| Hash::try_from(b.as_slice()).ok())
                            .ok_or_else(|| anyhow!("malformed proof hash"))
                    })
                    .collect::<Result<_>>()?;
                let old_root: Hash = root.as_slice().try_into().map_err(|_| anyhow!("corrupt witness store"))?;
                if !verify_consistency(*size, cp.size, &old_root, &cp.root, &hashes) {
                    return self.alert(
                        &origin,
                        &format!("inconsistent extension: size {} does not extend size {size}", cp.size),
                        &format!("{old}\n---\n{text}\n---\n{proof}"),
                    );
                }
                Round::Extended { from: *size, to: cp.size }
            }
        };
        let t = SystemClock.now().secs() as u64;
        let line = self.signer.cosign_line(&note.body, t);
        self.db.execute(
            "INSERT INTO seen (origin, size, root, note, cosigned_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![origin, cp.size as i64, cp.root.to_vec(), text, t as i64],
        )?;
        // Hand the cosignature back; the log serves it with the checkpoint.
        let cosigned = format!(
            "{}\n{}{line}",
            note.body,
            note.signatures.iter().map(|(n, b)| format!("\u{2014} {n} {}\n", B64.encode(b))).collect::<String>()
        );
        let r = self
            .client
            .post(format!("{}/api/v1/audit/cosignatures", self.log))
            .header("content-type", "text/plain")
            .body(cosigned)
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => eprintln!(
                "note: the log did not accept the cosignature: HTTP {} (is this witness in its audit.witnesses?)",
                r.status()
            ),
            Err(e) => eprintln!("note: could not hand the cosignature back: {e}"),
        }
        Ok(round)
    }
}

/// `mamori audit witness`.
pub(crate) async fn run(
    dir: PathBuf,
    name: String,
    log: String,
    log_key: String,
    ca: Option<PathBuf>,
    interval: u64,
    once: bool,
) -> Result<()> {
    let key = crate::audit::parse_key(&log_key)?;
    let w = Witness::open(&dir, &name, &log, key, ca.as_deref())?;
    eprintln!("witness {} watching {log}", w.vkey());
    loop {
        match w.round().await {
            Ok(Round::Alert(what)) => {
                if once {
                    bail!("witness alert: {what}");
                }
            }
            Ok(r) => println!("{r:?}"),
            Err(e) => {
                if once {
                    return Err(e);
                }
                eprintln!("witness round failed: {e:#}");
            }
        }
        if once {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(interval)).await;
    }
}
