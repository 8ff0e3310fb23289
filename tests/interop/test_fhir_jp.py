"""Interop: fhirpy's $validate against JP Core profiles loaded as packages.

The packages are read from ../shared/fhir-jp (or MAMORI_FHIR_JP) and
installed with `mamori packages add`, the way an operator would."""
import copy
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome

from conftest import BIN, ROOT, Mamori, _started

CORE = "http://jpfhir.jp/fhir/core/StructureDefinition/"


def fhir_jp():
    for p in [os.environ.get("MAMORI_FHIR_JP"), ROOT.parent / "shared" / "fhir-jp", "/work/shared/fhir-jp"]:
        if p and (Path(p) / "jp-core" / "package.json").is_file():
            return Path(p)
    raise RuntimeError("the JP FHIR definitions: set MAMORI_FHIR_JP to the folder holding jp-core/")


def example(name):
    v = json.loads((fhir_jp() / "jp-core" / "examples" / name).read_text())
    v.pop("id", None)
    return v


@pytest.fixture
def mamori_jp():
    d = Path(tempfile.mkdtemp(prefix="mamori-py-jp-"))
    data = d / "data"
    subprocess.run([BIN, "init", "--data", str(data)], check=True, capture_output=True)
    # A damaged package is refused, with the file named, and nothing installed.
    bad = d / "bad.tgz"
    shutil.make_archive(str(d / "good"), "gztar", root_dir=fhir_jp() / "jp-core", base_dir=".")
    bad.write_bytes((d / "good.tar.gz").read_bytes()[:5000])
    r = subprocess.run([BIN, "packages", "add", "--data", str(data), str(bad)], capture_output=True, text=True)
    assert r.returncode != 0 and "bad.tgz" in r.stderr, r.stderr
    r = subprocess.run([BIN, "packages", "add", "--data", str(data), str(fhir_jp() / "jp-core")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([BIN, "packages", "list", "--data", str(data)], capture_output=True, text=True)
    assert r.returncode == 0 and "Patient.jp-kana-sort" in r.stdout and "not searchable" not in r.stdout, r.stdout
    cfg = (data / "mamori.toml").read_text()
    cfg = cfg.replace("[fhir.type_validation]\n", '[fhir.type_validation]\nMedicationRequest = "enforce"\n', 1)
    assert 'MedicationRequest = "enforce"' in cfg
    (data / "mamori.toml").write_text(cfg)
    m = Mamori(data)
    # init printed the admin's one-time password; it is kept in the directory.
    m.admin_otp = m.admin_otp or (data / "initial-admin-password").read_text().splitlines()[0].strip()
    m = _started(m)
    yield m
    m.stop()
    shutil.rmtree(d, ignore_errors=True)


def client(m, token):
    return SyncFHIRClient(f"{m.base}/fhir", authorization=f"Bearer {token}", requests_config={"verify": m.ca})


def test_validate_with_fhirpy(mamori_jp):
    token = mamori_jp.user(mamori_jp.admin, "dr.jp", ["physician"])
    c = client(mamori_jp, token)

    # A JP Core example is valid; without its identifier it is not.
    p = c.resource("Patient", **example("Patient-jp-patient-example-1.json"))
    assert p.is_valid()
    bad = c.resource("Patient", **{k: v for k, v in example("Patient-jp-patient-example-1.json").items() if k != "identifier"})
    assert not bad.is_valid()
    with pytest.raises(OperationOutcome) as e:
        bad.is_valid(raise_exception=True)
    assert "Patient.identifier" in str(e.value)

    # profile= through fhirpy's execute: a prescription without its Rp number.
    rx = example("MedicationRequest-jp-medicationrequest-example-1.json")
    no_rp = copy.deepcopy(rx)
    no_rp.pop("meta")
    no_rp["identifier"] = [i for i in no_rp["identifier"] if i["system"] != "urn:oid:1.2.392.100495.20.3.81"]
    out = c.execute("MedicationRequest/$validate", method="post", data=no_rp, params={"profile": CORE + "JP_MedicationRequest"})
    errors = [i for i in out["issue"] if i["severity"] == "error"]
    assert any("identifier:rpNumber" in i["expression"][0] for i in errors), out
    out = c.execute("MedicationRequest/$validate", method="post", data=no_rp)
    assert not [i for i in out["issue"] if i["severity"] == "error"], out

    # The definitions are readable through the client.
    sd = c.resources("StructureDefinition").search(url=CORE + "JP_Patient").first()
    assert sd["type"] == "Patient"

    # Under "enforce", a non-conforming prescription is refused with the reason.
    pat = c.resource("Patient", **example("Patient-jp-patient-example-1.json"))
    pat.save()
    # JP Core's kana sort name is searchable, in hiragana or katakana.
    found = c.resources("Patient").search(**{"jp-kana-sort": "やまだ"}).fetch()
    assert [x.id for x in found] == [pat.id]
    assert c.resources("Patient").search(**{"jp-kana-sort": "サトウ"}).fetch() == []
    no_rp["meta"] = {"profile": [CORE + "JP_MedicationRequest"]}
    no_rp["subject"] = {"reference": f"Patient/{pat.id}"}
    for k in ["requester", "recorder", "encounter", "basedOn", "insurance", "contained", "dispenseRequest"]:
        no_rp.pop(k, None)
    with pytest.raises(OperationOutcome) as e:
        c.resource("MedicationRequest", **no_rp).save()
    assert "rpNumber" in str(e.value)
    assert c.resources("MedicationRequest").count() == 0
