//! Server side of SCRAM (RFC 5802, RFC 7677) with channel binding (RFC 5929, RFC 9266).

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::credentials::ScramCredentials;
use super::error::SaslError;

/// Iteration count shown to unknown users unless the caller sets the configured one
/// (matches the default of `c2s.scram_iterations`).
pub const DEFAULT_UNKNOWN_USER_ITERATIONS: u32 = 10_000;

/// Random bytes in the server's part of the nonce (base64-encoded on the wire).
const SERVER_NONCE_BYTES: usize = 24;

/// Length of salts we generate, real or fake, so the two cannot be told apart.
pub(crate) const SALT_LEN: usize = 16;

/// The hash function underlying a SCRAM mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScramHash {
    Sha1,
    Sha256,
}

impl ScramHash {
    /// Output length of the hash in bytes.
    pub fn output_len(self) -> usize {
        match self {
            ScramHash::Sha1 => 20,
            ScramHash::Sha256 => 32,
        }
    }

    /// H(data).
    pub(crate) fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => Sha1::digest(data).to_vec(),
            ScramHash::Sha256 => Sha256::digest(data).to_vec(),
        }
    }

    /// HMAC(key, data).
    pub(crate) fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        // HMAC takes keys of any length (long ones are hashed), so new_from_slice cannot fail.
        match self {
            ScramHash::Sha1 => {
                let mut mac =
                    Hmac::<Sha1>::new_from_slice(key).expect("HMAC accepts any key length");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            ScramHash::Sha256 => {
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    /// Hi(password, salt, i) = PBKDF2 with HMAC-H, output one hash length.
    pub(crate) fn hi(self, password: &[u8], salt: &[u8], iterations: u32) -> Zeroizing<Vec<u8>> {
        #[cfg(test)]
        PBKDF2_RUNS.with(|r| {
            let (runs, total) = r.get();
            r.set((runs + 1, total + u64::from(iterations)));
        });
        let mut out = Zeroizing::new(vec![0u8; self.output_len()]);
        match self {
            ScramHash::Sha1 => pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out),
            ScramHash::Sha256 => {
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out)
            }
        }
        out
    }

    fn label(self) -> &'static [u8] {
        match self {
            ScramHash::Sha1 => b"SHA-1",
            ScramHash::Sha256 => b"SHA-256",
        }
    }
}

#[cfg(test)]
thread_local! {
    /// PBKDF2 runs on this thread and their iterations in all: lets tests check that a code
    /// path does the expensive work, without measuring time.
    pub(crate) static PBKDF2_RUNS: std::cell::Cell<(u32, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// SASL mechanisms we implement, in order of preference (strongest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    ScramSha256Plus,
    ScramSha1Plus,
    ScramSha256,
    ScramSha1,
    Plain,
}

impl Mechanism {
    /// All mechanisms, strongest first.
    pub const ALL: [Mechanism; 5] = [
        Mechanism::ScramSha256Plus,
        Mechanism::ScramSha1Plus,
        Mechanism::ScramSha256,
        Mechanism::ScramSha1,
        Mechanism::Plain,
    ];

    /// The IANA-registered mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
            Mechanism::ScramSha1Plus => "SCRAM-SHA-1-PLUS",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::Plain => "PLAIN",
        }
    }

    /// Exact (case-sensitive, as SASL names are upper case) lookup by name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// For SCRAM mechanisms: the hash and whether it is a -PLUS (channel-binding) variant.
    pub fn scram(self) -> Option<(ScramHash, bool)> {
        match self {
            Mechanism::ScramSha256Plus => Some((ScramHash::Sha256, true)),
            Mechanism::ScramSha1Plus => Some((ScramHash::Sha1, true)),
            Mechanism::ScramSha256 => Some((ScramHash::Sha256, false)),
            Mechanism::ScramSha1 => Some((ScramHash::Sha1, false)),
            Mechanism::Plain => None,
        }
    }
}

/// Channel-binding types we support.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelBindingType {
    /// RFC 9266.
    TlsExporter,
    /// RFC 5929 §4.
    TlsServerEndPoint,
}

impl ChannelBindingType {
    /// The registered channel-binding type name (as used in gs2 `p=` and XEP-0440).
    pub fn name(self) -> &'static str {
        match self {
            ChannelBindingType::TlsExporter => "tls-exporter",
            ChannelBindingType::TlsServerEndPoint => "tls-server-end-point",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "tls-exporter" => Some(ChannelBindingType::TlsExporter),
            "tls-server-end-point" => Some(ChannelBindingType::TlsServerEndPoint),
            _ => None,
        }
    }
}

/// Channel-binding data the TLS layer can provide for this connection (None when unavailable).
#[derive(Clone, Debug, Default)]
pub struct ChannelBindings {
    pub tls_exporter: Option<Vec<u8>>,
    pub tls_server_end_point: Option<Vec<u8>>,
}

impl ChannelBindings {
    /// Types with data present, preferred first (tls-exporter, then tls-server-end-point).
    pub fn available(&self) -> Vec<ChannelBindingType> {
        let mut v = Vec::with_capacity(2);
        if self.tls_exporter.is_some() {
            v.push(ChannelBindingType::TlsExporter);
        }
        if self.tls_server_end_point.is_some() {
            v.push(ChannelBindingType::TlsServerEndPoint);
        }
        v
    }

    /// No channel binding possible (no -PLUS mechanism should be offered).
    pub fn is_empty(&self) -> bool {
        self.tls_exporter.is_none() && self.tls_server_end_point.is_none()
    }

    pub(crate) fn get(&self, ty: ChannelBindingType) -> Option<&[u8]> {
        match ty {
            ChannelBindingType::TlsExporter => self.tls_exporter.as_deref(),
            ChannelBindingType::TlsServerEndPoint => self.tls_server_end_point.as_deref(),
        }
    }
}

/// What the client-first-message told us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFirst {
    /// Authentication identity: `=2C`/`=3D` decoded, then SASLprep'd.
    pub username: String,
    /// Requested authorization identity, `=2C`/`=3D` decoded, otherwise as sent (not prepared:
    /// it is a JID, which the caller validates).
    pub authzid: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitClientFirst,
    AwaitServerFirst,
    AwaitClientFinal,
    Done,
    Failed,
}

/// One server-side SCRAM exchange: `client_first` → `server_first` → `client_final`.
///
/// Any error (or a call out of order) puts the exchange in a failed state; every later call then
/// fails too (`server_first` returns an empty message), so a new `ScramServer` is needed per attempt.
pub struct ScramServer {
    hash: ScramHash,
    plus: bool,
    plus_offered: bool,
    bindings: ChannelBindings,
    unknown_user_iterations: u32,
    state: State,
    /// Test hook: fixed server nonce part instead of a random one.
    fixed_server_nonce: Option<String>,
    // Set by client_first.
    gs2_header: String,
    cb_type: Option<ChannelBindingType>,
    client_first_bare: String,
    client_nonce: String,
    username: String,
    /// Normalised account name, when the caller set one (for fake salts).
    account: Option<String>,
    // Set by server_first.
    nonce: String,
    server_first: String,
    creds: Option<ScramCredentials>,
    known_user: bool,
}

impl ScramServer {
    /// `plus_offered`: whether any -PLUS mechanism was advertised on this stream (for the gs2 'y' rule).
    pub fn new(hash: ScramHash, plus: bool, plus_offered: bool, bindings: ChannelBindings) -> Self {
        ScramServer {
            hash,
            plus,
            plus_offered,
            bindings,
            unknown_user_iterations: DEFAULT_UNKNOWN_USER_ITERATIONS,
            state: State::AwaitClientFirst,
            fixed_server_nonce: None,
            gs2_header: String::new(),
            cb_type: None,
            client_first_bare: String::new(),
            client_nonce: String::new(),
            username: String::new(),
            account: None,
            nonce: String::new(),
            server_first: String::new(),
            creds: None,
            known_user: false,
        }
    }

    /// Iteration count announced to unknown users; set it to the configured
    /// `c2s.scram_iterations` so fake challenges look like real ones.
    pub fn set_unknown_user_iterations(&mut self, iterations: u32) {
        self.unknown_user_iterations = iterations.max(1);
    }

    /// The normalised name the account is looked up under (the bare JID). A fake salt for an
    /// unknown user is derived from it, so every spelling of one name (`Juliet`, `juliet`)
    /// gets the same salt, as it would for a real account. Unset: the SASLprep'd username.
    pub fn set_account_name(&mut self, name: &str) {
        self.account = Some(name.to_owned());
    }

    /// The channel-binding type the client used (after a successful `client_first` with `p=`).
    pub fn channel_binding(&self) -> Option<ChannelBindingType> {
        self.cb_type
    }

    #[cfg(test)]
    pub(crate) fn set_server_nonce(&mut self, nonce: &str) {
        self.fixed_server_nonce = Some(nonce.to_owned());
    }

    /// Parses client-first-message (raw bytes, already base64-decoded).
    ///
    /// Errors:
    /// - `MalformedRequest`: not UTF-8, bad gs2 header syntax, empty/badly escaped username or
    ///   authzid, a mandatory extension (`m=`), missing or invalid nonce, bad extension syntax.
    /// - `NotAuthorized`: every channel-binding disagreement (they are downgrade or MITM
    ///   symptoms, not syntax errors): `y` while a -PLUS mechanism was offered; `p=` with a
    ///   non-PLUS mechanism; `n`/`y` with a -PLUS mechanism; `p=` naming a type that is unknown
    ///   (e.g. tls-unique) or whose data the TLS layer cannot provide. Also a username failing
    ///   SASLprep (no account can have it).
    pub fn client_first(&mut self, msg: &[u8]) -> Result<ClientFirst, SaslError> {
        if self.state != State::AwaitClientFirst {
            self.state = State::Failed;
            return Err(SaslError::MalformedRequest);
        }
        match self.parse_client_first(msg) {
            Ok(cf) => {
                self.state = State::AwaitServerFirst;
                Ok(cf)
            }
            Err(e) => {
                self.state = State::Failed;
                Err(e)
            }
        }
    }

    fn parse_client_first(&mut self, msg: &[u8]) -> Result<ClientFirst, SaslError> {
        let msg = std::str::from_utf8(msg).map_err(|_| SaslError::MalformedRequest)?;
        let (flag, rest) = msg.split_once(',').ok_or(SaslError::MalformedRequest)?;
        let (authz, bare) = rest.split_once(',').ok_or(SaslError::MalformedRequest)?;
        let gs2_header = &msg[..flag.len() + authz.len() + 2];

        enum Flag<'a> {
            N,
            Y,
            P(&'a str),
        }
        let flag = match flag {
            "n" => Flag::N,
            "y" => Flag::Y,
            _ => match flag.strip_prefix("p=") {
                Some(name)
                    if !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') =>
                {
                    Flag::P(name)
                }
                _ => return Err(SaslError::MalformedRequest),
            },
        };

        let authzid = if authz.is_empty() {
            None
        } else {
            let v = authz
                .strip_prefix("a=")
                .ok_or(SaslError::MalformedRequest)?;
            Some(decode_saslname(v)?)
        };

        let mut attrs = bare.split(',');
        let user_attr = attrs.next().ok_or(SaslError::MalformedRequest)?;
        // We implement no mandatory extensions (RFC 5802 §7 reserved-mext), so any is an error.
        if user_attr.starts_with("m=") {
            return Err(SaslError::MalformedRequest);
        }
        let raw_user = user_attr
            .strip_prefix("n=")
            .ok_or(SaslError::MalformedRequest)?;
        let raw_user = decode_saslname(raw_user)?;
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(SaslError::MalformedRequest)?;
        if nonce.is_empty() || !nonce.bytes().all(is_printable) {
            return Err(SaslError::MalformedRequest);
        }
        for ext in attrs {
            check_attr_val(ext)?;
        }

        // Channel-binding rules (RFC 5802 §6), checked after syntax.
        let cb_type = match flag {
            Flag::N if self.plus => return Err(SaslError::NotAuthorized),
            Flag::N => None,
            Flag::Y if self.plus || self.plus_offered => return Err(SaslError::NotAuthorized),
            Flag::Y => None,
            Flag::P(_) if !self.plus => return Err(SaslError::NotAuthorized),
            Flag::P(name) => {
                let ty = ChannelBindingType::from_name(name).ok_or(SaslError::NotAuthorized)?;
                if self.bindings.get(ty).is_none() {
                    return Err(SaslError::NotAuthorized);
                }
                Some(ty)
            }
        };

        let username = match stringprep::saslprep(&raw_user) {
            Ok(u) if !u.is_empty() => u.into_owned(),
            _ => return Err(SaslError::NotAuthorized),
        };

        self.gs2_header = gs2_header.to_owned();
        self.cb_type = cb_type;
        self.client_first_bare = bare.to_owned();
        self.client_nonce = nonce.to_owned();
        self.username = username.clone();
        Ok(ClientFirst { username, authzid })
    }

    /// Produces server-first-message. With `None` (unknown user) it still produces a plausible
    /// challenge: a salt derived from the account name (see `set_account_name`; else the
    /// username) and a per-process secret (stable across attempts, so repeated probes see the
    /// same salt) and the unknown-user iteration count; the exchange then fails at `client_final` with `NotAuthorized`. Stored credentials that are
    /// unusable (zero iterations, empty salt) are treated like an unknown user.
    ///
    /// Called out of order it returns an empty message and fails the exchange.
    pub fn server_first(&mut self, creds: Option<&ScramCredentials>) -> Vec<u8> {
        if self.state != State::AwaitServerFirst {
            self.state = State::Failed;
            return Vec::new();
        }
        let usable = creds.filter(|c| c.iterations > 0 && !c.salt.is_empty());
        self.known_user = usable.is_some();
        let creds = match usable {
            Some(c) => c.clone(),
            None => self.fake_credentials(),
        };

        let server_nonce = match &self.fixed_server_nonce {
            Some(n) => n.clone(),
            None => {
                let mut bytes = [0u8; SERVER_NONCE_BYTES];
                rand::rng().fill_bytes(&mut bytes);
                B64.encode(bytes)
            }
        };
        self.nonce = format!("{}{}", self.client_nonce, server_nonce);
        self.server_first = format!(
            "r={},s={},i={}",
            self.nonce,
            B64.encode(&creds.salt),
            creds.iterations
        );
        self.creds = Some(creds);
        self.state = State::AwaitClientFinal;
        self.server_first.as_bytes().to_vec()
    }

    /// Credentials for a user that does not exist: deterministic salt, keys nobody can match.
    fn fake_credentials(&self) -> ScramCredentials {
        let name = self.account.as_deref().unwrap_or(&self.username);
        fake_credentials(self.hash, name, self.unknown_user_iterations)
    }

    /// Verifies client-final-message and returns server-final-message (`v=...`).
    ///
    /// Errors: `MalformedRequest` for syntax errors (not UTF-8, attributes missing or out of
    /// order, bad base64 inside the message, bad extension syntax) or a call out of order;
    /// `NotAuthorized` when the channel-binding attribute differs from base64(gs2 header + cb
    /// data), the nonce differs, the proof has the wrong length or does not verify, or the user
    /// is unknown.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, SaslError> {
        if self.state != State::AwaitClientFinal {
            self.state = State::Failed;
            return Err(SaslError::MalformedRequest);
        }
        let result = self.verify_client_final(msg);
        self.state = if result.is_ok() {
            State::Done
        } else {
            State::Failed
        };
        result
    }

    fn verify_client_final(&self, msg: &[u8]) -> Result<Vec<u8>, SaslError> {
        let msg = std::str::from_utf8(msg).map_err(|_| SaslError::MalformedRequest)?;
        let (without_proof, proof_attr) =
            msg.rsplit_once(',').ok_or(SaslError::MalformedRequest)?;
        let proof_b64 = proof_attr
            .strip_prefix("p=")
            .ok_or(SaslError::MalformedRequest)?;
        let mut attrs = without_proof.split(',');
        let cb_attr = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(SaslError::MalformedRequest)?;
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(SaslError::MalformedRequest)?;
        for ext in attrs {
            check_attr_val(ext)?;
        }
        let proof = B64
            .decode(proof_b64)
            .map_err(|_| SaslError::MalformedRequest)?;

        // c= must be exactly base64(gs2-header ‖ cb-data): this is what ties the exchange to
        // the TLS channel and also protects the gs2 flag against tampering.
        let mut cb_input = self.gs2_header.as_bytes().to_vec();
        if let Some(ty) = self.cb_type {
            let data = self.bindings.get(ty).ok_or(SaslError::NotAuthorized)?;
            cb_input.extend_from_slice(data);
        }
        let expected_cb = B64.encode(&cb_input);
        let cb_ok = expected_cb.as_bytes().ct_eq(cb_attr.as_bytes());
        let nonce_ok = self.nonce.as_bytes().ct_eq(nonce.as_bytes());
        if !bool::from(cb_ok & nonce_ok) {
            return Err(SaslError::NotAuthorized);
        }

        let creds = self.creds.as_ref().ok_or(SaslError::MalformedRequest)?;
        if proof.len() != self.hash.output_len() {
            return Err(SaslError::NotAuthorized);
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = self.hash.hmac(&creds.stored_key, auth_message.as_bytes());
        let client_key: Zeroizing<Vec<u8>> = Zeroizing::new(
            proof
                .iter()
                .zip(&client_signature)
                .map(|(p, s)| p ^ s)
                .collect(),
        );
        let proof_ok = self.hash.hash(&client_key).ct_eq(&creds.stored_key);
        if !bool::from(proof_ok) || !self.known_user {
            return Err(SaslError::NotAuthorized);
        }
        let server_signature = self.hash.hmac(&creds.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

/// Verifiers for an account that does not exist, as plausible as a real one: a salt derived
/// from `name` (the normalised account name) and a per-process secret, stable across
/// attempts so repeated probes see the same salt, and keys nobody can match. Both SCRAM's
/// challenge and PLAIN's verification use them, so either costs what a real account does.
pub(crate) fn fake_credentials(hash: ScramHash, name: &str, iterations: u32) -> ScramCredentials {
    let secret = process_secret();
    let mut input = Vec::with_capacity(name.len() + 16);
    input.extend_from_slice(hash.label());
    input.push(0);
    input.extend_from_slice(name.as_bytes());
    let mut salt = ScramHash::Sha256.hmac(secret, &[b"salt\0".as_slice(), &input].concat());
    salt.truncate(SALT_LEN);
    // Keys are derived from the secret too so that verification takes the same path; they
    // are never accepted regardless (callers know the account is unknown).
    let key = hash.hmac(secret, &[b"key\0".as_slice(), &input].concat());
    ScramCredentials {
        salt,
        iterations: iterations.max(1),
        stored_key: hash.hash(&key),
        server_key: key,
    }
}

/// Per-process random key for fake salts; random per process so salts for non-existent users
/// cannot be precomputed, yet stable within the process so repeated probes agree.
fn process_secret() -> &'static [u8] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut s = [0u8; 32];
        rand::rng().fill_bytes(&mut s);
        s
    })
}

/// RFC 5802 `printable`: %x21-2B / %x2D-7E (no comma).
fn is_printable(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b','
}

/// Decodes an RFC 5802 `saslname`: non-empty, no NUL, '=' only as `=2C` (',') or `=3D` ('=').
fn decode_saslname(s: &str) -> Result<String, SaslError> {
    if s.is_empty() {
        return Err(SaslError::MalformedRequest);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(['=', '\0']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("=2C") {
            out.push(',');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("=3D") {
            out.push('=');
            rest = t;
        } else {
            return Err(SaslError::MalformedRequest);
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// RFC 5802 `attr-val`: ALPHA "=" 1*value-char (value-char: any UTF-8 but NUL and ',').
fn check_attr_val(a: &str) -> Result<(), SaslError> {
    let b = a.as_bytes();
    if b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b'=' && !a.contains('\0') {
        Ok(())
    } else {
        Err(SaslError::MalformedRequest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimal SCRAM client used to drive the server, built from the same primitives.
    struct TestClient {
        hash: ScramHash,
        password: String,
        gs2_header: String,
        cb_data: Vec<u8>,
        client_first_bare: String,
        client_nonce: String,
        server_signature: Vec<u8>,
    }

    impl TestClient {
        fn new(hash: ScramHash, user: &str, password: &str, gs2_header: &str, cb: &[u8]) -> Self {
            let mut n = [0u8; 18];
            rand::rng().fill_bytes(&mut n);
            Self::with_nonce(hash, user, password, gs2_header, cb, &B64.encode(n))
        }

        fn with_nonce(
            hash: ScramHash,
            user: &str,
            password: &str,
            gs2_header: &str,
            cb: &[u8],
            nonce: &str,
        ) -> Self {
            let user = user.replace('=', "=3D").replace(',', "=2C");
            TestClient {
                hash,
                password: password.to_owned(),
                gs2_header: gs2_header.to_owned(),
                cb_data: cb.to_vec(),
                client_first_bare: format!("n={user},r={nonce}"),
                client_nonce: nonce.to_owned(),
                server_signature: Vec::new(),
            }
        }

        fn first(&self) -> Vec<u8> {
            format!("{}{}", self.gs2_header, self.client_first_bare).into_bytes()
        }

        fn finish(&mut self, server_first: &[u8]) -> Vec<u8> {
            let sf = std::str::from_utf8(server_first).unwrap();
            let mut parts = sf.split(',');
            let nonce = parts.next().unwrap().strip_prefix("r=").unwrap();
            assert!(nonce.starts_with(&self.client_nonce));
            let salt = B64
                .decode(parts.next().unwrap().strip_prefix("s=").unwrap())
                .unwrap();
            let iters: u32 = parts
                .next()
                .unwrap()
                .strip_prefix("i=")
                .unwrap()
                .parse()
                .unwrap();
            let salted = self.hash.hi(self.password.as_bytes(), &salt, iters);
            let client_key = self.hash.hmac(&salted, b"Client Key");
            let stored_key = self.hash.hash(&client_key);
            let server_key = self.hash.hmac(&salted, b"Server Key");
            let mut cb = self.gs2_header.as_bytes().to_vec();
            cb.extend_from_slice(&self.cb_data);
            let without_proof = format!("c={},r={}", B64.encode(cb), nonce);
            let auth = format!("{},{},{}", self.client_first_bare, sf, without_proof);
            let sig = self.hash.hmac(&stored_key, auth.as_bytes());
            let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
            self.server_signature = self.hash.hmac(&server_key, auth.as_bytes());
            format!("{},p={}", without_proof, B64.encode(proof)).into_bytes()
        }

        fn check_server_final(&self, msg: &[u8]) {
            let expected = format!("v={}", B64.encode(&self.server_signature));
            assert_eq!(std::str::from_utf8(msg).unwrap(), expected);
        }
    }

    fn bindings() -> ChannelBindings {
        ChannelBindings {
            tls_exporter: Some(b"exporter-keying-material-32bytes".to_vec()),
            tls_server_end_point: Some(vec![0xab; 32]),
        }
    }

    fn creds(hash: ScramHash, password: &str) -> ScramCredentials {
        ScramCredentials::derive(hash, password, b"0123456789abcdef", 4096).unwrap()
    }

    /// Runs a full exchange; returns the result of client_final.
    fn exchange(
        server: &mut ScramServer,
        client: &mut TestClient,
        stored: Option<&ScramCredentials>,
    ) -> Result<Vec<u8>, SaslError> {
        server.client_first(&client.first())?;
        let sf = server.server_first(stored);
        let cf = client.finish(&sf);
        server.client_final(&cf)
    }

    #[test]
    fn rfc5802_sha1_vector() {
        let salt = B64.decode("QSXCR+Q6sek8bf92").unwrap();
        let stored = ScramCredentials::derive(ScramHash::Sha1, "pencil", &salt, 4096).unwrap();
        let mut s = ScramServer::new(ScramHash::Sha1, false, false, ChannelBindings::default());
        s.set_server_nonce("3rfcNHYJY1ZVvWVs7j");
        let cf = s
            .client_first(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL")
            .unwrap();
        assert_eq!(
            cf,
            ClientFirst {
                username: "user".into(),
                authzid: None
            }
        );
        assert_eq!(
            s.server_first(Some(&stored)),
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
        );
        let fin = s
            .client_final(
                b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            )
            .unwrap();
        assert_eq!(fin, b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=");
    }

    #[test]
    fn rfc7677_sha256_vector() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let stored = ScramCredentials::derive(ScramHash::Sha256, "pencil", &salt, 4096).unwrap();
        let mut s = ScramServer::new(ScramHash::Sha256, false, false, ChannelBindings::default());
        s.set_server_nonce("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
        s.client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(
            s.server_first(Some(&stored)),
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let fin = s
            .client_final(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                  p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            )
            .unwrap();
        assert_eq!(fin, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    #[test]
    fn rfc7677_vector_wrong_proof_fails() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let stored = ScramCredentials::derive(ScramHash::Sha256, "pencil", &salt, 4096).unwrap();
        let mut s = ScramServer::new(ScramHash::Sha256, false, false, ChannelBindings::default());
        s.set_server_nonce("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
        s.client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        s.server_first(Some(&stored));
        // Last proof byte changed.
        let r = s.client_final(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
              p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVU=",
        );
        assert_eq!(r, Err(SaslError::NotAuthorized));
    }

    #[test]
    fn full_exchange_every_mechanism() {
        let cases: [(Mechanism, &str, &[u8]); 6] = [
            (Mechanism::ScramSha1, "n,,", b""),
            (Mechanism::ScramSha256, "n,,", b""),
            (
                Mechanism::ScramSha1Plus,
                "p=tls-exporter,,",
                b"exporter-keying-material-32bytes",
            ),
            (
                Mechanism::ScramSha256Plus,
                "p=tls-exporter,,",
                b"exporter-keying-material-32bytes",
            ),
            (
                Mechanism::ScramSha1Plus,
                "p=tls-server-end-point,,",
                &[0xab; 32],
            ),
            (
                Mechanism::ScramSha256Plus,
                "p=tls-server-end-point,,",
                &[0xab; 32],
            ),
        ];
        for (mech, gs2, cb) in cases {
            let (hash, plus) = mech.scram().unwrap();
            let stored = creds(hash, "pässwörd");
            let mut s = ScramServer::new(hash, plus, true, bindings());
            let mut c = TestClient::new(hash, "juliet", "pässwörd", gs2, cb);
            let fin = exchange(&mut s, &mut c, Some(&stored))
                .unwrap_or_else(|e| panic!("{mech:?} {gs2}: {e}"));
            c.check_server_final(&fin);
            let expected_cb = gs2
                .strip_prefix("p=")
                .map(|n| ChannelBindingType::from_name(n.trim_end_matches(',')).unwrap());
            assert_eq!(s.channel_binding(), expected_cb);
        }
    }

    #[test]
    fn wrong_password_not_authorized() {
        for hash in [ScramHash::Sha1, ScramHash::Sha256] {
            let stored = creds(hash, "right");
            let mut s = ScramServer::new(hash, false, false, ChannelBindings::default());
            let mut c = TestClient::new(hash, "juliet", "wrong", "n,,", b"");
            assert_eq!(
                exchange(&mut s, &mut c, Some(&stored)),
                Err(SaslError::NotAuthorized)
            );
        }
    }

    #[test]
    fn hash_mismatch_not_authorized() {
        // SHA-256 credentials used in a SHA-1 exchange (caller bug) must not authenticate.
        let stored = creds(ScramHash::Sha256, "pw");
        let mut s = ScramServer::new(ScramHash::Sha1, false, false, ChannelBindings::default());
        let mut c = TestClient::new(ScramHash::Sha1, "juliet", "pw", "n,,", b"");
        assert_eq!(
            exchange(&mut s, &mut c, Some(&stored)),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn y_flag_rules() {
        // Client supports CB but saw no -PLUS: fine when we offered none…
        let stored = creds(ScramHash::Sha256, "pw");
        let mut s = ScramServer::new(ScramHash::Sha256, false, false, ChannelBindings::default());
        let mut c = TestClient::new(ScramHash::Sha256, "juliet", "pw", "y,,", b"");
        let fin = exchange(&mut s, &mut c, Some(&stored)).unwrap();
        c.check_server_final(&fin);

        // …but a downgrade when we did.
        let mut s = ScramServer::new(ScramHash::Sha256, false, true, bindings());
        assert_eq!(
            s.client_first(b"y,,n=juliet,r=abc"),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn flag_mechanism_mismatch() {
        // p= with a non-PLUS mechanism.
        let mut s = ScramServer::new(ScramHash::Sha256, false, true, bindings());
        assert_eq!(
            s.client_first(b"p=tls-exporter,,n=juliet,r=abc"),
            Err(SaslError::NotAuthorized)
        );
        // n / y with a PLUS mechanism.
        for msg in [&b"n,,n=juliet,r=abc"[..], b"y,,n=juliet,r=abc"] {
            let mut s = ScramServer::new(ScramHash::Sha256, true, true, bindings());
            assert_eq!(s.client_first(msg), Err(SaslError::NotAuthorized));
        }
    }

    #[test]
    fn unknown_or_unavailable_cb_type() {
        let mut s = ScramServer::new(ScramHash::Sha256, true, true, bindings());
        assert_eq!(
            s.client_first(b"p=tls-unique,,n=juliet,r=abc"),
            Err(SaslError::NotAuthorized)
        );
        let only_endpoint = ChannelBindings {
            tls_exporter: None,
            tls_server_end_point: Some(vec![1, 2, 3]),
        };
        let mut s = ScramServer::new(ScramHash::Sha256, true, true, only_endpoint);
        assert_eq!(
            s.client_first(b"p=tls-exporter,,n=juliet,r=abc"),
            Err(SaslError::NotAuthorized)
        );
        // Syntactically invalid cb-name is a malformed request.
        let mut s = ScramServer::new(ScramHash::Sha256, true, true, bindings());
        assert_eq!(
            s.client_first(b"p=tls_exporter!,,n=juliet,r=abc"),
            Err(SaslError::MalformedRequest)
        );
    }

    #[test]
    fn cb_data_mismatch_fails() {
        let stored = creds(ScramHash::Sha256, "pw");
        // Client bound to a different channel (e.g. a MITM's).
        let mut s = ScramServer::new(ScramHash::Sha256, true, true, bindings());
        let mut c = TestClient::new(
            ScramHash::Sha256,
            "juliet",
            "pw",
            "p=tls-exporter,,",
            b"someone-else's-keying-material!!",
        );
        assert_eq!(
            exchange(&mut s, &mut c, Some(&stored)),
            Err(SaslError::NotAuthorized)
        );
        // Client announces one gs2 header but sends c= for another (flag tampering).
        let mut s = ScramServer::new(ScramHash::Sha256, false, false, ChannelBindings::default());
        let mut c = TestClient::new(ScramHash::Sha256, "juliet", "pw", "y,,", b"");
        s.client_first(&c.first()).unwrap();
        let sf = s.server_first(Some(&stored));
        c.gs2_header = "n,,".into();
        let cf = c.finish(&sf);
        assert_eq!(s.client_final(&cf), Err(SaslError::NotAuthorized));
    }

    #[test]
    fn nonce_mismatch_fails() {
        let stored = creds(ScramHash::Sha1, "pw");
        let mut s = ScramServer::new(ScramHash::Sha1, false, false, ChannelBindings::default());
        let mut c = TestClient::new(ScramHash::Sha1, "juliet", "pw", "n,,", b"");
        s.client_first(&c.first()).unwrap();
        let mut sf = s.server_first(Some(&stored));
        // Client computes its answer against a server nonce we never sent.
        sf.splice(2 + c.client_nonce.len()..2 + c.client_nonce.len(), *b"X");
        let cf = c.finish(&sf);
        assert_eq!(s.client_final(&cf), Err(SaslError::NotAuthorized));
    }

    #[test]
    fn authzid_and_username_escapes() {
        let mut s = ScramServer::new(ScramHash::Sha256, false, false, ChannelBindings::default());
        let cf = s
            .client_first(b"n,a=admin=2Cx=3D@example.org,n=ju=3Dli=2Cet,r=abc")
            .unwrap();
        assert_eq!(cf.username, "ju=li,et");
        assert_eq!(cf.authzid.as_deref(), Some("admin,x=@example.org"));

        // And the exchange completes with the escaped name and an authzid.
        let stored = creds(ScramHash::Sha256, "pw");
        let mut s = ScramServer::new(ScramHash::Sha256, false, false, ChannelBindings::default());
        let mut c = TestClient::new(ScramHash::Sha256, "a,b=c", "pw", "n,a=romeo@x,", b"");
        let cf = s.client_first(&c.first()).unwrap();
        assert_eq!(cf.username, "a,b=c");
        assert_eq!(cf.authzid.as_deref(), Some("romeo@x"));
        let sf = s.server_first(Some(&stored));
        let fin = s.client_final(&c.finish(&sf)).unwrap();
        c.check_server_final(&fin);
    }

    #[test]
    fn username_is_saslprepped() {
        let mut s = ScramServer::new(ScramHash::Sha256, false, false, ChannelBindings::default());
        // U+00AD SOFT HYPHEN maps to nothing; U+2163 ROMAN NUMERAL FOUR normalizes to "IV".
        let cf = s
            .client_first("n,,n=ju\u{ad}liet\u{2163},r=abc".as_bytes())
            .unwrap();
        assert_eq!(cf.username, "julietIV");
        // Prohibited output (a control character) cannot be any account.
        let mut s = ScramServer::new(ScramHash::Sha256, false, false, ChannelBindings::default());
        assert_eq!(
            s.client_first("n,,n=ju\u{7}liet,r=abc".as_bytes()),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn malformed_client_first() {
        let cases: &[&[u8]] = &[
            b"",
            b"n",
            b"n,",
            b"n,,",
            b"x,,n=u,r=abc",
            b"p=,,n=u,r=abc",
            b"n,b=x,n=u,r=abc",
            b"n,a=,n=u,r=abc",
            b"n,,m=ext,n=u,r=abc",
            b"n,,n=,r=abc",
            b"n,,n=u=2c,r=abc",
            b"n,,n=u=41,r=abc",
            b"n,,n=u=,r=abc",
            b"n,,n=u\0,r=abc",
            b"n,,n=u",
            b"n,,n=u,r=",
            b"n,,n=u,x=abc",
            b"n,,r=abc,n=u",
            b"n,,n=u,r=ab c",
            b"n,,n=u,r=ab\x7f",
            b"n,,n=u,r=abc,",
            b"n,,n=u,r=abc,1=x",
            b"n,,n=u,r=abc,x=",
            b"n,,n=\xff\xfe,r=abc",
        ];
        for &msg in cases {
            let mut s = ScramServer::new(ScramHash::Sha1, false, false, ChannelBindings::default());
            assert_eq!(
                s.client_first(msg),
                Err(SaslError::MalformedRequest),
                "{:?}",
                String::from_utf8_lossy(msg)
            );
        }
        // Optional extensions are accepted.
        let mut s = ScramServer::new(ScramHash::Sha1, false, false, ChannelBindings::default());
        assert!(s.client_first(b"n,,n=u,r=abc,x=1,y=2").is_ok());
    }

    #[test]
    fn malformed_client_final() {
        let stored = creds(ScramHash::Sha1, "pw");
        let cases: &[&[u8]] = &[
            b"",
            b"c=biws",
            b"c=biws,r=abc",
            b"r=abc,c=biws,p=AAAA",
            b"c=biws,p=AAAA",
            b"c=biws,r=abc,p=not*base64",
            b"c=biws,r=abc,1=x,p=AAAA",
            b"\xff,r=abc,p=AAAA",
        ];
        for &msg in cases {
            let mut s = ScramServer::new(ScramHash::Sha1, false, false, ChannelBindings::default());
            s.client_first(b"n,,n=u,r=abc").unwrap();
            s.server_first(Some(&stored));
            assert_eq!(
                s.client_final(msg),
                Err(SaslError::MalformedRequest),
                "{:?}",
                String::from_utf8_lossy(msg)
            );
        }
    }

    #[test]
    fn unknown_user_gets_plausible_challenge_then_fails() {
        for hash in [ScramHash::Sha1, ScramHash::Sha256] {
            let mut s = ScramServer::new(hash, false, false, ChannelBindings::default());
            s.set_unknown_user_iterations(4096);
            let mut c = TestClient::new(hash, "nobody", "pw", "n,,", b"");
            s.client_first(&c.first()).unwrap();
            let sf = s.server_first(None);
            let text = String::from_utf8(sf.clone()).unwrap();
            let salt_b64 = text.split(',').nth(1).unwrap().strip_prefix("s=").unwrap();
            assert_eq!(B64.decode(salt_b64).unwrap().len(), SALT_LEN);
            assert!(text.ends_with(",i=4096"), "{text}");
            let cf = c.finish(&sf);
            assert_eq!(s.client_final(&cf), Err(SaslError::NotAuthorized));

            // Same user again: same salt (a changing salt would reveal non-existence).
            let mut s2 = ScramServer::new(hash, false, false, ChannelBindings::default());
            s2.set_unknown_user_iterations(4096);
            s2.client_first(&c.first()).unwrap();
            let text2 = String::from_utf8(s2.server_first(None)).unwrap();
            assert_eq!(text2.split(',').nth(1), text.split(',').nth(1));

            // Another user: different salt.
            let mut s3 = ScramServer::new(hash, false, false, ChannelBindings::default());
            s3.client_first(b"n,,n=other,r=abc").unwrap();
            let text3 = String::from_utf8(s3.server_first(None)).unwrap();
            assert_ne!(text3.split(',').nth(1), text.split(',').nth(1));
            assert!(text3.ends_with(&format!(",i={DEFAULT_UNKNOWN_USER_ITERATIONS}")));
        }
    }

    #[test]
    fn unknown_user_salt_follows_the_normalised_account_name() {
        let salt_for = |user: &str, account: Option<&str>| {
            let mut s =
                ScramServer::new(ScramHash::Sha256, false, false, ChannelBindings::default());
            s.client_first(format!("n,,n={user},r=abc").as_bytes())
                .unwrap();
            if let Some(a) = account {
                s.set_account_name(a);
            }
            let sf = String::from_utf8(s.server_first(None)).unwrap();
            sf.split(',').nth(1).unwrap().to_owned()
        };
        let account = Some("nobody@example.org");
        assert_eq!(salt_for("NoBody", account), salt_for("nobody", account));
        let shared = fake_credentials(ScramHash::Sha256, "nobody@example.org", 1);
        assert_eq!(
            salt_for("NOBODY", account),
            format!("s={}", B64.encode(shared.salt))
        );
        // Without a normalised name the SASLprep'd username is all there is.
        assert_ne!(salt_for("NoBody", None), salt_for("nobody", None));
    }

    #[test]
    fn out_of_order_calls_fail() {
        let stored = creds(ScramHash::Sha1, "pw");
        let mut s = ScramServer::new(ScramHash::Sha1, false, false, ChannelBindings::default());
        assert!(s.server_first(Some(&stored)).is_empty());
        assert_eq!(
            s.client_first(b"n,,n=u,r=abc"),
            Err(SaslError::MalformedRequest)
        );

        let mut s = ScramServer::new(ScramHash::Sha1, false, false, ChannelBindings::default());
        assert_eq!(
            s.client_final(b"c=biws,r=abc,p=AAAA"),
            Err(SaslError::MalformedRequest)
        );

        // A successful exchange cannot be replayed on the same object.
        let mut s = ScramServer::new(ScramHash::Sha1, false, false, ChannelBindings::default());
        let mut c = TestClient::new(ScramHash::Sha1, "u", "pw", "n,,", b"");
        s.client_first(&c.first()).unwrap();
        let sf = s.server_first(Some(&stored));
        let cf = c.finish(&sf);
        assert!(s.client_final(&cf).is_ok());
        assert_eq!(s.client_final(&cf), Err(SaslError::MalformedRequest));
    }

    #[test]
    fn mechanism_names_roundtrip() {
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(m.name()), Some(m));
        }
        assert_eq!(Mechanism::ScramSha256Plus.name(), "SCRAM-SHA-256-PLUS");
        assert_eq!(Mechanism::from_name("scram-sha-1"), None);
        assert_eq!(Mechanism::from_name("DIGEST-MD5"), None);
        assert_eq!(Mechanism::Plain.scram(), None);
        assert_eq!(
            Mechanism::ScramSha1Plus.scram(),
            Some((ScramHash::Sha1, true))
        );
        assert_eq!(ChannelBindingType::TlsExporter.name(), "tls-exporter");
        assert_eq!(
            ChannelBindingType::TlsServerEndPoint.name(),
            "tls-server-end-point"
        );
    }

    #[test]
    fn channel_bindings_available() {
        assert!(ChannelBindings::default().is_empty());
        assert!(ChannelBindings::default().available().is_empty());
        assert_eq!(
            bindings().available(),
            vec![
                ChannelBindingType::TlsExporter,
                ChannelBindingType::TlsServerEndPoint
            ]
        );
        let b = ChannelBindings {
            tls_exporter: None,
            tls_server_end_point: Some(vec![]),
        };
        assert!(!b.is_empty());
        assert_eq!(b.available(), vec![ChannelBindingType::TlsServerEndPoint]);
    }

    /// xorshift: deterministic pseudo-random bytes for the no-panic test.
    fn noise(state: &mut u64, len: usize, alphabet: &[u8]) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                if alphabet.is_empty() {
                    *state as u8
                } else {
                    alphabet[(*state % alphabet.len() as u64) as usize]
                }
            })
            .collect()
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let stored = creds(ScramHash::Sha1, "pw");
        let mut st = 0x9E37_79B9_7F4A_7C15u64;
        // Structured alphabet so the parser gets past the first checks often.
        let alpha = b"npyacrmsv=,23CD\0AB+/xe-";
        for i in 0..3000 {
            let len = (i % 40) + 1;
            let a = if i % 2 == 0 { &alpha[..] } else { &[][..] };
            let first = noise(&mut st, len, a);
            let plus = i % 3 == 0;
            let mut s = ScramServer::new(ScramHash::Sha1, plus, i % 5 == 0, bindings());
            let _ = s.client_first(&first);
            let _ = s.server_first(if i % 7 == 0 { None } else { Some(&stored) });
            let fin = noise(&mut st, len, a);
            let _ = s.client_final(&fin);
            let mut prefixed = b"c=biws,r=".to_vec();
            prefixed.extend(noise(&mut st, len, a));
            let _ = s.client_final(&prefixed);
        }
        // Valid first message, then garbage finals.
        let stored256 = creds(ScramHash::Sha256, "pw");
        for i in 0..500 {
            let mut s =
                ScramServer::new(ScramHash::Sha256, false, false, ChannelBindings::default());
            s.client_first(b"n,,n=u,r=abc").unwrap();
            s.server_first(Some(&stored256));
            let mut fin = b"c=biws,r=".to_vec();
            fin.extend(noise(&mut st, i % 60, alpha));
            assert!(s.client_final(&fin).is_err());
        }
    }
}
