//! XEP-0313 on rooms: each room's messages in the archive store under the room's JID,
//! queried at the room JID by those allowed in (XEP-0313 §5), with stanza-ids `by` the
//! room. Queries share the accounts' parser and pager (`mam::answer_query`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::room::Room;
use crate::addr::{BareJid, Jid};
use crate::context::Context;
use crate::modules::mam;
use crate::storage::{NewArchived, RoomAffiliation};
use crate::stream::StanzaError;
use crate::xml::Element;

/// Archives a message as the room broadcasts it; returns its stanza-id.
pub async fn append(
    ctx: &Arc<Context>,
    room: &BareJid,
    msg: &Element,
    micros: u64,
) -> Option<String> {
    if !mam::archivable_groupchat(msg) {
        return None;
    }
    let with = msg.attr("from").unwrap_or(room.as_str());
    let entry = NewArchived {
        with,
        stanza: crate::storage::SharedStanza::of(msg),
        micros,
    };
    match ctx.storage.archive.append(room, entry).await {
        Ok(stamp) => Some(stamp.id),
        Err(e) => {
            warn!(error = %e, %room, "archiving a room message failed");
            None
        }
    }
}

/// Who may read a room's archive: whoever may enter it.
fn may_read(room: &Room, from: &Jid) -> Result<(), StanzaError> {
    let aff = room.affiliation(from);
    if aff == Some(RoomAffiliation::Outcast) {
        return Err(StanzaError::forbidden());
    }
    if room.config.members_only && aff.is_none_or(|a| a < RoomAffiliation::Member) {
        return Err(StanzaError::forbidden());
    }
    Ok(())
}

pub fn form(room: &Room, from: &Jid) -> Result<Option<Element>, StanzaError> {
    may_read(room, from)?;
    Ok(Some(mam::form()))
}

pub async fn query(
    ctx: &Arc<Context>,
    room: &Room,
    from: &Jid,
    _iq: &Element,
    payload: &Element,
    out: &mut Vec<Element>,
) -> Result<Option<Element>, StanzaError> {
    may_read(room, from)?;
    let (results, fin) = mam::answer_query(ctx, &room.jid, from, payload).await?;
    out.extend(results);
    Ok(Some(fin))
}

/// Messages deleted per storage call while pruning.
const PRUNE_BATCH: usize = 256;

/// With `[archive] retention_days`, deletes expired messages from the archives of the
/// persistent rooms of `domains` every `archive.prune_interval_secs` (queries hide them
/// at once; this gives the space back). Temporary rooms' archives go with the room.
pub async fn run_pruner(
    ctx: Arc<Context>,
    domains: Vec<crate::addr::DomainPart>,
    max_rooms: usize,
    shutdown: CancellationToken,
) {
    let days = ctx.config.archive.retention_days;
    if days == 0 {
        return;
    }
    let interval = Duration::from_secs(ctx.config.archive.prune_interval_secs);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let floor = mam::now_micros().saturating_sub(u64::from(days) * 86_400 * 1_000_000);
        let mut removed = 0;
        for domain in &domains {
            let rooms = match ctx.storage.rooms.rooms(domain, max_rooms).await {
                Ok(rooms) => rooms,
                Err(e) => {
                    warn!(error = %e, %domain, "listing rooms for archive pruning failed");
                    continue;
                }
            };
            for room in rooms {
                loop {
                    if shutdown.is_cancelled() {
                        return;
                    }
                    match ctx
                        .storage
                        .archive
                        .remove_before(&room.jid, floor, PRUNE_BATCH)
                        .await
                    {
                        Ok(n) => {
                            removed += n;
                            if n < PRUNE_BATCH {
                                break;
                            }
                        }
                        Err(e) => {
                            warn!(error = %e, room = %room.jid, "pruning a room archive failed");
                            break;
                        }
                    }
                    tokio::task::yield_now().await;
                }
            }
        }
        debug!(removed, "room archive pruning pass done");
    }
}
