//! The difference between two versions of a stored cohort query, for auditors: which criteria
//! and groups were added, removed or changed, and how the source population moved.
//!
//! Nodes of the query tree (`request` and everything under its `criteria`) are matched by their
//! `_id`, which the front-end keeps stable across versions (criteria are positive, groups zero or
//! negative). A node is "changed" when any of its own fields differ; for a group, its own fields
//! are everything but `criteria`, plus the ordered list of its children's ids. The parsing is
//! loose on purpose: old versions carry keys that later versions removed.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::query::QueryError;

/// A query node whose `_id` is on one side only.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeChange {
    pub id: i64,
    pub node: Value,
}

/// A node present on both sides with different content.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeUpdate {
    pub id: i64,
    /// Names of the fields that differ.
    pub fields: Vec<String>,
    pub before: Value,
    pub after: Value,
}

/// What changed in one kind of node (criteria or groups).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodesDiff {
    pub added: Vec<NodeChange>,
    pub removed: Vec<NodeChange>,
    pub changed: Vec<NodeUpdate>,
}

/// Perimeters of the source population.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PerimetersDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// The difference between two query versions.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueryDiff {
    pub criteria: NodesDiff,
    pub groups: NodesDiff,
    pub source_population: PerimetersDiff,
    /// Top-level keys other than `request` and `sourcePopulation` that differ (e.g. `version`).
    pub other_changes: Vec<String>,
}

impl QueryDiff {
    pub fn is_empty(&self) -> bool {
        *self == QueryDiff::default()
    }
}

fn parse(text: &str) -> Result<Map<String, Value>, QueryError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(doc)) => Ok(doc),
        Ok(_) => Err(QueryError::NotJson("the document is not an object".into())),
        Err(e) => Err(QueryError::NotJson(e.to_string())),
    }
}

/// A node's own content: groups without their children, but with the order of their children.
fn own_content(node: &Map<String, Value>) -> Value {
    let mut own = node.clone();
    if let Some(children) = own.remove("criteria") {
        let ids: Vec<Value> = children
            .as_array()
            .map(|c| {
                c.iter()
                    .map(|n| n.get("_id").cloned().unwrap_or(Value::Null))
                    .collect()
            })
            .unwrap_or_default();
        own.insert("criteria_ids".into(), Value::Array(ids));
    }
    Value::Object(own)
}

fn is_group(node: &Map<String, Value>) -> bool {
    node.get("_type").and_then(Value::as_str) != Some("basicResource")
}

/// Every node of the tree by `_id`, split into (criteria, groups). Nodes without an integer
/// `_id` are keyed by their position so that they still show up.
fn nodes(doc: &Map<String, Value>) -> (BTreeMap<i64, Value>, BTreeMap<i64, Value>) {
    let (mut criteria, mut groups) = (BTreeMap::new(), BTreeMap::new());
    let mut stack: Vec<&Value> = doc.get("request").into_iter().collect();
    let mut anonymous = i64::MIN;
    while let Some(Value::Object(node)) = stack.pop() {
        let id = node.get("_id").and_then(Value::as_i64).unwrap_or_else(|| {
            anonymous += 1;
            anonymous
        });
        if is_group(node) {
            groups.insert(id, own_content(node));
            if let Some(children) = node.get("criteria").and_then(Value::as_array) {
                stack.extend(children.iter());
            }
        } else {
            criteria.insert(id, Value::Object(node.clone()));
        }
    }
    (criteria, groups)
}

fn diff_nodes(before: &BTreeMap<i64, Value>, after: &BTreeMap<i64, Value>) -> NodesDiff {
    let mut diff = NodesDiff::default();
    for (id, node) in before {
        match after.get(id) {
            None => diff.removed.push(NodeChange {
                id: *id,
                node: node.clone(),
            }),
            Some(other) if other != node => {
                let empty = Map::new();
                let (b, a) = (
                    node.as_object().unwrap_or(&empty),
                    other.as_object().unwrap_or(&empty),
                );
                let mut fields: Vec<String> = b
                    .keys()
                    .chain(a.keys())
                    .filter(|k| b.get(*k) != a.get(*k))
                    .cloned()
                    .collect();
                fields.sort();
                fields.dedup();
                diff.changed.push(NodeUpdate {
                    id: *id,
                    fields,
                    before: node.clone(),
                    after: other.clone(),
                });
            }
            Some(_) => {}
        }
    }
    for (id, node) in after {
        if !before.contains_key(id) {
            diff.added.push(NodeChange {
                id: *id,
                node: node.clone(),
            });
        }
    }
    diff
}

fn perimeters(doc: &Map<String, Value>) -> Vec<String> {
    doc.get("sourcePopulation")
        .and_then(|p| p.get("caresiteCohortList"))
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The difference from query text `before` to query text `after`.
pub fn diff(before: &str, after: &str) -> Result<QueryDiff, QueryError> {
    let (b, a) = (parse(before)?, parse(after)?);
    let ((b_criteria, b_groups), (a_criteria, a_groups)) = (nodes(&b), nodes(&a));
    let (b_perimeters, a_perimeters) = (perimeters(&b), perimeters(&a));
    let mut other_changes: Vec<String> = b
        .keys()
        .chain(a.keys())
        .filter(|k| !matches!(k.as_str(), "request" | "sourcePopulation"))
        .filter(|k| b.get(*k) != a.get(*k))
        .cloned()
        .collect();
    other_changes.sort();
    other_changes.dedup();
    Ok(QueryDiff {
        criteria: diff_nodes(&b_criteria, &a_criteria),
        groups: diff_nodes(&b_groups, &a_groups),
        source_population: PerimetersDiff {
            added: a_perimeters
                .iter()
                .filter(|p| !b_perimeters.contains(p))
                .cloned()
                .collect(),
            removed: b_perimeters
                .iter()
                .filter(|p| !a_perimeters.contains(p))
                .cloned()
                .collect(),
        },
        other_changes,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn query(perimeters: &[&str], criteria: Value) -> String {
        json!({
            "version": "v1.6.1", "_type": "request",
            "sourcePopulation": {"caresiteCohortList": perimeters},
            "request": {"_type": "andGroup", "_id": 0, "isInclusive": true, "criteria": criteria}
        })
        .to_string()
    }

    fn women() -> Value {
        json!({"_type": "basicResource", "_id": 1, "name": "Femmes", "isInclusive": true,
               "resourceType": "Patient", "filterFhir": "gender=f"})
    }

    fn diabetes() -> Value {
        json!({"_type": "basicResource", "_id": 2, "name": "Diabète", "isInclusive": true,
               "resourceType": "Condition", "filterFhir": "code=E11"})
    }

    #[test]
    fn names_the_criteria_added_removed_and_changed() {
        let before = query(&["1"], json!([women(), diabetes()]));
        let mut excluded_women = women();
        excluded_women["isInclusive"] = json!(false);
        let hba1c = json!({"_type": "basicResource", "_id": 3, "name": "HbA1c > 8",
                           "resourceType": "Observation", "filterFhir": "code=4548-4&value-quantity=gt8"});
        let after = query(&["1", "2"], json!([excluded_women, hba1c]));
        let d = diff(&before, &after).unwrap();
        assert_eq!(d.criteria.added.len(), 1);
        assert_eq!(d.criteria.added[0].id, 3);
        assert_eq!(d.criteria.removed.len(), 1);
        assert_eq!(d.criteria.removed[0].node["name"], "Diabète");
        assert_eq!(d.criteria.changed.len(), 1);
        assert_eq!(d.criteria.changed[0].fields, vec!["isInclusive"]);
        assert_eq!(d.source_population.added, vec!["2"]);
        assert!(d.source_population.removed.is_empty());
        // The root group's children changed (2 → 3), nothing else in it.
        assert_eq!(d.groups.changed.len(), 1);
        assert_eq!(d.groups.changed[0].fields, vec!["criteria_ids"]);
        assert!(d.other_changes.is_empty());
    }

    #[test]
    fn nested_groups_are_compared_by_id_and_identical_queries_have_no_diff() {
        let nested = json!([{"_type": "orGroup", "_id": -1, "isInclusive": true,
                             "criteria": [women(), diabetes()]}]);
        let q = query(&["1"], nested.clone());
        assert!(diff(&q, &q).unwrap().is_empty());
        let mut exclusion = nested;
        exclusion[0]["isInclusive"] = json!(false);
        exclusion[0]["_type"] = json!("andGroup");
        let d = diff(&q, &query(&["1"], exclusion)).unwrap();
        assert!(d.criteria.added.is_empty() && d.criteria.removed.is_empty());
        assert_eq!(d.groups.changed.len(), 1);
        assert_eq!(d.groups.changed[0].id, -1);
        assert_eq!(d.groups.changed[0].fields, vec!["_type", "isInclusive"]);
    }

    #[test]
    fn a_query_without_request_and_other_top_level_changes() {
        let empty = json!({"version": "v1.4.0", "sourcePopulation": {"caresiteCohortList": ["9"]}})
            .to_string();
        let d = diff(&empty, &query(&["1"], json!([women()]))).unwrap();
        assert_eq!(d.criteria.added.len(), 1);
        assert_eq!(d.groups.added.len(), 1);
        assert_eq!(d.source_population.removed, vec!["9"]);
        assert_eq!(d.other_changes, vec!["_type", "version"]);
        assert!(diff("[1]", &empty).is_err());
    }
}
