//! Signed notes and audit checkpoints (C2SP signed-note, tlog-checkpoint),
//! and verifier keys, as witnesses and auditors hand them in.
use mamori_audit::note::{generate_pkcs8, Checkpoint, NoteSigner, NoteVerifier, SignedNote};

fn main() {
    let key = generate_pkcs8().expect("key");
    let vkey = NoteSigner::from_pkcs8("mamori.local/audit", &key).expect("signer").verifier();
    afl::fuzz!(|data: &[u8]| {
        let Ok(s) = std::str::from_utf8(data) else { return };
        if let Ok(n) = SignedNote::parse(s) {
            std::hint::black_box(n.verified_by(&vkey).is_ok());
            std::hint::black_box(Checkpoint::parse_body(&n.body).is_ok());
        }
        std::hint::black_box(NoteVerifier::parse(s).is_ok());
    });
}
