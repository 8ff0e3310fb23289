"""Interop: a FHIR Bulk Data export of the demo hospital, kicked off and
polled with plain HTTP as the Bulk Data IG describes, its NDJSON read back
line by line, and compared with the store (SQLite, read directly) and with
what an independent FHIR client (fhirpy) finds by searching."""
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests
from fhirpy import SyncFHIRClient

from conftest import BIN


@pytest.fixture(scope="module")
def demo():
    d = Path(tempfile.mkdtemp(prefix="mamori-py-bulk-"))
    proc = subprocess.Popen(
        [BIN, "serve", "--demo", "--data", str(d / "data"), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "MAMORI_LOG_LEVEL": "warn"},
    )
    creds, port = {}, None
    for line in proc.stdout:
        m = re.match(r"mamori: listening on \S+:(\d+)", line)
        if m:
            port = int(m.group(1))
        m = re.match(r"\s+\[(\S+)\]\s+(\S+)\s+(\S+)\s", line)
        if m and m.group(1) == "hospital":
            creds[m.group(2)] = m.group(3)
        if m and m.group(1) == "clinic":
            break
    else:
        raise RuntimeError("the demo exited before listening")
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    base = f"https://localhost:{port}"
    ca = str(d / "data" / "tls" / "cert.pem")
    yield {"base": base, "ca": ca, "creds": creds, "db": d / "data" / "mamori.db"}
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    shutil.rmtree(d, ignore_errors=True)


def login(demo, user):
    r = requests.post(f"{demo['base']}/api/v1/auth/login", json={"username": user, "password": demo["creds"][user]},
                      verify=demo["ca"], timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["token"]


def export(demo, token, path):
    """Kick-off, poll, download: returns {type: {id: resource}} and the manifest."""
    h = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json", "Prefer": "respond-async"}
    r = requests.get(f"{demo['base']}/fhir/{path}", headers=h, verify=demo["ca"], timeout=30)
    assert r.status_code == 202, r.text
    status = r.headers["Content-Location"]
    for _ in range(600):
        r = requests.get(status, headers={"Authorization": f"Bearer {token}"}, verify=demo["ca"], timeout=30)
        if r.status_code == 200:
            break
        assert r.status_code == 202, r.text
        assert "X-Progress" in r.headers or r.headers.get("Retry-After")
        time.sleep(0.1)
    else:
        pytest.fail("the export did not complete")
    manifest = r.json()
    assert manifest["requiresAccessToken"] is True
    out = {}
    for item in manifest["output"]:
        f = requests.get(item["url"], headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+ndjson"},
                         verify=demo["ca"], timeout=60)
        assert f.status_code == 200, f.text
        assert f.headers["Content-Type"] == "application/fhir+ndjson"
        lines = f.content.decode("utf-8").splitlines()
        assert len(lines) == item["count"]
        for line in lines:
            res = json.loads(line)
            assert res["resourceType"] == item["type"]
            out.setdefault(item["type"], {})[res["id"]] = res
    # Without a token the files are not served.
    if manifest["output"]:
        anon = requests.get(manifest["output"][0]["url"], verify=demo["ca"], timeout=30)
        assert anon.status_code == 401
    return out, manifest


def store(demo, sql, *args):
    c = sqlite3.connect(f"file:{demo['db']}?mode=ro", uri=True)
    try:
        return c.execute(sql, args).fetchall()
    finally:
        c.close()


def test_a_clerk_exports_every_patient_as_the_store_holds_them(demo):
    token = login(demo, "clerk.kato")
    out, manifest = export(demo, token, "Patient/$export?_type=Patient,Observation")
    # Demographics only: a clerk reads no clinical records.
    assert set(out) == {"Patient"}
    rows = store(demo, "SELECT v.id, v.body FROM resources r JOIN resource_versions v "
                       "ON v.rtype = r.rtype AND v.id = r.id AND v.version = r.version "
                       "WHERE r.rtype = 'Patient' AND r.deleted = 0")
    assert len(rows) >= 50
    assert {i: json.loads(b) for i, b in rows} == out["Patient"]


def test_a_physician_exports_what_a_search_finds_for_them(demo):
    token = login(demo, "dr.sato")
    out, manifest = export(demo, token, "$export?_type=Observation,Condition")
    c = SyncFHIRClient(f"{demo['base']}/fhir", authorization=f"Bearer {token}", requests_config={"verify": demo["ca"]})
    for t in ("Observation", "Condition"):
        found = {r.id: r.serialize() for r in c.resources(t).limit(200).fetch_all()}
        assert found, f"dr.sato has {t} records in the demo"
        assert set(out.get(t, {})) == set(found), t
        for i, r in found.items():
            assert out[t][i] == r
    # The demo hospital has patients dr.sato does not care for: their
    # clinical records are not in the export.
    subjects = {o["subject"]["reference"] for o in out["Observation"].values()}
    all_subjects = {r[0] for r in store(demo, "SELECT DISTINCT patient FROM resources WHERE rtype = 'Observation'")}
    assert len(subjects) < len(all_subjects)
