//! The perimeter tree: re-import applies the difference, moves re-derive the subtree, removed
//! perimeters close their accesses, and the identity read model rebuilds identically.

use reqwest::StatusCode;
use tests::identity::{APHP, seed, user_with};
use tests::{TestApp, dump_schema};

fn tree_without_p10_subtree_and_p4_moved_under_p1() -> Vec<domain::perimeter::PerimeterFields> {
    infra::runtime::operations::parse_perimeters(
        infra::runtime::operations::DEMO_PERIMETERS.as_bytes(),
    )
    .unwrap()
    .into_iter()
    .filter(|p| ![10, 13, 14].contains(&p.id))
    .map(|mut p| {
        if p.id == 4 {
            p.parent_id = Some(1);
        }
        p
    })
    .collect()
}

#[tokio::test]
async fn reimport_moves_subtrees_removes_perimeters_closes_their_accesses_and_rebuilds_identically()
{
    let app = TestApp::spawn().await;
    let fixture = seed(&app).await;
    user_with(&app, &fixture, "admin", "full_admin", APHP).await;
    let doomed = user_with(&app, &fixture, "p13_reader", "nominative_reader", 13).await;
    let p11 = app.get("/accesses/perimeters/11/", "admin").await;
    assert_eq!(p11.body["above_levels_ids"], "9999,0,4");
    assert_eq!(p11.body["full_path"], "APHP-APHP/P0-P0/P4-P4/P11-P11");
    assert_eq!(p11.body["level"], 4);
    let p4 = app.get("/accesses/perimeters/4/", "admin").await;
    assert_eq!(p4.body["inferior_levels_ids"], "11,12");

    // Re-importing the same file changes nothing.
    let same = infra::runtime::operations::parse_perimeters(
        infra::runtime::operations::DEMO_PERIMETERS.as_bytes(),
    )
    .unwrap();
    let report = infra::runtime::operations::import_perimeters(&app.services, same)
        .await
        .unwrap();
    assert_eq!((report.written, report.removed), (0, 0));

    let report = infra::runtime::operations::import_perimeters(
        &app.services,
        tree_without_p10_subtree_and_p4_moved_under_p1(),
    )
    .await
    .unwrap();
    assert_eq!(report.written, 1, "only P4 changed");
    assert_eq!(report.removed, 3);
    assert_eq!(report.accesses_closed, 1);

    let p11 = app.get("/accesses/perimeters/11/", "admin").await;
    assert_eq!(p11.body["above_levels_ids"], "9999,1,4");
    assert_eq!(p11.body["full_path"], "APHP-APHP/P1-P1/P4-P4/P11-P11");
    let gone = app.get("/accesses/perimeters/13/", "admin").await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let children = app.get("/accesses/perimeters/1/children/", "admin").await;
    assert_eq!(children.body["count"], 3, "{:?}", children.body);
    let history = app
        .get(&format!("/audit/Access/{doomed}/events/"), "admin")
        .await;
    assert_eq!(history.body[1]["event_type"], "AccessClosed");
    assert_eq!(
        history.body[1]["payload"]["AccessClosed"]["reason"],
        "perimeter_removed"
    );
    let mine = app
        .get("/accesses/accesses/my-accesses/", "p13_reader")
        .await;
    assert_eq!(mine.body, serde_json::json!([]));

    // The read model is a pure function of the log. Logins do not wait for it: let the
    // projector fold the last session before comparing.
    app.settle().await;
    let before = dump_schema(&app.pool, "identity").await;
    infra::rebuild::rebuild(&app.pool, &infra::identity::IdentityProjection)
        .await
        .unwrap();
    assert_eq!(dump_schema(&app.pool, "identity").await, before);
    app.stop().await;
}
