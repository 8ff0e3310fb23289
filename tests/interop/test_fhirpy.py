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
