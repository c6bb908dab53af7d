//! The `hone` binary: parse arguments, start logging, run the command, map the outcome to
//! an exit code (0 ok, 1 a stage or check failed, 2 invalid spec, input or usage, 130
//! interrupted).

use std::process::ExitCode;

use clap::Parser;

/// candle allocates a fresh buffer for every tensor op; with the system allocator large
/// freed buffers go back to the OS and come back as page faults on the next step.
/// mimalloc keeps them (measured in benches/README.md, `train_sample`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    hone::keep_freed_memory();
    let cli = match hone::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            // clap's convention: usage errors exit 2, --help and --version exit 0.
            return ExitCode::from(if err.use_stderr() { 2 } else { 0 });
        }
    };
    hone::cli::init_tracing(cli.verbose, cli.quiet);
    ExitCode::from(hone::cli::run(cli))
}
