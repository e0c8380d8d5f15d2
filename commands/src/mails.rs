//! E-mails caused by events, sent at most once each: a delivery is claimed (a `MailDelivery`
//! aggregate whose id derives from the cause, the kind and the recipient) before it is sent,
//! then recorded as sent or failed. The wording is ours (upstream's templates are not public).

use std::sync::Arc;

use domain::mail::{MailCommand, MailDelivery, MailError};
use domain::user::User;
use uuid::Uuid;

use crate::bus::Execute;
use crate::context::CommandContext;
use crate::error::CommandError;
use crate::ports::{Mail, Mailer, PortError};

/// Namespace of delivery ids.
const DELIVERY_NAMESPACE: Uuid = Uuid::from_u128(0x3f1b_7c2e_8d4a_4e61_b0c9_5a7d_2e18_0002);

/// A recipient: display name and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub name: String,
    pub email: String,
}

/// Sends the e-mails of the cohort workflows.
pub struct Mails {
    deliveries: Arc<dyn Execute<MailDelivery>>,
    users: Arc<dyn Execute<User>>,
    mailer: Arc<dyn Mailer>,
    /// `FRONTEND_URL`, for links.
    pub frontend_url: String,
}

fn port<E: std::error::Error>(e: CommandError<E>) -> PortError {
    PortError(e.to_string())
}

impl Mails {
    pub fn new(
        deliveries: Arc<dyn Execute<MailDelivery>>,
        users: Arc<dyn Execute<User>>,
        mailer: Arc<dyn Mailer>,
        frontend_url: String,
    ) -> Self {
        Self {
            deliveries,
            users,
            mailer,
            frontend_url: frontend_url.trim_end_matches('/').to_string(),
        }
    }

    /// The user's name and address, if they have one.
    pub async fn recipient(&self, username: &str) -> Result<Option<Recipient>, PortError> {
        let user = self.users.load(username).await.map_err(port)?;
        Ok(user.state.and_then(|u| {
            let name = format!("{} {}", u.firstname, u.lastname).trim().to_string();
            u.email
                .filter(|e| !e.is_empty())
                .map(|email| Recipient { name, email })
        }))
    }

    /// Sends `mail` unless this (cause, kind, recipient) was claimed before. Returns whether it
    /// was sent now. An SMTP failure is recorded and logged, not retried (upstream logs it too):
    /// the claim already stands.
    pub async fn deliver(
        &self,
        ctx: &CommandContext,
        cause: &str,
        kind: &str,
        mail: Mail,
    ) -> Result<bool, PortError> {
        let id = Uuid::new_v5(
            &DELIVERY_NAMESPACE,
            format!("{cause}|{kind}|{}", mail.to).as_bytes(),
        )
        .to_string();
        let claim = MailCommand::Claim {
            to: mail.to.clone(),
            kind: kind.to_string(),
            subject: mail.subject.clone(),
            cause: cause.to_string(),
            at: ctx.at,
        };
        match self.deliveries.execute(&id, claim, ctx).await {
            Ok(_) => {}
            Err(CommandError::Rejected(MailError::AlreadyClaimed)) => return Ok(false),
            Err(e) => return Err(port(e)),
        }
        let outcome = match self.mailer.send(mail).await {
            Ok(()) => MailCommand::RecordSent { at: ctx.at },
            Err(e) => {
                tracing::error!(kind, cause, error = %e, "e-mail not sent");
                MailCommand::RecordFailed {
                    reason: e.0,
                    at: ctx.at,
                }
            }
        };
        let sent = matches!(outcome, MailCommand::RecordSent { .. });
        self.deliveries
            .execute(&id, outcome, ctx)
            .await
            .map_err(port)?;
        Ok(sent)
    }
}

/// Escapes text for HTML.
pub fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A mail with a text body and the same content as simple HTML paragraphs and one link.
fn compose(to: &Recipient, subject: String, paragraphs: &[String], link: (&str, &str)) -> Mail {
    let greeting = format!("Bonjour {},", to.name);
    let mut text = format!("{greeting}\n\n");
    let mut html = format!("<p>{}</p>", escape_html(&greeting));
    for p in paragraphs {
        text.push_str(p);
        text.push_str("\n\n");
        html.push_str(&format!("<p>{}</p>", escape_html(p)));
    }
    text.push_str(&format!("{} : {}\n\nL'équipe Cohort360\n", link.0, link.1));
    html.push_str(&format!(
        "<p><a href=\"{}\">{}</a></p><p>L'équipe Cohort360</p>",
        escape_html(link.1),
        escape_html(link.0)
    ));
    Mail {
        to: to.email.clone(),
        subject,
        text,
        html: Some(format!("<!DOCTYPE html><html><body>{html}</body></html>")),
    }
}

/// "Your cohort is ready": a large cohort finished by the Solr ETL.
pub fn large_cohort_ready(
    to: &Recipient,
    cohort_name: &str,
    group_id: &str,
    frontend_url: &str,
) -> Mail {
    compose(
        to,
        format!("[Cohort360] Votre cohorte « {cohort_name} » est prête"),
        &[format!(
            "La cohorte « {cohort_name} » (identifiant {group_id}) a fini d'être créée : ses patients sont consultables et exportables."
        )],
        (
            "Voir la cohorte",
            &format!("{frontend_url}/cohort?groupId={group_id}"),
        ),
    )
}

/// "A request was shared with you".
pub fn shared_request(
    to: &Recipient,
    sharer: &str,
    request_name: &str,
    request_id: Uuid,
    frontend_url: &str,
) -> Mail {
    compose(
        to,
        format!("[Cohort360] {sharer} a partagé une requête avec vous"),
        &[format!(
            "{sharer} a partagé avec vous la requête « {request_name} ». Elle se trouve dans votre dossier « {} ».",
            domain::SHARED_INBOX_FOLDER_NAME
        )],
        (
            "Ouvrir la requête",
            &format!("{frontend_url}/cohort/new/{request_id}"),
        ),
    )
}

/// "Your request was counted again" (a refresh schedule's run).
pub fn count_refreshed(
    to: &Recipient,
    request_name: &str,
    version: u32,
    outcome: Result<Option<i64>, &str>,
    request: Uuid,
    frontend_url: &str,
) -> Mail {
    let line = match outcome {
        Ok(Some(n)) => format!("Le nouveau comptage a trouvé {n} patients."),
        Ok(None) => "Le nouveau comptage est terminé.".to_string(),
        Err(reason) => format!("Le nouveau comptage a échoué : {reason}"),
    };
    compose(
        to,
        format!("[Cohort360] Requête actualisée : {request_name} (version {version})"),
        &[
            format!(
                "Votre requête « {request_name} » (version {version}) a été recomptée comme prévu."
            ),
            line,
        ],
        (
            "Ouvrir la requête",
            &format!("{frontend_url}/cohort/new/{request}"),
        ),
    )
}

/// What a feasibility-report e-mail announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportNews {
    Requested,
    Ready,
    Failed,
}

impl ReportNews {
    /// The delivery kind (upstream's template names).
    pub fn kind(self) -> &'static str {
        match self {
            Self::Requested => "feasibility_report_requested",
            Self::Ready => "feasibility_report_ready",
            Self::Failed => "feasibility_report_error",
        }
    }
}

/// The e-mails of a feasibility study.
pub fn feasibility_report(
    to: &Recipient,
    news: ReportNews,
    request_name: &str,
    study: Uuid,
    request: Uuid,
    frontend_url: &str,
) -> Mail {
    let (subject, paragraph, link) = match news {
        ReportNews::Requested => (
            format!("[Cohort360] Rapport de faisabilité demandé : {request_name}"),
            format!(
                "Votre demande de rapport de faisabilité pour la requête « {request_name} » est en cours de traitement. Un e-mail vous préviendra quand il sera prêt."
            ),
            (
                "Ouvrir la requête",
                format!("{frontend_url}/cohort/new/{request}"),
            ),
        ),
        ReportNews::Ready => (
            format!("[Cohort360] Rapport de faisabilité prêt : {request_name}"),
            format!("Le rapport de faisabilité de la requête « {request_name} » est prêt."),
            (
                "Télécharger le rapport",
                format!("{frontend_url}/download/feasibility-studies/{study}/"),
            ),
        ),
        ReportNews::Failed => (
            format!("[Cohort360] Échec du rapport de faisabilité : {request_name}"),
            format!(
                "Le rapport de faisabilité de la requête « {request_name} » n'a pas pu être produit. Vous pouvez relancer la demande ; si l'échec persiste, contactez le support."
            ),
            (
                "Ouvrir la requête",
                format!("{frontend_url}/cohort/new/{request}"),
            ),
        ),
    };
    compose(to, subject, &[paragraph], (link.0, &link.1))
}

/// How an export is named in its e-mails: its format and target.
fn export_label(export: &domain::export::ExportState) -> String {
    format!(
        "{} {}",
        export.output_format.as_str().to_uppercase(),
        export.target_name
    )
}

/// "Your export was received" (upstream's `csv_export_received` / `hive_export_received`).
pub fn export_received(
    to: &Recipient,
    export: &domain::export::ExportState,
    frontend_url: &str,
) -> Mail {
    let label = export_label(export);
    let again = if export.retried {
        " (nouvelle tentative)"
    } else {
        ""
    };
    let target = match &export.datalab_name {
        Some(lab) => format!("La base sera créée dans le datalab « {lab} »."),
        None => "Un e-mail vous donnera le lien de téléchargement quand les fichiers seront prêts."
            .to_string(),
    };
    compose(
        to,
        format!("[Cohort360] Demande d'export reçue : {label}"),
        &[
            format!("Votre demande d'export {label}{again} est prise en charge."),
            target,
        ],
        ("Mes exports", &format!("{frontend_url}/exports")),
    )
}

/// "Your export is ready", with the download link (files) and the deletion date.
pub fn export_succeeded(
    to: &Recipient,
    export: &domain::export::ExportState,
    deleted_on: chrono::DateTime<chrono::Utc>,
    frontend_url: &str,
) -> Mail {
    let label = export_label(export);
    if export.output_format.is_file() {
        compose(
            to,
            format!("[Cohort360] Export prêt : {label}"),
            &[
                format!("Votre export {label} est prêt."),
                format!(
                    "Les fichiers seront supprimés le {} : téléchargez-les avant cette date.",
                    deleted_on.format("%d/%m/%Y")
                ),
            ],
            (
                "Télécharger l'export",
                &format!("{frontend_url}/download/exports/{}/", export.id),
            ),
        )
    } else {
        compose(
            to,
            format!("[Cohort360] Export prêt : {label}"),
            &[format!(
                "La base {} est disponible dans le datalab « {} ».",
                export.target_name,
                export.datalab_name.as_deref().unwrap_or_default()
            )],
            ("Mes exports", &format!("{frontend_url}/exports")),
        )
    }
}

/// "Your export failed" (to the owner).
pub fn export_failed(
    to: &Recipient,
    export: &domain::export::ExportState,
    frontend_url: &str,
) -> Mail {
    let label = export_label(export);
    compose(
        to,
        format!("[Cohort360] Échec de l'export : {label}"),
        &[format!(
            "Votre export {label} n'a pas pu être produit. L'équipe d'administration est prévenue ; vous pouvez aussi contacter le support."
        )],
        ("Mes exports", &format!("{frontend_url}/exports")),
    )
}

/// "An export failed" (to `ADMINS`): the details to investigate.
pub fn export_failed_admins(
    to: &Recipient,
    export: &domain::export::ExportState,
    frontend_url: &str,
) -> Mail {
    let duration = match (export.started_at, export.modified_at) {
        (Some(start), end) => format!("{} s", (end - start).num_seconds()),
        (None, _) => "non démarré".into(),
    };
    compose(
        to,
        format!("[Cohort360] Export en échec : {}", export.id),
        &[
            format!("Export : {} ({})", export.id, export_label(export)),
            format!("Propriétaire : {}", export.owner),
            format!("Demandé le : {}", export.requested_at.to_rfc3339()),
            format!(
                "Tâche de l'exporteur : {}",
                export.task_id.as_deref().unwrap_or("aucune")
            ),
            format!("Durée : {duration}"),
            format!(
                "Erreur : {}",
                export.fail_msg.as_deref().unwrap_or("non précisée")
            ),
        ],
        ("Cohort360", frontend_url),
    )
}

/// "Your export's files were deleted" (retention).
pub fn exported_files_deleted(
    to: &Recipient,
    export: &domain::export::ExportState,
    frontend_url: &str,
) -> Mail {
    let label = export_label(export);
    compose(
        to,
        format!("[Cohort360] Fichiers d'export supprimés : {label}"),
        &[format!(
            "Les fichiers de votre export {label} ont été supprimés à la fin de leur durée de conservation. Vous pouvez demander un nouvel export."
        )],
        ("Mes exports", &format!("{frontend_url}/exports")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mails_have_a_text_and_an_escaped_html_body() {
        let to = Recipient {
            name: "Alice Martin".into(),
            email: "alice@example.org".into(),
        };
        let mail = large_cohort_ready(&to, "<script>", "123", "https://c360.example");
        assert!(mail.text.contains("Bonjour Alice Martin"));
        assert!(
            mail.text
                .contains("https://c360.example/cohort?groupId=123")
        );
        let html = mail.html.unwrap();
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
    }
}
