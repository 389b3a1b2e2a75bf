//! The one error type of this crate.
//!
//! Every fallible function in `pe_failover_core` returns [`Error`]. An error
//! carries a [`ErrorKind`] (what went wrong, for programs to match on), the
//! file or host it concerns (for people to act on), and, when there is one,
//! the underlying I/O error. Its `Display` form is a complete sentence that
//! names the path or host and, where one exists, what to do next.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A specialised `Result` whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] reports.
///
/// The binding maps each kind to one Ruby exception class, so new kinds are
/// added here and in `lib/puppet_x/pe_failover/errors.rb` together (and to
/// the list [`from_name`](Self::from_name) searches).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A file or directory that must exist does not.
    NotFound,
    /// The operating system refused access to a file or directory.
    PermissionDenied,
    /// A file name is not valid UTF-8, so it cannot be recorded or shipped.
    NonUtf8Path,
    /// A path is unsafe: absolute, contains `..`, or leaves the tree.
    UnsafePath,
    /// An exclusion pattern is not a valid glob.
    InvalidPattern,
    /// Input (a manifest, a frame, a configuration value) is malformed.
    InvalidInput,
    /// Data failed an integrity check (a digest did not match).
    Corrupt,
    /// The operation was cancelled (for example by Ctrl-C).
    Cancelled,
    /// A safety guard refused the operation (an empty or incomplete source,
    /// too many deletions, ...); it can be overridden with `force`.
    Refused,
    /// The replica is fenced: it has been promoted and accepts no more
    /// transactions from its old primary.
    Fenced,
    /// A peer spoke the replication protocol wrongly or with another version.
    Protocol,
    /// A host could not be reached, or the connection broke.
    Network,
    /// A peer did not answer in time.
    Timeout,
    /// TLS or SSH host verification failed (unknown or changed host key,
    /// certificate not signed by the expected CA).
    Verification,
    /// The peer refused our credentials (SSH key, client certificate not
    /// allowlisted).
    Unauthorized,
    /// A remote API answered with an error (the classifier, for example).
    Api,
    /// Any other input/output failure.
    Io,
    /// An internal invariant was broken; this is a bug in pe_failover.
    Internal,
}

impl ErrorKind {
    /// A stable, lowercase name of the kind (`"not_found"`, `"corrupt"`, ...),
    /// used in JSON status output and by the Ruby binding.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::NonUtf8Path => "non_utf8_path",
            ErrorKind::UnsafePath => "unsafe_path",
            ErrorKind::InvalidPattern => "invalid_pattern",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Refused => "refused",
            ErrorKind::Fenced => "fenced",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Network => "network",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Verification => "verification",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Api => "api",
            ErrorKind::Io => "io",
            ErrorKind::Internal => "internal",
        }
    }
}

impl ErrorKind {
    const ALL: [ErrorKind; 18] = [
        ErrorKind::NotFound,
        ErrorKind::PermissionDenied,
        ErrorKind::NonUtf8Path,
        ErrorKind::UnsafePath,
        ErrorKind::InvalidPattern,
        ErrorKind::InvalidInput,
        ErrorKind::Corrupt,
        ErrorKind::Cancelled,
        ErrorKind::Refused,
        ErrorKind::Fenced,
        ErrorKind::Protocol,
        ErrorKind::Network,
        ErrorKind::Timeout,
        ErrorKind::Verification,
        ErrorKind::Unauthorized,
        ErrorKind::Api,
        ErrorKind::Io,
        ErrorKind::Internal,
    ];

    /// The kind whose [`as_str`](Self::as_str) is `name`, if any.
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from `pe_failover_core`: a kind, a message, and the path or host
/// it concerns.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    path: Option<PathBuf>,
    host: Option<String>,
    hint: Option<String>,
    source: Option<io::Error>,
}

impl Error {
    /// A new error of `kind` with a human-readable `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            path: None,
            host: None,
            hint: None,
            source: None,
        }
    }

    /// An error from an I/O failure while doing `action` on `path`
    /// (for example `Error::io("read", path, err)`). The kind follows the
    /// I/O error: not found, permission denied, or plain I/O.
    pub fn io(action: &str, path: impl AsRef<Path>, err: io::Error) -> Self {
        let kind = match err.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            _ => ErrorKind::Io,
        };
        let path = path.as_ref();
        let hint = match kind {
            ErrorKind::PermissionDenied => Some(
                "run as a user that can read it (root, or the owner of the ssl directory)".into(),
            ),
            _ => None,
        };
        Error {
            kind,
            message: format!("cannot {action} {}: {err}", path.display()),
            path: Some(path.to_path_buf()),
            host: None,
            hint,
            source: Some(err),
        }
    }

    /// The error reported when work stops because it was cancelled.
    pub fn cancelled() -> Self {
        Error::new(ErrorKind::Cancelled, "operation cancelled")
    }

    /// Attaches the path this error concerns.
    pub fn with_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Attaches the host this error concerns.
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Attaches advice on what to do next; shown after the message.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// This error with `rewrite` applied to the paths in its message,
    /// path and hint.
    pub(crate) fn map_paths(mut self, rewrite: impl Fn(&str) -> String) -> Self {
        self.message = rewrite(&self.message);
        self.hint = self.hint.map(|h| rewrite(&h));
        self.path = self.path.map(|p| match p.to_str() {
            Some(text) => PathBuf::from(rewrite(text)),
            None => p,
        });
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the hint.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The file or directory this error concerns, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The host this error concerns, if any.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// Advice on what to do next, if any.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// The underlying I/O error, if this error came from one.
    pub fn io_error(&self) -> Option<&io::Error> {
        self.source.as_ref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(host) = &self.host {
            write!(f, "{host}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl Error {
    /// Gets back the error that an `io::Error` carries when a `Read` or
    /// `Write` implementation of this crate (an SSH channel, for example)
    /// failed; any other `io::Error` becomes an [`ErrorKind::Io`] error
    /// (or `NotFound`, `PermissionDenied`, `Timeout`, `Network`, after its
    /// kind).
    pub fn from_io_error(err: io::Error) -> Error {
        if err.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            if let Some(inner) = err.into_inner() {
                if let Ok(core) = inner.downcast::<Error>() {
                    return *core;
                }
            }
            return Error::new(ErrorKind::Internal, "lost an error while unwrapping it");
        }
        let kind = match err.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ErrorKind::Timeout,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => ErrorKind::Network,
            _ => ErrorKind::Io,
        };
        Error {
            kind,
            message: err.to_string(),
            path: None,
            host: None,
            hint: None,
            source: Some(err),
        }
    }
}

/// Wraps the error for a `Read` or `Write` implementation, with the closest
/// `io::ErrorKind`; [`Error::from_io_error`] gets it back whole.
impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        let kind = match err.kind {
            ErrorKind::NotFound => io::ErrorKind::NotFound,
            ErrorKind::PermissionDenied | ErrorKind::Unauthorized => {
                io::ErrorKind::PermissionDenied
            }
            ErrorKind::InvalidInput | ErrorKind::InvalidPattern => io::ErrorKind::InvalidInput,
            ErrorKind::Corrupt | ErrorKind::Protocol => io::ErrorKind::InvalidData,
            ErrorKind::Timeout => io::ErrorKind::TimedOut,
            ErrorKind::Network => io::ErrorKind::ConnectionAborted,
            ErrorKind::Cancelled => io::ErrorKind::Interrupted,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_found_by_their_names() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_name(kind.as_str()), Some(kind));
        }
        assert_eq!(ErrorKind::from_name("fenced"), Some(ErrorKind::Fenced));
        assert_eq!(ErrorKind::from_name("Fenced"), None);
        assert_eq!(ErrorKind::from_name(""), None);
    }

    #[test]
    fn io_errors_keep_kind_and_path() {
        let err = Error::io(
            "read",
            "/etc/x",
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        assert_eq!(err.path(), Some(Path::new("/etc/x")));
        let text = err.to_string();
        assert!(text.contains("/etc/x"), "{text}");
        assert!(text.contains("run as a user"), "{text}");
    }

    #[test]
    fn survives_a_trip_through_io_error() {
        let err = Error::new(ErrorKind::Timeout, "no response")
            .with_host("b.example.com")
            .with_hint("wait");
        let io_err = io::Error::from(err);
        assert_eq!(io_err.kind(), io::ErrorKind::TimedOut);
        let back = Error::from_io_error(io_err);
        assert_eq!(back.kind(), ErrorKind::Timeout);
        assert_eq!(back.host(), Some("b.example.com"));
        assert_eq!(back.hint(), Some("wait"));
        let plain = Error::from_io_error(io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!(plain.kind(), ErrorKind::Network);
    }

    #[test]
    fn host_prefixes_the_message() {
        let err = Error::new(ErrorKind::Io, "connection reset").with_host("b.example.com");
        assert_eq!(err.to_string(), "b.example.com: connection reset");
    }
}
