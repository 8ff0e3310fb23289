//! CMS (S/MIME) envelopes and detached signatures as partners send them:
//! the structure mamori inspects before OpenSSL decrypts or verifies.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        std::hint::black_box(mamori_exchange::cms::inspect_envelope(data).is_ok());
        std::hint::black_box(mamori_exchange::cms::inspect_signature(data).is_ok());
    });
}
