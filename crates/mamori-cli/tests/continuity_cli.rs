//! Snapshots, a standalone node and reconciliation from the command line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};

fn cli(port: u16, dir: &std::path::Path, token: &str, args: &[&str]) -> (i32, String, String) {
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    a.extend([
        "--server".into(),
        format!("https://localhost:{port}"),
        "--token".into(),
        token.into(),
        "--ca".into(),
        dir.join("tls/cert.pem").display().to_string(),
    ]);
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    run(&refs)
}

#[test]
fn snapshot_standalone_and_reconcile_from_the_cli() {
    let dir = temp_dir("cont-cli-c");
    let mut p = serve(&dir);
    let c = client(&dir);
    let b = base(&p);
    let (admin, doc) = setup(&c, &b, p.admin_password.as_deref().unwrap());
    let r = c
        .post(format!("{b}/fhir/Patient"))
        .bearer_auth(&doc)
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient", "name": [{"family": "高橋"}]}).to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);

    let (code, out, err) = cli(
        p.port,
        &dir,
        &admin,
        &[
            "snapshot",
            "custodians",
            "init",
            "--threshold",
            "2",
            "--custodian",
            "director",
            "--custodian",
            "cio",
            "--custodian",
            "cno",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let shares: Vec<&str> = out.lines().map(str::trim).filter(|l| l.starts_with("mamori-share:")).collect();
    assert_eq!(shares.len(), 3, "{out}");
    let two = dir.join("two-shares.txt");
    std::fs::write(&two, format!("{}\n{}\n", shares[0], shares[2])).unwrap();
    let one = dir.join("one-share.txt");
    std::fs::write(&one, shares[1]).unwrap();
    let (code, out, err) = cli(p.port, &dir, &admin, &["snapshot", "create"]);
    assert_eq!(code, 0, "{out}{err}");
    let file = out.split_whitespace().nth(1).unwrap().to_owned();
    let (code, out, err) = run(&["snapshot", "verify", &file, "--data", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("is intact and signed"), "{out}");
    let tampered = dir.join("tampered.msnap");
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n / 3] ^= 0x20;
    std::fs::write(&tampered, bytes).unwrap();
    let (code, _, err) = run(&["snapshot", "verify", tampered.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("altered") || err.contains("damaged"), "{err}");
    let plain = dir.join("plain.ndjson");
    let (code, _, err) =
        run(&["snapshot", "open", &file, "--share-file", one.to_str().unwrap(), "--out", plain.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("needed"), "{err}");
    let plain2 = dir.join("plain2.ndjson");
    let (code, out, err) =
        run(&["snapshot", "open", &file, "--share-file", two.to_str().unwrap(), "--out", plain2.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(std::fs::read_to_string(&plain2).unwrap().contains("高橋"));

    // A standalone node on "another laptop".
    let node = temp_dir("cont-cli-n");
    let mut np = spawn(&[
        "standalone",
        "--data",
        node.to_str().unwrap(),
        "--snapshot",
        &file,
        "--share-file",
        two.to_str().unwrap(),
        "--node",
        "ER2",
        "--listen",
        "127.0.0.1:0",
    ]);
    let nc = client(&node);
    let nb = base(&np);
    let (_nadmin, ndoc) = setup(&nc, &nb, np.admin_password.as_deref().unwrap());
    let (code, out, err) = cli(
        np.port,
        &node,
        &ndoc,
        &[
            "patient",
            "register",
            "--triage",
            "green",
            "--sex",
            "female",
            "--age",
            "70",
            "--features",
            "車椅子 / wheelchair",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("-ER2-0001"), "{out}");
    let (code, out, _) = cli(np.port, &node, &ndoc, &["patient", "provisional"]);
    assert_eq!(code, 0);
    assert!(out.contains("green") && out.contains("wheelchair"), "{out}");
    np.child.kill().unwrap();
    np.child.wait().unwrap();
    let export = node.join("er2.mexport");
    let (code, out, err) =
        run(&["standalone", "export", "--data", node.to_str().unwrap(), "--out", export.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("from node ER2"), "{out}");

    // Back at the centre.
    let (code, out, err) = cli(p.port, &dir, &admin, &["reconcile", "import", export.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"imported\":1") && out.contains("\"to_match\":1"), "{out}");
    let (code, out, _) = cli(p.port, &dir, &admin, &["reconcile", "import", export.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("already imported"), "{out}");
    let (code, out, _) = cli(p.port, &dir, &doc, &["reconcile", "tasks"]);
    assert_eq!(code, 0);
    let id = out.split_whitespace().next().unwrap().to_owned();
    assert!(out.contains("match"), "{out}");
    let (code, _, err) = cli(p.port, &dir, &doc, &["reconcile", "resolve", &id, "--keep", "central"]);
    assert_eq!(code, 1, "a match task is not resolved by keeping a version");
    assert!(err.contains("merge_into"), "{err}");
    let (code, out, err) = cli(
        p.port,
        &dir,
        &doc,
        &["reconcile", "resolve", &id, "--keep-as-new", "--note", "new patient, identity confirmed"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = cli(p.port, &dir, &doc, &["reconcile", "tasks"]);
    assert!(out.trim().is_empty(), "{out}");
    let r = c.get(format!("{b}/api/v1/reconcile/imports")).bearer_auth(&admin).send().unwrap().json::<Value>().unwrap();
    assert_eq!(r["imports"].as_array().unwrap().len(), 1);

    p.child.kill().unwrap();
    p.child.wait().unwrap();
    remove_all(&[&dir, &node]);
}
