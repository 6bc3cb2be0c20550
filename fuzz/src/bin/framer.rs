//! AFL++ entry point; the target itself is `xmppd_fuzz::framer`.

fn main() {
    afl::fuzz!(|data: &[u8]| xmppd_fuzz::framer(data));
}
