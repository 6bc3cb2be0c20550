//! XEP-0215 External Service Discovery: the STUN/TURN servers of `[[external_service]]`
//! for local accounts, with time-limited TURN credentials made the way coturn's
//! `use-auth-secret` checks them (username `EXPIRY:JID`, password
//! base64(HMAC-SHA1(secret, username))). Registered only when services are configured.

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::{IqHandler, IqTarget, requester_bare};
use crate::config::ExternalServiceConfig;
use crate::context::Context;
use crate::registry::{Module, Registrar};
use crate::stream::StanzaError;
use crate::xml::Element;

pub const NS: &str = "urn:xmpp:extdisco:2";

pub struct ExternalServices;

impl Module for ExternalServices {
    fn name(&self) -> &'static str {
        "extdisco"
    }
    fn register(self: Box<Self>, r: &mut Registrar<'_>) {
        if !r.config().external_services.is_empty() {
            r.iq(Arc::new(ExtDisco));
        }
    }
}

struct ExtDisco;

use crate::datetime::now_secs;

/// coturn's REST API credentials for `user`, valid until `expiry`.
pub fn turn_credentials(secret: &str, user: &str, expiry: u64) -> (String, String) {
    let username = format!("{expiry}:{user}");
    let password = match Hmac::<Sha1>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(username.as_bytes());
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        }
        // HMAC takes keys of any length; kept total anyway.
        Err(_) => String::new(),
    };
    (username, password)
}

fn service(svc: &ExternalServiceConfig, user: &str) -> Element {
    let mut el = Element::new("service", NS)
        .with_attr("type", svc.kind.clone())
        .with_attr("host", svc.host.clone())
        .with_attr("port", svc.port.to_string());
    if let Some(t) = &svc.transport {
        el.set_attr("transport", t.clone());
    }
    if let Some(name) = &svc.name {
        el.set_attr("name", name.clone());
    }
    if let Some(secret) = &svc.secret {
        let expiry = now_secs().saturating_add(svc.ttl_secs);
        let (username, password) = turn_credentials(secret, user, expiry);
        el.set_attr("username", username);
        el.set_attr("password", password);
        el.set_attr("expires", crate::modules::time::stamp_from_unix(expiry));
        el.set_attr("restricted", "1");
    }
    el
}

#[async_trait]
impl IqHandler for ExtDisco {
    fn namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    async fn handle(
        &self,
        ctx: &Arc<Context>,
        target: &IqTarget,
        iq: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        let IqTarget::Server(_) = target else {
            return Err(StanzaError::service_unavailable());
        };
        let user = requester_bare(iq).ok_or_else(StanzaError::bad_request)?;
        // Relays cost bandwidth: only this server's accounts get them.
        if user.node().is_none() || !ctx.is_local_domain(user.domain().as_str()) {
            return Err(StanzaError::forbidden());
        }
        let query = iq.first_element().ok_or_else(StanzaError::bad_request)?;
        if iq.attr("type") != Some("get") {
            return Err(StanzaError::bad_request());
        }
        let services = &ctx.config.external_services;
        match query.name.as_str() {
            "services" => {
                let mut out = Element::new("services", NS);
                if let Some(kind) = query.attr("type") {
                    out.set_attr("type", kind);
                }
                for svc in services {
                    if query.attr("type").is_none_or(|k| k == svc.kind) {
                        out.push_child(service(svc, user.as_str()));
                    }
                }
                Ok(Some(out))
            }
            "credentials" => {
                let wanted = query
                    .child("service", NS)
                    .ok_or_else(StanzaError::bad_request)?;
                let port = wanted.attr("port").and_then(|p| p.parse::<u16>().ok());
                let found = services.iter().find(|s| {
                    wanted.attr("host") == Some(s.host.as_str())
                        && wanted.attr("type") == Some(s.kind.as_str())
                        && port.is_none_or(|p| p == s.port)
                });
                let svc = found.ok_or_else(StanzaError::item_not_found)?;
                Ok(Some(
                    Element::new("credentials", NS).with_child(service(svc, user.as_str())),
                ))
            }
            _ => Err(StanzaError::bad_request()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The password coturn computes for `use-auth-secret` (checked against
    /// `printf %s '1700000000:alice@example.org' | openssl dgst -sha1 -hmac secret -binary | base64`).
    #[test]
    fn credentials_as_coturn_checks_them() {
        let (user, pass) = turn_credentials("secret", "alice@example.org", 1_700_000_000);
        assert_eq!(user, "1700000000:alice@example.org");
        assert_eq!(pass, "ilWZzF8c6jFH+3PGJYYE0l3dlMI=");
    }
}
