//! The group-commit writer's exclusive jobs: all or nothing, failures
//! recorded, ordinary jobs unaffected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use mamori_audit::note::{generate_pkcs8, NoteSigner};
use mamori_core::time::SystemClock;
use mamori_store::{p, CheckpointPolicy, Store, StoreConfig, StoreError, Synchronous};

fn store(tag: &str) -> (Store, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("mamori-store-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let signer = Arc::new(NoteSigner::from_pkcs8("test/log", &generate_pkcs8().unwrap()).unwrap());
    let cfg = StoreConfig {
        path: dir.join("t.db"),
        url: None,
        synchronous: Synchronous::Normal,
        readers: 1,
        checkpoint: CheckpointPolicy { every_events: 1000, every: Duration::from_secs(60) },
        origin: "test/log".into(),
    };
    (Store::open(&cfg, Arc::new(SystemClock), signer).unwrap(), dir)
}

async fn count(s: &Store) -> i64 {
    s.read(|c| Ok(c.query_one("SELECT COUNT(*) FROM provisional_seq", p![])?.unwrap().i64(0)?)).await.unwrap()
}

#[tokio::test]
async fn exclusive_jobs_are_all_or_nothing() {
    let (s, dir) = store("excl");
    // A large job commits as a whole.
    s.writer()
        .write_exclusive(
            |w| {
                for i in 0..20_000 {
                    w.conn.exec("INSERT INTO provisional_seq (day, n) VALUES ($1, 1)", p![format!("d{i}")])?;
                }
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await
        .unwrap();
    assert_eq!(count(&s).await, 20_000);
    // A failing one leaves nothing behind, and its failure is recorded.
    let r: Result<(), StoreError> = s
        .writer()
        .write_exclusive(
            |w| {
                for i in 0..100 {
                    w.conn.exec("INSERT INTO provisional_seq (day, n) VALUES ($1, 1)", p![format!("x{i}")])?;
                }
                Err(StoreError::invalid("", "half way"))
            },
            |_, w| {
                w.conn.exec("INSERT INTO provisional_seq (day, n) VALUES ('failure-recorded', 1)", p![])?;
                Ok(())
            },
        )
        .await;
    assert!(r.is_err());
    assert_eq!(count(&s).await, 20_001);
    // Ordinary jobs around it still work.
    let (a, b) = tokio::join!(
        s.writer().write(
            |w| w.conn.exec("INSERT INTO provisional_seq (day, n) VALUES ('a', 1)", p![]).map_err(Into::into),
            |_, _| Ok(())
        ),
        s.writer().write_exclusive(
            |w| w.conn.exec("INSERT INTO provisional_seq (day, n) VALUES ('b', 1)", p![]).map_err(Into::into),
            |_, _| Ok(())
        ),
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(count(&s).await, 20_003);
    drop(s);
    let _ = std::fs::remove_dir_all(dir);
}
