//! FHIR R4 resource helpers: the type list, structural validation, search
//! parameters and index extraction, compartments.

pub mod compartment;
pub mod fhirpath;
pub mod fhirpath_patch;
pub mod jp;
pub mod json;
pub mod patch;
pub mod profile;
mod r4_search_params;
pub mod resource_types;
pub mod schema;
pub mod search;
pub mod subset;
pub mod summary;
mod summary_table;
pub mod ucum;
pub mod validate;
