"""Interop: SMART App Launch 2.0 with the SMART on FHIR Python client
(`fhirclient`) as the app, through the whole standalone launch: discovery,
the authorization request with PKCE, the user's login and consent (driven
as a browser does, with plain HTTP), the code exchange, reads with the
token, a refresh. The ID token is verified with Authlib against the
server's JWKS. What the token reaches is what the user granted, and no
more than the user may."""
import html
import json
import os
import re
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.jose import JsonWebKey, jwt
from fhirclient import client
from fhirclient.server import FHIRPermissionDeniedException, FHIRUnauthorizedException
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient

from conftest import PASSWORD

REDIRECT = "http://127.0.0.1:8765/callback"


def observation(patient, value):
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "valueQuantity": {"value": value, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    }


def browser_consent(m, authorize_url, user, patient):
    """What the user's browser does: the login page, then the consent
    screen; answers the URL the server sends the browser back to."""
    b = requests.Session()
    b.verify = m.ca
    r = b.get(authorize_url, allow_redirects=False)
    assert r.status_code == 303, r.text
    r = b.get(m.base + r.headers["location"], allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login?next="), r.headers
    login = b.get(m.base + r.headers["location"])
    nxt = html.unescape(re.search(r'name="next" value="([^"]*)"', login.text).group(1))
    r = b.post(
        m.base + "/ui/login",
        data={"csrf": b.cookies["mamori_csrf"], "username": user, "password": PASSWORD, "next": nxt},
        allow_redirects=False,
    )
    assert r.status_code == 303, r.text
    page = b.get(m.base + r.headers["location"], allow_redirects=False)
    assert page.status_code == 200, page.text
    assert "許可する" in page.text
    fields = {
        html.unescape(k): html.unescape(v)
        for k, v in re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)"', page.text)
    }
    fields.update({"csrf": b.cookies["mamori_csrf"], "decision": "allow", "patient": patient})
    r = b.post(m.base + "/ui/apps/authorize", data=fields, allow_redirects=False)
    assert r.status_code == 303, r.text
    return r.headers["location"]


@pytest.fixture
def trusted(mamori, monkeypatch):
    # fhirclient talks through requests: trust the server's certificate.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", mamori.ca)
    return mamori


def test_fhirclient_standalone_launch_reads_only_its_patient(trusted):
    m = trusted
    dr = m.user(m.admin, "dr.py", ["physician"])
    ids = {}
    for name in ("Alpha", "Beta"):
        r = m.api("POST", "/fhir/Patient", dr, {"resourceType": "Patient", "name": [{"family": name}]})
        assert r.status_code == 201, r.text
        ids[name] = r.json()["id"]
    obs = {}
    for name, value in (("Alpha", 71), ("Beta", 88)):
        r = m.api("POST", "/fhir/Observation", dr, observation(ids[name], value))
        assert r.status_code == 201, r.text
        obs[name] = r.json()["id"]

    scope = "launch/patient openid profile offline_access patient/*.rs"
    r = m.api("POST", "/api/v1/apps", m.admin, {"name": "Python vitals", "client_id": "py-vitals",
                                                  "redirect_uris": [REDIRECT], "scope": scope})
    assert r.status_code == 201, r.text

    smart = client.FHIRClient(settings={
        "app_id": "py-vitals",
        "api_base": m.base + "/fhir",
        "redirect_uri": REDIRECT,
        "scope": scope,
    })
    url = smart.authorize_url
    assert url.startswith(m.base + "/oauth/authorize?"), url
    q = dict(parse_qsl(urlsplit(url).query))
    assert q["code_challenge_method"] == "S256" and q["aud"] == m.base + "/fhir"

    back = browser_consent(m, url, "dr.py", ids["Alpha"])
    assert back.startswith(REDIRECT + "?code="), back
    smart.handle_callback(back)
    assert smart.ready
    assert smart.patient_id == ids["Alpha"]

    # Reads through the client's own models: patient Alpha only.
    p = Patient.read(ids["Alpha"], smart.server)
    assert p.name[0].family == "Alpha"
    found = Observation.where(struct={"code": "8867-4"}).perform_resources(smart.server)
    assert [o.id for o in found] == [obs["Alpha"]]
    # fhirclient's search builder over several pages: one Observation per
    # page through the server's next links, each page with its _include.
    r = m.api("POST", "/fhir/Observation", dr, observation(ids["Alpha"], 74))
    assert r.status_code == 201, r.text
    second = r.json()["id"]
    search = Observation.where(struct={"code": "8867-4", "_count": "1"}).include("subject")
    pages = list(search.perform_iter(smart.server))
    assert len(pages) == 2, [p.as_json() for p in pages]
    matches = [e.resource.id for p in pages for e in p.entry if e.search.mode == "match"]
    assert sorted(matches) == sorted([obs["Alpha"], second])
    included = {e.resource.id for p in pages for e in p.entry if e.search.mode == "include"}
    assert included == {ids["Alpha"]}
    # A chained parameter through the same builder.
    chained = list(Observation.where(struct={"subject:Patient.name": "Alpha"}).perform_resources_iter(smart.server))
    assert sorted(o.id for o in chained) == sorted([obs["Alpha"], second])
    # dr.py may read Beta in person, but the app was granted Alpha.
    assert m.api("GET", f"/fhir/Observation/{obs['Beta']}", dr).status_code == 200
    with pytest.raises(FHIRPermissionDeniedException) as e:
        Observation.read(obs["Beta"], smart.server)
    assert e.value.response.json()["resourceType"] == "OperationOutcome"

    # A refresh gives a new token; the old refresh token is spent.
    old = smart.server.auth.access_token
    old_refresh = smart.server.auth.refresh_token
    assert smart.reauthorize()
    assert smart.server.auth.access_token != old
    assert Patient.read(ids["Alpha"], smart.server).id == ids["Alpha"]
    r = requests.post(m.base + "/oauth/token", verify=m.ca,
                      data={"grant_type": "refresh_token", "refresh_token": old_refresh, "client_id": "py-vitals"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # Reusing it revoked the whole authorization.
    with pytest.raises(FHIRUnauthorizedException):
        Patient.read(ids["Alpha"], smart.server)


def test_authlib_client_gets_a_verifiable_id_token(trusted):
    """A second independent client (Authlib's OAuth 2.0 session, PKCE
    S256, a nonce): the ID token verifies against the published keys."""
    m = trusted
    dr = m.user(m.admin, "dr.jwt", ["physician"])
    r = m.api("POST", "/fhir/Patient", dr, {"resourceType": "Patient", "name": [{"family": "Gamma"}]})
    patient = r.json()["id"]
    r = m.api("POST", "/api/v1/apps", m.admin, {"name": "OIDC app", "client_id": "oidc-app", "confidential": True,
                                                  "redirect_uris": [REDIRECT],
                                                  "scope": "launch/patient openid profile patient/Patient.rs"})
    assert r.status_code == 201, r.text
    secret = r.json()["client_secret"]
    conf = requests.get(m.base + "/fhir/.well-known/smart-configuration", verify=m.ca).json()
    sess = OAuth2Session("oidc-app", secret, scope="launch/patient openid profile patient/Patient.rs",
                         redirect_uri=REDIRECT, code_challenge_method="S256")
    sess.verify = m.ca
    verifier = "v" * 20 + "-PKCE-verifier-of-a-decent-length-0123456789"
    url, state = sess.create_authorization_url(conf["authorization_endpoint"], code_verifier=verifier,
                                               aud=m.base + "/fhir", nonce="n-42")
    back = browser_consent(m, url, "dr.jwt", patient)
    token = sess.fetch_token(conf["token_endpoint"], authorization_response=back, code_verifier=verifier)
    assert token["patient"] == patient
    assert token["scope"] == "launch/patient openid profile patient/Patient.rs"
    jwks = requests.get(conf["jwks_uri"], verify=m.ca).json()
    claims = jwt.decode(token["id_token"], JsonWebKey.import_key_set(jwks),
                        claims_options={"iss": {"essential": True, "value": m.base + "/fhir"},
                                        "aud": {"essential": True, "value": "oidc-app"},
                                        "nonce": {"essential": True, "value": "n-42"}})
    claims.validate()
    assert claims["sub"] == "dr.jwt" and claims["name"] == "dr.jwt"
    # The token reads the patient's demographics, and nothing else.
    r = sess.get(m.base + f"/fhir/Patient/{patient}")
    assert r.status_code == 200 and r.json()["id"] == patient
    r = sess.post(m.base + "/fhir/Observation", json=observation(patient, 60),
                  headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 403, r.text
    # A tampered ID token does not verify.
    head, body, sig = token["id_token"].split(".")
    forged = ".".join([head, body[:-2] + ("AA" if body[-2:] != "AA" else "BB"), sig])
    with pytest.raises(Exception):
        jwt.decode(forged, JsonWebKey.import_key_set(jwks))


def test_authlib_backend_service_exports_with_private_key_jwt(trusted):
    """SMART Backend Services with an independent client: Authlib signs
    the client assertion (private_key_jwt, ES384) with a key mamori holds
    only the public half of; the token it gets runs a Bulk Data export as
    the service account, narrowed by the system/ scopes. A replayed
    assertion and one signed with another key are refused."""
    from authlib.oauth2.rfc7523 import PrivateKeyJWT
    from joserfc.jwk import ECKey
    import time
    m = trusted
    dr = m.user(m.admin, "dr.backend", ["physician"])
    r = m.api("POST", "/fhir/Patient", dr, {"resourceType": "Patient", "name": [{"family": "Backend"}]})
    assert r.status_code == 201, r.text
    patient = r.json()["id"]
    r = m.api("POST", "/api/v1/users", m.admin, {"name": "svc.export", "display": "export service",
                                                  "roles": ["clerk"], "kind": "service"})
    assert r.status_code == 201, r.text
    key = ECKey.generate_key("P-384", parameters={"kid": "py-1"}, private=True)
    public = key.as_dict(private=False)
    assert "d" not in public
    r = m.api("POST", "/api/v1/apps", m.admin, {"client_id": "py-backend", "name": "Python backend",
                                                  "redirect_uris": [], "scope": "system/Patient.rs",
                                                  "jwks": {"keys": [public]}, "service_account": "svc.export"})
    assert r.status_code == 201, r.text
    conf = requests.get(m.base + "/fhir/.well-known/smart-configuration", verify=m.ca).json()
    assert "private_key_jwt" in conf["token_endpoint_auth_methods_supported"]
    assert "ES384" in conf["token_endpoint_auth_signing_alg_values_supported"]
    endpoint = conf["token_endpoint"]

    def session(k, exp_in=240):
        s = OAuth2Session("py-backend", k, scope="system/Patient.rs", token_endpoint_auth_method="private_key_jwt")
        s.verify = m.ca
        # SMART: the assertion lives at most five minutes (Authlib's
        # default is an hour, which mamori refuses).
        auth = PrivateKeyJWT(endpoint, alg="ES384", headers={"kid": "py-1"},
                             claims={"exp": int(time.time()) + exp_in})
        s.register_client_auth_method(auth)
        return s

    s = session(key)
    token = s.fetch_token(endpoint, grant_type="client_credentials")
    assert token["scope"] == "system/Patient.rs" and token["token_type"].lower() == "bearer"
    # Authlib keeps the claims it signed (the same jti): a second fetch
    # with them is a replay.
    with pytest.raises(Exception) as e:
        s.fetch_token(endpoint, grant_type="client_credentials")
    assert "invalid_client" in str(e.value)
    with pytest.raises(Exception) as e:
        session(key, exp_in=3600).fetch_token(endpoint, grant_type="client_credentials")
    assert "invalid_client" in str(e.value)
    other = ECKey.generate_key("P-384", parameters={"kid": "py-1"}, private=True)
    with pytest.raises(Exception):
        session(other).fetch_token(endpoint, grant_type="client_credentials")

    # A Bulk Data export with the token, read back line by line.
    h = {"Authorization": f"Bearer {token['access_token']}", "Prefer": "respond-async",
         "Accept": "application/fhir+json"}
    r = requests.get(m.base + "/fhir/$export?_type=Patient", headers=h, verify=m.ca, timeout=30)
    assert r.status_code == 202, r.text
    status = r.headers["Content-Location"]
    for _ in range(300):
        r = requests.get(status, headers=h, verify=m.ca, timeout=30)
        if r.status_code == 200:
            break
        assert r.status_code == 202, r.text
        time.sleep(0.1)
    manifest = r.json()
    ids = set()
    for f in manifest["output"]:
        assert f["type"] == "Patient"
        r = requests.get(f["url"], headers={"Authorization": h["Authorization"]}, verify=m.ca, timeout=30)
        assert r.status_code == 200
        ids |= {json.loads(line)["id"] for line in r.text.splitlines()}
    assert patient in ids
    # The scopes narrow what the service account may do.
    r = requests.get(m.base + f"/fhir/Observation?subject=Patient/{patient}",
                     headers={"Authorization": h["Authorization"]}, verify=m.ca, timeout=30)
    assert r.status_code == 403, r.text
