//! Test keys and certificates made with the real `openssl` command.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static N: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "mamori-exch-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    // A leftover from an earlier run with the same process id; usually none.
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub(crate) fn openssl(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    out
}

pub(crate) fn openssl_ok(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = openssl(dir, args);
    assert!(out.status.success(), "openssl {:?} failed: {}", args, String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A self-signed RSA identity `<name>.key.pem` / `<name>.cert.pem`.
pub(crate) fn rsa_identity(dir: &Path, name: &str, bits: u32) -> (Vec<u8>, Vec<u8>) {
    let key = format!("{name}.key.pem");
    let cert = format!("{name}.cert.pem");
    openssl_ok(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            &format!("rsa:{bits}"),
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "30",
            "-subj",
            &format!("/CN={name}"),
            "-sha256",
        ],
    );
    (std::fs::read(dir.join(&cert)).unwrap(), std::fs::read(dir.join(&key)).unwrap())
}
