//! The identity service: users and their credentials, login sessions, roles, accesses,
//! perimeters (import) and maintenance phases.
//!
//! Every method authorizes its requester first (who may manage users, roles, which accesses),
//! then runs aggregate commands and waits for the read models.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::access::{Access, AccessCommand, AccessError};
use domain::authz::{Authority, PerimeterRef};
use domain::maintenance::{
    MaintenanceCommand, MaintenanceError, MaintenanceFields, MaintenancePatch, MaintenancePhase,
};
use domain::perimeter::{Perimeter, PerimeterCommand, PerimeterError, PerimeterFields};
use domain::rights::Rights;
use domain::role::{Role, RoleCommand, RoleError};
use domain::session::{Session, SessionCommand, SessionError};
use domain::user::{User, UserCommand, UserError};
use domain::validation::InvalidField;
use thiserror::Error;
use uuid::Uuid;

use crate::bus::{Committed, Execute};
use crate::context::CommandContext;
use crate::error::{CommandError, Technical};
use crate::passwords::{self, Verification};
use crate::ports::{Consistency, ExternalAuthError, IdentityProviders, PortError};
use crate::token_check::{self, HolderRecord, SessionRecord, Verdict, VerdictCache};
use crate::workspace::Written;

/// Integer-numbered aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Role,
    Access,
    Profile,
    Maintenance,
}

/// Lookups in the identity read model that decisions need.
#[async_trait]
pub trait IdentityDirectory: Send + Sync {
    /// A fresh id for a new aggregate of `kind`.
    async fn next_id(&self, kind: IdKind) -> Result<i64, PortError>;
    /// Ancestors (root first) of a live perimeter; `None` if it does not exist or was removed.
    async fn perimeter_ancestors(&self, id: i64) -> Result<Option<Vec<i64>>, PortError>;
    /// The username of an active profile.
    async fn profile_owner(&self, profile_id: i64) -> Result<Option<String>, PortError>;
    /// Whether a live role other than `except` already has this name (case-insensitive).
    async fn role_name_taken(&self, name: &str, except: Option<i64>) -> Result<bool, PortError>;
    /// Whether any access, even ended, uses the role.
    async fn role_in_use(&self, id: i64) -> Result<bool, PortError>;
    /// Ids of every live perimeter.
    async fn live_perimeter_ids(&self) -> Result<Vec<i64>, PortError>;
    /// Accesses valid at `now` whose end falls on `day` (UTC).
    async fn accesses_ending_on(
        &self,
        day: chrono::NaiveDate,
        now: DateTime<Utc>,
    ) -> Result<Vec<crate::alerts::ExpiringAccess>, PortError>;
    /// Accesses on these perimeters that have not ended at `now`.
    async fn open_accesses_on(
        &self,
        perimeter_ids: &[i64],
        now: DateTime<Utc>,
    ) -> Result<Vec<i64>, PortError>;
    /// Whether `username` exists with an active profile, and what is known of `session`.
    async fn token_holder(
        &self,
        username: &str,
        session: Option<Uuid>,
    ) -> Result<HolderRecord, PortError>;
}

/// Who asks.
#[derive(Debug, Clone)]
pub enum Requester {
    /// A person, with what their valid accesses allow.
    User(Authority),
    /// An applicative token (QueryExecutor, Solr ETL, rollout pipeline).
    Applicative,
    /// The operator, through the command line.
    System,
}

impl Requester {
    fn full_admin(&self) -> bool {
        match self {
            Requester::User(a) => a.is_full_admin(),
            Requester::Applicative => false,
            Requester::System => true,
        }
    }

    fn authority(&self) -> Option<&Authority> {
        match self {
            Requester::User(a) => Some(a),
            _ => None,
        }
    }
}

/// Why an identity operation failed.
#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("you are not allowed to {0}")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("invalid username or password")]
    BadCredentials,
    #[error(transparent)]
    External(ExternalAuthError),
    #[error("this session has ended; log in again")]
    SessionEnded,
    #[error("the token's user does not exist or is not active")]
    UnknownUser,
    #[error("a role named '{0}' already exists")]
    RoleNameTaken(String),
    #[error(transparent)]
    User(UserError),
    #[error(transparent)]
    Role(RoleError),
    #[error(transparent)]
    Access(AccessError),
    #[error(transparent)]
    Maintenance(MaintenanceError),
    #[error(transparent)]
    Perimeter(PerimeterError),
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// Conflict, unavailability, bug.
    #[error(transparent)]
    Technical(#[from] Technical),
}

impl From<PortError> for IdentityError {
    fn from(e: PortError) -> Self {
        Technical::from(e).into()
    }
}

macro_rules! from_command_error {
    ($error:ty, $variant:expr) => {
        impl From<CommandError<$error>> for IdentityError {
            fn from(e: CommandError<$error>) -> Self {
                crate::error::from_command(e, $variant)
            }
        }
    };
}
from_command_error!(UserError, IdentityError::User);
from_command_error!(RoleError, IdentityError::Role);
from_command_error!(AccessError, IdentityError::Access);
from_command_error!(MaintenanceError, IdentityError::Maintenance);
from_command_error!(PerimeterError, IdentityError::Perimeter);
from_command_error!(SessionError, |_| IdentityError::SessionEnded);

/// A new user.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    pub firstname: String,
    pub lastname: String,
    pub email: Option<String>,
    pub password: Option<String>,
}

/// A user's fields to change.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub firstname: Option<String>,
    pub lastname: Option<String>,
    pub email: Option<String>,
}

/// A new access.
#[derive(Debug, Clone)]
pub struct NewAccess {
    pub profile_id: i64,
    pub role_id: i64,
    pub perimeter_id: i64,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
}

/// What a perimeter import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub written: usize,
    pub unchanged: usize,
    pub removed: usize,
    pub accesses_closed: usize,
}

/// An open login session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTicket {
    pub session_id: Uuid,
    pub generation: u32,
    pub username: String,
}

/// The aggregate buses the service drives.
pub struct IdentityBuses {
    pub users: Arc<dyn Execute<User>>,
    pub sessions: Arc<dyn Execute<Session>>,
    pub roles: Arc<dyn Execute<Role>>,
    pub accesses: Arc<dyn Execute<Access>>,
    pub perimeters: Arc<dyn Execute<Perimeter>>,
    pub maintenances: Arc<dyn Execute<MaintenancePhase>>,
}

/// How long a verdict on an access token's holder is cached by default.
pub const TOKEN_CHECK_CACHE: std::time::Duration = std::time::Duration::from_secs(1);

/// The identity application service.
pub struct Identity {
    buses: IdentityBuses,
    directory: Arc<dyn IdentityDirectory>,
    consistency: Arc<dyn Consistency>,
    providers: Arc<dyn IdentityProviders>,
    default_access_validity_days: i64,
    verdicts: VerdictCache,
}

/// Password hashes running at once: one per core. An argon2id hash is ~20 ms of CPU in 19 MiB of
/// its own; more at once only share the cores, each with its working memory, and a burst of
/// logins then finishes all together and late (16 at once on 2 cores: p99 0.7-0.9 s). Queued in
/// arrival order instead, each waits only for those before it.
static HASHING: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
    tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, usize::from))
});

/// Runs a password hash or verification on a blocking thread, in its turn (see [`HASHING`]).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, IdentityError> {
    let failed =
        |e: String| IdentityError::from(Technical::Internal(format!("hashing task failed: {e}")));
    // The semaphore is never closed.
    let _turn = HASHING.acquire().await.map_err(|e| failed(e.to_string()))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| failed(e.to_string()))
}

impl Identity {
    pub fn new(
        buses: IdentityBuses,
        directory: Arc<dyn IdentityDirectory>,
        consistency: Arc<dyn Consistency>,
        providers: Arc<dyn IdentityProviders>,
        default_access_validity_days: i64,
    ) -> Self {
        Self {
            buses,
            directory,
            consistency,
            providers,
            default_access_validity_days,
            verdicts: VerdictCache::new(TOKEN_CHECK_CACHE),
        }
    }

    /// Caches verdicts on access tokens' holders for `ttl` instead of [`TOKEN_CHECK_CACHE`]
    /// (zero: ask every time).
    pub fn with_token_check_cache(mut self, ttl: std::time::Duration) -> Self {
        self.verdicts = VerdictCache::new(ttl);
        self
    }

    pub(crate) fn directory(&self) -> &dyn IdentityDirectory {
        self.directory.as_ref()
    }

    pub(crate) fn access_bus(&self) -> &dyn Execute<Access> {
        self.buses.accesses.as_ref()
    }

    async fn settle<T>(
        &self,
        value: T,
        committed: &[Committed],
    ) -> Result<Written<T>, IdentityError> {
        let caught_up = self.consistency.wait_for(committed).await;
        Ok(Written { value, caught_up })
    }

    // ---- users -------------------------------------------------------------------------

    /// Creates a user and their Manual profile (requires `right_manage_users`).
    pub async fn create_user(
        &self,
        ctx: &CommandContext,
        by: &Requester,
        new: NewUser,
    ) -> Result<Written<String>, IdentityError> {
        let allowed = match by {
            Requester::User(a) => a.global().right_manage_users,
            Requester::System => true,
            Requester::Applicative => false,
        };
        if !allowed {
            return Err(IdentityError::Forbidden("create users"));
        }
        let password_hash = match new.password {
            Some(p) if !p.is_empty() => Some(blocking(move || passwords::hash(&p)).await?),
            _ => None,
        };
        let profile_id = self.directory.next_id(IdKind::Profile).await?;
        let committed = self
            .buses
            .users
            .execute(
                &new.username,
                UserCommand::Create {
                    username: new.username.clone(),
                    firstname: new.firstname,
                    lastname: new.lastname,
                    email: new.email,
                    password_hash,
                    profile_id,
                    at: ctx.at,
                },
                ctx,
            )
            .await?;
        self.settle(new.username, &[committed]).await
    }

    /// Changes a user's names or e-mail (requires `right_manage_users`).
    pub async fn update_user(
        &self,
        ctx: &CommandContext,
        by: &Requester,
        username: &str,
        patch: UserPatch,
    ) -> Result<Written<()>, IdentityError> {
        let allowed = by.full_admin()
            || by
                .authority()
                .is_some_and(|a| a.global().right_manage_users);
        if !allowed {
            return Err(IdentityError::Forbidden("change users"));
        }
        let committed = self
            .buses
            .users
            .execute(
                username,
                UserCommand::Update {
                    firstname: patch.firstname,
                    lastname: patch.lastname,
                    email: patch.email,
                    at: ctx.at,
                },
                ctx,
            )
            .await?;
        self.settle((), &[committed]).await
    }

    /// Sets a user's password (operator command line).
    pub async fn set_password(
        &self,
        ctx: &CommandContext,
        username: &str,
        password: String,
    ) -> Result<(), IdentityError> {
        let hash = blocking(move || passwords::hash(&password)).await?;
        self.buses
            .users
            .execute(
                username,
                UserCommand::SetPasswordHash { hash, at: ctx.at },
                ctx,
            )
            .await?;
        Ok(())
    }

    /// Checks a username and password, first with the identity service when one is
    /// configured, then against the stored hash; on success records the login (re-hashing a
    /// legacy hash) and opens a session. Unknown users and wrong passwords are refused alike.
    pub async fn login_with_password(
        &self,
        ctx: &CommandContext,
        username: &str,
        password: String,
    ) -> Result<SessionTicket, IdentityError> {
        let user = self.buses.users.load(username).await?;
        let Some(state) = user.state else {
            blocking(move || passwords::verify_nothing(&password)).await?;
            return Err(IdentityError::BadCredentials);
        };
        match self.providers.authenticate(username, &password).await {
            Ok(Some(true)) => return self.open_session(ctx, username, "JWT").await,
            Ok(_) => {}
            // The local hash may still let the user in; the outage is logged.
            Err(e) => tracing::warn!(error = %e, "identity service unavailable at login"),
        }
        let Some(stored) = state.password_hash else {
            blocking(move || passwords::verify_nothing(&password)).await?;
            return Err(IdentityError::BadCredentials);
        };
        let (verdict, password) = blocking(move || {
            let verdict = passwords::verify(&stored, &password);
            (verdict, password)
        })
        .await?;
        match verdict {
            Verification::Invalid => return Err(IdentityError::BadCredentials),
            Verification::ValidLegacy => {
                let hash = blocking(move || passwords::hash(&password)).await?;
                self.buses
                    .users
                    .execute(
                        username,
                        UserCommand::SetPasswordHash { hash, at: ctx.at },
                        ctx,
                    )
                    .await?;
            }
            Verification::Valid => {}
        }
        self.open_session(ctx, username, "JWT").await
    }

    /// Exchanges an OIDC authorization code; the provider's user must exist here. Records the
    /// login and returns the provider's tokens.
    pub async fn login_with_oidc(
        &self,
        ctx: &CommandContext,
        code: &str,
        redirect_uri: &str,
    ) -> Result<crate::ports::ProviderTokens, IdentityError> {
        let tokens = self
            .providers
            .oidc_login(code, redirect_uri)
            .await
            .map_err(IdentityError::External)?;
        if self
            .buses
            .users
            .load(&tokens.username)
            .await?
            .state
            .is_none()
        {
            return Err(IdentityError::BadCredentials);
        }
        let ctx = CommandContext {
            user: tokens.username.clone(),
            ..ctx.clone()
        };
        // The provider's tokens are the session; ours records the login (and its time).
        self.open_session(&ctx, &tokens.username, "OIDC").await?;
        Ok(tokens)
    }

    /// Opens a session for an already authenticated user (password, OIDC or identity hook).
    ///
    /// A login appends one `SessionOpened` to a new Session aggregate, and nothing to the User
    /// aggregate: concurrent logins of one user never race on a shared aggregate (the read
    /// model's `last_login` is folded from the sessions).
    ///
    /// It does not wait for the read model: the token check finds a session the read model has
    /// not folded yet in the event store ([`Identity::check_token_holder`]), and the login's
    /// answer knows its own time. That spares every login a command's read-your-writes wait.
    pub async fn open_session(
        &self,
        ctx: &CommandContext,
        username: &str,
        method: &str,
    ) -> Result<SessionTicket, IdentityError> {
        let session_id = Uuid::new_v4();
        self.buses
            .sessions
            .execute_new(
                &session_id.to_string(),
                SessionCommand::Open {
                    username: username.to_string(),
                    method: method.to_string(),
                    at: ctx.at,
                },
                ctx,
            )
            .await?;
        Ok(SessionTicket {
            session_id,
            generation: 0,
            username: username.to_string(),
        })
    }

    /// Trades the refresh token of `generation` for the next one; a replayed token ends the
    /// session.
    pub async fn refresh(
        &self,
        ctx: &CommandContext,
        session_id: Uuid,
        generation: u32,
    ) -> Result<SessionTicket, IdentityError> {
        let id = session_id.to_string();
        let committed = self
            .buses
            .sessions
            .execute(
                &id,
                SessionCommand::Rotate {
                    generation,
                    at: ctx.at,
                },
                ctx,
            )
            .await?;
        // Read back what the rotation led to: a replayed token (or a concurrent replay) has
        // revoked the family by now.
        let state = self
            .buses
            .sessions
            .load(&id)
            .await?
            .state
            .ok_or(IdentityError::SessionEnded)?;
        if state.revoked || state.generation != generation + 1 {
            tracing::warn!(session = %session_id, "refresh token reused: session revoked");
            // The session's access tokens die with it, here at once (the read model first).
            self.settle((), &[committed]).await?;
            self.verdicts.forget_session(session_id);
            return Err(IdentityError::SessionEnded);
        }
        Ok(SessionTicket {
            session_id,
            generation: state.generation,
            username: state.username,
        })
    }

    /// Ends a session (logout). Ending an ended session is not an error.
    pub async fn logout(
        &self,
        ctx: &CommandContext,
        session_id: Uuid,
    ) -> Result<(), IdentityError> {
        let committed = self
            .buses
            .sessions
            .execute(
                &session_id.to_string(),
                SessionCommand::Revoke { at: ctx.at },
                ctx,
            )
            .await?;
        // The session's access tokens are refused from now on: wait for the read model, and
        // forget what this process cached about the session.
        self.settle((), &[committed]).await?;
        self.verdicts.forget_session(session_id);
        Ok(())
    }

    /// Whether an access token of `username` (from login session `session`, if it names one)
    /// may still be used: the user exists and is active, the session has not ended. Cached
    /// for a short time (see [`crate::token_check`]).
    pub async fn check_token_holder(
        &self,
        username: &str,
        session: Option<Uuid>,
    ) -> Result<(), IdentityError> {
        let verdict = match self.verdicts.get(username, session) {
            Some(verdict) => verdict,
            None => {
                let mut record = self.directory.token_holder(username, session).await?;
                if record.session == Some(SessionRecord::Unknown)
                    && let Some(id) = session
                {
                    // Opened, but not folded yet (a login whose read-your-writes wait timed
                    // out): the event store knows.
                    record.session = Some(
                        match self.buses.sessions.load(&id.to_string()).await?.state {
                            Some(s) if !s.revoked => SessionRecord::Open {
                                username: s.username,
                            },
                            Some(_) => SessionRecord::Ended,
                            None => SessionRecord::Unknown,
                        },
                    );
                }
                let verdict = token_check::judge(username, &record);
                self.verdicts.put(username, session, verdict);
                verdict
            }
        };
        match verdict {
            Verdict::Valid => Ok(()),
            Verdict::UnknownUser => Err(IdentityError::UnknownUser),
            Verdict::SessionEnded => Err(IdentityError::SessionEnded),
        }
    }

    // ---- roles -------------------------------------------------------------------------

    fn require_full_admin(by: &Requester, what: &'static str) -> Result<(), IdentityError> {
        if by.full_admin() {
            Ok(())
        } else {
            Err(IdentityError::Forbidden(what))
        }
    }

    /// Creates a role (full admins only).
    pub async fn create_role(
        &self,
        ctx: &CommandContext,
        by: &Requester,
        name: String,
        rights: Rights,
    ) -> Result<Written<i64>, IdentityError> {
        Self::require_full_admin(by, "create roles")?;
        if self.directory.role_name_taken(&name, None).await? {
            return Err(IdentityError::RoleNameTaken(name));
        }
        let id = self.directory.next_id(IdKind::Role).await?;
        let committed = self
            .buses
            .roles
            .execute(
                &id.to_string(),
                RoleCommand::Create {
                    role_id: id,
                    name,
                    rights,
                    at: ctx.at,
                },
                ctx,
            )
            .await?;
        self.settle(id, &[committed]).await
    }

    /// Changes a role: `changes` are merged into the stored rights (full admins only).
    pub async fn update_role(
        &self,
        ctx: &CommandContext,
        by: &Requester,
        id: i64,
        name: Option<String>,
        changes: &[(&'static str, bool)],
    ) -> Result<Written<()>, IdentityError> {
        Self::require_full_admin(by, "change roles")?;
        let role = self.buses.roles.load(&id.to_string()).await?;
        let current = role
            .state
            .filter(|s| !s.deleted)
            .ok_or(IdentityError::Role(RoleError::NotFound))?;
        if let Some(name) = &name
            && self.directory.role_name_taken(name, Some(id)).await?
        {
            return Err(IdentityError::RoleNameTaken(name.clone()));
        }
        let mut rights = current.rights;
        for (right, value) in changes {
            rights.set(right, *value);
        }
        let committed = self
            .buses
            .roles
            .execute(
                &id.to_string(),
                RoleCommand::Update {
                    name,
                    rights,
                    at: ctx.at,
                },
                ctx,
            )
            .await?;
        self.settle((), &[committed]).await
    }

    /// Deletes a role no access uses (full admins only).
    pub async fn delete_role(
        &self,
        ctx: &CommandContext,
        by: &Requester,
        id: i64,
    ) -> Result<Written<()>, IdentityError> {
        Self::require_full_admin(by, "delete roles")?;
        let has_accesses = self.directory.role_in_use(id).await?;
        let committed = self
            .buses
            .roles
            .execute(
                &id.to_string(),
                RoleCommand::Delete {
                    has_accesses,
                    at: ctx.at,
                },
                ctx,
            )
            .await?;
        self.settle((), &[committed]).await
    }

    // ---- accesses ----------------------------------------------------------------------

    async fn live_role_rights(&self, role_id: i64) -> Result<Rights, IdentityError> {
        self.buses
            .roles
            .load(&role_id.to_string())
            .await?
            .state
            .filter(|s| !s.deleted)
            .map(|s| s.rights)
            .ok_or(IdentityError::NotFound("role"))
    }

    /// Whether `by` may manage an access of `role_id` on `perimeter_id` (the managing rule).
    async fn may_manage(
        &self,
        by: &Requester,
        perimeter_id: i64,
        rights: &Rights,
    ) -> Result<bool, IdentityError> {
        match by {
            Requester::System => Ok(true),
            Requester::Applicative => Ok(false),
            Requester::User(authority) => {
                if authority.is_full_admin() {
                    return Ok(true);
                }
                let Some(ancestors) = self.directory.perimeter_ancestors(perimeter_id).await?
                else {
                    return Ok(false);
                };
                Ok(authority.can_manage(
                    PerimeterRef {
                        id: perimeter_id,
                        ancestors: &ancestors,
                    },
                    rights,
                ))
            }
        }
    }

    /// Grants a role on a perimeter to a profile. The managing rule applies (upstream skips it).
    pub async fn grant_access(
        &self,
        ctx: &CommandContext,
        by: &Requester,
        new: NewAccess,
    ) -> Result<Written<i64>, IdentityError> {
        if let Requester::User(a) = by
            && !a.may_list_accesses()
        {
            return Err(IdentityError::Forbidden("manage accesses"));
        }
        let username = self
            .directory
            .profile_owner(new.profile_id)
            .await?
            .ok_or(IdentityError::NotFound("profile"))?;
        let rights = self.live_role_rights(new.role_id).await?;
        if self
            .directory
            .perimeter_ancestors(new.perimeter_id)
            .await?
            .is_none()
        {
            return Err(IdentityError::NotFound("perimeter"));
        }
        if !self.may_manage(by, new.perimeter_id, &rights).await? {
            return Err(IdentityError::Forbidden(
                "grant this role on this perimeter",
            ));
        }
        let id = self.directory.next_id(IdKind::Access).await?;
        let committed = self
            .buses
            .accesses
            .execute(
                &id.to_string(),
                AccessCommand::Grant {
                    access_id: id,
                    profile_id: new.profile_id,
                    username,
                    role_id: new.role_id,
                    perimeter_id: new.perimeter_id,
                    source: domain::user::MANUAL_SOURCE.to_string(),
                    start: new.start,
                    end: new.end,
                    default_validity_days: self.default_access_validity_days,
                    at: ctx.at,
                },
                ctx,
            )
            .await?;
        self.settle(id, &[committed]).await
    }

    /// Runs a command on an access the requester may manage.
    pub async fn change_access(
        &self,
        ctx: &CommandContext,
        by: &Requester,
        id: i64,
        command: AccessCommand,
    ) -> Result<Written<()>, IdentityError> {
        let access = self.buses.accesses.load(&id.to_string()).await?;
        let state = access
            .state
            .filter(|s| !s.deleted)
            .ok_or(IdentityError::Access(AccessError::NotFound))?;
        let rights = self
            .buses
            .roles
            .load(&state.role_id.to_string())
            .await?
            .state
            .map(|s| s.rights)
            .unwrap_or_default();
        if !self.may_manage(by, state.perimeter_id, &rights).await? {
            return Err(IdentityError::Forbidden("manage this access"));
        }
        let committed = self
            .buses
            .accesses
            .execute(&id.to_string(), command, ctx)
            .await?;
        self.settle((), &[committed]).await
    }

    // ---- perimeters --------------------------------------------------------------------

    /// Imports a perimeter tree: writes what is new or changed, removes the perimeters missing
    /// from `rows` and closes the accesses on them.
    pub async fn import_perimeters(
        &self,
        ctx: &CommandContext,
        rows: Vec<PerimeterFields>,
    ) -> Result<ImportReport, IdentityError> {
        let levels = levels(rows)?;
        let mut report = ImportReport::default();
        let mut committed = Vec::new();
        let in_file: BTreeSet<i64> = levels.iter().flatten().map(|f| f.id).collect();
        // A level is written only once its parents are committed, so the read model (which
        // derives ancestors from the parent row) sees every parent before its children.
        for level in levels {
            for chunk in level.chunks(IMPORT_BATCH) {
                let commands = chunk
                    .iter()
                    .map(|fields| {
                        (
                            fields.id.to_string(),
                            PerimeterCommand::Import {
                                fields: fields.clone(),
                                at: ctx.at,
                            },
                        )
                    })
                    .collect();
                for c in self.buses.perimeters.execute_batch(commands, ctx).await? {
                    if c.last_sequence.is_some() {
                        report.written += 1;
                        committed.push(c);
                    } else {
                        report.unchanged += 1;
                    }
                }
            }
        }
        // Removals must see the writes above in the read model.
        self.consistency.wait_for(&committed).await;
        let gone: Vec<i64> = self
            .directory
            .live_perimeter_ids()
            .await?
            .into_iter()
            .filter(|id| !in_file.contains(id))
            .collect();
        for access in self.directory.open_accesses_on(&gone, ctx.at).await? {
            let c = self
                .buses
                .accesses
                .execute(
                    &access.to_string(),
                    AccessCommand::CloseForRemovedPerimeter { at: ctx.at },
                    ctx,
                )
                .await?;
            if c.last_sequence.is_some() {
                report.accesses_closed += 1;
                committed.push(c);
            }
        }
        for chunk in gone.chunks(IMPORT_BATCH) {
            let commands = chunk
                .iter()
                .map(|id| (id.to_string(), PerimeterCommand::Remove { at: ctx.at }))
                .collect();
            let removed = self.buses.perimeters.execute_batch(commands, ctx).await?;
            report.removed += removed.len();
            committed.extend(removed);
        }
        self.consistency.wait_for(&committed).await;
        Ok(report)
    }

    // ---- maintenance -------------------------------------------------------------------

    fn require_maintenance_writer(by: &Requester) -> Result<(), IdentityError> {
        if matches!(by, Requester::Applicative) || by.full_admin() {
            Ok(())
        } else {
            Err(IdentityError::Forbidden("manage maintenance phases"))
        }
    }

    /// Schedules a maintenance phase (full admins and applicative users).
    pub async fn schedule_maintenance(
        &self,
        ctx: &CommandContext,
        by: &Requester,
        fields: MaintenanceFields,
    ) -> Result<Written<i64>, IdentityError> {
        Self::require_maintenance_writer(by)?;
        let id = self.directory.next_id(IdKind::Maintenance).await?;
        let committed = self
            .buses
            .maintenances
            .execute(
                &id.to_string(),
                MaintenanceCommand::Schedule {
                    id,
                    fields,
                    at: ctx.at,
                },
                ctx,
            )
            .await?;
        self.settle(id, &[committed]).await
    }

    /// Changes or deletes a maintenance phase.
    pub async fn change_maintenance(
        &self,
        ctx: &CommandContext,
        by: &Requester,
        id: i64,
        patch: Option<MaintenancePatch>,
    ) -> Result<Written<()>, IdentityError> {
        Self::require_maintenance_writer(by)?;
        let command = match patch {
            Some(patch) => MaintenanceCommand::Change { patch, at: ctx.at },
            None => MaintenanceCommand::Delete { at: ctx.at },
        };
        let committed = self
            .buses
            .maintenances
            .execute(&id.to_string(), command, ctx)
            .await?;
        self.settle((), &[committed]).await
    }
}

/// Perimeters decided and appended per transaction by an import.
const IMPORT_BATCH: usize = 1_000;

/// Groups rows by depth (roots first); refuses cycles and duplicate ids. A parent missing from
/// the rows makes its child a root.
fn levels(rows: Vec<PerimeterFields>) -> Result<Vec<Vec<PerimeterFields>>, IdentityError> {
    let invalid = |reason: String| {
        IdentityError::Invalid(InvalidField {
            field: "perimeters",
            reason,
        })
    };
    let mut by_id: HashMap<i64, PerimeterFields> = HashMap::with_capacity(rows.len());
    for row in rows {
        let id = row.id;
        if by_id.insert(id, row).is_some() {
            return Err(invalid(format!("perimeter {id} appears twice")));
        }
    }
    let mut children: HashMap<Option<i64>, Vec<i64>> = HashMap::new();
    for row in by_id.values() {
        let parent = row.parent_id.filter(|p| by_id.contains_key(p));
        children.entry(parent).or_default().push(row.id);
    }
    let mut levels = Vec::new();
    let mut current: Vec<i64> = children.remove(&None).unwrap_or_default();
    while !current.is_empty() {
        current.sort_unstable();
        let mut next = Vec::new();
        let mut level = Vec::with_capacity(current.len());
        for id in current {
            next.extend(children.remove(&Some(id)).unwrap_or_default());
            if let Some(row) = by_id.remove(&id) {
                level.push(row);
            }
        }
        levels.push(level);
        current = next;
    }
    if !by_id.is_empty() {
        return Err(invalid(format!(
            "{} perimeters are in a parent cycle",
            by_id.len()
        )));
    }
    Ok(levels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, parent: Option<i64>) -> PerimeterFields {
        PerimeterFields {
            id,
            local_id: id.to_string(),
            name: format!("P{id}"),
            short_name: format!("P{id}"),
            source_value: id.to_string(),
            type_source_value: "T".into(),
            parent_id: parent,
            cohort_id: None,
            cohort_size: None,
        }
    }

    #[test]
    fn levels_put_parents_first_and_cycles_are_refused() {
        let ids = |levels: Vec<Vec<PerimeterFields>>| -> Vec<Vec<i64>> {
            levels
                .into_iter()
                .map(|l| l.into_iter().map(|r| r.id).collect())
                .collect()
        };
        let tree = levels(vec![
            row(3, Some(2)),
            row(2, Some(1)),
            row(1, None),
            row(4, Some(1)),
        ]);
        assert_eq!(ids(tree.unwrap()), vec![vec![1], vec![2, 4], vec![3]]);
        assert!(levels(vec![row(1, Some(2)), row(2, Some(1))]).is_err());
        assert!(levels(vec![row(1, None), row(1, None)]).is_err());
        // An unknown parent makes a root.
        assert_eq!(ids(levels(vec![row(5, Some(77))]).unwrap()), vec![vec![5]]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn password_hashes_run_at_most_one_per_core_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static RUNNING: AtomicUsize = AtomicUsize::new(0);
        static MOST: AtomicUsize = AtomicUsize::new(0);
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let hashes: Vec<_> = (0..cores * 3)
            .map(|_| {
                tokio::spawn(blocking(|| {
                    let running = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
                    MOST.fetch_max(running, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    RUNNING.fetch_sub(1, Ordering::SeqCst);
                }))
            })
            .collect();
        for hash in hashes {
            hash.await.unwrap().unwrap();
        }
        let most = MOST.load(Ordering::SeqCst);
        assert!(
            (1..=cores).contains(&most),
            "{most} at once on {cores} cores"
        );
    }
}
