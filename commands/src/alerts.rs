//! Access-expiry alerts: warn holders N days before their accesses end, once.
//!
//! Each alert is first claimed on the Access aggregate (`AccessExpiryAlertRecorded`), then sent:
//! a second run the same day, or a second instance, finds the claim and sends nothing. A mail
//! that fails after its claim is logged, not retried (never twice beats at least once here).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use domain::access::{AccessCommand, AccessError};

use crate::context::CommandContext;
use crate::error::CommandError;
use crate::identity::{Identity, IdentityError};
use crate::ports::{Mail, Mailer};

/// A valid access ending on a given day, with what the mail needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiringAccess {
    pub access_id: i64,
    pub username: String,
    pub firstname: String,
    pub lastname: String,
    pub email: Option<String>,
    pub perimeter: String,
    pub role: String,
    pub end: DateTime<Utc>,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertReport {
    pub mails_sent: usize,
    pub already_alerted: usize,
    pub without_email: usize,
    pub failed: usize,
}

fn mail_for(user: &[&ExpiringAccess], days_before: i64) -> Option<Mail> {
    let first = user.first()?;
    let to = first.email.clone()?;
    let lines: Vec<String> = user
        .iter()
        .map(|a| {
            format!(
                "  - {} sur {} (fin le {})",
                a.role,
                a.perimeter,
                a.end.format("%d/%m/%Y")
            )
        })
        .collect();
    Some(Mail {
        to,
        subject: format!("[Cohort360] Vos accès expirent dans {days_before} jours"),
        text: format!(
            "Bonjour {} {},\n\nLes accès suivants à Cohort360 expirent dans {days_before} jours :\n{}\n\n\
             Contactez votre gestionnaire d'accès pour les prolonger.\n",
            first.firstname,
            first.lastname,
            lines.join("\n")
        ),
        html: None,
    })
}

impl Identity {
    /// Sends today's alerts for accesses ending `days_before` days from `today` (each value of
    /// the list), one mail per user.
    pub async fn send_expiry_alerts(
        &self,
        ctx: &CommandContext,
        today: NaiveDate,
        days_before: &[i64],
        mailer: &dyn Mailer,
    ) -> Result<AlertReport, IdentityError> {
        let mut report = AlertReport::default();
        for &days in days_before {
            let ending = self
                .directory()
                .accesses_ending_on(today + Duration::days(days), ctx.at)
                .await?;
            let mut by_user: BTreeMap<&str, Vec<&ExpiringAccess>> = BTreeMap::new();
            for access in &ending {
                by_user.entry(&access.username).or_default().push(access);
            }
            for accesses in by_user.values() {
                if accesses.iter().all(|a| a.email.is_none()) {
                    report.without_email += 1;
                    continue;
                }
                let mut claimed = Vec::new();
                for access in accesses {
                    let claim = AccessCommand::RecordExpiryAlert {
                        alert_date: today,
                        days_before: days,
                        at: ctx.at,
                    };
                    match self
                        .access_bus()
                        .execute(&access.access_id.to_string(), claim, ctx)
                        .await
                    {
                        Ok(_) => claimed.push(*access),
                        Err(CommandError::Rejected(AccessError::AlreadyAlerted)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                let Some(mail) = mail_for(&claimed, days) else {
                    report.already_alerted += 1;
                    continue;
                };
                match mailer.send(mail).await {
                    Ok(()) => report.mails_sent += 1,
                    Err(e) => {
                        tracing::error!(user = %claimed[0].username, error = %e, "expiry alert not sent");
                        report.failed += 1;
                    }
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn one_mail_lists_every_access_of_the_user() {
        let access = |id, perimeter: &str| ExpiringAccess {
            access_id: id,
            username: "u".into(),
            firstname: "Léa".into(),
            lastname: "Martin".into(),
            email: Some("lea@example.org".into()),
            perimeter: perimeter.into(),
            role: "Lecteur".into(),
            end: Utc.with_ymd_and_hms(2026, 12, 23, 10, 0, 0).unwrap(),
        };
        let (a, b) = (access(1, "P1"), access(2, "P2"));
        let mail = mail_for(&[&a, &b], 30).unwrap();
        assert_eq!(mail.to, "lea@example.org");
        assert!(mail.subject.contains("30 jours"));
        assert!(mail.text.contains("P1") && mail.text.contains("P2"));
        assert!(mail.text.contains("23/12/2026"));
        assert_eq!(mail_for(&[], 30), None);
    }
}
