//! The terminology tables (`terminology` schema): loading a terminology as the difference with
//! what is stored, and reading code systems, value sets, expansions and hierarchies.

use async_trait::async_trait;
use domain::terminology::{CodeRange, CodeSelection, filter_words, search_text};
use projections::ReadError;
use projections::terminology::{
    CodeSystemInfo, ExpandRequest, ExpandedConcept, Expansion, TerminologyReader, ValueSetInfo,
    resource_id,
};
use serde_json::Value;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};

use super::{CodeSystemData, Terminologies, ValueSetData};
use crate::sql::read_error;

/// Who wrote a terminology: the service's catalogue never overwrites an operator's import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Builtin,
    Import,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Self::Builtin => "builtin",
            Self::Import => "import",
        }
    }
}

/// What a load changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub code_systems: usize,
    pub value_sets: usize,
    pub added: u64,
    pub changed: u64,
    pub removed: u64,
    /// Built-in terminologies left alone because an operator imported the same url.
    pub kept_imported: usize,
}

/// Loads terminologies: each code system becomes exactly the file's (new concepts added, changed
/// ones updated, missing ones removed), in one transaction.
pub async fn apply(
    pool: &PgPool,
    t: &Terminologies,
    origin: Origin,
) -> Result<ApplyReport, sqlx::Error> {
    let mut report = ApplyReport::default();
    let mut tx = pool.begin().await?;
    crate::db::without_statement_timeout(&mut tx).await?;
    for cs in &t.code_systems {
        if origin == Origin::Builtin && imported(&mut tx, "code_systems", &cs.url).await? {
            report.kept_imported += 1;
            continue;
        }
        apply_code_system(&mut tx, cs, origin, &mut report).await?;
        report.code_systems += 1;
    }
    for vs in &t.value_sets {
        if origin == Origin::Builtin && imported(&mut tx, "value_sets", &vs.url).await? {
            report.kept_imported += 1;
            continue;
        }
        apply_value_set(&mut tx, vs, origin).await?;
        report.value_sets += 1;
    }
    tx.commit().await?;
    Ok(report)
}

async fn imported(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    table: &str,
    url: &str,
) -> Result<bool, sqlx::Error> {
    let origin: Option<String> = sqlx::query_scalar(&format!(
        "SELECT origin FROM terminology.{table} WHERE url = $1"
    ))
    .bind(url)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(origin.as_deref() == Some("import"))
}

async fn apply_code_system(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    cs: &CodeSystemData,
    origin: Origin,
    report: &mut ApplyReport,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO terminology.code_systems (url, name, title, version, origin)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (url) DO UPDATE SET name = EXCLUDED.name, title = EXCLUDED.title,
             version = EXCLUDED.version, origin = EXCLUDED.origin, updated_at = now()",
    )
    .bind(&cs.url)
    .bind(&cs.name)
    .bind(&cs.title)
    .bind(&cs.version)
    .bind(origin.as_str())
    .execute(&mut **tx)
    .await?;
    let codes: Vec<&str> = cs.concepts.iter().map(|c| c.code.as_str()).collect();
    let displays: Vec<&str> = cs.concepts.iter().map(|c| c.display.as_str()).collect();
    let parents: Vec<Option<&str>> = cs.concepts.iter().map(|c| c.parent.as_deref()).collect();
    let positions: Vec<i32> = (0..cs.concepts.len() as i32).collect();
    let texts: Vec<String> = cs
        .concepts
        .iter()
        .map(|c| search_text(&c.code, &c.display))
        .collect();
    let removed =
        sqlx::query("DELETE FROM terminology.concepts WHERE system = $1 AND NOT (code = ANY($2))")
            .bind(&cs.url)
            .bind(&codes)
            .execute(&mut **tx)
            .await?
            .rows_affected();
    // `xmax = 0` tells an inserted row from an updated one; unchanged rows are not touched.
    let written: Vec<bool> = sqlx::query_scalar(
        "INSERT INTO terminology.concepts (system, code, display, parent, position, search_text)
         SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::int[], $6::text[])
         ON CONFLICT (system, code) DO UPDATE SET display = EXCLUDED.display,
             parent = EXCLUDED.parent, position = EXCLUDED.position,
             search_text = EXCLUDED.search_text
         WHERE (concepts.display, concepts.parent, concepts.position)
               IS DISTINCT FROM (EXCLUDED.display, EXCLUDED.parent, EXCLUDED.position)
         RETURNING xmax = 0",
    )
    .bind(&cs.url)
    .bind(&codes)
    .bind(&displays)
    .bind(&parents)
    .bind(&positions)
    .bind(&texts)
    .fetch_all(&mut **tx)
    .await?;
    let added = written.iter().filter(|inserted| **inserted).count() as u64;
    report.added += added;
    report.changed += written.len() as u64 - added;
    report.removed += removed;
    Ok(())
}

async fn apply_value_set(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    vs: &ValueSetData,
    origin: Origin,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO terminology.value_sets (url, name, title, version, origin, resource)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (url) DO UPDATE SET name = EXCLUDED.name, title = EXCLUDED.title,
             version = EXCLUDED.version, origin = EXCLUDED.origin, resource = EXCLUDED.resource,
             updated_at = now()
         WHERE (value_sets.name, value_sets.title, value_sets.version, value_sets.origin, value_sets.resource)
               IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.title, EXCLUDED.version, EXCLUDED.origin, EXCLUDED.resource)",
    )
    .bind(&vs.url)
    .bind(&vs.name)
    .bind(&vs.title)
    .bind(&vs.version)
    .bind(origin.as_str())
    .bind(&vs.resource)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub struct PgTerminology {
    pool: PgPool,
}

impl PgTerminology {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// One `compose.include` of a value set, as the expansion reads it.
enum Include {
    System(String),
    Codes(String, Vec<String>),
    Below(String, Vec<String>),
}

fn includes(resource: &Value) -> Vec<Include> {
    let mut out = Vec::new();
    for include in resource
        .pointer("/compose/include")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(system) = include.get("system").and_then(Value::as_str) else {
            continue;
        };
        let codes: Vec<String> = include
            .get("concept")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("code").and_then(Value::as_str).map(str::to_string))
            .collect();
        let below: Vec<String> = include
            .get("filter")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|f| f.get("value").and_then(Value::as_str).map(str::to_string))
            .collect();
        out.push(if !below.is_empty() {
            Include::Below(system.to_string(), below)
        } else if !codes.is_empty() {
            Include::Codes(system.to_string(), codes)
        } else {
            Include::System(system.to_string())
        });
    }
    out
}

/// `FROM … WHERE` of the concepts a value set holds, narrowed as the request asks.
fn push_selection<'a>(
    q: &mut QueryBuilder<'a, Postgres>,
    includes: &'a [Include],
    request: &'a ExpandRequest,
    words: &'a [String],
) {
    // The descendants (and selves) of every `is-a` root, first.
    q.push(
        "WITH RECURSIVE below(system, code) AS (
             SELECT system, code FROM terminology.concepts WHERE false",
    );
    for include in includes {
        if let Include::Below(system, roots) = include {
            q.push(" OR (system = ")
                .push_bind(system)
                .push(" AND code = ANY(")
                .push_bind(roots)
                .push("))");
        }
    }
    q.push(
        " UNION SELECT c.system, c.code FROM terminology.concepts c
              JOIN below b ON c.system = b.system AND c.parent = b.code)
         SELECT c.system, c.code, c.display, c.parent,
                EXISTS (SELECT 1 FROM terminology.concepts k WHERE k.system = c.system AND k.parent = c.code) AS has_children,
                count(*) OVER () AS total
           FROM terminology.concepts c WHERE (false",
    );
    for include in includes {
        match include {
            Include::System(system) => {
                q.push(" OR c.system = ").push_bind(system);
            }
            Include::Codes(system, codes) => {
                q.push(" OR (c.system = ")
                    .push_bind(system)
                    .push(" AND c.code = ANY(")
                    .push_bind(codes)
                    .push("))");
            }
            Include::Below(_, _) => {
                q.push(" OR (c.system, c.code) IN (SELECT system, code FROM below)");
            }
        }
    }
    q.push(")");
    match request.parent.as_deref() {
        Some("") => {
            q.push(" AND c.parent IS NULL");
        }
        Some(parent) => {
            q.push(" AND c.parent = ").push_bind(parent);
        }
        None => {}
    }
    if !request.codes.is_empty() {
        q.push(" AND c.code = ANY(")
            .push_bind(&request.codes)
            .push(")");
    }
    for word in words {
        q.push(" AND c.search_text LIKE ")
            .push_bind(format!("%{}%", word.replace(['%', '_', '\\'], "")));
    }
}

impl PgTerminology {
    async fn expand_includes(
        &self,
        request: &ExpandRequest,
        includes: &[Include],
        version: Option<String>,
    ) -> Result<Expansion, ReadError> {
        let words = request
            .filter
            .as_deref()
            .map(filter_words)
            .unwrap_or_default();
        let mut q = QueryBuilder::new("");
        push_selection(&mut q, includes, request, &words);
        q.push(" ORDER BY c.system, c.position LIMIT ")
            .push_bind(request.count)
            .push(" OFFSET ")
            .push_bind(request.offset);
        let rows = q.build().fetch_all(&self.pool).await.map_err(read_error)?;
        let mut total: i64 = match rows.first() {
            Some(r) => r.try_get("total").map_err(read_error)?,
            None => 0,
        };
        if rows.is_empty() && (request.offset > 0 || request.count == 0) {
            // No row to carry the window count (past the end, or `count=0`): count on its own.
            let mut c = QueryBuilder::new("SELECT count(*) FROM (");
            push_selection(&mut c, includes, request, &words);
            c.push(") counted");
            total = c
                .build_query_scalar()
                .fetch_one(&self.pool)
                .await
                .map_err(read_error)?;
        }
        let concepts = rows
            .iter()
            .map(|r| {
                Ok(ExpandedConcept {
                    system: r.try_get("system")?,
                    code: r.try_get("code")?,
                    display: r.try_get("display")?,
                    parent: r.try_get("parent")?,
                    has_children: r.try_get("has_children")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(read_error)?;
        Ok(Expansion {
            url: request.url.clone(),
            version,
            total,
            offset: request.offset,
            concepts,
        })
    }
}

#[async_trait]
impl TerminologyReader for PgTerminology {
    async fn code_systems(&self, url: Option<&str>) -> Result<Vec<CodeSystemInfo>, ReadError> {
        let rows = sqlx::query(
            "SELECT s.url, s.name, s.title, s.version,
                    (SELECT count(*) FROM terminology.concepts c WHERE c.system = s.url) AS count
               FROM terminology.code_systems s WHERE $1::text IS NULL OR s.url = $1 ORDER BY s.url",
        )
        .bind(url)
        .fetch_all(&self.pool)
        .await
        .map_err(read_error)?;
        rows.iter()
            .map(|r| {
                let url: String = r.try_get("url")?;
                Ok(CodeSystemInfo {
                    id: resource_id(&url),
                    url,
                    name: r.try_get("name")?,
                    title: r.try_get("title")?,
                    version: r.try_get("version")?,
                    count: r.try_get("count")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(read_error)
    }

    async fn value_sets(
        &self,
        url: Option<&str>,
        reference: Option<&str>,
    ) -> Result<Vec<ValueSetInfo>, ReadError> {
        let rows = sqlx::query(
            "SELECT url, name, title, version, resource FROM terminology.value_sets
              WHERE ($1::text IS NULL OR url = $1)
                AND ($2::text IS NULL OR resource->'compose'->'include' @> jsonb_build_array(jsonb_build_object('system', $2::text)))
              ORDER BY url",
        )
        .bind(url)
        .bind(reference)
        .fetch_all(&self.pool)
        .await
        .map_err(read_error)?;
        rows.iter()
            .map(|r| {
                let url: String = r.try_get("url")?;
                Ok(ValueSetInfo {
                    id: resource_id(&url),
                    url,
                    name: r.try_get("name")?,
                    title: r.try_get("title")?,
                    version: r.try_get("version")?,
                    resource: r.try_get("resource")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(read_error)
    }

    async fn expand(&self, request: &ExpandRequest) -> Result<Option<Expansion>, ReadError> {
        if let Some(inline) = &request.value_set {
            let version = inline
                .get("version")
                .and_then(Value::as_str)
                .map(str::to_string);
            return self
                .expand_includes(request, &includes(inline), version)
                .await
                .map(Some);
        }
        let stored: Option<(Value, Option<String>)> =
            sqlx::query_as("SELECT resource, version FROM terminology.value_sets WHERE url = $1")
                .bind(&request.url)
                .fetch_optional(&self.pool)
                .await
                .map_err(read_error)?;
        let (includes, version) = match stored {
            Some((resource, version)) => (includes(&resource), version),
            None => {
                let version: Option<Option<String>> = sqlx::query_scalar(
                    "SELECT version FROM terminology.code_systems WHERE url = $1",
                )
                .bind(&request.url)
                .fetch_optional(&self.pool)
                .await
                .map_err(read_error)?;
                match version {
                    Some(v) => (vec![Include::System(request.url.clone())], v),
                    None => return Ok(None),
                }
            }
        };
        self.expand_includes(request, &includes, version)
            .await
            .map(Some)
    }

    async fn resolve_codes(
        &self,
        system: &str,
        values: &[String],
    ) -> Result<Vec<CodeSelection>, ReadError> {
        let below: Vec<(String, String)> = sqlx::query_as(
            "WITH RECURSIVE below(root, code) AS (
                 SELECT code, code FROM terminology.concepts WHERE system = $1 AND code = ANY($2)
                 UNION SELECT b.root, c.code FROM terminology.concepts c JOIN below b
                     ON c.system = $1 AND c.parent = b.code)
             SELECT root, code FROM below",
        )
        .bind(system)
        .bind(values)
        .fetch_all(&self.pool)
        .await
        .map_err(read_error)?;
        Ok(values
            .iter()
            .map(|v| {
                let mut selection = CodeSelection::default();
                selection.codes.insert(v.clone());
                selection.ranges.extend(CodeRange::parse(v));
                selection.codes.extend(
                    below
                        .iter()
                        .filter(|(root, _)| root == v)
                        .map(|(_, code)| code.clone()),
                );
                selection
            })
            .collect())
    }
}
