//! Who may do what: every authorization rule the HTTP edge used to decide, in one place, without
//! HTTP.
//!
//! The edge authenticates a request into a [`Principal`] (a user, who may be impersonated by a
//! full admin, or one of the applicative tokens) and hands it over; it never looks at rights.
//! Each operation that needs more than an authenticated user names its [`Permission`]; the
//! rule is [`decide`], a pure function of the principal and the user's [`Authority`]. Rules that
//! shape an answer rather than refuse it (owner scoping, who sees contacts, which perimeters a
//! FHIR search reads, small-cell exemption) are functions here too. [`AccessControl`] fetches
//! the authority when a rule needs it.
//!
//! Rights on perimeters for identity commands (granting accesses, managing roles) are checked by
//! the identity service through [`crate::identity::Requester`], built with
//! [`AccessControl::requester`].

use std::sync::Arc;

use async_trait::async_trait;
use domain::authz::Authority;

use crate::identity::Requester;
use crate::ports::PortError;

/// Which application an applicative token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Application {
    /// The QueryExecutor: reports counts, cohorts and feasibility studies.
    QueryExecutor,
    /// The Solr ETL: reports the indexing of cohorts.
    SolrEtl,
    /// The rollout pipeline.
    Rollout,
}

/// The authenticated caller of an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The effective user: whom authorization is computed for.
    pub username: String,
    /// The real user when a full admin impersonates `username`.
    pub impersonator: Option<String>,
    /// Set when the caller authenticated with an applicative token.
    pub application: Option<Application>,
}

impl Principal {
    /// A person (or the person a full admin impersonates).
    pub fn user(username: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            impersonator: None,
            application: None,
        }
    }

    /// An applicative token's user.
    pub fn application(username: impl Into<String>, application: Application) -> Self {
        Self {
            username: username.into(),
            impersonator: None,
            application: Some(application),
        }
    }

    /// Whether the caller authenticated with an applicative token.
    pub fn is_applicative(&self) -> bool {
        self.application.is_some()
    }

    /// The job-result callback this caller may send, if any.
    pub fn job_reporter(&self) -> Option<JobReporter> {
        match self.application {
            Some(Application::QueryExecutor) => Some(JobReporter::QueryExecutor),
            Some(Application::SolrEtl) => Some(JobReporter::SolrEtl),
            _ => None,
        }
    }

    /// Owner scoping of requests, snapshots, counts, cohorts and studies: users read their own;
    /// the QueryExecutor and the ETL read everyone's (their callbacks need it).
    pub fn reads_every_owner(&self) -> bool {
        self.job_reporter().is_some()
    }

    /// Applicative callers see exact counts; users may see small counts masked.
    pub fn exempt_from_small_cells(&self) -> bool {
        self.is_applicative()
    }
}

/// Who sends a job-result callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobReporter {
    QueryExecutor,
    SolrEtl,
}

/// What an operation needs beyond an authenticated user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Write web contents and release notes.
    ManageContent,
    /// Retry or relaunch an export, read its logs.
    AdministerExports,
    /// Read the request logs (`/logs/`).
    ReadRequestLogs,
    /// Read where the event pipeline stands (`/admin/pipeline/`).
    ReadPipeline,
    /// Read the audit trail.
    ReadAudit,
    /// List accesses, and the holders of a role.
    ListAccesses,
    /// Read datalabs.
    ReadDatalabs,
    /// Create and change datalabs.
    ManageDatalabs,
    /// Report the result of a count or a feasibility study.
    ReportJobResult,
    /// Act as another user (`X-Impersonate`).
    Impersonate,
}

impl Permission {
    /// Whether the rule reads the user's rights (else it only looks at the principal).
    fn reads_authority(self) -> bool {
        !matches!(self, Permission::ReportJobResult)
    }

    /// The message of a refusal.
    fn refusal(self) -> &'static str {
        match self {
            Permission::ManageContent => {
                "only full administrators may write web contents and release notes"
            }
            Permission::AdministerExports => {
                "only full administrators retry or relaunch exports and read their logs"
            }
            Permission::ReadRequestLogs => "only full administrators may read the request logs",
            Permission::ReadPipeline => "only full administrators may read the pipeline's status",
            Permission::ReadAudit => {
                "reading the audit trail needs right_read_audit or full administration"
            }
            Permission::ListAccesses => "you are not allowed to list accesses or role holders",
            Permission::ReadDatalabs => "reading datalabs needs right_read_datalabs",
            Permission::ManageDatalabs => {
                "managing datalabs needs right_read_datalabs and right_manage_datalabs"
            }
            Permission::ReportJobResult => "only the query executor reports the result of a job",
            Permission::Impersonate => "only full administrators may impersonate another user",
        }
    }

    /// The stable error code of a refusal.
    fn code(self) -> &'static str {
        match self {
            Permission::Impersonate => "impersonation_forbidden",
            _ => "permission_denied",
        }
    }
}

/// A refused operation (403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    fn of(permission: Permission) -> Self {
        Self {
            code: permission.code(),
            message: permission.refusal().to_string(),
        }
    }
}

/// The rule of every [`Permission`]. `authority` is the user's (ignored for applicative
/// callers, who hold no access).
pub fn decide(
    principal: &Principal,
    authority: &Authority,
    permission: Permission,
) -> Result<(), Refusal> {
    let rights = authority.global();
    let user = !principal.is_applicative();
    let full_admin = user && authority.is_full_admin();
    let allowed = match permission {
        Permission::ManageContent
        | Permission::AdministerExports
        | Permission::ReadRequestLogs
        | Permission::ReadPipeline
        | Permission::Impersonate => full_admin,
        Permission::ReadAudit => full_admin || (user && rights.right_read_audit),
        Permission::ListAccesses => user && authority.may_list_accesses(),
        Permission::ReadDatalabs => user && (rights.right_full_admin || rights.right_read_datalabs),
        Permission::ManageDatalabs => {
            user && (rights.right_full_admin
                || (rights.right_read_datalabs && rights.right_manage_datalabs))
        }
        Permission::ReportJobResult => principal.job_reporter() == Some(JobReporter::QueryExecutor),
    };
    if allowed {
        Ok(())
    } else {
        Err(Refusal::of(permission))
    }
}

/// Whether the caller sees users' e-mails and audit fields: applications, user managers and
/// access managers (others, such as a researcher's share dialog, get names only).
pub fn sees_user_contacts(principal: &Principal, authority: &Authority) -> bool {
    principal.is_applicative()
        || authority.global().right_manage_users
        || authority.may_list_accesses()
}

/// Whose exports (and export statistics) the caller lists: everyone's for full admins
/// (`None`), else their own.
pub fn export_owner(principal: &Principal, authority: &Authority) -> Option<String> {
    let full_admin = !principal.is_applicative() && authority.is_full_admin();
    (!full_admin).then(|| principal.username.clone())
}

/// The perimeters under which a manager lists accesses: everywhere for full admins (`None`),
/// else where their managing grants sit and everything below.
pub fn access_listing_scope(authority: &Authority) -> Option<Vec<i64>> {
    if authority.is_full_admin() {
        return None;
    }
    Some(
        authority
            .grants()
            .iter()
            .filter(|g| g.rights.manages_accesses_at_some_level())
            .map(|g| g.perimeter_id)
            .collect(),
    )
}

/// Whether a manager sees an access on `perimeter`: full admins see all, others what lies at
/// or under their managing grants (editable or not).
pub fn sees_access(authority: &Authority, perimeter: domain::authz::PerimeterRef<'_>) -> bool {
    match access_listing_scope(authority) {
        None => true,
        Some(scope) => scope.iter().any(|p| perimeter.is_at_or_under(*p)),
    }
}

/// Whether the caller may change or close an access giving a role with `rights` on
/// `perimeter` (the identity service enforces the same rule on writes).
pub fn may_edit_access(
    authority: &Authority,
    perimeter: domain::authz::PerimeterRef<'_>,
    rights: &domain::rights::Rights,
) -> bool {
    authority.can_manage(perimeter, rights)
}

/// The perimeters a FHIR search reads patient data on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatientReadScope {
    /// Perimeters with a nominative or pseudonymized reading right.
    pub readable: Vec<i64>,
    /// Those of them read nominatively.
    pub nominative: Vec<i64>,
}

/// The caller's patient-data reading scope; refused when it is empty (applicative callers
/// read no patient data).
pub fn patient_read_scope(
    principal: &Principal,
    authority: &Authority,
) -> Result<PatientReadScope, Refusal> {
    let mut scope = PatientReadScope::default();
    if !principal.is_applicative() {
        for g in authority.grants() {
            if g.rights.reads_patient_data() {
                scope.readable.push(g.perimeter_id);
            }
            if g.rights.right_read_patient_nominative {
                scope.nominative.push(g.perimeter_id);
            }
        }
    }
    if scope.readable.is_empty() {
        return Err(Refusal {
            code: "permission_denied",
            message: "reading patient data needs a nominative or pseudonymized reading right \
                      on a perimeter"
                .into(),
        });
    }
    Ok(scope)
}

/// The users' rights as they stand now (the identity read model).
#[async_trait]
pub trait Authorities: Send + Sync {
    async fn authority(&self, username: &str) -> Result<Authority, PortError>;
}

/// Why an operation cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error("{}", .0.message)]
    Refused(Refusal),
    /// The rights cannot be read now.
    #[error("rights cannot be checked now: {0}")]
    Unavailable(PortError),
}

/// Applies the rules with the caller's current rights.
#[derive(Clone)]
pub struct AccessControl {
    authorities: Arc<dyn Authorities>,
}

impl AccessControl {
    pub fn new(authorities: Arc<dyn Authorities>) -> Self {
        Self { authorities }
    }

    /// The caller's rights (none for applicative callers).
    pub async fn authority(&self, principal: &Principal) -> Result<Authority, AuthzError> {
        if principal.is_applicative() {
            return Ok(Authority::new(Vec::new()));
        }
        self.authorities
            .authority(&principal.username)
            .await
            .map_err(AuthzError::Unavailable)
    }

    /// Refuses the operation unless `permission`'s rule allows it; returns the rights it read
    /// (none for rules that do not read them), for callers that scope their answer with them.
    pub async fn require(
        &self,
        principal: &Principal,
        permission: Permission,
    ) -> Result<Authority, AuthzError> {
        let authority = if permission.reads_authority() {
            self.authority(principal).await?
        } else {
            Authority::new(Vec::new())
        };
        decide(principal, &authority, permission).map_err(AuthzError::Refused)?;
        Ok(authority)
    }

    /// The identity service's requester for this caller.
    pub async fn requester(&self, principal: &Principal) -> Result<Requester, AuthzError> {
        if principal.is_applicative() {
            return Ok(Requester::Applicative);
        }
        Ok(Requester::User(self.authority(principal).await?))
    }

    /// See [`sees_user_contacts`].
    pub async fn sees_user_contacts(&self, principal: &Principal) -> Result<bool, AuthzError> {
        Ok(sees_user_contacts(
            principal,
            &self.authority(principal).await?,
        ))
    }

    /// See [`export_owner`].
    pub async fn export_owner(&self, principal: &Principal) -> Result<Option<String>, AuthzError> {
        Ok(export_owner(principal, &self.authority(principal).await?))
    }

    /// See [`patient_read_scope`].
    pub async fn patient_read_scope(
        &self,
        principal: &Principal,
    ) -> Result<PatientReadScope, AuthzError> {
        patient_read_scope(principal, &self.authority(principal).await?)
            .map_err(AuthzError::Refused)
    }
}

#[cfg(test)]
mod tests {
    use domain::authz::Grant;
    use domain::rights::Rights;

    use super::*;

    fn holding(rights: Rights) -> Authority {
        Authority::new(vec![Grant {
            perimeter_id: 1,
            perimeter_ancestors: vec![],
            rights,
        }])
    }

    fn nobody() -> Authority {
        Authority::new(vec![])
    }

    fn full_admin() -> Authority {
        holding(Rights {
            right_full_admin: true,
            ..Rights::default()
        })
    }

    fn executor() -> Principal {
        Principal::application("query-executor", Application::QueryExecutor)
    }

    fn etl() -> Principal {
        Principal::application("solr-etl", Application::SolrEtl)
    }

    fn alice() -> Principal {
        Principal::user("alice")
    }

    const FULL_ADMIN_ONLY: [Permission; 5] = [
        Permission::ManageContent,
        Permission::AdministerExports,
        Permission::ReadRequestLogs,
        Permission::ReadPipeline,
        Permission::Impersonate,
    ];

    #[test]
    fn full_admin_rules_admit_full_admins_only() {
        for permission in FULL_ADMIN_ONLY {
            assert_eq!(decide(&alice(), &full_admin(), permission), Ok(()));
            let refused = decide(&alice(), &nobody(), permission).unwrap_err();
            assert_eq!(refused.message, permission.refusal());
            // Every other right together is not full administration.
            let all_but_full = holding(Rights {
                right_full_admin: false,
                ..Rights::ALL
            });
            assert!(decide(&alice(), &all_but_full, permission).is_err());
            // Applicative tokens never are, whatever their user holds.
            assert!(decide(&executor(), &full_admin(), permission).is_err());
        }
    }

    #[test]
    fn impersonation_refusals_have_their_own_code() {
        let refused = decide(&alice(), &nobody(), Permission::Impersonate).unwrap_err();
        assert_eq!(refused.code, "impersonation_forbidden");
        let refused = decide(&alice(), &nobody(), Permission::ReadPipeline).unwrap_err();
        assert_eq!(refused.code, "permission_denied");
    }

    #[test]
    fn the_audit_trail_needs_right_read_audit_or_full_administration() {
        let auditor = holding(Rights {
            right_read_audit: true,
            ..Rights::default()
        });
        assert!(decide(&alice(), &auditor, Permission::ReadAudit).is_ok());
        assert!(decide(&alice(), &full_admin(), Permission::ReadAudit).is_ok());
        assert!(decide(&alice(), &nobody(), Permission::ReadAudit).is_err());
        assert!(decide(&executor(), &auditor, Permission::ReadAudit).is_err());
    }

    #[test]
    fn listing_accesses_needs_an_access_management_or_reading_right() {
        let manager = holding(Rights {
            right_manage_data_accesses_same_level: true,
            ..Rights::default()
        });
        assert_eq!(
            decide(&alice(), &manager, Permission::ListAccesses),
            Ok(()),
            "an access manager lists accesses"
        );
        let reader = holding(Rights {
            right_read_patient_nominative: true,
            ..Rights::default()
        });
        assert!(decide(&alice(), &reader, Permission::ListAccesses).is_err());
        assert!(decide(&etl(), &manager, Permission::ListAccesses).is_err());
    }

    #[test]
    fn datalabs_are_read_with_right_read_datalabs_and_managed_with_both_rights() {
        let read = holding(Rights {
            right_read_datalabs: true,
            ..Rights::default()
        });
        let manage_only = holding(Rights {
            right_manage_datalabs: true,
            ..Rights::default()
        });
        let both = holding(Rights {
            right_read_datalabs: true,
            right_manage_datalabs: true,
            ..Rights::default()
        });
        assert!(decide(&alice(), &read, Permission::ReadDatalabs).is_ok());
        assert!(decide(&alice(), &read, Permission::ManageDatalabs).is_err());
        assert!(decide(&alice(), &manage_only, Permission::ManageDatalabs).is_err());
        assert!(decide(&alice(), &both, Permission::ManageDatalabs).is_ok());
        assert!(decide(&alice(), &full_admin(), Permission::ManageDatalabs).is_ok());
        assert!(decide(&alice(), &nobody(), Permission::ReadDatalabs).is_err());
        assert!(decide(&executor(), &both, Permission::ReadDatalabs).is_err());
    }

    #[test]
    fn only_the_query_executor_reports_job_results() {
        assert!(decide(&executor(), &nobody(), Permission::ReportJobResult).is_ok());
        assert!(decide(&etl(), &nobody(), Permission::ReportJobResult).is_err());
        assert!(decide(&alice(), &full_admin(), Permission::ReportJobResult).is_err());
        let rollout = Principal::application("rollout", Application::Rollout);
        assert!(decide(&rollout, &nobody(), Permission::ReportJobResult).is_err());
    }

    #[test]
    fn owners_read_their_own_objects_and_job_reporters_read_all() {
        assert!(!alice().reads_every_owner());
        assert!(executor().reads_every_owner());
        assert!(etl().reads_every_owner());
        let rollout = Principal::application("rollout", Application::Rollout);
        assert!(!rollout.reads_every_owner());
        assert_eq!(etl().job_reporter(), Some(JobReporter::SolrEtl));
        assert_eq!(alice().job_reporter(), None);
    }

    #[test]
    fn applicative_callers_see_exact_counts() {
        assert!(executor().exempt_from_small_cells());
        assert!(!alice().exempt_from_small_cells());
    }

    #[test]
    fn contacts_are_shown_to_user_and_access_managers_and_applications() {
        let user_manager = holding(Rights {
            right_manage_users: true,
            ..Rights::default()
        });
        let access_manager = holding(Rights {
            right_manage_admin_accesses_same_level: true,
            ..Rights::default()
        });
        assert!(sees_user_contacts(&alice(), &user_manager));
        assert!(sees_user_contacts(&alice(), &access_manager));
        assert!(!sees_user_contacts(&alice(), &nobody()));
        assert!(sees_user_contacts(&etl(), &nobody()));
    }

    #[test]
    fn full_admins_list_every_export_and_others_their_own() {
        assert_eq!(export_owner(&alice(), &full_admin()), None);
        assert_eq!(export_owner(&alice(), &nobody()), Some("alice".into()));
        assert_eq!(
            export_owner(&executor(), &full_admin()),
            Some("query-executor".into())
        );
    }

    #[test]
    fn managers_see_the_accesses_at_or_under_their_managing_grants() {
        let manager = Authority::new(vec![Grant {
            perimeter_id: 10,
            perimeter_ancestors: vec![1],
            rights: Rights {
                right_manage_data_accesses_inferior_levels: true,
                ..Rights::default()
            },
        }]);
        assert_eq!(access_listing_scope(&manager), Some(vec![10]));
        assert_eq!(access_listing_scope(&full_admin()), None);
        let below = domain::authz::PerimeterRef {
            id: 11,
            ancestors: &[1, 10],
        };
        let beside = domain::authz::PerimeterRef {
            id: 12,
            ancestors: &[1],
        };
        assert!(sees_access(&manager, below));
        assert!(!sees_access(&manager, beside));
        assert!(sees_access(&full_admin(), beside));
    }

    #[test]
    fn patient_data_is_read_on_the_perimeters_of_reading_rights_only() {
        let authority = Authority::new(vec![
            Grant {
                perimeter_id: 1,
                perimeter_ancestors: vec![],
                rights: Rights {
                    right_read_patient_nominative: true,
                    ..Rights::default()
                },
            },
            Grant {
                perimeter_id: 2,
                perimeter_ancestors: vec![],
                rights: Rights {
                    right_read_patient_pseudonymized: true,
                    ..Rights::default()
                },
            },
            Grant {
                perimeter_id: 3,
                perimeter_ancestors: vec![],
                rights: Rights {
                    right_manage_users: true,
                    ..Rights::default()
                },
            },
        ]);
        let scope = patient_read_scope(&alice(), &authority).unwrap();
        assert_eq!(scope.readable, vec![1, 2]);
        assert_eq!(scope.nominative, vec![1]);
        assert!(patient_read_scope(&alice(), &nobody()).is_err());
        assert!(patient_read_scope(&executor(), &authority).is_err());
    }
}
