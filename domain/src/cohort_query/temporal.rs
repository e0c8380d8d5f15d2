//! Temporal constraints: where each binds, and which patients satisfy it.
//!
//! A constraint with explicit ids binds at the lowest group holding all of them, which must be an
//! AND group reaching each criterion through inclusive AND groups only (the rows of a criterion
//! under an OR or an exclusion cannot be constrained; upstream raises an error there too). An
//! `"all"` constraint binds every inclusive criterion its (AND) group reaches that way.
//!
//! A patient satisfies
//! - `sameEncounter` / `sameEpisodeOfCare`: one encounter (episode) holds a row of every criterion;
//! - `differentEncounter` / `differentEpisodeOfCare`: for every pair of criteria, a row of each in
//!   different encounters (episodes);
//! - `directChronologicalOrdering`: a chain of rows, one per criterion in the list's order, each
//!   after the previous by at least the minimum delay (strictly after when none is given) and at
//!   most the maximum.

use std::collections::{BTreeSet, HashMap};

use super::QueryError;
use super::eval::{PatientSet, Row};
use super::model::{ConstraintKind, Delay, Group, GroupKind, IdList, Node, TemporalConstraint};

/// A constraint resolved to the criteria it binds, attached to a group.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Binding {
    pub kind: ConstraintKind,
    pub ids: Vec<i64>,
    pub min_delay: Option<Delay>,
    pub max_delay: Option<Delay>,
}

/// Group id → the constraints that bind there.
pub(super) fn bind(root: &Node) -> Result<HashMap<i64, Vec<Binding>>, QueryError> {
    let mut out: HashMap<i64, Vec<Binding>> = HashMap::new();
    visit(root, root, &mut out)?;
    Ok(out)
}

fn visit(root: &Node, node: &Node, out: &mut HashMap<i64, Vec<Binding>>) -> Result<(), QueryError> {
    let Node::Group(g) = node else {
        return Ok(());
    };
    for t in &g.temporal_constraints {
        let (at, ids) = match &t.ids {
            IdList::All => {
                if g.kind != GroupKind::And {
                    return Err(QueryError::criterion(
                        g.id,
                        "a temporal constraint on all criteria needs an AND group",
                    ));
                }
                let mut ids = Vec::new();
                and_reachable(g, &mut ids);
                (g.id, ids)
            }
            IdList::Ids(ids) => (lowest_and_group(root, g, ids)?, ids.clone()),
        };
        if ids.len() < 2 {
            continue;
        }
        out.entry(at).or_default().push(binding(t, ids));
    }
    for child in &g.children {
        visit(root, child, out)?;
    }
    Ok(())
}

fn binding(t: &TemporalConstraint, ids: Vec<i64>) -> Binding {
    Binding {
        kind: t.kind,
        ids,
        min_delay: t.min_delay,
        max_delay: t.max_delay,
    }
}

/// Inclusive criteria reached from `g` through inclusive AND groups.
fn and_reachable(g: &Group, ids: &mut Vec<i64>) {
    for child in g.children.iter().filter(|c| c.inclusive()) {
        match child {
            Node::Criterion(c) => ids.push(c.id),
            Node::Group(sub) if sub.kind == GroupKind::And => and_reachable(sub, ids),
            Node::Group(_) => {}
        }
    }
}

/// The path of groups from `node` down to criterion `id`, if it is below.
fn path_to<'a>(node: &'a Node, id: i64, path: &mut Vec<&'a Group>) -> bool {
    match node {
        Node::Criterion(c) => c.id == id,
        Node::Group(g) => {
            path.push(g);
            if g.children.iter().any(|c| path_to(c, id, path)) {
                return true;
            }
            path.pop();
            false
        }
    }
}

/// The group a constraint over `ids` binds at, checking it can be evaluated there.
fn lowest_and_group(root: &Node, declared: &Group, ids: &[i64]) -> Result<i64, QueryError> {
    let mut paths = Vec::new();
    for id in ids {
        let mut path = Vec::new();
        if !path_to(root, *id, &mut path) {
            return Err(QueryError::criterion(
                declared.id,
                format!(
                    "a temporal constraint refers to criterion {id}, which is not in the query"
                ),
            ));
        }
        paths.push(path);
    }
    let Some(first) = paths.first() else {
        return Ok(declared.id);
    };
    // Depth of the lowest common group.
    let mut depth = 0;
    while depth < first.len()
        && paths
            .iter()
            .all(|p| p.get(depth).map(|g| g.id) == Some(first[depth].id))
    {
        depth += 1;
    }
    if depth == 0 {
        return Ok(declared.id);
    }
    let lca = first[depth - 1];
    for (id, path) in ids.iter().zip(&paths) {
        let below = &path[depth - 1..];
        if let Some(g) = below.iter().find(|g| g.kind != GroupKind::And) {
            return Err(QueryError::criterion(
                *id,
                format!(
                    "temporal constraints cannot reach a criterion under the OR or nAmongM group {}",
                    g.id
                ),
            ));
        }
        let inclusive = below[1..].iter().all(|g| g.inclusive)
            && criterion_inclusive(path[path.len() - 1], *id);
        if !inclusive {
            return Err(QueryError::criterion(
                *id,
                "temporal constraints cannot apply to an excluded criterion",
            ));
        }
    }
    Ok(lca.id)
}

fn criterion_inclusive(parent: &Group, id: i64) -> bool {
    parent
        .children
        .iter()
        .any(|c| matches!(c, Node::Criterion(cr) if cr.id == id && cr.inclusive))
}

/// The patients of `set` that satisfy the constraint, given the bound criteria's rows (sorted by
/// patient).
pub(super) fn apply(
    b: &Binding,
    set: &PatientSet,
    rows: &HashMap<i64, Vec<Row>>,
) -> Result<PatientSet, QueryError> {
    let mut per_criterion = Vec::with_capacity(b.ids.len());
    for id in &b.ids {
        let r = rows.get(id).ok_or_else(|| {
            QueryError::criterion(*id, "the rows of a constrained criterion are missing")
        })?;
        per_criterion.push(r.as_slice());
    }
    let mut out = PatientSet::new();
    let mut cursors = vec![0usize; per_criterion.len()];
    for patient in set {
        let mut slices = Vec::with_capacity(per_criterion.len());
        for (rows, cursor) in per_criterion.iter().zip(cursors.iter_mut()) {
            while *cursor < rows.len() && rows[*cursor].patient < patient {
                *cursor += 1;
            }
            let start = *cursor;
            while *cursor < rows.len() && rows[*cursor].patient == patient {
                *cursor += 1;
            }
            slices.push(&rows[start..*cursor]);
        }
        if satisfies(b, &slices) {
            out.insert(patient);
        }
    }
    Ok(out)
}

fn satisfies(b: &Binding, rows: &[&[Row]]) -> bool {
    if rows.iter().any(|r| r.is_empty()) {
        return false;
    }
    match b.kind {
        ConstraintKind::SameEncounter => same(rows, |r| r.encounter),
        ConstraintKind::SameEpisodeOfCare => same(rows, |r| r.episode),
        ConstraintKind::DifferentEncounter => different(rows, |r| r.encounter),
        ConstraintKind::DifferentEpisodeOfCare => different(rows, |r| r.episode),
        ConstraintKind::DirectChronologicalOrdering => chronological(b, rows),
    }
}

fn same(rows: &[&[Row]], key: impl Fn(&Row) -> Option<u64>) -> bool {
    let mut common: BTreeSet<u64> = rows[0].iter().filter_map(&key).collect();
    for r in &rows[1..] {
        let keys: BTreeSet<u64> = r.iter().filter_map(&key).collect();
        common = common.intersection(&keys).copied().collect();
        if common.is_empty() {
            return false;
        }
    }
    !common.is_empty()
}

fn different(rows: &[&[Row]], key: impl Fn(&Row) -> Option<u64>) -> bool {
    let keys: Vec<BTreeSet<u64>> = rows
        .iter()
        .map(|r| r.iter().filter_map(&key).collect())
        .collect();
    for i in 0..keys.len() {
        for j in i + 1..keys.len() {
            let (a, b) = (&keys[i], &keys[j]);
            // A pair of rows in different encounters exists unless both are the same single one.
            if a.is_empty() || b.is_empty() || (a.len() == 1 && a == b) {
                return false;
            }
        }
    }
    true
}

fn chronological(b: &Binding, rows: &[&[Row]]) -> bool {
    let min = b.min_delay.map(|d| d.seconds());
    let max = b.max_delay.map(|d| d.seconds());
    let mut reachable: Vec<i64> = rows[0].iter().filter_map(Row::time).collect();
    reachable.sort_unstable();
    for next in &rows[1..] {
        let mut times: Vec<i64> = next
            .iter()
            .filter_map(Row::time)
            .filter(|t| {
                // Some earlier time `a` with min <= t - a <= max: a in [t - max, t - min].
                let hi = match min {
                    Some(m) => t - m,
                    None => t - 1,
                };
                let lo = max.map_or(i64::MIN, |m| t - m);
                let i = reachable.partition_point(|a| *a < lo);
                i < reachable.len() && reachable[i] <= hi
            })
            .collect();
        if times.is_empty() {
            return false;
        }
        times.sort_unstable();
        reachable = times;
    }
    true
}
