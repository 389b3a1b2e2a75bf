//! Core errors and panics as Ruby exceptions.
//!
//! The exception classes are owned by Ruby (`lib/puppet_x/pe_failover/errors.rb`,
//! loaded before this library) and looked up by name when an error is raised.
//! Each carries `kind` (a Symbol), `path` and `host` (String or nil).

use std::any::Any;

use magnus::{prelude::*, Error, ExceptionClass, RModule, Ruby};
use pe_failover_core::ErrorKind;

/// The Ruby class name (under `PuppetX::PeFailover`) for a core error kind.
fn class_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotFound => "NotFoundError",
        ErrorKind::PermissionDenied => "PermissionError",
        ErrorKind::NonUtf8Path => "InvalidPathError",
        ErrorKind::UnsafePath => "UnsafePathError",
        ErrorKind::InvalidPattern => "InvalidPatternError",
        ErrorKind::InvalidInput => "InvalidInputError",
        ErrorKind::Corrupt => "CorruptError",
        ErrorKind::Cancelled => "CancelledError",
        ErrorKind::Refused => "RefusedError",
        ErrorKind::Fenced => "FencedError",
        ErrorKind::Protocol => "ProtocolError",
        ErrorKind::Network => "NetworkError",
        ErrorKind::Timeout => "TimeoutError",
        ErrorKind::Verification => "VerificationError",
        ErrorKind::Unauthorized => "UnauthorizedError",
        ErrorKind::Api => "ApiError",
        ErrorKind::Internal => "InternalError",
        _ => "IoError",
    }
}

/// `PuppetX::PeFailover::<name>`, or `RuntimeError` if errors.rb was not
/// loaded (then the message still says what happened).
fn lookup(ruby: &Ruby, name: &str) -> ExceptionClass {
    let found = (|| -> Result<ExceptionClass, Error> {
        let puppet_x: RModule = ruby.class_object().const_get("PuppetX")?;
        let ns: RModule = puppet_x.const_get("PeFailover")?;
        ns.const_get(name)
    })();
    found.unwrap_or_else(|_| ruby.exception_runtime_error())
}

fn build(
    ruby: &Ruby,
    class: ExceptionClass,
    message: String,
    kind: &str,
    path: Option<String>,
    host: Option<String>,
) -> Error {
    // PuppetX::PeFailover::Error#initialize(message, kind, path, host)
    match class.new_instance((message.clone(), ruby.to_symbol(kind), path, host)) {
        Ok(exception) => Error::from(exception),
        // errors.rb missing: a plain RuntimeError still says what happened.
        Err(_) => Error::new(ruby.exception_runtime_error(), message),
    }
}

/// Converts a core error into the matching Ruby exception.
pub fn to_ruby(ruby: &Ruby, err: pe_failover_core::Error) -> Error {
    let class = lookup(ruby, class_name(err.kind()));
    build(
        ruby,
        class,
        err.to_string(),
        err.kind().as_str(),
        err.path().map(|p| p.display().to_string()),
        err.host().map(str::to_string),
    )
}

/// Converts a caught panic into `PuppetX::PeFailover::InternalError`.
pub fn panic_error(ruby: &Ruby, payload: Box<dyn Any + Send>) -> Error {
    let detail = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    let class = lookup(ruby, "InternalError");
    build(
        ruby,
        class,
        format!(
            "internal error in the pe_failover native extension: {detail} (this is a bug; please report it with the command that caused it)"
        ),
        "internal",
        None,
        None,
    )
}

/// Shorthand for converting a core `Result`.
pub trait IntoRuby<T> {
    /// Maps the error with [`to_ruby`].
    fn into_ruby(self, ruby: &Ruby) -> Result<T, Error>;
}

impl<T> IntoRuby<T> for pe_failover_core::Result<T> {
    fn into_ruby(self, ruby: &Ruby) -> Result<T, Error> {
        self.map_err(|e| to_ruby(ruby, e))
    }
}
