//! XEP-0092 Software Version of the server.

use std::sync::Arc;

use async_trait::async_trait;

use super::{IqHandler, IqTarget};
use crate::context::Context;
use crate::stream::StanzaError;
use crate::xml::{Element, ns};

pub struct Version;

#[async_trait]
impl IqHandler for Version {
    fn namespaces(&self) -> &'static [&'static str] {
        &[ns::VERSION]
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[ns::VERSION]
    }
    async fn handle(
        &self,
        _ctx: &Arc<Context>,
        target: &IqTarget,
        iq: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        if !matches!(target, IqTarget::Server(_)) {
            return Err(StanzaError::service_unavailable());
        }
        if iq.attr("type") != Some("get") {
            return Err(StanzaError::bad_request());
        }
        Ok(Some(
            Element::new("query", ns::VERSION)
                .with_child(Element::new("name", ns::VERSION).with_text("xmppd"))
                .with_child(
                    Element::new("version", ns::VERSION).with_text(env!("CARGO_PKG_VERSION")),
                ),
        ))
    }
}
