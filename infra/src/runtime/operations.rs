//! Operator commands: create users, import the perimeter tree, seed a demo.
//!
//! They run against a [`super::Runtime`]'s services (relay and projectors included) and act as the `system` user,
//! so everything they do is an ordinary, audited event.

use std::io::Read;

use chrono::Utc;
use commands::CommandContext;
use commands::identity::{IdentityError, ImportReport, NewAccess, NewUser, Requester};
use domain::perimeter::PerimeterFields;
use domain::rights::Rights;
use projections::Window;
use projections::identity::RoleFilter;
use serde::Deserialize;

use super::Services;

/// Name of the role `create-user --admin` grants.
pub const FULL_ADMIN_ROLE: &str = "Administrateur complet";

fn system_context(what: &str) -> CommandContext {
    CommandContext {
        user: "system".into(),
        impersonator: None,
        correlation_id: format!("cli:{what}"),
        causation_id: format!("cli:{what}"),
        at: Utc::now(),
    }
}

/// One row of a perimeter CSV file. Columns are named after upstream's perimeter fields; extra
/// columns are ignored.
#[derive(Debug, Deserialize)]
struct PerimeterRecord {
    id: i64,
    local_id: Option<String>,
    name: String,
    short_name: Option<String>,
    source_value: Option<String>,
    type_source_value: String,
    parent_id: Option<i64>,
    cohort_id: Option<String>,
    cohort_size: Option<String>,
}

/// Parses a perimeter CSV (header row required).
pub fn parse_perimeters(input: impl Read) -> anyhow::Result<Vec<PerimeterFields>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(input);
    let mut rows = Vec::new();
    for (line, record) in reader.deserialize::<PerimeterRecord>().enumerate() {
        let r =
            record.map_err(|e| anyhow::anyhow!("perimeter file, data row {}: {e}", line + 1))?;
        let empty_to_none = |v: Option<String>| v.filter(|s| !s.is_empty());
        rows.push(PerimeterFields {
            id: r.id,
            local_id: empty_to_none(r.local_id).unwrap_or_else(|| r.id.to_string()),
            short_name: empty_to_none(r.short_name).unwrap_or_else(|| r.name.clone()),
            source_value: empty_to_none(r.source_value).unwrap_or_else(|| r.name.clone()),
            name: r.name,
            type_source_value: r.type_source_value,
            parent_id: r.parent_id,
            cohort_id: empty_to_none(r.cohort_id),
            cohort_size: empty_to_none(r.cohort_size),
        });
    }
    Ok(rows)
}

/// Imports a perimeter file: new and changed perimeters are written, missing ones removed (and
/// their accesses closed).
pub async fn import_perimeters(
    state: &Services,
    rows: Vec<PerimeterFields>,
) -> Result<ImportReport, IdentityError> {
    state
        .identity
        .import_perimeters(&system_context("import-perimeters"), rows)
        .await
}

/// The id of the full-admin role, created if missing.
async fn full_admin_role(state: &Services) -> anyhow::Result<i64> {
    let filter = RoleFilter {
        rights: vec![("right_full_admin", true)],
        ..RoleFilter::default()
    };
    let all = Window {
        limit: 1,
        offset: 0,
    };
    if let Some(role) = state
        .identity_reader
        .list_roles(&filter, all)
        .await?
        .results
        .first()
    {
        return Ok(role.id);
    }
    let written = state
        .identity
        .create_role(
            &system_context("create-role"),
            &Requester::System,
            FULL_ADMIN_ROLE.into(),
            Rights::ALL,
        )
        .await?;
    Ok(written.value)
}

/// Creates a user; with `admin`, also grants them the full-admin role on every root perimeter.
pub async fn create_user(state: &Services, user: NewUser, admin: bool) -> anyhow::Result<()> {
    let username = user.username.clone();
    let ctx = system_context("create-user");
    state
        .identity
        .create_user(&ctx, &Requester::System, user)
        .await?;
    if !admin {
        return Ok(());
    }
    let roots = state.identity_reader.roots().await?;
    if roots.is_empty() {
        anyhow::bail!(
            "user {username} created, but no perimeter exists to make them an administrator on: \
             run `cohort360 import-perimeters FILE` first, then `cohort360 create-user --admin` \
             again with another username, or grant an access through the API"
        );
    }
    let role_id = full_admin_role(state).await?;
    let profile_id = state
        .identity_reader
        .manual_profile(&username)
        .await?
        .ok_or_else(|| anyhow::anyhow!("user {username} has no Manual profile"))?;
    for root in roots {
        // Ten years: an operator account, renewed deliberately.
        state
            .identity
            .grant_access(
                &ctx,
                &Requester::System,
                NewAccess {
                    profile_id,
                    role_id,
                    perimeter_id: root.id,
                    start: None,
                    end: Some(ctx.at + chrono::Duration::days(3650)),
                },
            )
            .await?;
    }
    Ok(())
}

/// The demo tree (upstream's test fixture: APHP → P0…P14).
pub const DEMO_PERIMETERS: &str = include_str!("../../fixtures/demo_perimeters.csv");

/// A catalogue of typical roles (name, rights).
pub fn demo_roles() -> Vec<(&'static str, Rights)> {
    let reader_nomi = Rights {
        right_read_patient_nominative: true,
        right_read_patient_pseudonymized: true,
        right_search_patients_by_ipp: true,
        ..Rights::default()
    };
    vec![
        (FULL_ADMIN_ROLE, Rights::ALL),
        (
            "Gestionnaire des accès administrateurs",
            Rights {
                right_manage_users: true,
                right_manage_admin_accesses_same_level: true,
                right_manage_admin_accesses_inferior_levels: true,
                right_manage_data_accesses_same_level: true,
                right_manage_data_accesses_inferior_levels: true,
                ..Rights::default()
            },
        ),
        (
            "Gestionnaire des accès aux données",
            Rights {
                right_manage_users: true,
                right_manage_data_accesses_same_level: true,
                right_manage_data_accesses_inferior_levels: true,
                ..Rights::default()
            },
        ),
        ("Lecteur nominatif", reader_nomi),
        (
            "Lecteur pseudonymisé",
            Rights {
                right_read_patient_pseudonymized: true,
                ..Rights::default()
            },
        ),
        (
            "Exporteur CSV",
            Rights {
                right_export_csv_xlsx_nominative: true,
                ..reader_nomi
            },
        ),
        (
            "Exporteur Jupyter",
            Rights {
                right_export_jupyter_nominative: true,
                right_export_jupyter_pseudonymized: true,
                ..reader_nomi
            },
        ),
        (
            "Support datalabs",
            Rights {
                right_manage_users: true,
                right_manage_datalabs: true,
                right_read_datalabs: true,
                ..Rights::default()
            },
        ),
    ]
}

/// Upstream's role catalogue, as its tests know it (`accesses/tests/base.py`), mapped onto the
/// current rights catalogue: users coming from upstream find the roles they expect. Left out:
/// roles made only of rights the current catalogue no longer has (`right_read_*_accesses`,
/// `right_manage_export_*_accesses`); the IPP-search role reads nominative data, as the
/// consistency rules (upstream's too) require.
pub fn upstream_roles() -> Vec<(&'static str, Rights)> {
    let users = Rights {
        right_manage_users: true,
        ..Rights::default()
    };
    let nominative = Rights {
        right_read_patient_nominative: true,
        ..Rights::default()
    };
    vec![
        ("FULL ADMIN", Rights::ALL),
        (
            "ADMIN ACCESSES MANAGER",
            Rights {
                right_manage_admin_accesses_same_level: true,
                right_manage_admin_accesses_inferior_levels: true,
                ..users
            },
        ),
        (
            "ADMIN ACCESSES MANAGER ON SAME LEVEL",
            Rights {
                right_manage_admin_accesses_same_level: true,
                ..users
            },
        ),
        (
            "ADMIN ACCESSES MANAGER ON INFERIOR LEVELS",
            Rights {
                right_manage_admin_accesses_inferior_levels: true,
                ..users
            },
        ),
        (
            "DATA ACCESSES MANAGER",
            Rights {
                right_manage_data_accesses_same_level: true,
                right_manage_data_accesses_inferior_levels: true,
                ..users
            },
        ),
        (
            "DATA ACCESSES MANAGER ON SAME LEVEL",
            Rights {
                right_manage_data_accesses_same_level: true,
                ..users
            },
        ),
        (
            "DATA ACCESSES MANAGER ON INFERIOR LEVELS",
            Rights {
                right_manage_data_accesses_inferior_levels: true,
                ..users
            },
        ),
        ("DATA NOMI READER", nominative),
        (
            "DATA PSEUDO READER",
            Rights {
                right_read_patient_pseudonymized: true,
                ..Rights::default()
            },
        ),
        (
            "DATA NOMI/PSEUDO READER",
            Rights {
                right_read_patient_pseudonymized: true,
                ..nominative
            },
        ),
        (
            "DATA NOMI READER + CSV EXPORTER",
            Rights {
                right_export_csv_xlsx_nominative: true,
                ..nominative
            },
        ),
        (
            "JUPYTER EXPORTER PSEUDO",
            Rights {
                right_export_jupyter_pseudonymized: true,
                ..Rights::default()
            },
        ),
        (
            "JUPYTER EXPORTER",
            Rights {
                right_export_jupyter_nominative: true,
                right_export_jupyter_pseudonymized: true,
                ..Rights::default()
            },
        ),
        (
            "SEARCH BY IPP + OPPOSED PATIENTS",
            Rights {
                right_search_patients_by_ipp: true,
                right_search_opposed_patients: true,
                ..nominative
            },
        ),
        (
            "DATALAB SUPPORT",
            Rights {
                right_manage_datalabs: true,
                right_read_datalabs: true,
                ..Rights::default()
            },
        ),
    ]
}

/// Seeds the demo tree, our roles and upstream's catalogue (idempotent: existing role names
/// are skipped).
pub async fn seed_demo(state: &Services) -> anyhow::Result<()> {
    let rows = parse_perimeters(DEMO_PERIMETERS.as_bytes())?;
    import_perimeters(state, rows).await?;
    let ctx = system_context("seed-demo");
    for (name, rights) in demo_roles().into_iter().chain(upstream_roles()) {
        match state
            .identity
            .create_role(&ctx, &Requester::System, name.into(), rights)
            .await
        {
            Ok(_) | Err(IdentityError::RoleNameTaken(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
