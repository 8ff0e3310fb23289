"""AS2 interop with pyas2lib, an independent AS2 implementation: it sends
signed and encrypted messages that mamori accepts and answers with signed
MDNs that pyas2lib verifies; mamori sends to a small pyas2lib-based receiver
(HTTPS with client certificates) and verifies its MDN."""
import functools
import http.server
import json
import ssl
import subprocess
import threading
import time
from pathlib import Path

import requests
from pyas2lib import as2
from pyas2lib import cms as pyas2_cms

PARTNER_ID = "pyas2-clinic"


def openssl(d: Path, *args):
    r = subprocess.run(["openssl", *args], cwd=d, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def make_partner_material(d: Path):
    """A partner CA, a TLS certificate (server and client) and an S/MIME key, with the openssl CLI."""
    openssl(d, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "30", "-subj", "/CN=pyas2 clinic CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl(d, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl(d, "x509", "-req", "-in", "tls.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "tls.pem", "-days", "30", "-extfile", "ext.cnf")
    openssl(d, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "as2.key", "-out", "as2.pem",
            "-days", "30", "-subj", "/CN=pyas2 clinic", "-sha256")


def terms():
    return {
        "sender_side": "each side's IT department / 各施設の情報システム部門",
        "path": "Internet, secured by TLS with client certificates / インターネット（相互TLS）",
        "recipient_side": "the receiving clinic / 受信側診療所",
        "fault_isolation": "joint, by phone / 電話で協議",
        "stopping": "either party on written notice / 書面通知で停止",
        "patient_enquiries": "each institution's patient desk / 各施設の相談窓口",
    }


class Receiver:
    """A pyas2lib AS2 receiver behind HTTPS that requires mamori's client certificate."""

    def __init__(self, d: Path, mamori_cert: bytes, mamori_ca: Path):
        key = (d / "as2.key").read_bytes() + (d / "as2.pem").read_bytes()
        self.org = as2.Organization(as2_name="PYAS2", sign_key=key, sign_key_pass="unused",
                                    decrypt_key=key, decrypt_key_pass="unused", domain="pyas2.example")
        self.partner = as2.Partner(as2_name="MAMORI-H", verify_cert=mamori_cert, sign=True, encrypt=True)
        self.received = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                raw = b"".join(f"{k}: {v}\r\n".encode() for k, v in self.headers.items()) + b"\r\n" + body
                msg = as2.Message()
                status, (exc, _tb), mdn = msg.parse(
                    raw,
                    find_org_cb=lambda to: outer.org if to == "PYAS2" else None,
                    find_partner_cb=lambda frm: outer.partner if frm == "MAMORI-H" else None,
                    find_message_cb=lambda mid, pid: any(m["id"] == mid for m in outer.received),
                )
                outer.received.append({"id": msg.message_id, "status": status, "exc": repr(exc),
                                       "content": msg.content, "mic": msg.mic})
                self.send_response(200)
                for k, v in mdn.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(mdn.content)))
                self.end_headers()
                self.wfile.write(mdn.content)

            def log_message(self, *args):
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(d / "tls.pem", d / "tls.key")
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(mamori_ca)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()


def setup(m, d: Path, endpoint: str, profile=None):
    ident = m.api("GET", "/api/v1/exchange/identity", m.admin).json()
    (d / "mamori-ca.pem").write_text(ident["certificates"]["tls_ca"])
    cert = ident["certificates"]["signing"].encode()
    doc = {
        "id": PARTNER_ID, "name": "pyas2 clinic", "as2_id": "PYAS2", "endpoint": endpoint,
        "relationship": "third_party", "contract": {"reference": "C-PY-1"}, "demarcation": terms(),
        "network": {"kind": "internet_tls", "secured_by": "institution"},
        "purposes": ["referral", "referral_reply"],
        "certificates": {"signing": (d / "as2.pem").read_text(), "encryption": (d / "as2.pem").read_text(),
                         "tls_ca": (d / "ca.pem").read_text()},
    }
    if profile:
        doc["profile"] = profile
    r = m.api("POST", "/api/v1/partners", m.admin, doc)
    assert r.status_code == 201, r.text
    return ident, cert


def pyas2_sender(d: Path, mamori_cert: bytes, enc_alg="aes_256_cbc"):
    key = (d / "as2.key").read_bytes() + (d / "as2.pem").read_bytes()
    org = as2.Organization(as2_name="PYAS2", sign_key=key, sign_key_pass="unused",
                           decrypt_key=key, decrypt_key_pass="unused", domain="pyas2.example")
    partner = as2.Partner(as2_name="MAMORI-H", verify_cert=mamori_cert, encrypt_cert=mamori_cert,
                          sign=True, digest_alg="sha256", encrypt=True, enc_alg=enc_alg,
                          mdn_mode=as2.SYNCHRONOUS_MDN, mdn_digest_alg="sha256")
    return org, partner


def document(identifier):
    return json.dumps({"resourceType": "Bundle", "type": "document", "entry": [
        {"fullUrl": "urn:uuid:9d7f1c2e-0000-4000-8000-000000000001",
         "resource": {"resourceType": "Composition", "status": "final",
                      "type": {"coding": [{"system": "http://loinc.org", "code": "57133-1"}]},
                      "date": "2026-11-26", "author": [{"display": "Dr. Py"}], "title": "紹介状 / Referral",
                      "subject": {"reference": "urn:uuid:9d7f1c2e-0000-4000-8000-000000000002"}}},
        {"fullUrl": "urn:uuid:9d7f1c2e-0000-4000-8000-000000000002",
         "resource": {"resourceType": "Patient", "identifier": [identifier]}}]}, ensure_ascii=False).encode()


def oaep_sha1(monkeypatch):
    """pyas2lib 1.4.4 does not pass its partner's key_enc_alg on; its cms
    module does the OAEP encryption (oscrypto: SHA-1, MGF1-SHA-1) and
    writes the algorithm without parameters, as the evaluation saw it."""
    monkeypatch.setattr(as2, "encrypt_message",
                        functools.partial(pyas2_cms.encrypt_message, key_enc_alg="rsaes_oaep"))


def send(m, d, org, partner, payload):
    msg = as2.Message(org, partner)
    msg.build(payload, filename="referral.json", content_type="application/fhir+json")
    r = requests.post(f"https://localhost:{m.as2_port}/as2", data=msg.content, headers=msg.headers,
                      cert=(str(d / "tls.pem"), str(d / "tls.key")), verify=str(d / "mamori-ca.pem"), timeout=30)
    assert r.status_code == 200, r.text
    raw = b"".join(f"{k}: {v}\r\n".encode() for k, v in r.headers.items()) + b"\r\n" + r.content
    return msg, as2.Mdn().parse(raw, find_message_cb=lambda mid, rcpt: msg if mid == msg.message_id else None)


def test_pyas2lib_sends_to_mamori_and_verifies_its_signed_mdn(mamori_as2, monkeypatch):
    m = mamori_as2
    d = m.tmp / "py"
    d.mkdir()
    make_partner_material(d)
    _, cert = setup(m, d, "https://localhost:1/as2")
    ident = {"system": "urn:oid:1.2.392.200119.6.102", "value": "06-9999-0001"}
    clerk = m.user(m.admin, "clerk", ["clerk"])
    r = m.api("POST", "/fhir/Patient", clerk, {"resourceType": "Patient", "identifier": [ident], "name": [{"family": "Py"}]})
    assert r.status_code == 201, r.text
    patient = r.json()["id"]

    org, partner = pyas2_sender(d, cert)
    msg, (status, detail) = send(m, d, org, partner, document(ident))
    assert (status, detail) == ("processed", None)  # signature verified and MIC matched by pyas2lib

    ins = m.api("GET", "/api/v1/exchange/messages?direction=in", m.admin).json()["messages"]
    assert len(ins) == 1 and ins[0]["state"] == "stored" and ins[0]["message_id"] == msg.message_id
    assert ins[0]["mic"].split(",")[0] == msg.mic.decode()
    # Filed into the patient's record by identifier.
    inbound = m.api("GET", "/api/v1/exchange/inbound?state=matched", clerk).json()["inbound"]
    assert len(inbound) == 1 and inbound[0]["patient"] == patient

    # Replay: pyas2lib sends the same message again.
    r = requests.post(f"https://localhost:{m.as2_port}/as2", data=msg.content, headers=msg.headers,
                      cert=(str(d / "tls.pem"), str(d / "tls.key")), verify=str(d / "mamori-ca.pem"), timeout=30)
    assert b"duplicate-document" in r.content

    # Legacy 3DES is refused unless the partner's profile allows it.
    org, partner = pyas2_sender(d, cert, enc_alg="tripledes_192_cbc")
    _, (status, detail) = send(m, d, org, partner, document(ident))
    assert status == "processed/error" and detail == "insufficient-message-security"
    assert len(m.api("GET", "/api/v1/exchange/quarantine", m.admin).json()["quarantine"]) == 2

    # RSAES-OAEP with SHA-1 (the key transport written without parameters,
    # as oscrypto writes it) is legacy: refused for this partner, whose
    # profile does not list rsa-oaep-other, with the precise reason.
    oaep_sha1(monkeypatch)
    org, partner = pyas2_sender(d, cert)
    _, (status, detail) = send(m, d, org, partner, document(ident))
    assert status == "processed/error" and detail == "insufficient-message-security"
    q = m.api("GET", "/api/v1/exchange/quarantine", m.admin).json()["quarantine"]
    assert len(q) == 3 and "key transport rsa-oaep-other is not allowed" in json.dumps(q), q


def test_pyas2lib_oaep_sha1_is_read_for_a_partner_that_allows_it(mamori_as2, monkeypatch):
    m = mamori_as2
    d = m.tmp / "py"
    d.mkdir()
    make_partner_material(d)
    _, cert = setup(m, d, "https://localhost:1/as2",
                    profile={"inbound_key_transports": ["rsa-pkcs1", "rsa-oaep-other"]})
    ident = {"system": "urn:oid:1.2.392.200119.6.102", "value": "06-9999-0002"}
    oaep_sha1(monkeypatch)
    org, partner = pyas2_sender(d, cert)
    msg, (status, detail) = send(m, d, org, partner, document(ident))
    # Decrypted with the RFC 8017 defaults, verified, stored; a signed MDN.
    assert (status, detail) == ("processed", None)
    ins = m.api("GET", "/api/v1/exchange/messages?direction=in", m.admin).json()["messages"]
    assert len(ins) == 1 and ins[0]["state"] == "stored" and ins[0]["message_id"] == msg.message_id
    hops = m.api("GET", f"/api/v1/exchange/messages/{ins[0]['id']}", m.admin).json()["hops"]
    decrypted = [h for h in hops if h["hop"] == "decrypted"]
    assert decrypted and decrypted[0]["detail"]["key_transport"] == ["rsa-oaep-other"], hops


def test_mamori_sends_to_a_pyas2lib_receiver_and_verifies_its_mdn(mamori_as2):
    m = mamori_as2
    d = m.tmp / "py"
    d.mkdir()
    make_partner_material(d)
    ident = m.api("GET", "/api/v1/exchange/identity", m.admin).json()
    (d / "mamori-ca.pem").write_text(ident["certificates"]["tls_ca"])
    rx = Receiver(d, ident["certificates"]["signing"].encode(), d / "mamori-ca.pem")
    try:
        setup(m, d, f"https://localhost:{rx.port}/as2")
        doc = m.user(m.admin, "dr", ["physician"])
        r = m.api("POST", "/fhir/Patient", doc, {"resourceType": "Patient", "name": [{"family": "山田"}]})
        patient = r.json()["id"]
        r = m.api("POST", "/api/v1/care-assignments", m.admin, {"patient": patient, "user": "dr"})
        assert r.status_code == 201, r.text
        r = m.api("POST", "/api/v1/exchange/messages", doc,
                  {"patient": patient, "recipients": [PARTNER_ID], "purpose": "referral", "note": "よろしくお願いします"})
        assert r.status_code == 202, r.text
        mid = r.json()["messages"][0]["id"]
        for _ in range(200):
            msg = m.api("GET", f"/api/v1/exchange/messages/{mid}", m.admin).json()
            if msg["state"] in ("delivered", "failed"):
                break
            time.sleep(0.1)
        assert msg["state"] == "delivered", msg
        assert len(rx.received) == 1 and rx.received[0]["status"] == "processed", rx.received
        bundle = json.loads(rx.received[0]["content"])
        assert bundle["type"] == "document" and bundle["entry"][0]["resource"]["resourceType"] == "Composition"
        assert "よろしくお願いします" in json.dumps(bundle, ensure_ascii=False)
        # Both sides computed the same MIC over what mamori signed.
        assert msg["mic"].split(",")[0] == rx.received[0]["mic"].decode()
        assert [h["hop"] for h in msg["hops"]][-3:] == ["mdn_received", "mdn_verified", "responsibility_transferred"]
    finally:
        rx.stop()
