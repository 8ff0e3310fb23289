"""Interop: fhirpy (an independent Python FHIR client) against mamori."""
import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome


def client(m, token):
    return SyncFHIRClient(f"{m.base}/fhir", authorization=f"Bearer {token}", requests_config={"verify": m.ca})


def test_create_read_update_search_and_page(mamori):
    token = mamori.user(mamori.admin, "dr.py", ["physician"])
    c = client(mamori, token)

    created = []
    for i in range(23):
        p = c.resource(
            "Patient",
            name=[{"family": "山田" if i % 2 else "Yamada", "given": [f"太郎{i}"]}],
            gender="male",
            birthDate=f"1980-01-{i + 1:02d}",
            identifier=[{"system": "urn:oid:1.2.392.100495.20.3.51.11234567890", "value": f"{1000 + i}"}],
        )
        p.save()
        assert p.id and p["meta"]["versionId"] == "1"
        created.append(p.id)

    # read
    p = c.reference("Patient", created[0]).to_resource()
    assert p["name"][0]["family"] == "Yamada"

    # update: a new version, ETag-checked by the server
    p["active"] = True
    p.save()
    assert p["meta"]["versionId"] == "2"

    # search by name (kanji), identifier, birthdate prefix
    assert c.resources("Patient").search(family="山田").count() == 11
    found = c.resources("Patient").search(identifier="urn:oid:1.2.392.100495.20.3.51.11234567890|1005").first()
    assert found.id == created[5]
    assert c.resources("Patient").search(birthdate__ge="1980-01-20").count() == 4

    # paging through every page with the server's next links
    ids = [r.id for r in c.resources("Patient").limit(5).fetch_all()]
    assert sorted(ids) == sorted(created)
    assert len(ids) == len(set(ids))

    # clinical data for the patient this physician registered
    obs = c.resource(
        "Observation",
        status="final",
        code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        subject=p.to_reference(),
        valueQuantity={"value": 72, "unit": "/min"},
    )
    obs.save()
    assert c.resources("Observation").search(patient=p.id, code="8867-4").count() == 1

    # delete then read gives 410
    obs.delete()
    with pytest.raises(Exception):
        c.reference("Observation", obs.id).to_resource()


def test_invalid_resource_is_rejected_with_operation_outcome(mamori):
    token = mamori.user(mamori.admin, "dr.py2", ["physician"])
    c = client(mamori, token)
    with pytest.raises(OperationOutcome) as e:
        c.resource("Patient", gender="M").save()
    assert "Patient.gender" in str(e.value)
    assert c.resources("Patient").count() == 0


def test_access_without_token_is_refused(mamori):
    c = SyncFHIRClient(f"{mamori.base}/fhir", requests_config={"verify": mamori.ca})
    with pytest.raises(Exception):
        c.resources("Patient").fetch()


def test_includes_chains_has_paging_conditional_and_patch(mamori):
    """fhirpy's own search builders (include, revinclude, chained
    parameters, _has, _elements, paging through next links with one
    resource per page) and its conditional update and delete; a PATCH
    (FHIRPath Patch) through its request layer; a system-level search.
    What another physician's patient holds never shows."""
    token = mamori.user(mamori.admin, "dr.py3", ["physician"])
    other = mamori.user(mamori.admin, "dr.py4", ["physician"])
    c, o = client(mamori, token), client(mamori, other)
    mine = c.resource("Patient", name=[{"family": "Chain", "given": ["Ichiro"]}],
                      identifier=[{"system": "urn:mrn", "value": "C-1"}])
    mine.save()
    theirs = o.resource("Patient", name=[{"family": "Chain", "given": ["Jiro"]}])
    theirs.save()
    obs_ids = []
    for code, value in [("8867-4", 70), ("8867-4", 75), ("8310-5", 36.6)]:
        ob = c.resource("Observation", status="final", subject=mine.to_reference(),
                        code={"coding": [{"system": "http://loinc.org", "code": code}]},
                        valueQuantity={"value": value, "unit": "/min"})
        ob.save()
        obs_ids.append(ob.id)
    o.resource("Observation", status="final", subject=theirs.to_reference(),
               code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}).save()

    # _include: the Observations and their Patient, once.
    bundle = c.resources("Observation").search(code="8867-4").include("Observation", "subject").fetch_raw()
    modes = sorted((e["search"]["mode"], e["resource"]["resourceType"]) for e in bundle.entry)
    assert modes == [("include", "Patient"), ("match", "Observation"), ("match", "Observation")], modes
    # _revinclude from the Patient.
    bundle = c.resources("Patient").search(_id=mine.id).revinclude("Observation", "subject").fetch_raw()
    assert sorted(e["resource"]["id"] for e in bundle.entry if e["search"]["mode"] == "include") == sorted(obs_ids)
    # A chained parameter, and _has: only this physician's patient.
    chained = c.resources("Observation").search(**{"subject:Patient.name": "Chain"}).fetch_all()
    assert sorted(r.id for r in chained) == sorted(obs_ids)
    has = c.resources("Patient").has("Observation", "subject", code="8310-5").fetch_all()
    assert [r.id for r in has] == [mine.id]
    # _elements: a subset, tagged.
    sub = c.resources("Observation").search(_id=obs_ids[0]).elements("status").fetch()[0]
    assert "valueQuantity" not in sub and sub["status"] == "final"
    assert any(t["code"] == "SUBSETTED" for t in sub["meta"]["tag"])
    # Every page with one resource each, following the server's links.
    paged = [r.id for r in c.resources("Observation").search(patient=mine.id).limit(1).fetch_all()]
    assert sorted(paged) == sorted(obs_ids) and len(paged) == 3

    # Conditional update through the search set (PUT Type?search).
    found = c.resources("Patient").search(identifier="urn:mrn|C-1")
    updated, created = found.update(c.resource("Patient", name=[{"family": "Chain", "given": ["Ichiro", "X"]}],
                                                identifier=[{"system": "urn:mrn", "value": "C-1"}]))
    assert not created and updated.id == mine.id and updated["meta"]["versionId"] == "2"
    # fhirpy's conditional create puts its search in the URL, which FHIR
    # does not define: refused clearly rather than creating a duplicate.
    with pytest.raises(OperationOutcome) as e:
        found.get_or_create(c.resource("Patient", identifier=[{"system": "urn:mrn", "value": "C-1"}]))
    assert "If-None-Exist" in str(e.value)
    # The FHIR way: If-None-Exist matches, nothing is created.
    before = c.resources("Patient").count()
    c._do_request("post", "Patient", {"resourceType": "Patient"}, extra_headers={"If-None-Exist": "identifier=urn:mrn|C-1"})
    assert c.resources("Patient").count() == before

    # PATCH: a FHIRPath Patch sent through fhirpy's request layer.
    patch = {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Observation.status"},
        {"name": "value", "valueCode": "amended"}]}]}
    patched = c._do_request("patch", f"Observation/{obs_ids[2]}", patch)
    assert patched["status"] == "amended" and patched["meta"]["versionId"] == "2"

    # A system-level search over two types.
    both = c.execute("", method="get", params={"_type": "Patient,Observation", "_id": f"{mine.id},{obs_ids[0]}"})
    assert sorted(e["resource"]["id"] for e in both["entry"]) == sorted([mine.id, obs_ids[0]])

    # Conditional delete through the search set.
    c.resources("Observation").search(_id=obs_ids[1]).delete()
    assert c.resources("Observation").search(patient=mine.id).count() == 2
    # The other physician's records stayed out of all of this.
    assert o.resources("Observation").search(code="8867-4").count() == 1
