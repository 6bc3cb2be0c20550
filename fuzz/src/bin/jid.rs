//! AFL++ entry point; the target itself is `xmppd_fuzz::jid`.

fn main() {
    afl::fuzz!(|data: &[u8]| xmppd_fuzz::jid(data));
}
