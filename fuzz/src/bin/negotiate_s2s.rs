//! AFL++ entry point; the target itself is `xmppd_fuzz::negotiate_s2s`.

fn main() {
    afl::fuzz!(|data: &[u8]| xmppd_fuzz::negotiate_s2s(data));
}
