//! Log lines in the module's fixed format, to syslog and (when asked, or
//! when stderr is a terminal) to stderr:
//!
//! ```text
//! PE_FAILOVER: <component> ---> [SUCCESS|FAILURE|WARNING] <message>
//! ```
//!
//! The format is stable so that alerting can match on it (and matches what
//! the original module logged). Messages never contain secrets: callers pass
//! paths, host names and digests, never key material or tokens.

use std::ffi::CString;
use std::io::{IsTerminal, Write};
use std::sync::Once;

/// The outcome a log line reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Something completed.
    Success,
    /// Something failed; an operator should act.
    Failure,
    /// Something needs attention but the work went on.
    Warning,
}

impl Status {
    /// `"SUCCESS"`, `"FAILURE"` or `"WARNING"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Success => "SUCCESS",
            Status::Failure => "FAILURE",
            Status::Warning => "WARNING",
        }
    }

    fn priority(self) -> libc::c_int {
        match self {
            Status::Success => libc::LOG_INFO,
            Status::Failure => libc::LOG_ERR,
            Status::Warning => libc::LOG_WARNING,
        }
    }
}

/// Where log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Logger {
    syslog: bool,
    stderr: bool,
}

/// Formats one line (without a trailing newline).
pub fn format_line(component: &str, status: Status, message: &str) -> String {
    // One line per event: newlines in messages would split syslog records.
    let message = message.replace(['\n', '\r'], " ");
    format!(
        "PE_FAILOVER: {component} ---> [{}] {message}",
        status.as_str()
    )
}

static OPENLOG: Once = Once::new();

impl Logger {
    /// A logger writing to syslog when `syslog`, and to stderr when `stderr`
    /// is true (or, when `None`, when stderr is a terminal).
    pub fn new(syslog: bool, stderr: Option<bool>) -> Logger {
        Logger {
            syslog,
            stderr: stderr.unwrap_or_else(|| std::io::stderr().is_terminal()),
        }
    }

    /// A logger that writes nothing (tests, noop).
    pub fn silent() -> Logger {
        Logger {
            syslog: false,
            stderr: false,
        }
    }

    /// Logs one event.
    pub fn log(&self, component: &str, status: Status, message: &str) {
        let line = format_line(component, status, message);
        if self.stderr {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
        if self.syslog {
            OPENLOG.call_once(|| {
                // SAFETY: the ident must outlive every syslog call; a leaked
                // static C string does.
                let ident: &'static std::ffi::CStr = Box::leak(
                    CString::new("pe_failover")
                        .expect("no NUL")
                        .into_boxed_c_str(),
                );
                unsafe { libc::openlog(ident.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
            });
            if let Ok(c) = CString::new(line.replace('\0', " ")) {
                // SAFETY: "%s" with one valid C string argument.
                unsafe { libc::syslog(status.priority(), c"%s".as_ptr(), c.as_ptr()) };
            }
        }
    }

    /// Logs a success.
    pub fn success(&self, component: &str, message: &str) {
        self.log(component, Status::Success, message)
    }

    /// Logs a failure.
    pub fn failure(&self, component: &str, message: &str) {
        self.log(component, Status::Failure, message)
    }

    /// Logs a warning.
    pub fn warning(&self, component: &str, message: &str) {
        self.log(component, Status::Warning, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_fixed_format_and_one_line() {
        assert_eq!(
            format_line("ca-sync", Status::Failure, "b.example.com: refused\nsecond"),
            "PE_FAILOVER: ca-sync ---> [FAILURE] b.example.com: refused second"
        );
        assert_eq!(
            format_line("apply", Status::Success, "ok"),
            "PE_FAILOVER: apply ---> [SUCCESS] ok"
        );
    }
}
