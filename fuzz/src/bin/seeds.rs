//! Writes the starting corpora (`fuzz/corpus/<target>/`): valid inputs of
//! each format, made with mamori's own writers, so that the fuzzer starts
//! from deep inside each parser. Run once: `cargo run --bin seeds`.
use std::path::Path;

use mamori_audit::merkle::Hash;
use mamori_audit::note::{generate_pkcs8, Checkpoint, NoteSigner};
use mamori_exchange::as2::{self, Disposition, MdnReport, Mic};
use mamori_exchange::cms::{self, ContentCipher, Digest, Identity, KeyTransport};
use mamori_fuzz::{CONTAINER_KEY, CONTAINER_PREFIX};
use mamori_service::continuity::container::{Writer, EXPORT_MAGIC, SNAPSHOT_MAGIC};
use serde_json::json;

fn put(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(name), data).expect("seed");
}

fn entity(o: &as2::Outgoing) -> Vec<u8> {
    let mut e = Vec::new();
    for (k, v) in &o.headers {
        e.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    e.extend_from_slice(b"\r\n");
    e.extend_from_slice(&o.body);
    e
}

fn main() {
    // FHIR JSON.
    let resources = [
        json!({"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.11234567890", "value": "00011480"}],
               "name": [{"use": "official", "family": "山田", "given": ["太郎"], "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "IDE"}]}],
               "gender": "male", "birthDate": "1970-01-02", "telecom": [{"system": "phone", "value": "03-0000-0000"}]}),
        json!({"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
               "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-12-01T09:00:00+09:00",
               "valueQuantity": {"value": 72.50, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}),
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"fullUrl": "urn:uuid:0b6a3e1c-3c1f-4f0e-9f55-1a2b3c4d5e6f",
               "resource": {"resourceType": "Patient", "active": true}, "request": {"method": "POST", "url": "Patient"}}]}),
        json!({"resourceType": "Composition", "status": "final", "type": {"text": "紹介状"}, "subject": {"reference": "Patient/p1"},
               "date": "2026-12-01", "author": [{"display": "dr"}], "title": "診療情報提供書",
               "section": [{"title": "経過", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"}}]}),
    ];
    for (i, r) in resources.iter().enumerate() {
        put("fhir_json", &format!("seed{i}.json"), r.to_string().as_bytes());
    }

    // Search queries.
    for (i, q) in [
        "Patient\nname=yamada&birthdate=ge1970-01-01&_count=10",
        "Observation\nsubject=Patient/p1&code=http://loinc.org|8867-4&date=lt2026-12&_sort=-_lastUpdated",
        "Patient\nidentifier=urn:oid:1.2.392.100495.20.3.51.11234567890|00011480&_total=none",
        "Encounter\npatient=p1&status:not=finished&_id=a,b,c&_cursor=abc",
    ]
    .iter()
    .enumerate()
    {
        put("search_query", &format!("seed{i}.txt"), q.as_bytes());
    }

    // FHIRPath invariants of JP-CLINS over resources that keep and break them.
    let patient = json!({"resourceType": "Patient", "identifier": [
        {"system": "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID", "value": "00012345:あいう:387476:01"},
        {"system": "urn:oid:1.2.392.100495.20.3.51.11319900001", "value": "00012345"}],
        "name": [{"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "IDE"}], "text": "山田　太郎"}]});
    let bundle = json!({"resourceType": "Bundle", "meta": {"profile": ["http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_CLINS|1"],
        "tag": [{"system": "http://jpfhir.jp/fhir/clins/CodeSystem/BundleResourceType_CS", "code": "Condition"}]},
        "entry": [{"resource": patient}, {"resource": {"resourceType": "Condition", "onsetDateTime": "2020-01-01",
            "contained": [{"resourceType": "Encounter", "meta": {"profile": ["http://jpfhir.jp/fhir/core/StructureDefinition/JP_Encounter"]}}]}}]});
    for (i, (e, v)) in [
        ("(identifier.where(system = 'http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID').count()=1 and identifier.where(system = 'http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID').value.matches('^[0-9]{8}:[^:^\\s^　]*:[^:^\\s^　]*:(.{0}|[0-9][0-9])$'))", &patient),
        ("(identifier.where(system.substring(0,31) = 'urn:oid:1.2.392.100495.20.3.51.').count()=1 and (identifier.where(system.substring(0,31) = 'urn:oid:1.2.392.100495.20.3.51.')).system.substring(31,1) = '1') or (identifier.where(system.substring(0,31) = 'urn:oid:1.2.392.100495.20.3.51.').empty())", &patient),
        ("name.where(extension.where(url='http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation').exists()).where(text.contains('　')).exists().not()", &patient),
        ("meta.profile.where($this.indexOf('|')>0 and ($this.indexOf('|')>0 implies ($this.substring(0,$this.indexOf('|'))='http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_CLINS'))).exists()", &bundle),
        ("entry.select(resource as Condition).all(contained.meta.where(profile='http://jpfhir.jp/fhir/core/StructureDefinition/JP_Encounter').exists()) and entry.first().resource.is(Patient) xor entry.tail().resource.all(onset.ofType(dateTime).exists())", &bundle),
    ]
    .iter()
    .enumerate()
    {
        put("fhirpath", &format!("seed{i}.txt"), format!("{e}\n{v}").as_bytes());
    }

    // AS2: a signed, encrypted message; a signed receipt.
    let (cert, key) = mamori_fuzz::identity("seed partner");
    let id = Identity::from_pem(&cert, &key).expect("identity");
    let x509 = openssl::x509::X509::from_pem(&cert).expect("cert");
    let payload = resources[3].to_string();
    let signed = as2::sign_payload(&id, "application/fhir+json", "referral.json", payload.as_bytes()).expect("sign");
    put("mime", "signed.eml", &signed.entity);
    put("mime", "multipart.eml", b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\na=3Db\r\n--b1--\r\n");
    let sig = cms::sign_detached(&id, payload.as_bytes()).expect("signature");
    put("cms", "signature.der", &sig);
    for (i, (cipher, kt)) in [
        (ContentCipher::Aes256Cbc, KeyTransport::RsaPkcs1),
        (ContentCipher::Aes128Gcm, KeyTransport::RsaOaepSha256),
        (ContentCipher::Aes128Cbc, KeyTransport::RsaOaepOther),
    ]
    .iter()
    .enumerate()
    {
        if let Ok(env) = cms::encrypt(&signed.entity, &x509, cipher, kt) {
            put("cms", &format!("envelope{i}.der"), &env);
        }
    }
    let report = MdnReport {
        reporting_ua: "mamori".into(),
        original_recipient: "HOSP-B".into(),
        final_recipient: "HOSP-B".into(),
        original_message_id: "m1@hosp-a".into(),
        mic: Mic::of(b"x", Digest::Sha256).ok(),
        disposition: Disposition::Processed,
    };
    let mdn = as2::build_mdn(&id, "HOSP-B", "HOSP-A", "mdn1@hosp-b", "Tue, 1 Dec 2026 09:00:00 +0900", &report, "ok")
        .expect("mdn");
    put("mdn", "signed.eml", &entity(&mdn));
    put("mime", "mdn.eml", &entity(&mdn));
    let failed = MdnReport { disposition: Disposition::Failed("authentication-failed".into()), mic: None, ..report };
    if let Ok(m) =
        as2::build_mdn(&id, "HOSP-B", "HOSP-A", "mdn2@hosp-b", "Tue, 1 Dec 2026 09:00:00 +0900", &failed, "no")
    {
        put("mdn", "failed.eml", &entity(&m));
    }

    // Checkpoints.
    let signer = NoteSigner::from_pkcs8("mamori.local/audit", &generate_pkcs8().expect("key")).expect("signer");
    let cp = Checkpoint {
        origin: "mamori.local/audit".into(),
        size: 1234,
        root: Hash::default(),
        extensions: vec!["mamori-time 2026-12-01T00:00:00.000Z".into(), "mamori-reason periodic".into()],
    };
    put("checkpoint", "checkpoint.txt", cp.sign(&signer).as_bytes());
    put("checkpoint", "vkey.txt", signer.verifier().vkey().as_bytes());

    // Containers, with the fixed key the container target decrypts with.
    for (name, magic) in [("snapshot.bin", SNAPSHOT_MAGIC), ("export.bin", EXPORT_MAGIC)] {
        let header = json!({"format": "seed", "created": "2026-12-01T00:00:00Z"});
        let mut w = Writer::new(Vec::new(), magic, &header, CONTAINER_KEY, CONTAINER_PREFIX).expect("container");
        for r in &resources {
            w.line(r.to_string().as_bytes()).expect("line");
        }
        let (out, _) = w.finish(json!({}), |m| Ok(openssl::sha::sha256(m).to_vec())).expect("finish");
        put("container", name, &out);
        put("reconcile_export", name, &out);
    }
}
