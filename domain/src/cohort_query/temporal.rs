//! Temporal constraints: where each binds, and which patients satisfy it.
//!
//! Where they bind follows upstream (`QueryParser.loadGroupResource`,
//! `QueryBuilderTemporalConstraint.getIdList`, `CriterionTagsParser`):
//! - an `"all"` constraint is passed down to every AND group below the group declaring it (which
//!   must be an AND group), and each AND group applies it to its own direct inclusive children;
//! - a constraint with explicit ids binds at the lowest group holding all of them, which must be an
//!   AND group reaching each through inclusive AND groups only (the rows of a node under an OR or
//!   an exclusion cannot be constrained; upstream raises an error there too). Ids may name groups
//!   as well as criteria;
//! - a child group is one participant: its rows are those of its inclusive children (restricted
//!   to the group's patients), whatever its operator;
//! - a participant whose resource type cannot carry the compared field is left out (see
//!   [`upstream_carries`]); the others are intersected as usual by their group. A constraint left with
//!   fewer than two participants constrains nothing.
//!
//! A patient satisfies
//! - `sameEncounter` / `sameEpisodeOfCare`: one encounter (episode) holds a row of every participant;
//! - `differentEncounter` / `differentEpisodeOfCare`: for every pair of participants, a row of each
//!   in different encounters (episodes);
//! - `directChronologicalOrdering`: a chain of rows, one per participant in the list's order, each
//!   after the previous by at least the minimum delay (strictly after when none is given) and at
//!   most the maximum.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::QueryError;
use super::eval::{PatientSet, Row};
use super::model::{
    ConstraintKind, Delay, Group, GroupKind, IdList, Node, TemporalConstraint, base_resource_type,
};

/// A constraint resolved to its participants (criteria or groups), attached to a group.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Binding {
    pub kind: ConstraintKind,
    pub ids: Vec<i64>,
    pub min_delay: Option<Delay>,
    pub max_delay: Option<Delay>,
}

/// Where the constraints of a query bind, and whose rows they read.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Group id → the constraints that bind there.
    pub bindings: HashMap<i64, Vec<Binding>>,
    /// Nodes whose rows must be kept: the participants, and below a participating group the
    /// inclusive nodes its rows come from.
    pub rows_needed: HashSet<i64>,
    /// Participating groups → the kind of the (first) constraint they take part in, which
    /// decides what an AND group's rows keep (see [`group_rows`]).
    pub group_kinds: HashMap<i64, ConstraintKind>,
}

/// Whether rows of a resource type can carry what a constraint compares, in upstream's resource
/// configuration: an episode of care only on questionnaire responses, an encounter and a date on
/// every clinical resource, neither on patients (or an IPP list, or a cohort). A data source may
/// say otherwise ([`super::CriterionSource::carries`]).
pub fn upstream_carries(resource_type: &str, kind: ConstraintKind) -> bool {
    let base = base_resource_type(resource_type);
    let clinical = !matches!(base.as_str(), "patient" | "ipplist" | "group");
    match kind {
        ConstraintKind::SameEpisodeOfCare | ConstraintKind::DifferentEpisodeOfCare => {
            base == "questionnaireresponse"
        }
        ConstraintKind::SameEncounter
        | ConstraintKind::DifferentEncounter
        | ConstraintKind::DirectChronologicalOrdering => clinical,
    }
}

/// What the data source's rows carry: resource type, constraint kind → whether they can be
/// compared.
pub(super) type Carries<'a> = &'a dyn Fn(&str, ConstraintKind) -> bool;

/// Whether a node can take part in a constraint of `kind`: a criterion by its resource type, a
/// group when one of its inclusive children can.
pub(super) fn node_carries(node: &Node, kind: ConstraintKind, carries: Carries) -> bool {
    match node {
        Node::Criterion(c) => carries(&c.resource_type, kind),
        Node::Group(g) => g
            .children
            .iter()
            .any(|c| c.inclusive() && !is_empty(c) && node_carries(c, kind, carries)),
    }
}

fn is_empty(node: &Node) -> bool {
    match node {
        Node::Criterion(_) => false,
        Node::Group(g) => g.children.iter().all(is_empty),
    }
}

/// Resolves every constraint of the tree.
pub(super) fn bind(root: &Node, carries: Carries) -> Result<Plan, QueryError> {
    let mut plan = Plan::default();
    visit(root, root, &[], carries, &mut plan)?;
    // In the groups' order, so that a group taking part in constraints of several kinds always
    // gets the same one.
    let mut at: Vec<i64> = plan.bindings.keys().copied().collect();
    at.sort_unstable();
    let participants: Vec<(i64, ConstraintKind)> = at
        .iter()
        .flat_map(|g| &plan.bindings[g])
        .flat_map(|b| b.ids.iter().map(|id| (*id, b.kind)))
        .collect();
    for (id, kind) in participants {
        if let Some(node) = find(root, id) {
            keep_rows(node, kind, &mut plan);
        }
    }
    Ok(plan)
}

/// Marks a participant and, for a group, the inclusive nodes its rows come from.
fn keep_rows(node: &Node, kind: ConstraintKind, plan: &mut Plan) {
    plan.rows_needed.insert(node.id());
    if let Node::Group(g) = node {
        plan.group_kinds.entry(g.id).or_insert(kind);
        for child in g.children.iter().filter(|c| c.inclusive() && !is_empty(c)) {
            keep_rows(child, kind, plan);
        }
    }
}

/// A participating group's rows, from its inclusive children's (`children`: each one's rows,
/// and whether it carries what the constraint compares) for the group's patients. An OR or
/// nAmongM group keeps them all; an AND group joins its children, so for a same-encounter
/// (episode) constraint only the encounters (episodes) that every carrying child's rows hold for
/// the patient stay in play.
pub(super) fn group_rows(
    g: &Group,
    kind: Option<ConstraintKind>,
    children: &[(&[Row], bool)],
    set: &PatientSet,
) -> Vec<Row> {
    let key: Option<fn(&Row) -> Option<u64>> = match (g.kind, kind) {
        (GroupKind::And, Some(ConstraintKind::SameEncounter)) => Some(|r| r.encounter),
        (GroupKind::And, Some(ConstraintKind::SameEpisodeOfCare)) => Some(|r| r.episode),
        _ => None,
    };
    let mut rows: Vec<Row> = match key {
        None => children
            .iter()
            .flat_map(|(rows, _)| rows.iter())
            .filter(|r| set.contains(r.patient))
            .copied()
            .collect(),
        Some(key) => {
            // (patient, key) pairs of each carrying child; a row stays if every one has its pair.
            let carrying: Vec<&[Row]> = children
                .iter()
                .filter(|(_, carries)| *carries)
                .map(|(rows, _)| *rows)
                .collect();
            let pairs: Vec<HashSet<(u32, u64)>> = carrying
                .iter()
                .map(|rows| {
                    rows.iter()
                        .filter_map(|r| key(r).map(|k| (r.patient, k)))
                        .collect()
                })
                .collect();
            carrying
                .iter()
                .flat_map(|rows| rows.iter())
                .filter(|r| set.contains(r.patient))
                .filter(|r| {
                    key(r).is_some_and(|k| pairs.iter().all(|p| p.contains(&(r.patient, k))))
                })
                .copied()
                .collect()
        }
    };
    rows.sort_by_key(|r| r.patient);
    rows
}

fn find(node: &Node, id: i64) -> Option<&Node> {
    if node.id() == id {
        return Some(node);
    }
    match node {
        Node::Criterion(_) => None,
        Node::Group(g) => g.children.iter().find_map(|c| find(c, id)),
    }
}

fn visit(
    root: &Node,
    node: &Node,
    inherited: &[&TemporalConstraint],
    carries: Carries,
    plan: &mut Plan,
) -> Result<(), QueryError> {
    let Node::Group(g) = node else {
        return Ok(());
    };
    let mut all: Vec<&TemporalConstraint> = inherited.to_vec();
    for t in &g.temporal_constraints {
        match &t.ids {
            IdList::All => {
                if g.kind != GroupKind::And {
                    return Err(QueryError::criterion(
                        g.id,
                        "a temporal constraint on all criteria needs an AND group",
                    ));
                }
                all.push(t);
            }
            IdList::Ids(ids) => {
                let at = lowest_and_group(root, g, ids)?;
                let ids: Vec<i64> = ids
                    .iter()
                    .copied()
                    .filter(|id| find(root, *id).is_some_and(|n| node_carries(n, t.kind, carries)))
                    .collect();
                add(plan, at, t, ids);
            }
        }
    }
    if g.kind == GroupKind::And {
        for t in &all {
            let ids = g
                .children
                .iter()
                .filter(|c| c.inclusive() && !is_empty(c) && node_carries(c, t.kind, carries))
                .map(Node::id)
                .collect();
            add(plan, g.id, t, ids);
        }
    }
    for child in &g.children {
        visit(root, child, &all, carries, plan)?;
    }
    Ok(())
}

fn add(plan: &mut Plan, at: i64, t: &TemporalConstraint, ids: Vec<i64>) {
    if ids.len() < 2 {
        return;
    }
    plan.bindings.entry(at).or_default().push(Binding {
        kind: t.kind,
        ids,
        min_delay: t.min_delay,
        max_delay: t.max_delay,
    });
}

/// The groups from `node` down to the node `id` (that node excluded), if it is below.
fn path_to<'a>(node: &'a Node, id: i64, path: &mut Vec<&'a Group>) -> bool {
    if node.id() == id {
        return true;
    }
    match node {
        Node::Criterion(_) => false,
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
        if !path_to(root, *id, &mut path) || path.is_empty() {
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
        let parent = path[path.len() - 1];
        let inclusive = below[1..].iter().all(|g| g.inclusive)
            && parent
                .children
                .iter()
                .any(|c| c.id() == *id && c.inclusive());
        if !inclusive {
            return Err(QueryError::criterion(
                *id,
                "temporal constraints cannot apply to an excluded criterion",
            ));
        }
    }
    Ok(lca.id)
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
