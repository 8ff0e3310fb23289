//! `GET /fhir/metadata`: a CapabilityStatement generated from the same
//! tables the server uses, so it cannot claim more than is implemented.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use mamori_core::fhir::profile::Registry;
use mamori_core::fhir::resource_types::{NOT_STORABLE, R4_RESOURCE_TYPES};
use mamori_core::fhir::search::{params_for, r4_core_params, ParamKind, SearchParams};
use mamori_core::ids::ResourceType;
use serde_json::{json, Value};

use super::respond;
use mamori_service::Services;

/// The CapabilityStatement of `GET /fhir/metadata`: every R4 type served,
/// with its interactions and search parameters, for the server at `base`,
/// mamori `software_version`, dated `now` (RFC 3339).
pub fn capability_statement(
    base: &str,
    software_version: &str,
    now: &str,
    profiles: &Registry,
    search: &SearchParams,
) -> Value {
    let mut resources = Vec::new();
    for t in R4_RESOURCE_TYPES {
        let Ok(rt) = ResourceType::parse(t) else {
            continue;
        };
        let (params, unsupported) = search_params(search, rt);
        let mut r = if *t == "AuditEvent" {
            // The audit log is read-only and for auditors only.
            json!({"type": t, "interaction": [{"code": "read"}, {"code": "search-type"}],
                   "documentation": "Read-only view of the tamper-evident audit log; auditor role only."})
        } else if NOT_STORABLE.contains(t) {
            continue;
        } else {
            json!({
                "type": t,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "full-support",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "interaction": [
                    {"code": "read"}, {"code": "vread"}, {"code": "update"}, {"code": "patch"}, {"code": "delete"},
                    {"code": "history-instance"}, {"code": "history-type"}, {"code": "create"}, {"code": "search-type"}
                ],
                "searchParam": params,
                "extension": unsupported.iter().map(|c| json!({"url": UNSUPPORTED_PARAM, "valueCode": c})).collect::<Vec<_>>(),
                "documentation": format!(
                    "R4 core search parameters of {t} that mamori does not implement (a search with one is ignored and reported, or refused under Prefer: handling=strict): {}.",
                    if unsupported.is_empty() { "none".to_owned() } else { unsupported.join(", ") }
                ),
                "searchInclude": includes(search, rt),
                "searchRevInclude": revincludes(search, rt),
            })
        };
        let mut ops = Vec::new();
        if *t == "Patient" {
            ops.push(json!({"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}));
            ops.push(json!({"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"}));
            ops.push(json!({"name": "clins-bundle", "definition": "https://mamori.dev/fhir/OperationDefinition/Patient-clins-bundle",
                "documentation": "GET Patient/[id]/$clins-bundle?item=Condition|AllergyIntolerance|Observation: the patient's items of one kind as a JP-CLINS JP_Bundle_CLINS (collection), validated against the loaded JP-CLINS package; every resource of the item must conform, or 422 names each one and why. Needs the JP-CLINS package and [institution] id."}));
        }
        if *t == "Group" {
            ops.push(json!({"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"}));
        }
        if *t != "AuditEvent" {
            ops.push(json!({"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
                "documentation": "Type level (POST [type]/$validate) and instance level (POST [type]/[id]/$validate validates the body as an update of the instance; GET [type]/[id]/$validate the stored version, read under the read rule), with profile= or a Parameters body: the core rules, then every loaded profile the resource claims or that is asked for. mode (query or Parameters): create or profile at the type level; update, delete or profile at an instance. mode=delete checks whether the caller could delete the instance now (read under the read rule, the delete decided and audited; nothing deleted)."}));
            r["operation"] = Value::Array(ops);
            let supported = profiles.profiles_of(t);
            if !supported.is_empty() {
                r["supportedProfile"] = json!(supported);
            }
        }
        resources.push(r);
    }
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now,
        "kind": "instance",
        "software": {"name": "mamori", "version": software_version},
        "implementation": {"description": "mamori FHIR R4 record store", "url": format!("{base}/fhir")},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "rest": [{
            "mode": "server",
            "documentation": "Every interaction is access-controlled and audited. Conditional patch: PATCH [type]?search patches the one match (none: 404, several: 412), over REST and in bundles. Unknown search parameters are ignored and reported in an OperationOutcome entry (search.mode = outcome), or rejected with Prefer: handling=strict. Supported search modifiers: string :exact and :contains; token :not, :text, and :below/:above through the concept hierarchy of a CodeSystem in a loaded package; reference :[type]; :missing on every parameter (others, e.g. :in, :of-type: 400). The R4 core search parameters of a type that mamori does not implement are named in that type's documentation and unsupported-search-param extensions. Chained parameters, one level (subject:Patient.name). Reverse chaining, one level (_has:Observation:patient:code=…), looking only at the referring resources the caller could find by searching them. Date and quantity prefixes eq ne gt lt ge le sa eb ap. Paging by _count and the next/previous links; _sort=_id|_lastUpdated|-_lastUpdated or up to three date, string, token or quantity parameters (and _lastUpdated), comma-separated, each with - for descending; _total=none|accurate; _summary=count|data|true|text|false (true and text for the types whose R4 summary elements mamori holds or learned from a loaded package's snapshots; others 400); _elements (top level). _include and _revinclude (one level, listed per type; each included resource is decided as a read of it, and one the caller may not read is left out and counted in an OperationOutcome entry).",
            "security": {
                "cors": false,
                "extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris", "extension": [
                    {"url": "authorize", "valueUri": format!("{base}/oauth/authorize")},
                    {"url": "token", "valueUri": format!("{base}/oauth/token")},
                    {"url": "introspect", "valueUri": format!("{base}/oauth/introspect")},
                    {"url": "revoke", "valueUri": format!("{base}/oauth/revoke")}
                ]}],
                "service": [
                    {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}], "text": "SMART App Launch 2.0 for registered apps, and SMART Backend Services (client_credentials with a private_key_jwt assertion, RS384 or ES384; system/ scopes) for backend clients acting as a service account (see /fhir/.well-known/smart-configuration)"},
                    {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "OAuth"}], "text": "Bearer tokens issued by POST /api/v1/auth/login or mamori token issue"}
                ],
                "description": "HTTPS (TLS 1.2+) with bearer tokens: people's own sessions and API tokens, and SMART apps' access tokens (authorization code with PKCE S256; the scopes a user grants narrow what that user may do)."
            },
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"},
                {"code": "search-system", "documentation": "GET /fhir?_type=A,B&… or POST /fhir/_search: _type is required (at most 20 types); each type is searched, decided and audited as its own search, in _type order, paged with _count and next links; every parameter must be one each named type knows; no _include/_revinclude."}],
            "operation": [{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
                "documentation": "Bulk Data export (IG v2): GET or POST (Parameters) with Prefer: respond-async; _type, _since, _typeFilter, _outputFormat=application/fhir+ndjson, patient (Patient and Group level), _elements, includeAssociatedData=LatestProvenanceResources,RelevantProvenanceResources. What an export holds is decided per resource as its read; never under emergency powers. Output kept [export] retention_hours."}],
        }]
    })
}

pub(crate) async fn metadata(State(st): State<Services>) -> Response {
    let now = st.store.clock().now().to_rfc3339();
    let conf = st.conformance();
    let cs = capability_statement(&st.base_url, env!("CARGO_PKG_VERSION"), &now, &conf.registry, &conf.search);
    respond(StatusCode::OK, cs.to_string())
}

/// The extension naming, one per entry, an R4 core search parameter of
/// a type that mamori does not implement.
const UNSUPPORTED_PARAM: &str = "https://mamori.dev/fhir/StructureDefinition/unsupported-search-param";

/// The `searchParam` entries of `rt` (each R4 core one with its
/// `definition`; one mamori adds beyond the core says so), and the codes
/// of the R4 core parameters of `rt` that mamori does not implement.
fn search_params(search: &SearchParams, rt: ResourceType) -> (Vec<Value>, Vec<&'static str>) {
    let core = r4_core_params(rt.as_str());
    let mut params = Vec::new();
    let mut supported = vec!["_id", "_lastUpdated"];
    let special = [("_id", "token"), ("_lastUpdated", "date")];
    let ours = special.into_iter().chain(params_for(rt).iter().map(|p| (p.name, p.kind.as_str())));
    for (name, ty) in ours {
        supported.push(name);
        let mut p = json!({"name": name, "type": ty});
        match core.iter().find(|c| c.code == name) {
            Some(c) => p["definition"] = json!(c.url),
            None => p["documentation"] = json!("mamori's own: not an R4 core search parameter of this type"),
        }
        params.push(p);
    }
    // The loaded packages' parameters, under their own definitions.
    for p in search.package().iter().filter(|p| p.rtype == rt) {
        params.push(json!({"name": p.def.name, "type": p.def.kind.as_str(), "definition": p.url}));
    }
    let unsupported = core.iter().map(|c| c.code).filter(|c| !supported.contains(c)).collect();
    (params, unsupported)
}

/// `_include` values a search of `rt` takes: its reference parameters.
fn includes(search: &SearchParams, rt: ResourceType) -> Vec<String> {
    search
        .of_type(rt)
        .filter(|p| p.kind == ParamKind::Reference)
        .map(|p| format!("{}:{}", rt.as_str(), p.name))
        .collect()
}

/// `_revinclude` values a search of `rt` takes: every stored type's
/// reference parameters that may point at `rt`.
fn revincludes(search: &SearchParams, rt: ResourceType) -> Vec<String> {
    let mut out = Vec::new();
    for t in R4_RESOURCE_TYPES {
        let Ok(src) = ResourceType::parse(t) else { continue };
        if NOT_STORABLE.contains(t) {
            continue;
        }
        for p in search.of_type(src) {
            if p.kind == ParamKind::Reference && p.target.is_none_or(|x| x == rt.as_str()) {
                out.push(format!("{t}:{}", p.name));
            }
        }
    }
    out
}
