//! The `xmppd` binary: the command line lives in `xmppd::cli`; this only hands it the
//! server's entry point.

// glibc's malloc took a fifth of the server's CPU in the chat benchmark (stanzas are many
// small, short-lived allocations); mimalloc costs about half as much.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    xmppd::cli::main(xmppd::server::run)
}
