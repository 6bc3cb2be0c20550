//! AFL++ entry point; the target itself is `xmppd_fuzz::c2s`.

fn main() {
    afl::fuzz!(|data: &[u8]| xmppd_fuzz::c2s(data));
}
