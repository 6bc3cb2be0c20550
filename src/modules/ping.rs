//! XEP-0199 XMPP Ping: the server answers pings to itself and to accounts.

use std::sync::Arc;

use async_trait::async_trait;

use super::{IqHandler, IqTarget};
use crate::context::Context;
use crate::stream::StanzaError;
use crate::xml::{Element, ns};

pub struct Ping;

#[async_trait]
impl IqHandler for Ping {
    fn namespaces(&self) -> &'static [&'static str] {
        &[ns::PING]
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[ns::PING]
    }
    async fn handle(
        &self,
        _ctx: &Arc<Context>,
        _target: &IqTarget,
        iq: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        match iq.attr("type") {
            Some("get") => Ok(None),
            _ => Err(StanzaError::bad_request()),
        }
    }
}
