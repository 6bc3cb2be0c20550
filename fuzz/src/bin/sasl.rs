//! AFL++ entry point; the target itself is `xmppd_fuzz::sasl`.

fn main() {
    afl::fuzz!(|data: &[u8]| xmppd_fuzz::sasl(data));
}
