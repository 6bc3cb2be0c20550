//! AFL++ entry point; the target itself is `xmppd_fuzz::config`.

fn main() {
    afl::fuzz!(|data: &[u8]| xmppd_fuzz::config(data));
}
