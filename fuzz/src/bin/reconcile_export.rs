//! The reader of a standalone node's export, as reconciliation opens it:
//! container, node signature, key unwrapping, records.
use mamori_exchange::cms::Identity;
use mamori_service::continuity::reconcile::open_export;

fn main() {
    let (cert, key) = mamori_fuzz::identity("fuzz institution");
    let id = Identity::from_pem(&cert, &key).expect("identity");
    let pubkey = openssl::x509::X509::from_pem(&cert)
        .and_then(|c| c.public_key())
        .and_then(|k| k.public_key_to_pem())
        .expect("public key");
    let trusted = vec![String::from_utf8(pubkey).expect("pem")];
    afl::fuzz!(|data: &[u8]| {
        std::hint::black_box(open_export(data, &trusted, &id).is_ok());
    });
}
