//! Japanese identifiers as JP Core defines them: the medical institution
//! code (医療機関コード) and the institution's own patient-id system.

/// JP Core's identifier system of the medical institution code.
pub const INSTITUTION_CODE_SYSTEM: &str = "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no";

/// The OID arc of institutions' patient ids: the system is this, `1`, and
/// the 10-digit institution code.
pub const PATIENT_ID_ARC: &str = "urn:oid:1.2.392.100495.20.3.51.";

/// Whether `code` is a 10-digit medical institution code: the prefecture
/// (01–47), the point-table kind (1 medical, 3 dental, 4 pharmacy... as
/// JP-CLINS checks it: `[0-4][0-9][1-3][0-9]{7}`), and 7 digits.
pub fn is_institution_code(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() == 10
        && b.iter().all(u8::is_ascii_digit)
        && (b'0'..=b'4').contains(&b[0])
        && (b'1'..=b'3').contains(&b[2])
        && code[..2] != *"00"
}

/// The institution's patient-id system (JP Core JP_Patient.identifier):
/// `urn:oid:1.2.392.100495.20.3.51.1` followed by its institution code.
/// Without a code, the arc alone (not what JP Core or JP-CLINS accept).
pub fn patient_id_system(institution_code: &str) -> String {
    if is_institution_code(institution_code) {
        format!("{PATIENT_ID_ARC}1{institution_code}")
    } else {
        format!("{PATIENT_ID_ARC}1")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn institution_codes_and_the_patient_id_system() {
        assert!(is_institution_code("1311234567"));
        for bad in [
            "",
            "131123456",
            "13112345678",
            "1341234567",
            "5311234567",
            "0011234567",
            "13112345a7",
            "１３１１２３４５６７",
        ] {
            assert!(!is_institution_code(bad), "{bad}");
        }
        assert_eq!(patient_id_system("1311234567"), "urn:oid:1.2.392.100495.20.3.51.11311234567");
        assert_eq!(patient_id_system(""), "urn:oid:1.2.392.100495.20.3.51.1");
    }
}
