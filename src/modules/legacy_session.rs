//! The legacy RFC 3921 session establishment iq, still sent by some clients; advertised
//! as optional (RFC 6121 appendix E) and answered with an empty result.

use std::sync::Arc;

use async_trait::async_trait;

use super::{IqHandler, IqTarget};
use crate::context::Context;
use crate::stream::StanzaError;
use crate::xml::{Element, ns};

pub struct LegacySession;

#[async_trait]
impl IqHandler for LegacySession {
    fn namespaces(&self) -> &'static [&'static str] {
        &[ns::SESSION]
    }
    async fn handle(
        &self,
        _ctx: &Arc<Context>,
        _target: &IqTarget,
        iq: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        match iq.attr("type") {
            Some("set") => Ok(None),
            _ => Err(StanzaError::bad_request()),
        }
    }
}
