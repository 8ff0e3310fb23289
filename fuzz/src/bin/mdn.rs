//! AS2 receipts (MDNs): a MIME entity read as a receipt, unsigned and
//! signed forms, without a signer to check against.
use mamori_exchange::cms::Digest;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok((h, body)) = mamori_exchange::mime::split_entity(data) else { return };
        std::hint::black_box(mamori_exchange::as2::parse_mdn(&h, body, None, &[Digest::Sha256]).is_ok());
    });
}
