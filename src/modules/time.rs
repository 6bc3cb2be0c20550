//! XEP-0202 Entity Time of the server (always reported in UTC).

use std::sync::Arc;

use async_trait::async_trait;

use super::{IqHandler, IqTarget};
use crate::context::Context;
use crate::stream::StanzaError;
use crate::xml::{Element, ns};

pub struct EntityTime;

/// XEP-0082 DateTime of now, UTC, whole seconds.
pub fn now_stamp() -> String {
    stamp_from_unix(crate::datetime::now_secs())
}

pub use crate::datetime::stamp_from_unix;

#[async_trait]
impl IqHandler for EntityTime {
    fn namespaces(&self) -> &'static [&'static str] {
        &[ns::TIME]
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[ns::TIME]
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
            Element::new("time", ns::TIME)
                .with_child(Element::new("tzo", ns::TIME).with_text("+00:00"))
                .with_child(Element::new("utc", ns::TIME).with_text(now_stamp())),
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_xep0082_datetime() {
        assert_eq!(super::stamp_from_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            super::stamp_from_unix(1_700_000_000),
            "2023-11-14T22:13:20Z"
        );
    }
}
