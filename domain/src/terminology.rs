//! Code-system rules shared by the terminology API, the FHIR search and the query engine: what a
//! code criterion selects (a code, its descendants, a range such as `X60-X84`) and how a text
//! filter matches a concept. Which codes descend from which is data (the terminology store); the
//! rules here are pure.

use std::collections::BTreeSet;

/// A code range as ICD-10 writes chapters and blocks (`E00-E90`, `X60-X84`): every code from
/// `lo` to `hi`, `hi`'s own subdivisions included (`X84.9`, `X849`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRange {
    pub lo: String,
    pub hi: String,
}

impl CodeRange {
    /// `lo-hi` with two non-empty ends of the same length, `lo <= hi`, letters and digits only
    /// (so that LOINC codes such as `4548-4` are not ranges).
    pub fn parse(text: &str) -> Option<Self> {
        let (lo, hi) = text.split_once('-')?;
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
                && s.starts_with(|c: char| c.is_ascii_alphabetic())
        };
        (plain(lo) && plain(hi) && lo.len() == hi.len() && lo <= hi).then(|| Self {
            lo: lo.to_string(),
            hi: hi.to_string(),
        })
    }

    pub fn contains(&self, code: &str) -> bool {
        code >= self.lo.as_str() && (code <= self.hi.as_str() || code.starts_with(&self.hi))
    }
}

/// The codes one criterion value stands for once its hierarchy is resolved: explicit codes (the
/// value and its descendants in the code system) and ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodeSelection {
    pub codes: BTreeSet<String>,
    pub ranges: Vec<CodeRange>,
}

impl CodeSelection {
    pub fn matches(&self, code: &str) -> bool {
        self.codes.contains(code) || self.ranges.iter().any(|r| r.contains(code))
    }

    pub fn extend(&mut self, other: CodeSelection) {
        self.codes.extend(other.codes);
        self.ranges.extend(other.ranges);
    }
}

/// Lower case without accents: how concepts are searched ("diabète" finds "Diabete" and the
/// other way round).
pub fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let base = match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'À' | 'Á' | 'Â' | 'Ã' | 'Ä' | 'Å' => {
                'a'
            }
            'ç' | 'Ç' => 'c',
            'è' | 'é' | 'ê' | 'ë' | 'È' | 'É' | 'Ê' | 'Ë' => 'e',
            'ì' | 'í' | 'î' | 'ï' | 'Ì' | 'Í' | 'Î' | 'Ï' => 'i',
            'ñ' | 'Ñ' => 'n',
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'Ò' | 'Ó' | 'Ô' | 'Õ' | 'Ö' => 'o',
            'ù' | 'ú' | 'û' | 'ü' | 'Ù' | 'Ú' | 'Û' | 'Ü' => 'u',
            'ý' | 'ÿ' | 'Ý' => 'y',
            'œ' | 'Œ' => {
                out.push_str("oe");
                continue;
            }
            'æ' | 'Æ' => {
                out.push_str("ae");
                continue;
            }
            c => c,
        };
        out.extend(base.to_lowercase());
    }
    out
}

/// The words of a text filter, folded: a concept matches when its folded "code display"
/// contains every one of them.
pub fn filter_words(filter: &str) -> Vec<String> {
    fold(filter)
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// What a concept's text filter is matched against.
pub fn search_text(code: &str, display: &str) -> String {
    fold(&format!("{code} {display}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_take_their_upper_ends_subdivisions() {
        let r = CodeRange::parse("X60-X84").unwrap();
        assert!(r.contains("X60"));
        assert!(r.contains("X7"));
        assert!(r.contains("X71.2"));
        assert!(r.contains("X84"));
        assert!(r.contains("X849"));
        assert!(!r.contains("X85"));
        assert!(!r.contains("X59"));
        assert!(!r.contains("Y60"));
        assert_eq!(CodeRange::parse("4548-4"), None, "a LOINC code");
        assert_eq!(CodeRange::parse("X84-X60"), None);
        assert_eq!(CodeRange::parse("E11"), None);
    }

    #[test]
    fn selections_and_text_filters() {
        let mut s = CodeSelection::default();
        s.codes.insert("E11".into());
        s.extend(CodeSelection {
            codes: BTreeSet::new(),
            ranges: vec![CodeRange::parse("I10-I15").unwrap()],
        });
        assert!(s.matches("E11") && s.matches("I139") && !s.matches("E110"));
        assert_eq!(fold("Diabète sucré ŒUF"), "diabete sucre oeuf");
        assert_eq!(filter_words(" Diabète  type "), ["diabete", "type"]);
        assert!(search_text("E11", "Diabète sucré de type 2").contains("diabete"));
    }
}
