//! `atoll`: parse arguments, set up logging, run the command, map the outcome to an exit code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = atoll::args::Args::parse();
    if args.command.is_daemon() {
        // Whatever a daemon writes (keys, tokens, stored blobs, Raft state, logs) is its own:
        // never readable by other users of the machine, jobs included.
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    }
    if args.command.is_daemon()
        && let Err(e) = atoll::malloc::restart_tuned()
    {
        eprintln!("warning: starting again with {} failed ({e}); running with glibc's default", atoll::malloc::TUNABLE);
    }
    atoll::logging::init(args.log_level.as_deref(), args.command.is_daemon());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(atoll::dispatch(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", atoll::error_text(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
