//! XEP-0484 (FAST) tokens: per account and client (the SASL2 user-agent id), the two
//! slots of XEP-0484 §5 ("current" and "new"), so that a rotated token the client never
//! received does not lock it out.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::Result;
use crate::addr::BareJid;

/// One issued token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastToken {
    /// The secret the client proves it holds (the HMAC key of the HT mechanisms).
    pub secret: String,
    /// The HT mechanism it was issued for; it works with no other (XEP-0484 §4.4).
    pub mechanism: String,
    /// Seconds since the Unix epoch.
    pub issued: u64,
    pub expiry: u64,
}

/// One client's tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastTokens {
    /// The token the client last authenticated with.
    pub current: Option<FastToken>,
    /// The newest token issued, until the client uses it.
    pub new: Option<FastToken>,
    /// A digest of the account's credentials when the tokens were issued: a password
    /// change (or a removed and recreated account) makes them worthless.
    pub credentials: Vec<u8>,
}

#[async_trait]
pub trait FastTokenStore: Send + Sync {
    /// The tokens of the client `agent` of `user`.
    async fn fast_tokens(&self, user: &BareJid, agent: &str) -> Result<Option<FastTokens>>;
    /// Stores (or with `None` removes) the client's tokens. `durable`: on disk before
    /// returning, as a token handed out must survive a crash; a change that only retires
    /// an older token (its first use moving it to "current") may wait for the next flush.
    async fn set_fast_tokens(
        &self,
        user: &BareJid,
        agent: &str,
        tokens: Option<&FastTokens>,
        durable: bool,
    ) -> Result<()>;
    /// The clients of `user` holding tokens, with them (to bound how many there are).
    async fn fast_clients(&self, user: &BareJid) -> Result<Vec<(String, FastTokens)>>;
    async fn remove_fast_tokens(&self, user: &BareJid) -> Result<()>;
}
