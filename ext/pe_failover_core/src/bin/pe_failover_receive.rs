//! Runs receive sessions of the replication protocol on stdin/stdout, one
//! after another for as long as the sender starts another.
//!
//! ```text
//! pe_failover_receive --state DIR [--role-file FILE] [--host NAME]
//! pe_failover_receive --config FILE
//! ```
//!
//! With `--config`, everything comes from the configuration file (state
//! directory, role for fencing, host name), as `pe_failover receive` does.
//!
//! This is the entry point an SSH forced command execs on the passive
//! primary (`restrict,command="pe_failover_receive --state ..."`), and what
//! the tests run as a real child process. Nothing but protocol frames is
//! ever written to stdout; the outcome goes to stderr, and the exit status
//! is 0 on success, 1 on a failed session, 2 on bad usage.

use std::process::ExitCode;

use pe_failover_core::protocol::{ReceiveOutcome, ReceiveReport, Receiver};

/// mimalloc rather than the C library's allocator: a receive session reads,
/// merges and writes manifests of one record per certificate (two or three
/// allocations each), which mimalloc builds and frees in about 40 % less
/// time at 100k certificates (README, Benchmarks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str =
    "usage: pe_failover_receive --state DIR [--role-file FILE] [--host NAME] | --config FILE";

fn main() -> ExitCode {
    let mut state = None;
    let mut role_file = None;
    let mut host = None;
    let mut config = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let slot = match arg.as_str() {
            "--state" => &mut state,
            "--role-file" => &mut role_file,
            "--host" => &mut host,
            "--config" => &mut config,
            "-h" | "--help" => {
                eprintln!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("pe_failover_receive: unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        };
        match args.next() {
            Some(value) => *slot = Some(value),
            None => {
                eprintln!("pe_failover_receive: {arg} needs a value\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(path) = config {
        let runner = match pe_failover_core::runner::Runner::load(&path) {
            Ok(r) => r.logger(pe_failover_core::log::Logger::new(true, Some(false))),
            Err(e) => {
                eprintln!("pe_failover_receive: {e}");
                return ExitCode::FAILURE;
            }
        };
        return match runner.receive_stdio() {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pe_failover_receive: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(state) = state else {
        eprintln!("pe_failover_receive: --state is required\n{USAGE}");
        return ExitCode::from(2);
    };
    let mut receiver = Receiver::new(state);
    if let Some(path) = role_file {
        receiver = receiver.role_file(path);
    }
    if let Some(name) = host {
        receiver = receiver.host(name);
    }
    let each = |result: &pe_failover_core::Result<ReceiveReport>| match result {
        Ok(report) if report.outcome != ReceiveOutcome::Unused => eprintln!(
            "pe_failover_receive: {:?} transaction {} ({} bytes received)",
            report.outcome, report.txn, report.stats.bytes_received
        ),
        _ => {}
    };
    match receiver.receive_stdio(each) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pe_failover_receive: {e}");
            ExitCode::FAILURE
        }
    }
}
