//! AFL++ entry point; the target itself is `xmppd_fuzz::bosh`.

fn main() {
    afl::fuzz!(|data: &[u8]| xmppd_fuzz::bosh(data));
}
