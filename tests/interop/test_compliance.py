"""Interop: a compliance report checked without mamori's code.

Python recomputes the canonical form (sorted keys, no whitespace, UTF-8)
and its SHA-256, and the OpenSSL command line verifies the detached CMS
signature over it with the institution's certificate."""
import base64
import copy
import hashlib
import json
import subprocess


def canonical(report):
    return json.dumps(report, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def openssl_verifies(tmp_path, content, cms_der, cert):
    (tmp_path / "content").write_bytes(content)
    (tmp_path / "sig.der").write_bytes(cms_der)
    r = subprocess.run(
        ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(tmp_path / "sig.der"),
         "-content", str(tmp_path / "content"), "-CAfile", str(cert), "-purpose", "any", "-out", "/dev/null"],
        capture_output=True, text=True,
    )
    return r.returncode == 0, r.stderr


def test_report_digest_and_signature_verify_independently(mamori, tmp_path):
    auditor = mamori.user(mamori.admin, "auditor.py", ["auditor"])
    r = mamori.api("POST", "/api/v1/compliance/reports?from=2026-01-01", auditor)
    assert r.status_code == 201, r.text
    signed = r.json()
    report, sig = signed["report"], signed["signature"]
    assert len(report["requirements"]) == 32
    assert {q["status"] for q in report["requirements"]} <= {"met", "attention", "not_met"}

    content = canonical(report)
    assert hashlib.sha256(content).hexdigest() == sig["sha256"]
    cert = mamori.data / "keys" / "institution.cert.pem"
    ok, err = openssl_verifies(tmp_path, content, base64.b64decode(sig["cms"]), cert)
    assert ok, err

    # One changed value: the digest differs and OpenSSL refuses the signature.
    altered = copy.deepcopy(report)
    altered["requirements"][0]["status"] = "met" if altered["requirements"][0]["status"] != "met" else "not_met"
    changed = canonical(altered)
    assert hashlib.sha256(changed).hexdigest() != sig["sha256"]
    ok, _ = openssl_verifies(tmp_path, changed, base64.b64decode(sig["cms"]), cert)
    assert not ok

    # The server's own verification agrees.
    v = mamori.api("POST", "/api/v1/compliance/verify", auditor, signed)
    assert v.status_code == 200 and v.json()["ok"] is True, v.text
