//! The admin control socket: `<data_dir>/control.sock`, mode 0600, one JSON request and one
//! JSON response per line.
//!
//! ```text
//! {"op":"add","jid":"alice@example.org","password":"..."}  -> {"result":"done","jid":"alice@example.org"}
//! {"op":"passwd","jid":"alice@example.org","password":"..."} -> {"result":"done","jid":"..."}
//! {"op":"remove","jid":"alice@example.org"}                 -> {"result":"done","jid":"..."}
//! {"op":"list"} or {"op":"list","domain":"example.org"}     -> {"result":"users","users":[..]}
//! {"op":"ping"}                                              -> {"result":"pong"}
//! {"op":"invite_create","admin":false,"expires_secs":604800,"uses":1}
//!                                                            -> {"result":"invite","invite":{..}}
//! {"op":"invite_list"}                                       -> {"result":"invites","invites":[..]}
//! {"op":"invite_revoke","token":"..."}                      -> {"result":"revoked"}
//! failures                      -> {"result":"error","kind":"no_such_user","message":"..."}
//! ```

use std::io::ErrorKind as IoKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zeroize::{Zeroize, Zeroizing};

use super::{AdminError, ErrorKind};
use crate::config::Config;
use crate::storage::Storage;

/// Longest request line accepted (a JID and a password fit easily).
const MAX_LINE: usize = 64 * 1024;
/// How long a connection may sit idle between requests, and how long the client waits.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// A password in transit: redacted in `Debug`, wiped from memory on drop.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Password(String);

impl Password {
    pub fn new(s: impl Into<String>) -> Self {
        Password(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl Drop for Password {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Add {
        jid: String,
        password: Password,
    },
    Passwd {
        jid: String,
        password: Password,
    },
    Remove {
        jid: String,
    },
    List {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        domain: Option<String>,
    },
    Ping,
    /// An account invitation (XEP-0445 token), optionally making the account an admin.
    InviteCreate {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        domain: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        #[serde(default)]
        admin: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_secs: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uses: Option<u32>,
    },
    InviteList,
    InviteRevoke {
        token: String,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Invite {
        invite: super::invites::InviteInfo,
    },
    Invites {
        invites: Vec<super::invites::InviteInfo>,
    },
    Revoked,
    /// The operation was carried out on this (normalized) account.
    Done {
        jid: String,
    },
    Users {
        users: Vec<String>,
    },
    Pong,
    Error {
        kind: ErrorKind,
        message: String,
    },
}

/// What changed through the control socket, for the server to act on (e.g. close the
/// sessions of a removed account).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminEvent {
    Added(String),
    PasswordChanged(String),
    Removed(String),
}

type EventHook = Arc<dyn Fn(AdminEvent) + Send + Sync>;
type Listeners = Arc<
    Vec<(
        crate::config::ListenerKind,
        crate::config::TlsMode,
        std::net::SocketAddr,
    )>,
>;

/// A bound control socket, not yet serving.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    /// Our uid (the socket file's owner): only it and root may send requests.
    owner_uid: u32,
    hook: Option<EventHook>,
    /// The server's bound listeners, for invitation landing-page URLs.
    listeners: Listeners,
}

impl ControlServer {
    /// Binds `path` with mode 0600, creating its directory with mode 0700 if needed.
    /// A stale socket left by a dead server is removed; a live one is an error.
    /// Must be called inside a tokio runtime.
    pub fn bind(path: &Path) -> Result<ControlServer, AdminError> {
        let ctl = |reason: String| AdminError::Control {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            super::ensure_data_dir(dir).map_err(|e| ctl(format!("creating directory: {e}")))?;
        }
        remove_stale(path)?;
        // Bind under a temporary name and rename into place once the mode is 0600, so the
        // socket is never reachable with the umask's permissions.
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "control.sock".into());
        let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(|e| ctl(format!("bind: {e}")))?;
        let finish = (|| {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            let uid = std::fs::metadata(&tmp)?.uid();
            std::fs::rename(&tmp, path)?;
            Ok::<_, std::io::Error>(uid)
        })();
        let owner_uid = match finish {
            Ok(uid) => uid,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(ctl(format!("setting up socket: {e}")));
            }
        };
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
            owner_uid,
            hook: None,
            listeners: Listeners::default(),
        })
    }

    /// Calls `hook` after each successful change (from the serving task; keep it quick).
    pub fn on_event(mut self, hook: impl Fn(AdminEvent) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// The server's bound listeners (invitation landing pages are on its HTTPS one).
    pub fn with_listeners(
        mut self,
        listeners: Vec<(
            crate::config::ListenerKind,
            crate::config::TlsMode,
            std::net::SocketAddr,
        )>,
    ) -> Self {
        self.listeners = Arc::new(listeners);
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `shutdown` is cancelled, then removes the socket file and waits for
    /// requests in progress.
    pub async fn serve(self, storage: Storage, config: Arc<Config>, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        tracing::info!(path = %self.path.display(), "admin control socket listening");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let ctx = Conn {
                            storage: storage.clone(),
                            config: config.clone(),
                            hook: self.hook.clone(),
                            owner_uid: self.owner_uid,
                            listeners: self.listeners.clone(),
                        };
                        let shutdown = shutdown.clone();
                        tracker.spawn(async move { ctx.run(stream, shutdown).await });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        // E.g. out of file descriptors: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
            }
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::debug!(error = %e, "removing control socket");
        }
        tracker.close();
        tracker.wait().await;
    }
}

/// Binds and serves in one call; see [`ControlServer`].
pub async fn serve_control(
    path: &Path,
    storage: Storage,
    config: Arc<Config>,
    shutdown: CancellationToken,
) -> Result<(), AdminError> {
    ControlServer::bind(path)?
        .serve(storage, config, shutdown)
        .await;
    Ok(())
}

fn remove_stale(path: &Path) -> Result<(), AdminError> {
    let ctl = |reason: String| AdminError::Control {
        path: path.to_path_buf(),
        reason,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == IoKind::NotFound => return Ok(()),
        Err(e) => return Err(ctl(e.to_string())),
    };
    if !meta.file_type().is_socket() {
        return Err(ctl("exists and is not a socket; not touching it".into()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ctl(
            "another xmppd is already serving this data directory".into()
        )),
        Err(e) if e.kind() == IoKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing stale control socket");
            std::fs::remove_file(path).map_err(|e| ctl(format!("removing stale socket: {e}")))
        }
        Err(e) => Err(ctl(format!("probing existing socket: {e}"))),
    }
}

struct Conn {
    storage: Storage,
    config: Arc<Config>,
    hook: Option<EventHook>,
    owner_uid: u32,
    listeners: Listeners,
}

impl Conn {
    async fn run(self, stream: UnixStream, shutdown: CancellationToken) {
        // The 0600 mode already limits this to our user; checking the peer too guards
        // against a socket directory with looser permissions set up by hand.
        match stream.peer_cred() {
            Ok(c) if c.uid() == self.owner_uid || c.uid() == 0 => {}
            Ok(c) => {
                tracing::warn!(
                    uid = c.uid(),
                    "control socket: refused connection from another user"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket: cannot identify peer");
                return;
            }
        }
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        loop {
            let mut line = Zeroizing::new(Vec::new());
            let mut limited = (&mut rd).take(MAX_LINE as u64 + 1);
            let read = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = tokio::time::timeout(
                    IO_TIMEOUT,
                    limited.read_until(b'\n', &mut line),
                ) => r,
            };
            let n = match read {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "control socket read");
                    return;
                }
                Err(_) => return, // idle
            };
            if n == 0 {
                return;
            }
            let too_long = line.len() > MAX_LINE;
            let response = if too_long {
                bad_request(format!("request longer than {MAX_LINE} bytes"))
            } else {
                match serde_json::from_slice::<Request>(&line) {
                    Ok(req) => self.handle(req).await,
                    // serde_json's message can quote input (a password): say only where.
                    Err(e) => bad_request(format!(
                        "not a valid request (line {}, column {}); see the admin::control docs",
                        e.line(),
                        e.column()
                    )),
                }
            };
            if write_json(&mut wr, &response).await.is_err() || too_long {
                return;
            }
        }
    }

    async fn handle(&self, req: Request) -> Response {
        let (storage, cfg) = (&self.storage, &*self.config);
        let result = match &req {
            Request::Add { jid, password } => super::add_user(storage, cfg, jid, password.as_str())
                .await
                .map(|j| {
                    (
                        Response::Done { jid: j.clone() },
                        Some(AdminEvent::Added(j)),
                    )
                }),
            Request::Passwd { jid, password } => {
                super::set_password(storage, cfg, jid, password.as_str())
                    .await
                    .map(|j| {
                        (
                            Response::Done { jid: j.clone() },
                            Some(AdminEvent::PasswordChanged(j)),
                        )
                    })
            }
            Request::Remove { jid } => super::remove_user(storage, jid).await.map(|j| {
                (
                    Response::Done { jid: j.clone() },
                    Some(AdminEvent::Removed(j)),
                )
            }),
            Request::List { domain } => super::list_users(storage, domain.as_deref())
                .await
                .map(|users| (Response::Users { users }, None)),
            Request::Ping => Ok((Response::Pong, None)),
            Request::InviteCreate {
                domain,
                username,
                admin,
                expires_secs,
                uses,
            } => {
                let spec = super::invites::InviteSpec {
                    domain: domain.clone(),
                    username: username.clone(),
                    register: true,
                    admin: *admin,
                    expires_secs: *expires_secs,
                    uses: *uses,
                    privileged: true,
                    inviter: None,
                };
                super::invites::create(storage, cfg, spec).await.map(|i| {
                    let invite = super::invites::info(cfg, &self.listeners, &i);
                    (Response::Invite { invite }, None)
                })
            }
            Request::InviteList => super::invites::list(storage).await.map(|all| {
                let invites = all
                    .iter()
                    .map(|i| super::invites::info(cfg, &self.listeners, i))
                    .collect();
                (Response::Invites { invites }, None)
            }),
            Request::InviteRevoke { token } => super::invites::revoke(storage, token)
                .await
                .map(|()| (Response::Revoked, None)),
        };
        match result {
            Ok((resp, event)) => {
                if let (Some(hook), Some(ev)) = (&self.hook, event) {
                    hook(ev);
                }
                resp
            }
            Err(e) => {
                if e.kind() == ErrorKind::Internal {
                    tracing::error!(error = %e, "control request failed");
                }
                Response::Error {
                    kind: e.kind(),
                    message: e.to_string(),
                }
            }
        }
    }
}

fn bad_request(message: String) -> Response {
    Response::Error {
        kind: ErrorKind::BadRequest,
        message,
    }
}

async fn write_json<W: AsyncWriteExt + Unpin, T: Serialize>(
    w: &mut W,
    v: &T,
) -> std::io::Result<()> {
    let mut buf = Zeroizing::new(serde_json::to_vec(v).map_err(std::io::Error::other)?);
    buf.push(b'\n');
    w.write_all(&buf).await?;
    w.flush().await
}

/// Sends one request to a running server. Error responses come back as
/// `Err(AdminError::Remote)`; `Err(AdminError::NotRunning)` when nothing listens at `path`.
pub async fn request(path: &Path, req: &Request) -> Result<Response, AdminError> {
    let ctl = |reason: String| AdminError::Control {
        path: path.to_path_buf(),
        reason,
    };
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), IoKind::NotFound | IoKind::ConnectionRefused) => {
            return Err(AdminError::NotRunning {
                path: path.to_path_buf(),
            });
        }
        Err(e) => return Err(ctl(format!("connect: {e}"))),
    };
    let (rd, mut wr) = stream.into_split();
    write_json(&mut wr, req)
        .await
        .map_err(|e| ctl(format!("send: {e}")))?;
    let mut line = Vec::new();
    let mut rd = BufReader::new(rd).take(16 * 1024 * 1024);
    match tokio::time::timeout(IO_TIMEOUT, rd.read_until(b'\n', &mut line)).await {
        Err(_) => return Err(ctl("no response within 60 s".into())),
        Ok(Err(e)) => return Err(ctl(format!("receive: {e}"))),
        Ok(Ok(0)) => return Err(ctl("server closed the connection without answering".into())),
        Ok(Ok(_)) => {}
    }
    match serde_json::from_slice::<Response>(&line) {
        Ok(Response::Error { kind, message }) => Err(AdminError::Remote { kind, message }),
        Ok(r) => Ok(r),
        Err(e) => Err(ctl(format!("malformed response: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VhostConfig;
    use crate::storage::Storage;
    use std::sync::Mutex;

    fn config(dir: &Path) -> Arc<Config> {
        let mut cfg = Config {
            data_dir: dir.to_path_buf(),
            vhosts: vec![VhostConfig {
                domain: "example.test".into(),
                certificate: None,
                key: None,
            }],
            ..Config::default()
        };
        cfg.c2s.scram_iterations = 4096;
        Arc::new(cfg)
    }

    #[tokio::test]
    async fn requests_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let cfg = config(&data);
        let path = crate::admin::control_socket_path(&cfg);
        let storage = Storage::memory();
        let accounts = storage.accounts.clone();
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let server = ControlServer::bind(&path)
            .unwrap()
            .on_event(move |e| ev.lock().unwrap().push(e));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let token = CancellationToken::new();
        let task = tokio::spawn(server.serve(storage, cfg.clone(), token.clone()));

        assert_eq!(
            request(&path, &Request::Ping).await.unwrap(),
            Response::Pong
        );
        let add = Request::Add {
            jid: "Alice@example.test".into(),
            password: Password::new("s3cret"),
        };
        assert_eq!(
            request(&path, &add).await.unwrap(),
            Response::Done {
                jid: "alice@example.test".into()
            }
        );
        assert!(
            accounts
                .get(&crate::addr::parse_bare("alice@example.test").unwrap())
                .await
                .unwrap()
                .is_some()
        );
        let e = request(&path, &add).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UserExists);
        assert_eq!(e.to_string(), "user alice@example.test already exists");

        let passwd = Request::Passwd {
            jid: "alice@example.test".into(),
            password: Password::new("other"),
        };
        request(&path, &passwd).await.unwrap();
        assert_eq!(
            request(&path, &Request::List { domain: None })
                .await
                .unwrap(),
            Response::Users {
                users: vec!["alice@example.test".into()]
            }
        );
        let remove = Request::Remove {
            jid: "alice@example.test".into(),
        };
        request(&path, &remove).await.unwrap();
        let e = request(&path, &remove).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoSuchUser);
        assert_eq!(
            *events.lock().unwrap(),
            vec![
                AdminEvent::Added("alice@example.test".into()),
                AdminEvent::PasswordChanged("alice@example.test".into()),
                AdminEvent::Removed("alice@example.test".into()),
            ]
        );

        // A second server on the same live socket is refused.
        assert!(matches!(
            ControlServer::bind(&path),
            Err(AdminError::Control { .. })
        ));

        // Garbage gets an error response, and the connection stays usable.
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(b"{\"op\":\"add\",\"password\":\"hunter2\"}\n{\"op\":\"ping\"}\n")
            .await
            .unwrap();
        let mut out = String::new();
        let mut r = BufReader::new(&mut s);
        r.read_line(&mut out).await.unwrap();
        assert!(out.contains("\"kind\":\"bad_request\""), "{out}");
        assert!(!out.contains("hunter2"), "{out}");
        out.clear();
        r.read_line(&mut out).await.unwrap();
        assert_eq!(out, "{\"result\":\"pong\"}\n");
        drop(s);

        token.cancel();
        task.await.unwrap();
        assert!(!path.exists());
        assert!(matches!(
            request(&path, &Request::Ping).await,
            Err(AdminError::NotRunning { .. })
        ));
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_and_other_files_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        // A socket nobody listens on any more.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let server = ControlServer::bind(&path).unwrap();
        let token = CancellationToken::new();
        let cfg = config(dir.path());
        let task = tokio::spawn(server.serve(Storage::memory(), cfg, token.clone()));
        assert_eq!(
            request(&path, &Request::Ping).await.unwrap(),
            Response::Pong
        );
        token.cancel();
        task.await.unwrap();

        std::fs::write(&path, b"not a socket").unwrap();
        assert!(ControlServer::bind(&path).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    }

    #[test]
    fn password_is_redacted_and_wire_format_is_stable() {
        let req = Request::Add {
            jid: "a@b".into(),
            password: Password::new("hunter2"),
        };
        assert!(!format!("{req:?}").contains("hunter2"));
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"op":"add","jid":"a@b","password":"hunter2"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"list"}"#).unwrap(),
            Request::List { domain: None }
        );
        let resp = Response::Error {
            kind: ErrorKind::NoSuchUser,
            message: "no such user: a@b".into(),
        };
        assert_eq!(
            serde_json::to_string(&resp).unwrap(),
            r#"{"result":"error","kind":"no_such_user","message":"no such user: a@b"}"#
        );
    }
}
