//! Reading terminology files: FHIR R4 `CodeSystem` and `ValueSet` resources in JSON (one
//! resource, a `Bundle` of them, or an array), and CSV with the columns `system`, `code`,
//! `display`, `parent` (one row per concept; a file may hold several systems).
//!
//! A code system's hierarchy comes from nested `concept` arrays, or from a `parent` property; a
//! file always holds whole code systems (what it omits of a stored one is removed on import).

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use super::{CodeSystemData, Concept, Terminologies, ValueSetData};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImportError {
    #[error("the file is neither JSON nor CSV with the columns system,code,display,parent: {0}")]
    Format(String),
    #[error("{0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> ImportError {
    ImportError::Invalid(message.into())
}

/// Reads a file's content: JSON when it starts with `{` or `[`, CSV otherwise.
pub fn parse(content: &str) -> Result<Terminologies, ImportError> {
    let trimmed = content.trim_start_matches('\u{feff}').trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let value: Value =
            serde_json::from_str(trimmed).map_err(|e| ImportError::Format(e.to_string()))?;
        let mut out = Terminologies::default();
        add_json(&mut out, &value)?;
        check_unique(&out)?;
        Ok(out)
    } else {
        let out = parse_csv(trimmed)?;
        check_unique(&out)?;
        Ok(out)
    }
}

fn check_unique(t: &Terminologies) -> Result<(), ImportError> {
    let mut urls = HashSet::new();
    for cs in &t.code_systems {
        if !urls.insert(&cs.url) {
            return Err(invalid(format!(
                "the code system {} is given twice",
                cs.url
            )));
        }
        let mut codes = HashSet::new();
        for c in &cs.concepts {
            if !codes.insert(&c.code) {
                return Err(invalid(format!(
                    "the code system {} has the code `{}` twice",
                    cs.url, c.code
                )));
            }
        }
        for c in &cs.concepts {
            if let Some(p) = &c.parent
                && !codes.contains(p)
            {
                return Err(invalid(format!(
                    "in {}, the parent `{p}` of `{}` is not a code of the system",
                    cs.url, c.code
                )));
            }
        }
    }
    let mut urls = HashSet::new();
    for vs in &t.value_sets {
        if !urls.insert(&vs.url) {
            return Err(invalid(format!("the value set {} is given twice", vs.url)));
        }
    }
    Ok(())
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// A name from a url's last segment (`…/terminologie-cim-10/` → `terminologie-cim-10`).
fn name_of(url: &str) -> String {
    url.trim_end_matches('/')
        .rsplit(['/', '#'])
        .next()
        .unwrap_or(url)
        .to_string()
}

fn add_json(out: &mut Terminologies, value: &Value) -> Result<(), ImportError> {
    if let Some(items) = value.as_array() {
        for item in items {
            add_json(out, item)?;
        }
        return Ok(());
    }
    match text(value, "resourceType") {
        Some("Bundle") => {
            for entry in value
                .get("entry")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let resource = entry
                    .get("resource")
                    .ok_or_else(|| invalid("a Bundle entry has no `resource`"))?;
                add_json(out, resource)?;
            }
            Ok(())
        }
        Some("CodeSystem") => {
            out.code_systems.push(code_system(value)?);
            Ok(())
        }
        Some("ValueSet") => {
            out.value_sets.push(value_set(value)?);
            Ok(())
        }
        Some(other) => Err(invalid(format!(
            "a `{other}` resource is not a terminology (CodeSystem, ValueSet or a Bundle of them)"
        ))),
        None => Err(invalid("a JSON object without `resourceType`")),
    }
}

fn code_system(v: &Value) -> Result<CodeSystemData, ImportError> {
    let url = text(v, "url").ok_or_else(|| invalid("a CodeSystem has no `url`"))?;
    let name = text(v, "name").map_or_else(|| name_of(url), str::to_string);
    let title = text(v, "title").map_or_else(|| name.clone(), str::to_string);
    let mut concepts = Vec::new();
    if let Some(list) = v.get("concept").and_then(Value::as_array) {
        flatten(url, list, None, &mut concepts)?;
    }
    Ok(CodeSystemData {
        url: url.to_string(),
        name,
        title,
        version: text(v, "version").map(str::to_string),
        concepts,
    })
}

/// Nested concepts, depth first, with their parent: the nesting's, or a `parent` property.
fn flatten(
    url: &str,
    list: &[Value],
    parent: Option<&str>,
    out: &mut Vec<Concept>,
) -> Result<(), ImportError> {
    for c in list {
        let code =
            text(c, "code").ok_or_else(|| invalid(format!("a concept of {url} has no `code`")))?;
        let property_parent = c
            .get("property")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| matches!(text(p, "code"), Some("parent" | "subsumedBy")))
            .and_then(|p| text(p, "valueCode").or_else(|| text(p, "valueString")));
        out.push(Concept {
            code: code.to_string(),
            display: text(c, "display").unwrap_or(code).to_string(),
            parent: parent.or(property_parent).map(str::to_string),
        });
        if let Some(children) = c.get("concept").and_then(Value::as_array) {
            flatten(url, children, Some(code), out)?;
        }
    }
    Ok(())
}

fn value_set(v: &Value) -> Result<ValueSetData, ImportError> {
    let url = text(v, "url").ok_or_else(|| invalid("a ValueSet has no `url`"))?;
    let includes = v
        .pointer("/compose/include")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid(format!("the ValueSet {url} has no `compose.include`")))?;
    for include in includes {
        if text(include, "system").is_none() {
            return Err(invalid(format!(
                "the ValueSet {url} includes something other than a code system (only `system`, with `concept` or an `is-a` filter, is read)"
            )));
        }
        for f in include
            .get("filter")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !matches!(text(f, "op"), Some("is-a" | "descendent-of"))
                || text(f, "value").is_none()
            {
                return Err(invalid(format!(
                    "the ValueSet {url} has a filter other than `concept is-a CODE` or `descendent-of`"
                )));
            }
        }
    }
    let name = text(v, "name").map_or_else(|| name_of(url), str::to_string);
    Ok(ValueSetData {
        url: url.to_string(),
        title: text(v, "title").map_or_else(|| name.clone(), str::to_string),
        name,
        version: text(v, "version").map(str::to_string),
        resource: v.clone(),
    })
}

#[derive(serde::Deserialize)]
struct CsvRow {
    system: String,
    code: String,
    display: Option<String>,
    parent: Option<String>,
}

fn parse_csv(content: &str) -> Result<Terminologies, ImportError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(content.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| ImportError::Format(e.to_string()))?
        .clone();
    for required in ["system", "code"] {
        if !headers.iter().any(|h| h == required) {
            return Err(ImportError::Format(format!("no `{required}` column")));
        }
    }
    let mut systems: BTreeMap<String, Vec<Concept>> = BTreeMap::new();
    for (line, row) in reader.deserialize::<CsvRow>().enumerate() {
        let row = row.map_err(|e| invalid(format!("CSV data row {}: {e}", line + 1)))?;
        if row.system.is_empty() || row.code.is_empty() {
            return Err(invalid(format!(
                "CSV data row {}: `system` and `code` are required",
                line + 1
            )));
        }
        let display = row
            .display
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| row.code.clone());
        systems.entry(row.system).or_default().push(Concept {
            code: row.code,
            display,
            parent: row.parent.filter(|p| !p.is_empty()),
        });
    }
    Ok(Terminologies {
        code_systems: systems
            .into_iter()
            .map(|(url, concepts)| {
                let name = name_of(&url);
                CodeSystemData {
                    title: name.clone(),
                    name,
                    url,
                    version: None,
                    concepts,
                }
            })
            .collect(),
        value_sets: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fhir_code_systems_keep_their_nesting_and_parent_properties() {
        let t = parse(
            r#"{"resourceType": "Bundle", "type": "collection", "entry": [
                {"resource": {"resourceType": "CodeSystem", "url": "http://x/cim", "name": "CIM",
                  "concept": [{"code": "E00-E90", "display": "Endocrine",
                    "concept": [{"code": "E11", "display": "Diabète de type 2",
                      "concept": [{"code": "E119", "display": "Sans complication"}]}]},
                    {"code": "E10", "display": "Type 1", "property": [{"code": "parent", "valueCode": "E00-E90"}]}]}},
                {"resource": {"resourceType": "ValueSet", "url": "http://x/vs", "compose": {"include": [
                  {"system": "http://x/cim", "filter": [{"property": "concept", "op": "is-a", "value": "E11"}]}]}}}]}"#,
        )
        .unwrap();
        let cs = &t.code_systems[0];
        let parent = |code: &str| {
            cs.concepts
                .iter()
                .find(|c| c.code == code)
                .and_then(|c| c.parent.clone())
        };
        assert_eq!(cs.concepts.len(), 4);
        assert_eq!(parent("E119").as_deref(), Some("E11"));
        assert_eq!(parent("E11").as_deref(), Some("E00-E90"));
        assert_eq!(parent("E10").as_deref(), Some("E00-E90"));
        assert_eq!(parent("E00-E90"), None);
        assert_eq!(t.value_sets[0].name, "vs");
    }

    #[test]
    fn csv_rows_make_one_system_each_and_mistakes_are_named() {
        let t = parse(
            "system,code,display,parent\nhttp://x/atc,A,Digestif,\nhttp://x/atc,A10,Diabète,A\nhttp://x/loinc,4548-4,HbA1c,\n",
        )
        .unwrap();
        assert_eq!(t.code_systems.len(), 2);
        assert_eq!(t.code_systems[0].url, "http://x/atc");
        assert_eq!(t.code_systems[0].concepts[1].parent.as_deref(), Some("A"));
        let err = parse("system,code,display,parent\nhttp://x/atc,A10,D,Z\n").unwrap_err();
        assert!(err.to_string().contains("the parent `Z`"), "{err}");
        let err = parse("system,code\nhttp://x,A\nhttp://x,A\n").unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        assert!(matches!(
            parse("code;display\nA;B"),
            Err(ImportError::Format(_))
        ));
        let err = parse(r#"{"resourceType": "Patient"}"#).unwrap_err();
        assert!(err.to_string().contains("not a terminology"), "{err}");
    }
}
