//! The terminologies the service ships: those of the generated clinical store (ICD-10 with its
//! chapters and subdivisions, CCAM by body system, ATC by level, LOINC), and the small value sets
//! of the query forms (gender, vital status, encounter class, diagnosis type). Written at every
//! start; a code system an operator imported under the same url is left alone.

use super::{CodeSystemData, Concept, Terminologies, whole_system_value_set};
use crate::clinical::catalog;
use domain::terminology::CodeRange;

pub const ICD10: &str = "https://smt.esante.gouv.fr/terminologie-cim-10/";
pub const LOINC: &str = "http://loinc.org";
pub const ATC: &str = "https://terminology.eds.aphp.fr/atc";
pub const CCAM: &str = "https://terminology.eds.aphp.fr/ccam";
pub const GENDER: &str = "http://hl7.org/fhir/administrative-gender";
pub const VITAL_STATUS: &str = "https://cohort360.fr/fhir/CodeSystem/vital-status";
pub const ENCOUNTER_CLASS: &str = "https://cohort360.fr/fhir/CodeSystem/encounter-class";
pub const DIAGNOSIS_TYPE: &str = "https://cohort360.fr/fhir/CodeSystem/diagnosis-type";

/// The version written on every built-in terminology: bump it when the catalogue changes.
pub const VERSION: &str = "cohort360-builtin-1";

fn concept(code: &str, display: &str, parent: Option<&str>) -> Concept {
    Concept {
        code: code.to_string(),
        display: display.to_string(),
        parent: parent.map(str::to_string),
    }
}

fn system(url: &str, name: &str, title: &str, concepts: Vec<Concept>) -> CodeSystemData {
    CodeSystemData {
        url: url.to_string(),
        name: name.to_string(),
        title: title.to_string(),
        version: Some(VERSION.to_string()),
        concepts,
    }
}

/// ICD-10: chapters (code ranges), the generator's categories under their chapter, and the
/// subdivisions of subdivided categories (E11's are CIM-10's own).
fn icd10() -> CodeSystemData {
    let mut concepts: Vec<Concept> = catalog::ICD10_CHAPTERS
        .iter()
        .map(|(code, title)| concept(code, title, None))
        .collect();
    let chapter_of = |code: &str| {
        catalog::ICD10_CHAPTERS
            .iter()
            .find(|(range, _)| CodeRange::parse(range).is_some_and(|r| r.contains(code)))
            .map(|(range, _)| *range)
    };
    let title_of = |code: &str| {
        catalog::ICD10_TITLES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, t)| t.to_string())
    };
    let mut categories = catalog::icd10_codes();
    categories.push(catalog::DIABETES.to_string());
    categories.push("E10".to_string());
    categories.sort();
    categories.dedup();
    for category in &categories {
        let title = title_of(category)
            .unwrap_or_else(|| format!("Catégorie {category} (catégorie de démonstration)"));
        concepts.push(concept(category, &title, chapter_of(category)));
        if category == catalog::DIABETES {
            for (code, display) in catalog::DIABETES_SUBDIVISIONS {
                concepts.push(concept(code, display, Some(category)));
            }
        } else if catalog::icd10_subdivided(category) {
            for digit in 0..10 {
                concepts.push(concept(
                    &format!("{category}{digit}"),
                    &format!("{title}, subdivision {digit}"),
                    Some(category),
                ));
            }
        }
    }
    system(
        ICD10,
        "CIM10",
        "CIM-10 (Classification internationale des maladies)",
        concepts,
    )
}

/// CCAM: the acts under their body system (the first letter of their code).
fn ccam() -> CodeSystemData {
    let mut concepts: Vec<Concept> = catalog::CCAM_SYSTEMS
        .iter()
        .map(|(code, title)| concept(code, title, None))
        .collect();
    for act in catalog::ccam_codes() {
        let group = &act[..1];
        let parent = catalog::CCAM_SYSTEMS
            .iter()
            .any(|(g, _)| *g == group)
            .then_some(group);
        concepts.push(concept(
            &act,
            &format!("Acte CCAM {act} (acte de démonstration)"),
            parent,
        ));
    }
    system(
        CCAM,
        "CCAM",
        "Classification commune des actes médicaux",
        concepts,
    )
}

/// ATC: levels 1 to 5 (`A`, `A10`, `A10B`, `A10BA`, `A10BA02`) of the generator's substances.
fn atc() -> CodeSystemData {
    let mut concepts = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let named = |code: &str| {
        catalog::ATC_GROUPS
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, t)| t.to_string())
            .unwrap_or_else(|| format!("ATC {code}"))
    };
    for (code, substance) in catalog::ATC_CODES {
        let levels = [1, 3, 4, 5];
        let mut parent: Option<String> = None;
        for len in levels {
            let prefix = &code[..len];
            if seen.insert(prefix.to_string()) {
                concepts.push(concept(prefix, &named(prefix), parent.as_deref()));
            }
            parent = Some(prefix.to_string());
        }
        concepts.push(concept(code, substance, parent.as_deref()));
    }
    system(
        ATC,
        "ATC",
        "Classification ATC (anatomique, thérapeutique et chimique)",
        concepts,
    )
}

fn loinc() -> CodeSystemData {
    let concepts = catalog::LAB_TESTS
        .iter()
        .map(|t| concept(t.code, t.display, None))
        .collect();
    system(LOINC, "LOINC", "LOINC", concepts)
}

fn flat(url: &str, name: &str, title: &str, codes: &[(&str, &str)]) -> CodeSystemData {
    let concepts = codes.iter().map(|(c, d)| concept(c, d, None)).collect();
    system(url, name, title, concepts)
}

/// Every built-in code system, each with its whole-system value set.
pub fn terminologies() -> Terminologies {
    let code_systems = vec![
        icd10(),
        ccam(),
        atc(),
        loinc(),
        flat(
            GENDER,
            "AdministrativeGender",
            "Genre",
            &[
                ("female", "Femme"),
                ("male", "Homme"),
                ("other", "Autre"),
                ("unknown", "Inconnu"),
            ],
        ),
        flat(
            VITAL_STATUS,
            "VitalStatus",
            "Statut vital",
            &[("alive", "Vivant"), ("deceased", "Décédé")],
        ),
        flat(
            ENCOUNTER_CLASS,
            "EncounterClass",
            "Type de séjour",
            &[
                ("hospit", "Hospitalisation"),
                ("urg", "Urgences"),
                ("consult", "Consultation externe"),
            ],
        ),
        flat(
            DIAGNOSIS_TYPE,
            "DiagnosisType",
            "Type de diagnostic",
            &[
                ("dp", "Diagnostic principal"),
                ("dr", "Diagnostic relié"),
                ("das", "Diagnostic associé significatif"),
            ],
        ),
    ];
    let value_sets = code_systems.iter().map(whole_system_value_set).collect();
    Terminologies {
        code_systems,
        value_sets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parent_is_a_concept_of_its_system_and_codes_are_unique() {
        for cs in terminologies().code_systems {
            let codes: std::collections::HashSet<&str> =
                cs.concepts.iter().map(|c| c.code.as_str()).collect();
            assert_eq!(
                codes.len(),
                cs.concepts.len(),
                "{}: duplicate codes",
                cs.url
            );
            for c in &cs.concepts {
                if let Some(p) = &c.parent {
                    assert!(
                        codes.contains(p.as_str()),
                        "{}: {} has no parent {p}",
                        cs.url,
                        c.code
                    );
                }
            }
        }
        let icd = icd10();
        let e11 = icd.concepts.iter().find(|c| c.code == "E11").unwrap();
        assert_eq!(e11.parent.as_deref(), Some("E00-E90"));
        assert_eq!(e11.display, "Diabète sucré de type 2");
        let atc = atc();
        let metformin = atc.concepts.iter().find(|c| c.code == "A10BA02").unwrap();
        assert_eq!(metformin.parent.as_deref(), Some("A10BA"));
    }
}
