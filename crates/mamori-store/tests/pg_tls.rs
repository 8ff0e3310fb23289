//! TLS to PostgreSQL with the real server (the machine's PostgreSQL serves
//! TLS with its own certificate for `localhost`): verified connections
//! work and are encrypted; a wrong CA or a wrong host name is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mamori_store::pg::PgConn;
use mamori_store::sql::Conn;

fn base() -> (String, String) {
    // user@host:port/db of MAMORI_TEST_PG (default: the local test database).
    let u = std::env::var("MAMORI_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let rest = u.trim_start_matches("postgres://").split('?').next().unwrap().to_owned();
    let (user, hostdb) = rest.split_once('@').unwrap();
    let (_, portdb) = hostdb.split_once(':').unwrap();
    (user.to_owned(), portdb.to_owned())
}

fn server_cert() -> String {
    let mut c = PgConn::connect(&format!("postgres://{}@127.0.0.1:{}", base().0, base().1)).unwrap();
    let on = c.query_one("SHOW ssl", mamori_store::p![]).unwrap().unwrap().text(0).unwrap();
    assert_eq!(on, "on", "these tests need PostgreSQL with ssl = on (Debian's default)");
    c.query_one("SHOW ssl_cert_file", mamori_store::p![]).unwrap().unwrap().text(0).unwrap()
}

fn encrypted(c: &mut PgConn) -> bool {
    c.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", mamori_store::p![])
        .unwrap()
        .unwrap()
        .bool(0)
        .unwrap()
}

#[test]
fn verified_tls_works_and_wrong_peers_are_refused() {
    let cert = server_cert();
    let (user, portdb) = base();
    // verify-full: the server's certificate names localhost.
    let url = format!("postgres://{user}@localhost:{portdb}?sslmode=verify-full&sslrootcert={cert}");
    let mut c = std::thread::spawn(move || PgConn::connect(&url)).join().unwrap().expect("verified TLS connects");
    assert!(encrypted(&mut c));
    // Plain by default, encrypted with require.
    let mut plain = PgConn::connect(&format!("postgres://{user}@127.0.0.1:{portdb}")).unwrap();
    assert!(!encrypted(&mut plain));
    let mut req = PgConn::connect(&format!("postgres://{user}@127.0.0.1:{portdb}?sslmode=require")).unwrap();
    assert!(encrypted(&mut req));
    // verify-ca accepts the certificate whatever the host name.
    let mut ca =
        PgConn::connect(&format!("postgres://{user}@127.0.0.1:{portdb}?sslmode=verify-ca&sslrootcert={cert}")).unwrap();
    assert!(encrypted(&mut ca));
    // verify-full refuses a host name the certificate does not carry.
    let e = PgConn::connect(&format!("postgres://{user}@127.0.0.1:{portdb}?sslmode=verify-full&sslrootcert={cert}"))
        .err()
        .expect("host name mismatch refused");
    assert!(e.to_string().contains("server certificate refused"), "{e}");
    eprintln!("refused: {e}");
    // A CA that did not sign the server's certificate is refused.
    let dir = std::env::temp_dir().join(format!("mamori-pg-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let other = dir.join("other-ca.pem");
    let st = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(dir.join("k.pem"))
        .arg("-out")
        .arg(&other)
        .output()
        .unwrap();
    assert!(st.status.success());
    let e = PgConn::connect(&format!(
        "postgres://{user}@localhost:{portdb}?sslmode=verify-full&sslrootcert={}",
        other.display()
    ))
    .err()
    .expect("unknown CA refused");
    assert!(e.to_string().contains("server certificate refused"), "{e}");
    eprintln!("refused: {e}");
    // A missing root file is a clear error, not a plain connection.
    let e = PgConn::connect(&format!(
        "postgres://{user}@localhost:{portdb}?sslmode=verify-full&sslrootcert=/nonexistent.pem"
    ))
    .err()
    .expect("missing CA file refused");
    assert!(e.to_string().contains("sslrootcert"), "{e}");
    // Best effort: a leftover temporary directory harms no test.
    std::fs::remove_dir_all(&dir).ok();
}
