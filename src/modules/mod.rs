//! One module per RFC/XEP. Each registers what it handles with the registry
//! (`crate::registry`), which the router and the c2s/s2s layers call; adding a module
//! means its own file and one line in [`standard`].

pub mod adhoc;
pub mod blocking;
pub mod carbons;
pub mod contact;
pub mod csi;
pub mod disco;
pub mod extdisco;
pub mod invites;
pub mod last;
pub mod legacy_session;
pub mod mam;
pub mod muc;
pub mod offline;
pub mod ping;
pub mod presence;
pub mod private;
pub mod pubsub;
pub mod push;
pub mod register;
pub mod roster;
pub mod time;
pub mod upload;
pub mod vcard;
pub mod version;

use std::sync::Arc;

use crate::registry::{Module, Registrar};
use crate::stream::StanzaError;
use crate::xml::Element;

pub use crate::registry::{IqHandler, IqTarget};

/// The modules a server loads, in registration order (hooks with equal order run in
/// this order).
pub fn standard() -> Vec<Box<dyn Module>> {
    vec![
        Box::new(IqOnly("disco", disco::Disco)),
        Box::new(roster::Roster),
        Box::new(presence::Presence),
        Box::new(offline::Offline::default()),
        Box::new(IqOnly("ping", ping::Ping)),
        Box::new(IqOnly("version", version::Version)),
        Box::new(IqOnly("time", time::EntityTime)),
        Box::new(IqOnly("legacy_session", legacy_session::LegacySession)),
        Box::new(mam::Mam::default()),
        Box::new(carbons::Carbons),
        Box::new(blocking::Blocking),
        Box::new(push::Push::default()),
        Box::new(csi::Csi),
        Box::new(muc::Muc),
        Box::new(pubsub::pep::Pep),
        Box::new(pubsub::service::PubsubService),
        Box::new(vcard::Vcard),
        Box::new(private::Private),
        Box::new(last::LastActivity::default()),
        Box::new(contact::ContactAddresses),
        Box::new(extdisco::ExternalServices),
        Box::new(upload::Upload),
        Box::new(register::Register),
        Box::new(invites::Invites),
        Box::new(adhoc::AdHoc),
    ]
}

/// A module that only answers iq requests.
struct IqOnly<H>(&'static str, H);

impl<H: IqHandler + 'static> Module for IqOnly<H> {
    fn name(&self) -> &'static str {
        self.0
    }
    fn register(self: Box<Self>, r: &mut Registrar<'_>) {
        r.iq(Arc::new(self.1));
    }
}

/// The stanza error for a storage failure behind a request (logged here, once).
pub(crate) fn internal(e: crate::storage::StorageError) -> StanzaError {
    tracing::warn!(error = %e, "storage failed while answering a request");
    StanzaError::internal_server_error()
}

/// The stanza error for a failed disk operation behind a request (logged here, once).
pub(crate) fn internal_io(e: std::io::Error) -> StanzaError {
    tracing::warn!(error = %e, "disk I/O failed while answering a request");
    StanzaError::internal_server_error()
}

/// Refuses a forged push: an iq set with a `ns` payload routed to a local client's full
/// JID from anyone but the client's own account. Real pushes (roster, block list) come
/// from the server, which delivers them straight to the session; clients may trust a
/// push from their account (RFC 6121 §2.1.6), so a forged one must not reach them.
/// Returns whether the stanza was refused (and the sender told).
pub(crate) async fn refuse_forged_push(
    ctx: &Arc<crate::context::Context>,
    to: &crate::addr::Jid,
    stanza: &Element,
    ns: &str,
) -> bool {
    let is_push = stanza.name == "iq"
        && stanza.attr("type") == Some("set")
        && to.is_full()
        && to.node().is_some()
        && stanza.first_element().is_some_and(|p| p.ns == ns);
    if !is_push
        || !ctx.is_local_domain(to.domain().as_str())
        || stanza
            .attr("from")
            .and_then(crate::addr::parse)
            .is_some_and(|from| from == to.to_bare())
    {
        return false;
    }
    tracing::debug!(to = %to, ns, "forged push refused");
    crate::router::route_reply(ctx, stanza, StanzaError::service_unavailable()).await;
    true
}

/// The requesting entity's bare JID (the c2s/s2s layers always stamp `from`).
pub(crate) fn requester_bare(iq: &Element) -> Option<crate::addr::BareJid> {
    iq.attr("from")
        .and_then(crate::addr::parse)
        .map(|j| j.into_bare())
}

/// The account an iq targets, when the request comes from that account itself: the
/// guard of every per-account store (roster, archive, block list, push registrations),
/// which only their owner may read or change. Server targets get service-unavailable.
// Same error type as `IqHandler::handle`, which returns it as is.
#[allow(clippy::result_large_err)]
pub(crate) fn own_account<'a>(
    target: &'a IqTarget,
    iq: &Element,
) -> Result<&'a crate::addr::BareJid, StanzaError> {
    let IqTarget::Account(user) = target else {
        return Err(StanzaError::service_unavailable());
    };
    if requester_bare(iq).as_ref() != Some(user) {
        return Err(StanzaError::forbidden());
    }
    Ok(user)
}
