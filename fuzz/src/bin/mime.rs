//! MIME as AS2 carries it: headers, content types, multipart bodies,
//! transfer encodings.
use mamori_exchange::mime;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok((h, body)) = mime::split_entity(data) else { return };
        std::hint::black_box(mime::decode_body(&h, body).is_ok());
        std::hint::black_box(mamori_exchange::as2::is_mdn(&h, body));
        let Ok(ct) = h.content_type() else { return };
        let Some(b) = ct.param("boundary") else { return };
        let Ok(parts) = mime::split_multipart(body, b) else { return };
        for p in parts {
            if let Ok((h2, b2)) = mime::split_entity(p) {
                std::hint::black_box(mime::decode_body(&h2, b2).is_ok());
                std::hint::black_box(h2.content_type().is_ok());
            }
        }
    });
}
