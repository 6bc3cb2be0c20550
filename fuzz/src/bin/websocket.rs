//! AFL++ entry point; the target itself is `xmppd_fuzz::websocket`.

fn main() {
    afl::fuzz!(|data: &[u8]| xmppd_fuzz::websocket(data));
}
