//! The `xmppd` binary: the command line lives in `xmppd::cli`; this only hands it the
//! server's entry point.

fn main() -> std::process::ExitCode {
    xmppd::cli::main(xmppd::server::run)
}
