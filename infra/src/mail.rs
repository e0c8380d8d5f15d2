//! E-mails over SMTP: plain to a local relay, or STARTTLS, or implicit TLS (`SMTP_SECURITY`),
//! trusting the system's roots and `TLS_CA_FILE`.

use std::time::Duration;

use async_trait::async_trait;
use commands::ports::{Mail, Mailer, PortError};
use lettre::message::MultiPart;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::Tls;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// Where and as whom to send.
#[derive(Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `From:` address.
    pub sender: String,
    pub timeout: Duration,
    pub security: SmtpSecurity,
    /// CAs trusted beside the system's.
    pub tls: crate::tls::TlsSettings,
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain SMTP (a relay on the same host or network).
    #[default]
    None,
    /// Plain connection upgraded with STARTTLS, which is required (port 587, usually).
    StartTls,
    /// TLS from the first byte (port 465, usually).
    Tls,
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SmtpSettings({}:{}, from {})",
            self.host, self.port, self.sender
        )
    }
}

/// [`Mailer`] over SMTP.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    sender: String,
}

impl SmtpMailer {
    pub fn new(settings: &SmtpSettings) -> Result<Self, crate::tls::TlsError> {
        let tls = match settings.security {
            SmtpSecurity::None => Tls::None,
            SmtpSecurity::StartTls => {
                Tls::Required(crate::tls::smtp_tls(&settings.host, &settings.tls)?)
            }
            SmtpSecurity::Tls => Tls::Wrapper(crate::tls::smtp_tls(&settings.host, &settings.tls)?),
        };
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.host.clone())
                .port(settings.port)
                .timeout(Some(settings.timeout))
                .tls(tls);
        if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(Self {
            transport: builder.build(),
            sender: settings.sender.clone(),
        })
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, mail: Mail) -> Result<(), PortError> {
        let invalid = |e: &dyn std::fmt::Display| PortError(format!("invalid e-mail: {e}"));
        let builder = Message::builder()
            .from(self.sender.parse().map_err(|e| invalid(&e))?)
            .to(mail.to.parse().map_err(|e| invalid(&e))?)
            .subject(mail.subject);
        let message = match mail.html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(mail.text, html)),
            None => builder.header(ContentType::TEXT_PLAIN).body(mail.text),
        }
        .map_err(|e| invalid(&e))?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| PortError(format!("SMTP: {e}")))
    }
}
