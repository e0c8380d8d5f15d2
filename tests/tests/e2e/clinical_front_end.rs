//! The clinical side of the front-end, over HTTP, with the calls the real client makes: code
//! pickers fed by the FHIR terminology API, a request on an ICD-10 category (counted through the
//! terminology's hierarchy) and an HbA1c, checked against SQL; the patient list with its
//! dashboard facets; one patient's page; and terminology imports.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tests::flows;
use tests::identity::{APHP, add_user, grant};
use tests::ws::{connect_as, next_job_status};

use super::clinical::{app_with, criterion, group, query, sql_count};

const ICD10: &str = "https://smt.esante.gouv.fr/terminologie-cim-10/";
const LOINC: &str = "http://loinc.org";
const PATIENTS: u64 = 2000;

/// FHIR R4 rules every answer here must keep: a resource has a `resourceType`; an extension has a
/// `url` and either a `value[x]` or nested extensions, never both (ext-1); a Bundle's `total` is
/// a non-negative integer and each entry has its resource; an expansion has its `timestamp` and
/// no empty `contains`; coded entries have a code.
fn assert_fhir_r4(v: &Value, path: &str) {
    match v {
        Value::Object(o) => {
            if let Some(exts) = o.get("extension") {
                let exts = exts
                    .as_array()
                    .unwrap_or_else(|| panic!("{path}.extension: not an array"));
                assert!(!exts.is_empty(), "{path}.extension: empty");
                for (i, e) in exts.iter().enumerate() {
                    let at = format!("{path}.extension[{i}]");
                    let values = e
                        .as_object()
                        .unwrap_or_else(|| panic!("{at}: not an object"))
                        .keys()
                        .filter(|k| k.starts_with("value"))
                        .count();
                    assert!(e["url"].is_string(), "{at}: no url");
                    let nested = e.get("extension").is_some();
                    assert!(
                        values + usize::from(nested) == 1,
                        "{at}: value[x] xor extension: {e}"
                    );
                }
            }
            match o.get("resourceType").and_then(Value::as_str) {
                Some("Bundle") => {
                    assert!(o["type"].is_string(), "{path}: Bundle.type");
                    if let Some(t) = o.get("total") {
                        assert!(t.as_u64().is_some(), "{path}: Bundle.total");
                    }
                    for e in o
                        .get("entry")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        assert!(
                            e["resource"]["resourceType"].is_string(),
                            "{path}: entry resource"
                        );
                    }
                }
                Some("ValueSet") => {
                    assert!(o["status"].is_string(), "{path}: ValueSet.status");
                    if let Some(x) = o.get("expansion") {
                        assert!(x["timestamp"].is_string(), "{path}: expansion.timestamp");
                        if let Some(c) = x.get("contains") {
                            assert!(!c.as_array().unwrap().is_empty(), "{path}: empty contains");
                            for item in c.as_array().unwrap() {
                                assert!(
                                    item["code"].is_string() && item["system"].is_string(),
                                    "{path}: {item}"
                                );
                            }
                        }
                    }
                }
                Some("CodeSystem") => {
                    assert!(
                        o["status"].is_string() && o["content"].is_string(),
                        "{path}: CodeSystem"
                    );
                }
                Some("OperationOutcome") => {
                    assert!(!o["issue"].as_array().unwrap().is_empty(), "{path}: issue");
                }
                _ => {}
            }
            for (k, child) in o {
                assert!(!child.is_null(), "{path}.{k}: FHIR JSON has no nulls");
                assert_fhir_r4(child, &format!("{path}.{k}"));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                assert_fhir_r4(item, &format!("{path}[{i}]"));
            }
        }
        _ => {}
    }
}

/// A FHIR GET as `user`, checked for R4 shape; 200 expected.
async fn fhir(app: &tests::TestApp, user: &str, path: &str) -> Value {
    let answer = app.get(path, user).await;
    assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
    assert_fhir_r4(&answer.body, path);
    answer.body
}

fn codes(expansion: &Value) -> Vec<String> {
    expansion["expansion"]["contains"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["code"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn has_children(expansion: &Value, code: &str) -> bool {
    expansion["expansion"]["contains"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["code"] == code)
        .and_then(|c| c["extension"].as_array())
        .and_then(|e| {
            e.iter().find(|x| {
                x["url"]
                    .as_str()
                    .unwrap_or_default()
                    .ends_with("has-children")
            })
        })
        .is_some_and(|x| x["valueBoolean"] == true)
}

fn facet<'a>(bundle: &'a Value, url: &str) -> &'a Vec<Value> {
    bundle["meta"]["extension"]
        .as_array()
        .and_then(|all| all.iter().find(|e| e["url"] == url))
        .and_then(|e| e["extension"].as_array())
        .unwrap_or_else(|| panic!("no facet {url} in {}", bundle["meta"]))
}

fn count_of(x: &Value) -> i64 {
    x["valueDecimal"].as_f64().unwrap_or_else(|| panic!("{x}")) as i64
}

#[tokio::test]
async fn a_researcher_picks_codes_counts_a_category_and_explores_patients() {
    let (app, fixture) = app_with(PATIENTS, 23, |_| {}).await;
    add_user(&app, "alice", Some("pw-alice-123")).await;
    grant(&app, &fixture, "alice", "nominative_reader", APHP).await;
    let pool = &app.pool;

    // The pickers: the value sets of a code system, the ICD-10 set filtered by text (accents
    // and case ignored), its roots (chapters) and a chapter opened.
    let sets = fhir(&app, "alice", &format!("/fhir/ValueSet?reference={ICD10}")).await;
    assert!(sets["total"].as_u64().unwrap() >= 1, "{sets}");
    let found = fhir(
        &app,
        "alice",
        &format!("/fhir/ValueSet/$expand?url={ICD10}&filter=DIABETE%20sucre&count=50"),
    )
    .await;
    assert!(codes(&found).contains(&"E11".to_string()), "{found}");
    let e11 = found["expansion"]["contains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["code"] == "E11")
        .unwrap();
    assert_eq!(e11["display"], "Diabète sucré de type 2");
    assert!(has_children(&found, "E11"), "E11 has its subdivisions");
    let roots = fhir(
        &app,
        "alice",
        &format!("/fhir/ValueSet/$expand?url={ICD10}&parent="),
    )
    .await;
    assert!(codes(&roots).contains(&"E00-E90".to_string()), "{roots}");
    assert!(!codes(&roots).contains(&"E11".to_string()), "only roots");
    let chapter = fhir(
        &app,
        "alice",
        &format!("/fhir/ValueSet/$expand?url={ICD10}&parent=E00-E90&count=500"),
    )
    .await;
    assert!(codes(&chapter).contains(&"E11".to_string()), "{chapter}");
    // Paging: total stays, offset moves.
    let page2 = fhir(
        &app,
        "alice",
        &format!("/fhir/ValueSet/$expand?url={ICD10}&count=5&offset=5"),
    )
    .await;
    let all = fhir(
        &app,
        "alice",
        &format!("/fhir/ValueSet/$expand?url={ICD10}&count=10"),
    )
    .await;
    assert_eq!(page2["expansion"]["total"], all["expansion"]["total"]);
    let only_total = fhir(
        &app,
        "alice",
        &format!("/fhir/ValueSet/$expand?url={ICD10}&count=0"),
    )
    .await;
    assert_eq!(only_total["expansion"]["total"], all["expansion"]["total"]);
    assert!(only_total["expansion"].get("contains").is_none());
    assert_eq!(codes(&page2), codes(&all)[5..10].to_vec());
    // POST with an inline value set: the concepts under E11.
    let posted = app
        .post(
            "/fhir/ValueSet/$expand",
            "alice",
            json!({"resourceType": "Parameters", "parameter": [
                {"name": "valueSet", "resource": {"resourceType": "ValueSet", "status": "active", "compose": {"include": [
                    {"system": ICD10, "filter": [{"property": "concept", "op": "is-a", "value": "E11"}]}]}}},
                {"name": "count", "valueInteger": 100}]}),
        )
        .await;
    assert_eq!(posted.status, StatusCode::OK, "{}", posted.body);
    assert_fhir_r4(&posted.body, "POST $expand");
    assert_eq!(
        codes(&posted.body).len(),
        11,
        "E11 and E110…E119: {}",
        posted.body
    );
    let genders = fhir(
        &app,
        "alice",
        "/fhir/ValueSet/$expand?url=http://hl7.org/fhir/administrative-gender",
    )
    .await;
    assert_eq!(codes(&genders), ["female", "male", "other", "unknown"]);
    let systems = fhir(&app, "alice", &format!("/fhir/CodeSystem?system={LOINC}")).await;
    assert_eq!(systems["entry"][0]["resource"]["url"], LOINC, "{systems}");

    // A subdivided category the data uses most: its facts carry subdivisions only.
    let category: String = sqlx::query_scalar(
        "SELECT left(code, 3) FROM clinical.facts WHERE resource = 'C' AND length(code) = 4
         GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let picked = fhir(
        &app,
        "alice",
        &format!("/fhir/ValueSet/$expand?url={ICD10}&filter={category}"),
    )
    .await;
    assert!(has_children(&picked, &category), "{picked}");

    // The request: the category (through its subdivisions) and an HbA1c at 8 % or more.
    let q = query(
        &["9999"],
        group(
            "andGroup",
            0,
            vec![
                criterion(
                    1,
                    "Condition",
                    &format!("subject.active=true&code={ICD10}|{category}"),
                ),
                criterion(
                    2,
                    "Observation",
                    &format!("subject.active=true&code={LOINC}|4548-4&value-quantity=ge8"),
                ),
            ],
        ),
    );
    let expected = sql_count(
        pool,
        &format!(
            "SELECT patient_id FROM clinical.facts WHERE resource = 'C' AND code LIKE '{category}%'
             INTERSECT SELECT patient_id FROM clinical.facts WHERE resource = 'O' AND code = '4548-4' AND value >= 8"
        ),
    )
    .await;
    assert!(expected > 0, "a telling case");
    let login = app
        .send(
            app.request(Method::POST, "/auth/login/")
                .json(&json!({"username": "alice", "password": "pw-alice-123"})),
        )
        .await;
    let token = login.body["access_token"].as_str().unwrap().to_string();
    let mut socket = connect_as(&app, &token).await;
    let saved = flows::saved_query(&app, "alice", "Category and HbA1c", &q).await;
    let dm = flows::count(&app, "alice", &saved.snapshot).await;
    let message = next_job_status(&mut socket, &dm).await;
    assert_eq!(message["status"], "finished", "{message}");
    assert_eq!(message["extra_info"]["measure"], expected, "{message}");

    // The FHIR search answers the same selection: the category, `:below`, and a range.
    let in_category = sql_count(
        pool,
        &format!("SELECT id FROM clinical.facts WHERE resource = 'C' AND code LIKE '{category}%'"),
    )
    .await;
    for filter in [
        format!("code={ICD10}|{category}"),
        format!("code:below={category}"),
        format!(
            "code={category}0,{category}1,{category}2,{category}3,{category}4,{category}5,{category}6,{category}7,{category}8,{category}9"
        ),
    ] {
        let b = fhir(&app, "alice", &format!("/fhir/Condition?_count=0&{filter}")).await;
        assert_eq!(b["total"], in_category, "{filter}");
    }
    let range = fhir(&app, "alice", "/fhir/Condition?_count=0&code=E00-E90").await;
    let in_range = sql_count(pool, "SELECT id FROM clinical.facts WHERE resource = 'C' AND code >= 'E00' AND (code <= 'E90' OR code LIKE 'E90%')").await;
    assert_eq!(range["total"], in_range);

    // The patient list with its facets, as "Tous mes patients" asks for it.
    let patients = fhir(
        &app,
        "alice",
        "/fhir/Patient?active=true&_count=20&_sort=family&pivot-facet=age-month_gender,deceased_gender&_elements=gender,name,birthDate,deceased,identifier,extension&_total=accurate",
    )
    .await;
    assert_eq!(patients["total"], PATIENTS);
    let entries = patients["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 20);
    let families: Vec<&str> = entries
        .iter()
        .map(|e| e["resource"]["name"][0]["family"].as_str().unwrap())
        .collect();
    let mut sorted = families.clone();
    sorted.sort();
    assert_eq!(families, sorted, "sorted by family name");
    let first: String = sqlx::query_scalar(
        "SELECT family_name FROM clinical.patients ORDER BY family_name, id LIMIT 1",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(families[0], first);
    assert!(
        entries
            .iter()
            .all(|e| e["resource"].get("managingOrganization").is_none()),
        "_elements"
    );
    let deceased = facet(&patients, "facet-deceased");
    let dead: i64 = deceased
        .iter()
        .filter(|x| x["extension"][0]["url"] == "true")
        .map(|x| count_of(&x["extension"][0]))
        .sum();
    let all_in_facet: i64 = deceased.iter().map(|x| count_of(&x["extension"][0])).sum();
    assert_eq!(all_in_facet, PATIENTS as i64);
    assert_eq!(
        dead as u64,
        sql_count(pool, "SELECT id FROM clinical.patients WHERE deceased").await
    );
    let by_gender: i64 = deceased
        .iter()
        .flat_map(|x| x["extension"][1]["extension"].as_array().unwrap().iter())
        .filter(|g| g["url"] == "female")
        .map(count_of)
        .sum();
    assert_eq!(
        by_gender as u64,
        sql_count(pool, "SELECT id FROM clinical.patients WHERE gender = 'f'").await
    );
    let ages = facet(&patients, "facet-age-month");
    assert!(ages.iter().all(|x| {
        x["extension"][0]["url"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            % 12
            == 0
    }));
    assert_eq!(
        ages.iter()
            .map(|x| count_of(&x["extension"][0]))
            .sum::<i64>(),
        PATIENTS as i64
    );

    let encounters = fhir(
        &app,
        "alice",
        "/fhir/Encounter?subject.active=true&_count=0&facet=class,visit-year-month-gender-facet&part-of:missing=true",
    )
    .await;
    let total_encounters = sql_count(pool, "SELECT id FROM clinical.encounters").await;
    assert_eq!(encounters["total"], total_encounters);
    let classes: i64 = facet(&encounters, "facet-class-simple")
        .iter()
        .map(|x| count_of(&x["extension"][0]))
        .sum();
    assert_eq!(classes as u64, total_encounters);
    let visits = facet(&encounters, "facet-visit-year-month-gender-facet");
    assert!(visits.iter().all(|x| {
        x["extension"][0]["url"]
            .as_str()
            .unwrap()
            .split('-')
            .count()
            == 3
    }));
    assert_eq!(
        visits
            .iter()
            .map(|x| count_of(&x["extension"][0]))
            .sum::<i64>() as u64,
        total_encounters
    );

    // The same searches in SQL alone (no index): the same totals, facets and page.
    {
        use projections::clinical::{
            ClinicalReader, Facet, FhirRecord, FhirSearch, FhirSort, FhirType, ReadScope, SortField,
        };
        let all: Vec<i64> = sqlx::query_scalar("SELECT id FROM identity.perimeters")
            .fetch_all(pool)
            .await
            .unwrap();
        let scope = ReadScope {
            readable: all.clone(),
            nominative: all,
        };
        let sql_only = infra::clinical::fhir::PgClinical::new(pool.clone());
        let exec = std::sync::Arc::new(super::clinical::executor(pool));
        exec.index().await.unwrap();
        let index = exec
            .ready_index()
            .await
            .expect("the index is loaded and current");
        let on_index =
            infra::clinical::fhir::PgClinical::new(pool.clone()).with_index(Some(exec.clone()));
        for (resource, params, count, sort) in [
            (
                FhirType::Patient,
                "active=true",
                20,
                vec![SortField::Family],
            ),
            (
                FhirType::Patient,
                "gender=f&deceased=false",
                7,
                vec![SortField::BirthDate, SortField::Id],
            ),
            (
                FhirType::Encounter,
                "subject.active=true&class=hospit",
                0,
                vec![],
            ),
        ] {
            let search = FhirSearch {
                resource,
                params: domain::cohort_query::fhir_search::parse_search(params),
                count,
                offset: 3,
                sort: sort
                    .into_iter()
                    .map(|field| FhirSort {
                        field,
                        descending: field == SortField::BirthDate,
                    })
                    .collect(),
                facets: vec![
                    Facet::Pivot("age-month".into(), "gender".into()),
                    Facet::Pivot("deceased".into(), "gender".into()),
                    Facet::Field("gender".into()),
                    Facet::Unique("subject".into()),
                ],
            };
            let ids = |page: &projections::clinical::FhirPage| -> Vec<i64> {
                page.records
                    .iter()
                    .map(|r| match r {
                        FhirRecord::Patient(p) => p.id,
                        _ => 0,
                    })
                    .collect()
            };
            assert!(
                infra::clinical::index_search::search(pool, &index, &search, &scope)
                    .await
                    .unwrap()
                    .is_some(),
                "{params}: answered from the index"
            );
            let a = sql_only.search(&search, &scope).await.unwrap();
            let b = on_index.search(&search, &scope).await.unwrap();
            assert_eq!(a.total, b.total, "{params}");
            assert_eq!(a.facets, b.facets, "{params}");
            assert_eq!(ids(&a), ids(&b), "{params}");
            assert!(a.total > 0);
        }
    }

    // The stays' care sites.
    let site = entries[0]["resource"]["managingOrganization"]["reference"].as_str();
    assert!(site.is_none(), "left out by _elements");
    let perimeter: i64 =
        sqlx::query_scalar("SELECT perimeter_id FROM clinical.patients ORDER BY id LIMIT 1")
            .fetch_one(pool)
            .await
            .unwrap();
    let org = fhir(&app, "alice", &format!("/fhir/Organization/{perimeter}")).await;
    assert_eq!(org["resourceType"], "Organization");
    assert!(
        org["partOf"]["reference"]
            .as_str()
            .unwrap()
            .starts_with("Organization/"),
        "{org}"
    );
    let orgs = fhir(&app, "alice", "/fhir/Organization?_id=0,1,424242").await;
    assert_eq!(orgs["total"], 2);

    // One patient's page.
    let id = entries[0]["resource"]["id"].as_str().unwrap().to_string();
    let patient = fhir(&app, "alice", &format!("/fhir/Patient/{id}")).await;
    assert_eq!(patient["id"], id.as_str());
    let stays = fhir(
        &app,
        "alice",
        &format!("/fhir/Encounter?subject={id}&_sort=-period-start&_count=100"),
    )
    .await;
    let starts: Vec<&str> = stays["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["period"]["start"].as_str().unwrap())
        .collect();
    assert!(
        !starts.is_empty() && starts.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {starts:?}"
    );
    for resource in ["Condition", "Observation", "MedicationRequest", "Procedure"] {
        let b = fhir(
            &app,
            "alice",
            &format!("/fhir/{resource}?subject={id}&_sort=-date&_count=50&_total=accurate"),
        )
        .await;
        let n = sql_count(
            pool,
            &format!(
                "SELECT id FROM clinical.facts WHERE patient_id = {id} AND resource = '{}'",
                &resource[..1]
            ),
        )
        .await;
        assert_eq!(b["total"], n, "{resource}");
    }

    // Clinical notes: found by full text (French stemming), the same in a count and in FHIR.
    let with_diabetes = sql_count(
        pool,
        "SELECT d.id FROM clinical.documents d WHERE EXISTS (SELECT 1 FROM clinical.facts f
           WHERE f.encounter_id = d.encounter_id AND f.resource = 'C' AND f.code = 'E11')",
    )
    .await;
    assert!(with_diabetes > 0);
    let notes = fhir(
        &app,
        "alice",
        "/fhir/DocumentReference?_text=%22diab%C3%A8te%20sucr%C3%A9%20de%20type%202%22&_count=5&_sort=-date",
    )
    .await;
    assert_eq!(
        notes["total"], with_diabetes,
        "the notes of stays coded E11"
    );
    let note = &notes["entry"][0]["resource"];
    assert!(
        note["content"][0]["attachment"]["data"].is_string(),
        "{note}"
    );
    let docs = fhir(
        &app,
        "alice",
        &format!(
            "/fhir/DocumentReference?subject={id}&_count=50",
            id = entries[0]["resource"]["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(
        docs["total"],
        sql_count(
            pool,
            &format!(
                "SELECT id FROM clinical.documents WHERE patient_id = {}",
                entries[0]["resource"]["id"].as_str().unwrap()
            )
        )
        .await
    );
    let by_note = query(
        &["9999"],
        group(
            "andGroup",
            0,
            vec![criterion(
                1,
                "DocumentReference",
                "_text=%22diab%C3%A8te%20sucr%C3%A9%20de%20type%202%22&type=http://loinc.org|18842-5",
            )],
        ),
    );
    let saved = flows::saved_query(&app, "alice", "Notes", &by_note).await;
    let dm = flows::count(&app, "alice", &saved.snapshot).await;
    let message = next_job_status(&mut socket, &dm).await;
    let in_notes = sql_count(
        pool,
        "SELECT DISTINCT d.patient_id FROM clinical.documents d WHERE d.type = '18842-5' AND EXISTS (
           SELECT 1 FROM clinical.facts f WHERE f.encounter_id = d.encounter_id AND f.resource = 'C' AND f.code = 'E11')",
    )
    .await;
    assert_eq!(message["extra_info"]["measure"], in_notes, "{message}");

    // The perimeter picker: a node's children found by their local ids (= ids), as the client
    // asks for them, and every perimeter's patients counted.
    let children = app
        .get(
            "/accesses/perimeters/patient-data/rights/?limit=-1&type_source_value=&local_id=0,1,2",
            "alice",
        )
        .await;
    assert_eq!(children.status, StatusCode::OK, "{}", children.body);
    assert_eq!(children.body["count"], 3, "{}", children.body);
    let root = app
        .get("/accesses/perimeters/?local_id=9999", "alice")
        .await;
    assert_eq!(root.status, StatusCode::OK, "{}", root.body);
    assert_eq!(
        root.body["results"][0]["cohort_size"],
        PATIENTS.to_string(),
        "{}",
        root.body
    );
    let p0 = sql_count(
        pool,
        "SELECT c.id FROM clinical.patients c JOIN identity.perimeters p ON p.id = c.perimeter_id
         WHERE p.id_path LIKE (SELECT id_path FROM identity.perimeters WHERE id = 0) || '%'",
    )
    .await;
    let zero = app.get("/accesses/perimeters/?local_id=0", "alice").await;
    assert_eq!(
        zero.body["results"][0]["cohort_size"],
        p0.to_string(),
        "{}",
        zero.body
    );

    // What is not supported says so, as an OperationOutcome 400.
    for path in [
        "/fhir/Patient?_sort=shoe-size",
        "/fhir/Patient?pivot-facet=gender",
        "/fhir/Patient?facet=shoe-size",
        "/fhir/Patient?_total=maybe",
        "/fhir/Condition?code:above=E11",
        "/fhir/ValueSet/$expand",
        "/fhir/ValueSet/$expand?url=x&count=-1",
        "/fhir/ValueSet?colour=red",
    ] {
        let a = app.get(path, "alice").await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}: {}", a.body);
        assert_eq!(a.body["resourceType"], "OperationOutcome", "{path}");
    }
    let unknown = app
        .get("/fhir/ValueSet/$expand?url=http://nowhere", "alice")
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn imported_terminologies_apply_their_difference_and_outrank_the_built_in_ones() {
    use infra::terminology::{builtin, import, store};
    let (app, fixture) = app_with(200, 5, |_| {}).await;
    add_user(&app, "bob", None).await;
    grant(&app, &fixture, "bob", "nominative_reader", APHP).await;
    let pool = &app.pool;
    let first = import::parse(
        "system,code,display,parent\nhttps://h.example/atc,A,Digestif,\nhttps://h.example/atc,A10,Diabète,A\nhttps://h.example/atc,A10BA02,Metformine,A10\n",
    )
    .unwrap();
    let report = store::apply(pool, &first, store::Origin::Import)
        .await
        .unwrap();
    assert_eq!((report.added, report.changed, report.removed), (3, 0, 0));
    let again = store::apply(pool, &first, store::Origin::Import)
        .await
        .unwrap();
    assert_eq!(
        (again.added, again.changed, again.removed),
        (0, 0, 0),
        "nothing to apply"
    );
    let second = import::parse(
        "system,code,display,parent\nhttps://h.example/atc,A,Voies digestives,\nhttps://h.example/atc,A10,Diabète,A\nhttps://h.example/atc,A02,Acidité,A\n",
    )
    .unwrap();
    let report = store::apply(pool, &second, store::Origin::Import)
        .await
        .unwrap();
    assert_eq!((report.added, report.changed, report.removed), (1, 1, 1));
    let expanded = fhir(
        &app,
        "bob",
        "/fhir/ValueSet/$expand?url=https://h.example/atc&parent=A",
    )
    .await;
    assert_eq!(codes(&expanded), ["A10", "A02"]);

    // A hospital's own CIM-10, as FHIR JSON under the built-in url: the catalogue leaves it be.
    let own = import::parse(&json!({"resourceType": "CodeSystem", "url": ICD10, "name": "CIM10", "status": "active", "content": "complete",
        "concept": [{"code": "E00-E90", "display": "Endocrinologie", "concept": [{"code": "E11", "display": "Diabète non insulinodépendant"}]}]}).to_string())
    .unwrap();
    store::apply(pool, &own, store::Origin::Import)
        .await
        .unwrap();
    let builtins = store::apply(pool, &builtin::terminologies(), store::Origin::Builtin)
        .await
        .unwrap();
    assert!(builtins.kept_imported >= 1);
    let e11 = fhir(
        &app,
        "bob",
        &format!("/fhir/ValueSet/$expand?url={ICD10}&code=E11"),
    )
    .await;
    assert_eq!(
        e11["expansion"]["contains"][0]["display"],
        "Diabète non insulinodépendant"
    );
    assert_eq!(e11["expansion"]["total"], 1);
    app.stop().await;
}
