//! The snapshot and standalone-export container: structure and manifest
//! (needs no key), then decryption with the fixed key of the seeds.
use mamori_fuzz::{CONTAINER_KEY, CONTAINER_PREFIX};
use mamori_service::continuity::container::{self, EXPORT_MAGIC, SNAPSHOT_MAGIC};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        for magic in [SNAPSHOT_MAGIC, EXPORT_MAGIC] {
            std::hint::black_box(container::verify(data, magic, "fuzz").is_ok());
            let mut lines = 0usize;
            let r = container::decrypt(data, magic, "fuzz", &CONTAINER_KEY, &CONTAINER_PREFIX, |_| {
                lines += 1;
                Ok(())
            });
            std::hint::black_box((r.is_ok(), lines));
        }
    });
}
