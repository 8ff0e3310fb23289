//! The file format of snapshots and standalone exports (docs/snapshots.md):
//!
//! ```text
//! magic (16 bytes)          "MAMORI-SNAPSHOT\n" or "MAMORI-EXPORT-1\n"
//! u32 BE n, n bytes         header (JSON): who, when, keys, the audit checkpoint
//! repeated: u32 BE n, n bytes  AES-256-GCM chunks of NDJSON (ciphertext || 16-byte tag)
//! u32 BE 0                  end of chunks
//! u32 BE n, n bytes         manifest (JSON): SHA-256 of everything above, counts
//! u32 BE n, n bytes         CMS detached signature (DER) of the manifest
//! ```
//!
//! Chunk i's nonce is the header's 4-byte prefix followed by i (u64 BE);
//! its associated data is SHA-256(header) || i || final flag, so chunks
//! cannot be reordered, moved between files or cut off without detection.
//! The signature over the manifest lets anyone check integrity and origin
//! without the decryption key.

use std::io::{Read, Write};

use base64::Engine as _;
use openssl::sha::Sha256;
use openssl::symm::{self, Cipher};
use serde_json::{json, Value};

/// The first 16 bytes of a snapshot file.
pub const SNAPSHOT_MAGIC: &[u8; 16] = b"MAMORI-SNAPSHOT\n";
/// The first 16 bytes of a standalone node's export file.
pub const EXPORT_MAGIC: &[u8; 16] = b"MAMORI-EXPORT-1\n";
/// Plaintext bytes per encrypted chunk (the last one may be shorter).
pub const CHUNK: usize = 1 << 20;
const MAX_HEADER: usize = 1 << 20;
const MAX_CHUNK: usize = 16 << 20;
const MAX_TRAILER: usize = 1 << 16;

/// Why a snapshot or export file cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The file does not start with the magic of this kind of file.
    #[error("not a {0} file")]
    NotA(&'static str),
    /// The file ends early.
    #[error("the file is truncated")]
    Truncated,
    /// The file's structure is damaged (what is wrong).
    #[error("the file is damaged: {0}")]
    Corrupt(String),
    /// The content does not match the signed manifest.
    #[error("the file was altered: its content does not match the signed manifest")]
    Altered,
    /// The key material does not decrypt the file.
    #[error("the decryption key does not open this file (wrong key material, or the file was altered)")]
    WrongKey,
    /// Reading or writing the file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// OpenSSL failed (keys, randomness, a signature).
    #[error("crypto: {0}")]
    Crypto(String),
}

fn crypto(e: openssl::error::ErrorStack) -> ContainerError {
    ContainerError::Crypto(e.to_string())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn nonce(prefix: &[u8; 4], i: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(prefix);
    n[4..].copy_from_slice(&i.to_be_bytes());
    n
}

fn aad(header_hash: &[u8; 32], i: u64, last: bool) -> [u8; 41] {
    let mut a = [0u8; 41];
    a[..32].copy_from_slice(header_hash);
    a[32..40].copy_from_slice(&i.to_be_bytes());
    a[40] = u8::from(last);
    a
}

/// A fresh random nonce prefix, for the header.
pub fn new_prefix() -> Result<[u8; 4], ContainerError> {
    let mut p = [0u8; 4];
    openssl::rand::rand_bytes(&mut p).map_err(crypto)?;
    Ok(p)
}

/// Standard base64 of `b`.
pub fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Bytes from standard base64; `Corrupt` if it is not base64.
pub fn unb64(s: &str) -> Result<Vec<u8>, ContainerError> {
    base64::engine::general_purpose::STANDARD.decode(s).map_err(|e| ContainerError::Corrupt(format!("base64: {e}")))
}

/// Writes a container: lines go into encrypted chunks.
pub struct Writer<W: Write> {
    out: W,
    hash: Sha256,
    key: [u8; 32],
    prefix: [u8; 4],
    header_hash: [u8; 32],
    buf: Vec<u8>,
    index: u64,
    /// Plaintext bytes written so far (the lines with their newlines).
    pub plaintext_bytes: u64,
    /// Bytes written to the output so far.
    pub written: u64,
}

impl<W: Write> Writer<W> {
    /// Starts a container: writes the magic and the header; lines are
    /// encrypted with `key`, chunk nonces start with `prefix`.
    pub fn new(
        mut out: W,
        magic: &[u8; 16],
        header: &Value,
        key: [u8; 32],
        prefix: [u8; 4],
    ) -> Result<Self, ContainerError> {
        let h = serde_json::to_vec(header).map_err(|e| ContainerError::Corrupt(e.to_string()))?;
        let mut hash = Sha256::new();
        let mut written = 0u64;
        for part in [&magic[..], &(h.len() as u32).to_be_bytes(), &h] {
            out.write_all(part)?;
            hash.update(part);
            written += part.len() as u64;
        }
        Ok(Writer {
            out,
            hash,
            key,
            prefix,
            header_hash: openssl::sha::sha256(&h),
            buf: Vec::with_capacity(CHUNK + 4096),
            index: 0,
            plaintext_bytes: 0,
            written,
        })
    }

    /// Appends one line (a newline is added).
    pub fn line(&mut self, bytes: &[u8]) -> Result<(), ContainerError> {
        self.buf.extend_from_slice(bytes);
        self.buf.push(b'\n');
        self.plaintext_bytes += bytes.len() as u64 + 1;
        if self.buf.len() >= CHUNK {
            self.chunk(false)?;
        }
        Ok(())
    }

    fn chunk(&mut self, last: bool) -> Result<(), ContainerError> {
        let mut tag = [0u8; 16];
        let mut ct = symm::encrypt_aead(
            Cipher::aes_256_gcm(),
            &self.key,
            Some(&nonce(&self.prefix, self.index)),
            &aad(&self.header_hash, self.index, last),
            &self.buf,
            &mut tag,
        )
        .map_err(crypto)?;
        ct.extend_from_slice(&tag);
        let len = (ct.len() as u32).to_be_bytes();
        for part in [&len[..], &ct] {
            self.out.write_all(part)?;
            self.hash.update(part);
            self.written += part.len() as u64;
        }
        self.buf.clear();
        self.index += 1;
        Ok(())
    }

    /// Writes the last chunk, the manifest (with `extra` fields) and its
    /// signature; returns the output and the manifest.
    pub fn finish(
        mut self,
        extra: Value,
        sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, ContainerError>,
    ) -> Result<(W, Value), ContainerError> {
        self.chunk(true)?;
        let end = 0u32.to_be_bytes();
        self.out.write_all(&end)?;
        self.hash.update(&end);
        self.written += 4;
        let digest = self.hash.finish();
        let mut manifest = json!({"sha256": hex(&digest), "chunks": self.index, "plaintext_bytes": self.plaintext_bytes, "bytes": self.written});
        if let (Some(m), Value::Object(x)) = (manifest.as_object_mut(), extra) {
            m.extend(x);
        }
        let mb = serde_json::to_vec(&manifest).map_err(|e| ContainerError::Corrupt(e.to_string()))?;
        let sig = sign(&mb)?;
        for part in [&(mb.len() as u32).to_be_bytes()[..], &mb, &(sig.len() as u32).to_be_bytes(), &sig] {
            self.out.write_all(part)?;
        }
        self.out.flush()?;
        Ok((self.out, manifest))
    }
}

fn read_u32(r: &mut impl Read) -> Result<u32, ContainerError> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ContainerError::Truncated
        } else {
            e.into()
        }
    })?;
    Ok(u32::from_be_bytes(b))
}

fn read_n(r: &mut impl Read, n: usize) -> Result<Vec<u8>, ContainerError> {
    let mut v = vec![0u8; n];
    r.read_exact(&mut v).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ContainerError::Truncated
        } else {
            e.into()
        }
    })?;
    Ok(v)
}

/// What [`verify`] found (before checking the signature, which needs the
/// signer's certificate from the header).
pub struct Verified {
    /// The header (JSON).
    pub header: Value,
    /// The manifest (JSON): hashes and counts.
    pub manifest: Value,
    /// The manifest exactly as stored (what the signature covers).
    pub manifest_bytes: Vec<u8>,
    /// The CMS detached signature (DER) of the manifest.
    pub signature: Vec<u8>,
}

fn read_header(
    r: &mut impl Read,
    magic: &[u8; 16],
    kind: &'static str,
    hash: &mut Sha256,
) -> Result<(Value, Vec<u8>), ContainerError> {
    let mut m = [0u8; 16];
    r.read_exact(&mut m).map_err(|_| ContainerError::NotA(kind))?;
    if &m != magic {
        return Err(ContainerError::NotA(kind));
    }
    let n = read_u32(r)? as usize;
    if n > MAX_HEADER {
        return Err(ContainerError::Corrupt("header too large".into()));
    }
    let h = read_n(r, n)?;
    hash.update(&m);
    hash.update(&(n as u32).to_be_bytes());
    hash.update(&h);
    let header: Value = serde_json::from_slice(&h).map_err(|e| ContainerError::Corrupt(format!("header: {e}")))?;
    Ok((header, h))
}

/// Reads the whole file, checking its structure and that it matches the
/// manifest's digest. Needs no key.
pub fn verify(mut r: impl Read, magic: &[u8; 16], kind: &'static str) -> Result<Verified, ContainerError> {
    let mut hash = Sha256::new();
    let (header, _) = read_header(&mut r, magic, kind, &mut hash)?;
    let mut buf = Vec::new();
    loop {
        let n = read_u32(&mut r)? as usize;
        hash.update(&(n as u32).to_be_bytes());
        if n == 0 {
            break;
        }
        if !(16..=MAX_CHUNK).contains(&n) {
            return Err(ContainerError::Corrupt(format!("chunk of {n} bytes")));
        }
        buf.resize(n, 0);
        r.read_exact(&mut buf).map_err(|_| ContainerError::Truncated)?;
        hash.update(&buf);
    }
    let digest = hex(&hash.finish());
    let n = read_u32(&mut r)? as usize;
    if n > MAX_TRAILER {
        return Err(ContainerError::Corrupt("manifest too large".into()));
    }
    let manifest_bytes = read_n(&mut r, n)?;
    let manifest: Value =
        serde_json::from_slice(&manifest_bytes).map_err(|e| ContainerError::Corrupt(format!("manifest: {e}")))?;
    let n = read_u32(&mut r)? as usize;
    if n > MAX_TRAILER {
        return Err(ContainerError::Corrupt("signature too large".into()));
    }
    let signature = read_n(&mut r, n)?;
    let mut extra = [0u8; 1];
    if r.read(&mut extra)? != 0 {
        return Err(ContainerError::Corrupt("bytes after the signature".into()));
    }
    if manifest.get("sha256").and_then(Value::as_str) != Some(digest.as_str()) {
        return Err(ContainerError::Altered);
    }
    Ok(Verified { header, manifest, manifest_bytes, signature })
}

/// Decrypts the chunks, calling `line` for each NDJSON line. Call after
/// [`verify`] and the signature check.
pub fn decrypt(
    mut r: impl Read,
    magic: &[u8; 16],
    kind: &'static str,
    key: &[u8; 32],
    prefix: &[u8; 4],
    mut line: impl FnMut(&[u8]) -> Result<(), ContainerError>,
) -> Result<(), ContainerError> {
    let mut hash = Sha256::new();
    let (_, h) = read_header(&mut r, magic, kind, &mut hash)?;
    let header_hash = openssl::sha::sha256(&h);
    let mut i = 0u64;
    let mut pending: Option<Vec<u8>> = None;
    let mut carry: Vec<u8> = Vec::new();
    let mut saw_last = false;
    loop {
        let n = read_u32(&mut r)? as usize;
        let next = if n == 0 {
            None
        } else {
            if !(16..=MAX_CHUNK).contains(&n) {
                return Err(ContainerError::Corrupt(format!("chunk of {n} bytes")));
            }
            Some(read_n(&mut r, n)?)
        };
        // A chunk is the last one when no chunk follows it.
        if let Some(ct) = pending.take() {
            let last = next.is_none();
            let (body, tag) = ct.split_at(ct.len() - 16);
            let plain = symm::decrypt_aead(
                Cipher::aes_256_gcm(),
                key,
                Some(&nonce(prefix, i)),
                &aad(&header_hash, i, last),
                body,
                tag,
            )
            .map_err(|_| ContainerError::WrongKey)?;
            saw_last |= last;
            carry.extend_from_slice(&plain);
            let mut start = 0;
            while let Some(p) = carry[start..].iter().position(|&b| b == b'\n') {
                line(&carry[start..start + p])?;
                start += p + 1;
            }
            carry.drain(..start);
            i += 1;
        }
        match next {
            Some(ct) => pending = Some(ct),
            None => break,
        }
    }
    if !saw_last || !carry.is_empty() {
        return Err(ContainerError::Truncated);
    }
    Ok(())
}
