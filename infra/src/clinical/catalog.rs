//! The terminologies of the synthetic data: which codes each resource type draws from, with
//! observations' units and value ranges. Codes follow each terminology's shape (ICD-10 categories,
//! LOINC codes, ATC level-5 codes, CCAM acts); the LOINC and ATC lists are real codes, the ICD-10
//! and CCAM lists are generated in the terminology's format.

/// One of the four fact resources of the store (the `resource` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FactResource {
    Condition,
    Observation,
    MedicationRequest,
    Procedure,
}

impl FactResource {
    pub const ALL: [FactResource; 4] = [
        Self::Condition,
        Self::Observation,
        Self::MedicationRequest,
        Self::Procedure,
    ];

    /// The one-letter code stored in `clinical.facts.resource`.
    pub fn code(self) -> char {
        match self {
            Self::Condition => 'C',
            Self::Observation => 'O',
            Self::MedicationRequest => 'M',
            Self::Procedure => 'P',
        }
    }

    pub fn from_code(c: char) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == c)
    }

    /// The FHIR resource type.
    pub fn fhir_type(self) -> &'static str {
        match self {
            Self::Condition => "Condition",
            Self::Observation => "Observation",
            Self::MedicationRequest => "MedicationRequest",
            Self::Procedure => "Procedure",
        }
    }
}

/// A laboratory test: LOINC code, unit and the range its values are drawn from.
pub struct LabTest {
    pub code: &'static str,
    pub unit: &'static str,
    pub low: f64,
    pub high: f64,
}

/// Type 2 diabetes: only the generator's known sub-population has it.
pub const DIABETES: &str = "E11";
/// HbA1c: values above 8 % only in the known sub-population.
pub const HBA1C: &str = "4548-4";

pub const LAB_TESTS: &[LabTest] = &[
    LabTest {
        code: "2345-7",
        unit: "mg/dL",
        low: 60.0,
        high: 250.0,
    },
    LabTest {
        code: "718-7",
        unit: "g/dL",
        low: 7.0,
        high: 18.0,
    },
    LabTest {
        code: "2160-0",
        unit: "mg/dL",
        low: 0.4,
        high: 4.0,
    },
    LabTest {
        code: "2823-3",
        unit: "mmol/L",
        low: 2.8,
        high: 6.2,
    },
    LabTest {
        code: "2951-2",
        unit: "mmol/L",
        low: 125.0,
        high: 150.0,
    },
    LabTest {
        code: "6690-2",
        unit: "10*3/uL",
        low: 2.0,
        high: 20.0,
    },
    LabTest {
        code: "777-3",
        unit: "10*3/uL",
        low: 50.0,
        high: 500.0,
    },
    LabTest {
        code: "2093-3",
        unit: "mg/dL",
        low: 100.0,
        high: 320.0,
    },
    LabTest {
        code: "2085-9",
        unit: "mg/dL",
        low: 20.0,
        high: 100.0,
    },
    LabTest {
        code: "13457-7",
        unit: "mg/dL",
        low: 40.0,
        high: 220.0,
    },
    LabTest {
        code: "2571-8",
        unit: "mg/dL",
        low: 40.0,
        high: 500.0,
    },
    LabTest {
        code: "1742-6",
        unit: "U/L",
        low: 5.0,
        high: 200.0,
    },
    LabTest {
        code: "1920-8",
        unit: "U/L",
        low: 5.0,
        high: 200.0,
    },
    LabTest {
        code: "8480-6",
        unit: "mm[Hg]",
        low: 90.0,
        high: 200.0,
    },
    LabTest {
        code: "8462-4",
        unit: "mm[Hg]",
        low: 50.0,
        high: 120.0,
    },
    LabTest {
        code: "29463-7",
        unit: "kg",
        low: 3.0,
        high: 150.0,
    },
    LabTest {
        code: "8302-2",
        unit: "cm",
        low: 50.0,
        high: 200.0,
    },
    LabTest {
        code: "39156-5",
        unit: "kg/m2",
        low: 14.0,
        high: 45.0,
    },
    LabTest {
        code: "33914-3",
        unit: "mL/min/{1.73_m2}",
        low: 10.0,
        high: 130.0,
    },
    // HbA1c last: ordinary draws stay below 8 %.
    LabTest {
        code: HBA1C,
        unit: "%",
        low: 4.5,
        high: 7.9,
    },
];

pub const ATC_CODES: &[&str] = &[
    "N02BE01", "A02BC01", "B01AC06", "C10AA05", "C07AB07", "C09AA05", "C08CA01", "C03CA01",
    "A10BA02", "H03AA01", "J01CA04", "N05BA01", "N06AB06", "R03AC02", "A10AE04", "B01AB05",
    "C09CA01", "N02AX02", "A06AD11", "J01DD04", "M01AE01", "N05CF01", "A12BA01", "B03AA07",
    "C01AA05", "N03AX14", "R06AE07", "S01ED01", "L04AX03", "H02AB06",
];

/// ICD-10 categories (letter and two digits), E11 left out of random draws.
pub fn icd10_codes() -> Vec<String> {
    let letters = b"ABCDEFGHIJKLMNOPQRSTZ";
    let mut out = Vec::new();
    for i in 0..240u32 {
        let letter = letters[(i % letters.len() as u32) as usize] as char;
        let number = (i * 37 + 11) % 100;
        let code = format!("{letter}{number:02}");
        if code != DIABETES && !out.contains(&code) {
            out.push(code);
        }
    }
    out
}

/// CCAM acts (four letters and three digits).
pub fn ccam_codes() -> Vec<String> {
    let letters = b"ABDEFGHJKLMNPQZ";
    (0..120u32)
        .map(|i| {
            let l = |k: u32| letters[((i * k + k) % letters.len() as u32) as usize] as char;
            format!("{}{}{}{}{:03}", l(1), l(3), l(7), l(11), (i * 13) % 1000)
        })
        .collect()
}
