//! A minimal SMTP server on loopback that keeps what it receives (enough for lettre).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One received message.
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

impl Received {
    /// The message with quoted-printable soft line breaks and `=3D` undone (enough to search
    /// ASCII text and links in it).
    pub fn unfolded(&self) -> String {
        self.data
            .replace("=\r\n", "")
            .replace("=\n", "")
            .replace("=3D", "=")
    }
}

/// The running server.
pub struct SmtpServer {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

fn address(line: &str) -> String {
    line.split_once(':')
        .map(|(_, a)| {
            a.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
        .unwrap_or_default()
}

/// How a test SMTP server secures its connections.
#[derive(Clone)]
pub enum SmtpTls {
    /// Plain SMTP.
    None,
    /// Plain, with STARTTLS offered (and required before MAIL).
    StartTls(tokio_rustls::TlsAcceptor),
    /// TLS from the first byte.
    Implicit(tokio_rustls::TlsAcceptor),
}

/// What a session ended with.
enum Ended {
    Closed,
    /// The client asked for STARTTLS and was told to go ahead.
    StartTls,
}

/// One SMTP conversation over `stream`; `offer_starttls` advertises (and requires) STARTTLS.
async fn converse<S>(
    stream: S,
    store: &Arc<Mutex<Vec<Received>>>,
    offer_starttls: bool,
    greet: bool,
) -> std::io::Result<(Ended, S)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = BufReader::new(read);
    if greet {
        write.write_all(b"220 test.local ESMTP\r\n").await?;
    }
    let mut current = Received::default();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok((Ended::Closed, reader.into_inner().unsplit(write)));
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            if offer_starttls {
                b"250-test.local\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
            } else {
                b"250-test.local\r\n250 8BITMIME\r\n"
            }
        } else if upper.starts_with("STARTTLS") && offer_starttls {
            write.write_all(b"220 go ahead\r\n").await?;
            return Ok((Ended::StartTls, reader.into_inner().unsplit(write)));
        } else if upper.starts_with("HELO")
            || upper.starts_with("RSET")
            || upper.starts_with("NOOP")
        {
            b"250 OK\r\n"
        } else if upper.starts_with("MAIL FROM") && offer_starttls {
            b"530 must issue STARTTLS first\r\n"
        } else if upper.starts_with("MAIL FROM") {
            current = Received {
                from: address(&line),
                ..Received::default()
            };
            b"250 OK\r\n"
        } else if upper.starts_with("RCPT TO") {
            current.to.push(address(&line));
            b"250 OK\r\n"
        } else if upper.starts_with("DATA") {
            write.write_all(b"354 end with .\r\n").await?;
            let mut data = String::new();
            let mut l = String::new();
            loop {
                l.clear();
                if reader.read_line(&mut l).await? == 0 {
                    break;
                }
                let text = l.trim_end_matches(['\r', '\n']);
                if text == "." {
                    break;
                }
                data.push_str(text);
                data.push('\n');
            }
            current.data = data;
            store
                .lock()
                .expect("lock")
                .push(std::mem::take(&mut current));
            b"250 queued\r\n"
        } else if upper.starts_with("QUIT") {
            write.write_all(b"221 bye\r\n").await?;
            return Ok((Ended::Closed, reader.into_inner().unsplit(write)));
        } else {
            b"502 not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
}

async fn session(
    stream: tokio::net::TcpStream,
    store: Arc<Mutex<Vec<Received>>>,
    tls: SmtpTls,
) -> std::io::Result<()> {
    match tls {
        SmtpTls::None => {
            converse(stream, &store, false, true).await?;
        }
        SmtpTls::Implicit(acceptor) => {
            let stream = acceptor.accept(stream).await?;
            converse(stream, &store, false, true).await?;
        }
        SmtpTls::StartTls(acceptor) => {
            let (ended, stream) = converse(stream, &store, true, true).await?;
            if let Ended::StartTls = ended {
                let stream = acceptor.accept(stream).await?;
                // The client greets again (EHLO) over TLS; no banner is sent.
                converse(stream, &store, false, false).await?;
            }
        }
    }
    Ok(())
}

impl SmtpServer {
    pub async fn start() -> Self {
        Self::start_with(SmtpTls::None).await
    }

    /// A server securing its connections as `tls` says.
    pub async fn start_with(tls: SmtpTls) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(session(stream, store.clone(), tls.clone()));
            }
        });
        Self {
            port,
            received,
            task,
        }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    pub fn stop(self) {
        self.task.abort();
    }
}
