//! A SCRAM client for tests, written from RFC 5802 independently of the server's code.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Hash {
    Sha1,
    Sha256,
}

fn hmac(hash: Hash, key: &[u8], data: &[u8]) -> Vec<u8> {
    match hash {
        Hash::Sha1 => {
            let mut m = Hmac::<Sha1>::new_from_slice(key).unwrap();
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        Hash::Sha256 => {
            let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
    }
}

fn digest(hash: Hash, data: &[u8]) -> Vec<u8> {
    match hash {
        Hash::Sha1 => Sha1::digest(data).to_vec(),
        Hash::Sha256 => Sha256::digest(data).to_vec(),
    }
}

fn salted(hash: Hash, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
    match hash {
        Hash::Sha1 => {
            let mut out = [0u8; 20];
            pbkdf2::pbkdf2_hmac::<Sha1>(password.as_bytes(), salt, iterations, &mut out);
            out.to_vec()
        }
        Hash::Sha256 => {
            let mut out = [0u8; 32];
            pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
            out.to_vec()
        }
    }
}

pub struct ScramClient {
    hash: Hash,
    password: String,
    nonce: String,
    gs2_header: String,
    cb_data: Vec<u8>,
    client_first_bare: String,
    auth_message: String,
    salted: Vec<u8>,
}

impl ScramClient {
    /// `gs2_header` e.g. "n,,", "y,,", "p=tls-exporter,,"; `cb_data` the binding data for p=.
    pub fn new(hash: Hash, user: &str, password: &str, gs2_header: &str, cb_data: Vec<u8>) -> Self {
        let nonce = format!("{:x}", rand::random::<u128>());
        ScramClient {
            hash,
            password: password.to_string(),
            client_first_bare: format!("n={user},r={nonce}"),
            nonce,
            gs2_header: gs2_header.to_string(),
            cb_data,
            auth_message: String::new(),
            salted: Vec::new(),
        }
    }

    pub fn client_first(&self) -> Vec<u8> {
        format!("{}{}", self.gs2_header, self.client_first_bare).into_bytes()
    }

    pub fn client_final(&mut self, server_first: &[u8]) -> Vec<u8> {
        let server_first = String::from_utf8(server_first.to_vec()).unwrap();
        let mut r = None;
        let mut s = None;
        let mut i = None;
        for part in server_first.split(',') {
            if let Some(v) = part.strip_prefix("r=") {
                r = Some(v.to_string());
            } else if let Some(v) = part.strip_prefix("s=") {
                s = Some(B64.decode(v).unwrap());
            } else if let Some(v) = part.strip_prefix("i=") {
                i = Some(v.parse::<u32>().unwrap());
            }
        }
        let (r, s, i) = (r.unwrap(), s.unwrap(), i.unwrap());
        assert!(r.starts_with(&self.nonce), "server nonce must extend ours");
        let mut cbind = self.gs2_header.as_bytes().to_vec();
        cbind.extend_from_slice(&self.cb_data);
        let without_proof = format!("c={},r={r}", B64.encode(cbind));
        self.auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        self.salted = salted(self.hash, &self.password, &s, i);
        let client_key = hmac(self.hash, &self.salted, b"Client Key");
        let stored_key = digest(self.hash, &client_key);
        let signature = hmac(self.hash, &stored_key, self.auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(a, b)| a ^ b)
            .collect();
        format!("{without_proof},p={}", B64.encode(proof)).into_bytes()
    }

    /// Checks the server's signature in server-final-message.
    pub fn verify_server_final(&self, server_final: &[u8]) -> bool {
        let text = String::from_utf8_lossy(server_final);
        let Some(v) = text.strip_prefix("v=") else {
            return false;
        };
        let server_key = hmac(self.hash, &self.salted, b"Server Key");
        let expected = hmac(self.hash, &server_key, self.auth_message.as_bytes());
        B64.decode(v).map(|v| v == expected).unwrap_or(false)
    }
}
