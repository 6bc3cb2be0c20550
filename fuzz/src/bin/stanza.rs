//! AFL++ entry point; the target itself is `xmppd_fuzz::stanza`.

fn main() {
    afl::fuzz!(|data: &[u8]| xmppd_fuzz::stanza(data));
}
