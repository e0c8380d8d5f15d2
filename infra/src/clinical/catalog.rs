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

    /// The code system of this resource's codes (each has one terminology).
    pub fn code_system(self) -> &'static str {
        use crate::terminology::builtin::{ATC, CCAM, ICD10, LOINC};
        match self {
            Self::Condition => ICD10,
            Self::Observation => LOINC,
            Self::MedicationRequest => ATC,
            Self::Procedure => CCAM,
        }
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

/// A laboratory test: LOINC code, unit, the range its values are drawn from, and its LOINC
/// long common name.
pub struct LabTest {
    pub code: &'static str,
    pub unit: &'static str,
    pub low: f64,
    pub high: f64,
    pub display: &'static str,
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
        display: "Glucose [Mass/volume] in Serum or Plasma",
    },
    LabTest {
        code: "718-7",
        unit: "g/dL",
        low: 7.0,
        high: 18.0,
        display: "Hemoglobin [Mass/volume] in Blood",
    },
    LabTest {
        code: "2160-0",
        unit: "mg/dL",
        low: 0.4,
        high: 4.0,
        display: "Creatinine [Mass/volume] in Serum or Plasma",
    },
    LabTest {
        code: "2823-3",
        unit: "mmol/L",
        low: 2.8,
        high: 6.2,
        display: "Potassium [Moles/volume] in Serum or Plasma",
    },
    LabTest {
        code: "2951-2",
        unit: "mmol/L",
        low: 125.0,
        high: 150.0,
        display: "Sodium [Moles/volume] in Serum or Plasma",
    },
    LabTest {
        code: "6690-2",
        unit: "10*3/uL",
        low: 2.0,
        high: 20.0,
        display: "Leukocytes [#/volume] in Blood by Automated count",
    },
    LabTest {
        code: "777-3",
        unit: "10*3/uL",
        low: 50.0,
        high: 500.0,
        display: "Platelets [#/volume] in Blood by Automated count",
    },
    LabTest {
        code: "2093-3",
        unit: "mg/dL",
        low: 100.0,
        high: 320.0,
        display: "Cholesterol [Mass/volume] in Serum or Plasma",
    },
    LabTest {
        code: "2085-9",
        unit: "mg/dL",
        low: 20.0,
        high: 100.0,
        display: "Cholesterol in HDL [Mass/volume] in Serum or Plasma",
    },
    LabTest {
        code: "13457-7",
        unit: "mg/dL",
        low: 40.0,
        high: 220.0,
        display: "Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation",
    },
    LabTest {
        code: "2571-8",
        unit: "mg/dL",
        low: 40.0,
        high: 500.0,
        display: "Triglyceride [Mass/volume] in Serum or Plasma",
    },
    LabTest {
        code: "1742-6",
        unit: "U/L",
        low: 5.0,
        high: 200.0,
        display: "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
    },
    LabTest {
        code: "1920-8",
        unit: "U/L",
        low: 5.0,
        high: 200.0,
        display: "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
    },
    LabTest {
        code: "8480-6",
        unit: "mm[Hg]",
        low: 90.0,
        high: 200.0,
        display: "Systolic blood pressure",
    },
    LabTest {
        code: "8462-4",
        unit: "mm[Hg]",
        low: 50.0,
        high: 120.0,
        display: "Diastolic blood pressure",
    },
    LabTest {
        code: "29463-7",
        unit: "kg",
        low: 3.0,
        high: 150.0,
        display: "Body weight",
    },
    LabTest {
        code: "8302-2",
        unit: "cm",
        low: 50.0,
        high: 200.0,
        display: "Body height",
    },
    LabTest {
        code: "39156-5",
        unit: "kg/m2",
        low: 14.0,
        high: 45.0,
        display: "Body mass index (BMI) [Ratio]",
    },
    LabTest {
        code: "33914-3",
        unit: "mL/min/{1.73_m2}",
        low: 10.0,
        high: 130.0,
        display: "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum or Plasma by Creatinine-based formula (MDRD)",
    },
    // HbA1c last: ordinary draws stay below 8 %.
    LabTest {
        code: HBA1C,
        unit: "%",
        low: 4.5,
        high: 7.9,
        display: "Hemoglobin A1c/Hemoglobin.total in Blood",
    },
];

/// ATC level-5 codes the generator prescribes, with their substance names.
pub const ATC_CODES: &[(&str, &str)] = &[
    ("N02BE01", "paracétamol"),
    ("A02BC01", "oméprazole"),
    ("B01AC06", "acide acétylsalicylique"),
    ("C10AA05", "atorvastatine"),
    ("C07AB07", "bisoprolol"),
    ("C09AA05", "ramipril"),
    ("C08CA01", "amlodipine"),
    ("C03CA01", "furosémide"),
    ("A10BA02", "metformine"),
    ("H03AA01", "lévothyroxine sodique"),
    ("J01CA04", "amoxicilline"),
    ("N05BA01", "diazépam"),
    ("N06AB06", "sertraline"),
    ("R03AC02", "salbutamol"),
    ("A10AE04", "insuline glargine"),
    ("B01AB05", "énoxaparine"),
    ("C09CA01", "losartan"),
    ("N02AX02", "tramadol"),
    ("A06AD11", "lactulose"),
    ("J01DD04", "ceftriaxone"),
    ("M01AE01", "ibuprofène"),
    ("N05CF01", "zopiclone"),
    ("A12BA01", "chlorure de potassium"),
    ("B03AA07", "sulfate ferreux"),
    ("C01AA05", "digoxine"),
    ("N03AX14", "lévétiracétam"),
    ("R06AE07", "cétirizine"),
    ("S01ED01", "timolol"),
    ("L04AX03", "méthotrexate"),
    ("H02AB06", "prednisolone"),
];

/// ATC anatomical main groups (level 1) and the therapeutic subgroups (level 2) of the codes
/// above; levels 3 and 4 are named by their code.
pub const ATC_GROUPS: &[(&str, &str)] = &[
    ("A", "Voies digestives et métabolisme"),
    ("B", "Sang et organes hématopoïétiques"),
    ("C", "Système cardiovasculaire"),
    ("D", "Médicaments dermatologiques"),
    ("G", "Système génito-urinaire et hormones sexuelles"),
    ("H", "Hormones systémiques, hormones sexuelles exclues"),
    ("J", "Anti-infectieux généraux à usage systémique"),
    ("L", "Antinéoplasiques et immunomodulateurs"),
    ("M", "Muscle et squelette"),
    ("N", "Système nerveux"),
    ("P", "Antiparasitaires, insecticides"),
    ("R", "Système respiratoire"),
    ("S", "Organes sensoriels"),
    ("V", "Divers"),
    ("A02", "Médicaments pour les troubles de l'acidité"),
    ("A06", "Médicaments de la constipation"),
    ("A10", "Médicaments du diabète"),
    ("A12", "Suppléments minéraux"),
    ("B01", "Antithrombotiques"),
    ("B03", "Préparations antianémiques"),
    ("C01", "Médicaments en cardiologie"),
    ("C03", "Diurétiques"),
    ("C07", "Bêtabloquants"),
    ("C08", "Inhibiteurs calciques"),
    (
        "C09",
        "Médicaments agissant sur le système rénine-angiotensine",
    ),
    ("C10", "Hypolipémiants"),
    ("H02", "Corticoïdes à usage systémique"),
    ("H03", "Médicaments de la thyroïde"),
    ("J01", "Antibactériens à usage systémique"),
    ("L04", "Immunosuppresseurs"),
    ("M01", "Anti-inflammatoires et antirhumatismaux"),
    ("N02", "Analgésiques"),
    ("N03", "Antiépileptiques"),
    ("N05", "Psycholeptiques"),
    ("N06", "Psychoanaleptiques"),
    (
        "R03",
        "Médicaments pour les syndromes obstructifs des voies aériennes",
    ),
    ("R06", "Antihistaminiques à usage systémique"),
    ("S01", "Médicaments ophtalmologiques"),
];

/// ICD-10 chapters, as code ranges, with their French titles (CIM-10).
pub const ICD10_CHAPTERS: &[(&str, &str)] = &[
    ("A00-B99", "Certaines maladies infectieuses et parasitaires"),
    ("C00-D48", "Tumeurs"),
    (
        "D50-D89",
        "Maladies du sang et des organes hématopoïétiques et certains troubles du système immunitaire",
    ),
    (
        "E00-E90",
        "Maladies endocriniennes, nutritionnelles et métaboliques",
    ),
    ("F00-F99", "Troubles mentaux et du comportement"),
    ("G00-G99", "Maladies du système nerveux"),
    ("H00-H59", "Maladies de l'œil et de ses annexes"),
    ("H60-H95", "Maladies de l'oreille et de l'apophyse mastoïde"),
    ("I00-I99", "Maladies de l'appareil circulatoire"),
    ("J00-J99", "Maladies de l'appareil respiratoire"),
    ("K00-K93", "Maladies de l'appareil digestif"),
    (
        "L00-L99",
        "Maladies de la peau et du tissu cellulaire sous-cutané",
    ),
    (
        "M00-M99",
        "Maladies du système ostéo-articulaire, des muscles et du tissu conjonctif",
    ),
    ("N00-N99", "Maladies de l'appareil génito-urinaire"),
    ("O00-O99", "Grossesse, accouchement et puerpéralité"),
    (
        "P00-P96",
        "Certaines affections dont l'origine se situe dans la période périnatale",
    ),
    (
        "Q00-Q99",
        "Malformations congénitales et anomalies chromosomiques",
    ),
    (
        "R00-R99",
        "Symptômes, signes et résultats anormaux d'examens cliniques et de laboratoire, non classés ailleurs",
    ),
    (
        "S00-T98",
        "Lésions traumatiques, empoisonnements et certaines autres conséquences de causes externes",
    ),
    ("U00-U99", "Codes d'utilisation particulière"),
    ("V01-Y98", "Causes externes de morbidité et de mortalité"),
    (
        "Z00-Z99",
        "Facteurs influant sur l'état de santé et motifs de recours aux services de santé",
    ),
];

/// Real CIM-10 titles of categories the generator may draw (the others are named by their code).
pub const ICD10_TITLES: &[(&str, &str)] = &[
    ("E10", "Diabète sucré de type 1"),
    ("E11", "Diabète sucré de type 2"),
    ("E66", "Obésité"),
    (
        "E78",
        "Anomalies du métabolisme des lipoprotéines et autres lipidémies",
    ),
    ("C50", "Tumeur maligne du sein"),
    ("F32", "Épisodes dépressifs"),
    ("G40", "Épilepsie"),
    ("I10", "Hypertension essentielle (primitive)"),
    ("I21", "Infarctus aigu du myocarde"),
    ("I48", "Fibrillation et flutter auriculaires"),
    ("I50", "Insuffisance cardiaque"),
    ("I63", "Infarctus cérébral"),
    ("J18", "Pneumopathie à micro-organisme non précisé"),
    ("J44", "Autres maladies pulmonaires obstructives chroniques"),
    ("J45", "Asthme"),
    ("K35", "Appendicite aiguë"),
    ("M54", "Dorsalgies"),
    ("N18", "Maladie rénale chronique"),
    ("R50", "Fièvre d'origine autre et inconnue"),
    ("Z51", "Autres soins médicaux"),
];

/// CIM-10 subdivisions of type 2 diabetes (E11.0 to E11.9, written without the dot as PMSI
/// coding does).
pub const DIABETES_SUBDIVISIONS: &[(&str, &str)] = &[
    ("E110", "Diabète sucré de type 2, avec coma"),
    ("E111", "Diabète sucré de type 2, avec acidocétose"),
    (
        "E112",
        "Diabète sucré de type 2, avec complications rénales",
    ),
    (
        "E113",
        "Diabète sucré de type 2, avec complications oculaires",
    ),
    (
        "E114",
        "Diabète sucré de type 2, avec complications neurologiques",
    ),
    (
        "E115",
        "Diabète sucré de type 2, avec complications circulatoires périphériques",
    ),
    (
        "E116",
        "Diabète sucré de type 2, avec autres complications précisées",
    ),
    (
        "E117",
        "Diabète sucré de type 2, avec complications multiples",
    ),
    (
        "E118",
        "Diabète sucré de type 2, avec complications non précisées",
    ),
    ("E119", "Diabète sucré de type 2, sans complication"),
];

/// CCAM's topographic groups: the first letter of an act's code is the body system it acts on.
pub const CCAM_SYSTEMS: &[(&str, &str)] = &[
    ("A", "Système nerveux"),
    ("B", "Œil et annexes"),
    ("C", "Oreille"),
    ("D", "Système cardiaque"),
    ("E", "Système vasculaire"),
    ("F", "Système immunitaire et hématopoïétique"),
    ("G", "Système respiratoire"),
    ("H", "Système digestif"),
    ("J", "Système urinaire et génital"),
    ("K", "Système endocrinien"),
    (
        "L",
        "Système ostéoarticulaire de la tête, du cou et du tronc",
    ),
    ("M", "Système ostéoarticulaire du membre supérieur"),
    ("N", "Système ostéoarticulaire du membre inférieur"),
    ("P", "Système musculaire et tissus mous"),
    ("Q", "Système tégumentaire"),
    ("Z", "Actes sans précision topographique"),
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

/// Whether a generated category is subdivided (its facts are then coded at the subdivision:
/// `K350`…`K359`, as PMSI coding does); one category in two is.
pub fn icd10_subdivided(category: &str) -> bool {
    category.bytes().map(u32::from).sum::<u32>() % 2 == 0
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
