//! Answers to iq requests that modules send in the server's or an account's name (e.g.
//! XEP-0357 publishes), matched by the request's id and the answering JID.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::addr::Jid;
use crate::context::Context;
use crate::xml::Element;

/// Requests awaiting an answer are remembered this long, and at most this many: peers
/// that never answer must not grow the table without bound.
const TTL: Duration = Duration::from_secs(120);
const MAX_PENDING: usize = 10_000;

/// Receives the answer (result or error) to a request a module sent.
#[async_trait]
pub trait ResponseHandler: Send + Sync {
    /// `context` is what the module stored with the request.
    async fn response(&self, ctx: &Arc<Context>, iq: &Element, context: Box<dyn Any + Send>);
}

struct Pending {
    to: Jid,
    sent: Instant,
    handler: Arc<dyn ResponseHandler>,
    context: Box<dyn Any + Send>,
}

#[derive(Default)]
pub(super) struct Responses {
    pending: Mutex<HashMap<String, Pending>>,
}

impl Responses {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn expect(
        &self,
        id: String,
        to: Jid,
        handler: Arc<dyn ResponseHandler>,
        context: Box<dyn Any + Send>,
    ) {
        let mut map = self.lock();
        if map.len() >= MAX_PENDING {
            map.retain(|_, p| p.sent.elapsed() < TTL);
        }
        if map.len() < MAX_PENDING {
            let sent = Instant::now();
            map.insert(
                id,
                Pending {
                    to,
                    sent,
                    handler,
                    context,
                },
            );
        }
    }

    /// The request `id`, if `from` is the JID it was sent to.
    pub fn take(
        &self,
        id: &str,
        from: &Jid,
    ) -> Option<(Arc<dyn ResponseHandler>, Box<dyn Any + Send>)> {
        let mut map = self.lock();
        if map.get(id)?.to != *from {
            return None;
        }
        map.remove(id).map(|p| (p.handler, p.context))
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }
}
