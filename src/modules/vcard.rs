//! XEP-0054 vcard-temp (one vCard per account, readable by anyone, size-limited), the
//! XEP-0398 conversion of its photo to and from XEP-0084 avatars in PEP, and the XEP-0153
//! photo hash that the server keeps right in its users' presence.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use base64::Engine;
use sha1::{Digest, Sha1};
use tracing::{debug, warn};

use super::pubsub::pep;
use super::{IqHandler, IqTarget, internal, requester_bare};
use crate::addr::BareJid;
use crate::context::Context;
use crate::registry::{Module, PresenceObserver, Registrar};
use crate::router::route;
use crate::stream::StanzaError;
use crate::xml::Element;

pub const NS: &str = "vcard-temp";
/// XEP-0398: the server converts avatars between PEP and the vCard.
pub const CONVERSION: &str = "urn:xmpp:pep-vcard-conversion:0";
pub const AVATAR_DATA: &str = "urn:xmpp:avatar:data";
pub const AVATAR_METADATA: &str = "urn:xmpp:avatar:metadata";
/// XEP-0153: the photo hash in presence.
pub const NS_UPDATE: &str = "vcard-temp:x:update";

pub struct Vcard;

impl Module for Vcard {
    fn name(&self) -> &'static str {
        "vcard"
    }
    fn register(self: Box<Self>, r: &mut Registrar<'_>) {
        r.iq(Arc::new(VcardIq));
        r.server_feature(CONVERSION);
        r.shared(Arc::new(PhotoHashes::default()));
        r.presence_observer(Arc::new(VcardPresence));
    }
}

/// Users' photo hashes (`None`: no vCard, so presence is left as the client sent it),
/// so that stamping presence needs no vCard read. Bounded: emptied when full.
#[derive(Default)]
struct PhotoHashes(Mutex<HashMap<String, Option<String>>>);

const HASHES_CACHED: usize = 100_000;

impl PhotoHashes {
    fn get(&self, user: &str) -> Option<Option<String>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(user)
            .cloned()
    }
    fn set(&self, user: &str, hash: Option<String>) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= HASHES_CACHED && !map.contains_key(user) {
            map.clear();
        }
        map.insert(user.to_string(), hash);
    }
}

/// The user's photo hash: `Some("")` for a vCard without a photo, `None` without a vCard
/// or with a photo given by URL.
async fn photo_hash(ctx: &Arc<Context>, user: &str) -> Option<String> {
    let cache = ctx.registry.state::<PhotoHashes>()?;
    if let Some(known) = cache.get(user) {
        return known;
    }
    let vcard = stored(ctx, user).await.ok()?;
    let hash = vcard.and_then(|v| hash_of(&v));
    cache.set(user, hash.clone());
    hash
}

/// The XEP-0153 hash of a vCard's photo: `""` without a photo, `None` for a photo the
/// server cannot hash (given by URL): presence is then left as the client sends it.
fn hash_of(vcard: &Element) -> Option<String> {
    match photo(vcard) {
        Some((_, bytes)) => Some(sha1_hex(&bytes)),
        None if vcard.has_child("PHOTO", NS) => None,
        None => Some(String::new()),
    }
}

/// Puts the hash into a presence, replacing what the client said (XEP-0398 §4).
fn stamp(presence: &mut Element, hash: &str) {
    presence.remove_children("x", NS_UPDATE);
    let mut photo = Element::new("photo", NS_UPDATE);
    if !hash.is_empty() {
        photo = photo.with_text(hash);
    }
    presence.push_child(Element::new("x", NS_UPDATE).with_child(photo));
}

struct VcardPresence;

#[async_trait]
impl PresenceObserver for VcardPresence {
    async fn outbound_available(&self, ctx: &Arc<Context>, user: &BareJid, stanza: &mut Element) {
        if let Some(hash) = photo_hash(ctx, user.as_str()).await {
            stamp(stanza, &hash);
        }
    }
}

/// The photo changed: each available resource's presence goes out again with the new
/// hash, to the contacts entitled to it and to the user's own resources.
async fn rebroadcast(ctx: &Arc<Context>, user: &str, hash: &str) {
    let Some(user) = super::pubsub::bare_jid(user) else {
        return;
    };
    let resources: Vec<_> = ctx
        .sessions
        .resources(&user)
        .into_iter()
        .filter(|s| s.available)
        .collect();
    if resources.is_empty() {
        return;
    }
    let subscribers: Vec<String> = match ctx.storage.roster.presence_contacts(&user).await {
        Ok(c) => c.subscribers.iter().map(BareJid::to_string).collect(),
        Err(e) => {
            warn!(error = %e, "roster lookup for the photo hash failed");
            Vec::new()
        }
    };
    let own: Vec<String> = resources
        .iter()
        .map(|s| super::pubsub::full_jid(user.as_str(), &s.resource))
        .collect();
    for s in resources {
        let Some(mut presence) = s.presence else {
            continue;
        };
        stamp(&mut presence, hash);
        let snapshot = presence.clone();
        ctx.sessions
            .update(&user, &s.resource, s.conn_id, move |info| {
                info.presence = Some(snapshot)
            });
        for to in subscribers.iter().chain(own.iter()) {
            let mut copy = presence.clone();
            copy.set_attr("to", to.clone());
            route(ctx, copy).await;
        }
    }
}

struct VcardIq;

fn empty_vcard() -> Element {
    Element::new("vCard", NS)
}

async fn stored(ctx: &Arc<Context>, user: &str) -> Result<Option<Element>, StanzaError> {
    let xml = ctx.storage.profiles.vcard(user).await.map_err(internal)?;
    Ok(xml.and_then(|x| match crate::xml::parse_stanza(&x) {
        Ok(el) => Some(el),
        Err(e) => {
            warn!(error = %e, "stored vCard unreadable");
            None
        }
    }))
}

async fn store(ctx: &Arc<Context>, user: &str, vcard: &Element) -> Result<(), StanzaError> {
    let xml = vcard.to_stanza_string();
    if xml.len() > ctx.config.pep.max_vcard_bytes {
        return Err(
            StanzaError::new(crate::stream::ErrorType::Modify, "not-acceptable")
                .with_text("the vCard is too large"),
        );
    }
    // Read before the write: a cache miss would otherwise read the new vCard.
    let before = photo_hash(ctx, user).await;
    ctx.storage
        .profiles
        .set_vcard(user, Some(&xml))
        .await
        .map_err(internal)?;
    let hash = hash_of(vcard);
    if let Some(cache) = ctx.registry.state::<PhotoHashes>() {
        cache.set(user, hash.clone());
    }
    if let Some(hash) = hash
        && before.as_deref() != Some(hash.as_str())
    {
        rebroadcast(ctx, user, &hash).await;
    }
    Ok(())
}

/// The photo of a vCard: (MIME type, image bytes).
fn photo(vcard: &Element) -> Option<(String, Vec<u8>)> {
    let photo = vcard.child("PHOTO", NS)?;
    let b64: String = photo
        .child_text("BINVAL", NS)?
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .ok()?;
    let kind = photo
        .child_text("TYPE", NS)
        .unwrap_or_else(|| "image/png".into());
    (!bytes.is_empty()).then_some((kind.trim().to_string(), bytes))
}

fn sha1_hex(bytes: &[u8]) -> String {
    Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[async_trait]
impl IqHandler for VcardIq {
    fn namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn account_features(&self) -> &'static [&'static str] {
        &[NS]
    }
    async fn handle(
        &self,
        ctx: &Arc<Context>,
        target: &IqTarget,
        iq: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        let IqTarget::Account(user) = target else {
            // The server has no vCard of its own.
            return Err(StanzaError::item_not_found());
        };
        let payload = iq.first_element().ok_or_else(StanzaError::bad_request)?;
        if payload.name != "vCard" {
            return Err(StanzaError::bad_request());
        }
        let own = requester_bare(iq).as_ref() == Some(user);
        let user = user.as_str();
        match iq.attr("type") {
            Some("get") => match stored(ctx, user).await? {
                Some(v) => Ok(Some(v)),
                None if own => Ok(Some(empty_vcard())),
                None => Err(StanzaError::item_not_found()),
            },
            Some("set") if own => {
                store(ctx, user, payload).await?;
                vcard_set(ctx, user, payload).await;
                Ok(None)
            }
            Some("set") => Err(StanzaError::forbidden()),
            _ => Err(StanzaError::bad_request()),
        }
    }
}

/// XEP-0398 §4: a vCard photo set by a client becomes the PEP avatar (data, then
/// metadata); a vCard without one disables a PEP avatar that was converted before.
async fn vcard_set(ctx: &Arc<Context>, user: &str, vcard: &Element) {
    match photo(vcard) {
        Some((kind, bytes)) => {
            let id = sha1_hex(&bytes);
            let current = pep::last_item(ctx, user, AVATAR_METADATA, None).await;
            let same = current.ok().flatten().is_some_and(|m| {
                m.child("info", AVATAR_METADATA)
                    .is_some_and(|i| i.attr("id") == Some(id.as_str()))
            });
            if same {
                return;
            }
            let data = Element::new("data", AVATAR_DATA)
                .with_text(base64::engine::general_purpose::STANDARD.encode(&bytes));
            if let Err(e) = pep::publish(ctx, user, AVATAR_DATA, Some(&id), data, None).await {
                debug!(
                    user,
                    condition = e.condition,
                    "vCard photo not converted to PEP"
                );
                return;
            }
            let metadata = Element::new("metadata", AVATAR_METADATA).with_child(
                Element::new("info", AVATAR_METADATA)
                    .with_attr("id", id.clone())
                    .with_attr("bytes", bytes.len().to_string())
                    .with_attr("type", kind),
            );
            if let Err(e) =
                pep::publish(ctx, user, AVATAR_METADATA, Some(&id), metadata, None).await
            {
                debug!(
                    user,
                    condition = e.condition,
                    "vCard photo metadata not published"
                );
            }
        }
        // A photo given by URL (EXTVAL) or unreadable: nothing to publish, and no
        // reason to take the PEP avatar down.
        None if vcard.has_child("PHOTO", NS) => {}
        None => {
            let current = pep::last_item(ctx, user, AVATAR_METADATA, None).await;
            let had = current
                .ok()
                .flatten()
                .is_some_and(|m| m.child("info", AVATAR_METADATA).is_some());
            if had {
                let empty = Element::new("metadata", AVATAR_METADATA);
                if let Err(e) =
                    pep::publish(ctx, user, AVATAR_METADATA, Some("current"), empty, None).await
                {
                    debug!(
                        user,
                        condition = e.condition,
                        "avatar removal not published"
                    );
                }
            }
        }
    }
}

/// XEP-0398 §3: an avatar published by a client in PEP becomes the vCard photo (the
/// metadata names the data item; an empty metadata removes the photo).
pub async fn pep_published(
    ctx: &Arc<Context>,
    user: &str,
    node: &str,
    _id: &str,
    payload: &Element,
) {
    if node != AVATAR_METADATA {
        return;
    }
    let mut vcard = match stored(ctx, user).await {
        Ok(v) => v.unwrap_or_else(empty_vcard),
        Err(_) => return,
    };
    // The image this server can hold: the info without a url (XEP-0084 §4.2.1).
    let infos: Vec<&Element> = payload
        .elements()
        .filter(|i| i.is("info", AVATAR_METADATA))
        .collect();
    let info = infos.iter().find(|i| i.attr("url").is_none());
    // Only images hosted elsewhere: nothing a vCard could hold; left as it is.
    if info.is_none() && !infos.is_empty() {
        return;
    }
    vcard.remove_children("PHOTO", NS);
    if let Some(info) = info {
        let (Some(id), kind) = (info.attr("id"), info.attr("type").unwrap_or("image/png")) else {
            return;
        };
        let Ok(Some(data)) = pep::last_item(ctx, user, AVATAR_DATA, Some(id)).await else {
            debug!(
                user,
                id, "avatar metadata names no stored data; vCard left as is"
            );
            return;
        };
        let b64: String = data
            .text()
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        vcard.push_child(
            Element::new("PHOTO", NS)
                .with_child(Element::new("TYPE", NS).with_text(kind))
                .with_child(Element::new("BINVAL", NS).with_text(b64)),
        );
    }
    if let Err(e) = store(ctx, user, &vcard).await {
        debug!(
            user,
            condition = e.condition,
            "PEP avatar not converted to the vCard"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn photo_is_read_from_the_vcard() {
        let v = crate::xml::parse_stanza(
            "<vCard xmlns='vcard-temp'><PHOTO><TYPE>image/gif</TYPE><BINVAL>aGVs\n bG8=</BINVAL></PHOTO></vCard>",
        )
        .unwrap();
        let (kind, bytes) = photo(&v).unwrap();
        assert_eq!(kind, "image/gif");
        assert_eq!(bytes, b"hello");
        assert_eq!(
            sha1_hex(b"hello"),
            "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d"
        );
        assert!(photo(&empty_vcard()).is_none());
    }
}
