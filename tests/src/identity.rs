//! Identity fixtures: upstream's test tree, a catalogue of typical roles, users and grants,
//! seeded the way an operator would (as `system`, through the aggregates).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use commands::CommandContext;
use commands::identity::{NewAccess, NewUser, Requester};
use domain::rights::Rights;

use crate::TestApp;

/// Perimeter ids of the fixture tree: the root APHP, then Pn has id n.
pub const APHP: i64 = 9999;

/// Roles of the fixture catalogue.
pub fn role_catalogue() -> Vec<(&'static str, Rights)> {
    let manage_users = Rights {
        right_manage_users: true,
        ..Rights::default()
    };
    let nominative = Rights {
        right_read_patient_nominative: true,
        ..Rights::default()
    };
    let pseudo = Rights {
        right_read_patient_pseudonymized: true,
        ..Rights::default()
    };
    vec![
        ("full_admin", Rights::ALL),
        (
            "admin_manager",
            Rights {
                right_manage_admin_accesses_same_level: true,
                right_manage_admin_accesses_inferior_levels: true,
                right_manage_data_accesses_same_level: true,
                right_manage_data_accesses_inferior_levels: true,
                ..manage_users
            },
        ),
        (
            "admin_manager_same_level",
            Rights {
                right_manage_admin_accesses_same_level: true,
                ..manage_users
            },
        ),
        (
            "data_manager",
            Rights {
                right_manage_data_accesses_same_level: true,
                right_manage_data_accesses_inferior_levels: true,
                ..manage_users
            },
        ),
        (
            "data_manager_inferior",
            Rights {
                right_manage_data_accesses_inferior_levels: true,
                ..manage_users
            },
        ),
        ("nominative_reader", nominative),
        ("pseudo_reader", pseudo),
        (
            "csv_exporter",
            Rights {
                right_export_csv_xlsx_nominative: true,
                ..nominative
            },
        ),
        (
            "jupyter_pseudo_exporter",
            Rights {
                right_export_jupyter_pseudonymized: true,
                ..pseudo
            },
        ),
        (
            "datalab_support",
            Rights {
                right_manage_datalabs: true,
                right_read_datalabs: true,
                ..manage_users
            },
        ),
        (
            "opposed_searcher",
            Rights {
                right_search_opposed_patients: true,
                right_search_patients_by_ipp: true,
                ..nominative
            },
        ),
    ]
}

pub fn system() -> CommandContext {
    CommandContext {
        user: "system".into(),
        impersonator: None,
        correlation_id: "fixture".into(),
        causation_id: "fixture".into(),
        at: Utc::now(),
    }
}

/// The seeded tree and roles.
pub struct Fixture {
    pub roles: HashMap<&'static str, i64>,
}

impl Fixture {
    pub fn role(&self, name: &str) -> i64 {
        self.roles[name]
    }
}

/// Imports the fixture tree and creates the role catalogue.
pub async fn seed(app: &TestApp) -> Fixture {
    let rows = infra::runtime::operations::parse_perimeters(
        infra::runtime::operations::DEMO_PERIMETERS.as_bytes(),
    )
    .expect("fixture tree parses");
    infra::runtime::operations::import_perimeters(&app.services, rows)
        .await
        .expect("fixture tree imports");
    let mut roles = HashMap::new();
    for (name, rights) in role_catalogue() {
        let written = app
            .state
            .identity_service
            .create_role(&system(), &Requester::System, name.into(), rights)
            .await
            .expect("fixture role is created");
        roles.insert(name, written.value);
    }
    Fixture { roles }
}

/// Creates a user (names derived from the username).
pub async fn add_user(app: &TestApp, username: &str, password: Option<&str>) {
    let written = app
        .state
        .identity_service
        .create_user(
            &system(),
            &Requester::System,
            NewUser {
                username: username.into(),
                firstname: "Test".into(),
                lastname: "User".into(),
                email: Some(format!("{username}@example.org")),
                password: password.map(Into::into),
            },
        )
        .await
        .expect("fixture user is created");
    if !written.caught_up {
        app.settle().await;
    }
}

/// Grants `role` on `perimeter` to `username`'s Manual profile; returns the access id.
pub async fn grant(
    app: &TestApp,
    fixture: &Fixture,
    username: &str,
    role: &str,
    perimeter: i64,
) -> i64 {
    grant_dated(app, fixture, username, role, perimeter, None, None).await
}

/// [`grant`] with explicit dates.
pub async fn grant_dated(
    app: &TestApp,
    fixture: &Fixture,
    username: &str,
    role: &str,
    perimeter: i64,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
) -> i64 {
    let profile_id = app
        .state
        .identity
        .manual_profile(username)
        .await
        .expect("profile lookup")
        .expect("user has a Manual profile");
    let written = app
        .state
        .identity_service
        .grant_access(
            &system(),
            &Requester::System,
            NewAccess {
                profile_id,
                role_id: fixture.role(role),
                perimeter_id: perimeter,
                start,
                end,
            },
        )
        .await
        .expect("fixture access is granted");
    if !written.caught_up {
        app.settle().await;
    }
    written.value
}

/// A user holding one grant.
pub async fn user_with(
    app: &TestApp,
    fixture: &Fixture,
    username: &str,
    role: &str,
    perimeter: i64,
) -> i64 {
    add_user(app, username, None).await;
    grant(app, fixture, username, role, perimeter).await
}
