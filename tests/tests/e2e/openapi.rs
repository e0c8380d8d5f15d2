//! The OpenAPI document: every route the router serves is documented (and nothing else), the
//! document validates as OpenAPI 3.1, and Swagger UI renders it in a headless browser.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tests::TestApp;

/// The routes modules' sources: each declares its routes in `fn routes()`; the paths are read
/// from them, then probed on the running server.
fn routes_sources() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../api/src/routes");
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(dir).expect("routes directory") {
        let path = entry.expect("routes file").path();
        if path.extension().is_some_and(|e| e == "rs") {
            sources.push(std::fs::read_to_string(path).expect("routes source"));
        }
    }
    sources
}

/// Every path literal given to `.route(` in a module's `fn routes()`.
fn routed_paths(source: &str) -> Vec<String> {
    let Some(at) = source.find("fn routes()") else {
        return Vec::new();
    };
    let body = &source[at..];
    body.match_indices(".route(")
        .filter_map(|(at, _)| {
            let rest = &body[at..];
            let start = rest.find('"')? + 1;
            let end = start + rest[start..].find('"')?;
            Some(rest[start..end].to_string())
        })
        .collect()
}

/// Where the test leaves files for people to look at (CI keeps `target/`).
fn artefacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artefacts");
    std::fs::create_dir_all(&dir).expect("artefacts directory");
    dir
}

async fn document(app: &TestApp) -> Value {
    let schema = app.call(Method::GET, "/schema", None, None).await;
    assert_eq!(schema.status, StatusCode::OK);
    schema.body
}

#[tokio::test]
async fn every_routed_operation_is_documented_and_nothing_else() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str()))
                .map(|m| (m.to_ascii_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();

    let paths: Vec<String> = routes_sources()
        .iter()
        .flat_map(|s| routed_paths(s))
        .collect();
    assert!(
        paths.len() > 50,
        "the router source was not parsed: {paths:?}"
    );
    let mut served = BTreeSet::new();
    for path in &paths {
        let concrete: String = path
            .split('/')
            .map(|s| if s.starts_with('{') { "1" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            // Anonymous probes: a routed method answers anything but 405 (401 for most).
            let answer = app
                .call(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    &concrete,
                    None,
                    None,
                )
                .await;
            assert_ne!(
                answer.body["code"], "route_not_found",
                "{path} is in the router source but not served"
            );
            if answer.status != StatusCode::METHOD_NOT_ALLOWED {
                served.insert((method.to_string(), path.clone()));
            }
        }
    }
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served but missing from the OpenAPI document (declare their operations beside them in the routes module): \
         {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "documented but not served: {unserved:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_document_validates_and_swagger_ui_renders_it() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let file = artefacts().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();

    // openapi-spec-validator (PyPI; `scripts/test` installs it) checks the document against the
    // OpenAPI 3.1 schema.
    let validated = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("python3 runs");
    assert!(
        validated.status.success(),
        "the document does not validate (or openapi-spec-validator is missing: run \
         scripts/test, or `pip install openapi-spec-validator`):\n{}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );

    // Swagger UI, in headless Chromium (Debian's `chromium`; `scripts/test` installs it).
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let url = format!("{}/docs/", app.base);
    // The server runs on this test's runtime: the browser runs on a blocking thread, bounded by
    // coreutils' `timeout`.
    let browser = |extra: Vec<String>| {
        let (chromium, url) = (chromium.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            Command::new("timeout")
                .arg("120")
                .arg(&chromium)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--hide-scrollbars",
                    "--window-size=1280,2400",
                    "--virtual-time-budget=15000",
                ])
                .args(extra)
                .arg(&url)
                .output()
                .unwrap_or_else(|e| {
                    panic!("{chromium} cannot run ({e}): install Debian's chromium, or run scripts/test")
                })
        })
    };
    let dom = browser(vec!["--dump-dom".into()]).await.unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    // Rendered, not just served: Swagger UI wrote an operation block for our paths.
    assert!(dom.contains("opblock"), "Swagger UI did not render:\n{dom}");
    assert!(
        dom.contains("/audit/events/"),
        "the document was not loaded:\n{dom}"
    );
    let screenshot = artefacts().join("swagger-ui.png");
    let _ = std::fs::remove_file(&screenshot);
    let shot = browser(vec![format!("--screenshot={}", screenshot.display())])
        .await
        .unwrap();
    let size = std::fs::metadata(&screenshot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "no screenshot ({size} bytes): {}",
        String::from_utf8_lossy(&shot.stderr)
    );
    app.stop().await;
}
