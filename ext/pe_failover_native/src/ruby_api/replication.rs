//! Replication commands: `_sync`, `_receive`, `_apply`, `_watch`,
//! `_status`, `_pin_host_key`. Each loads the configuration file, runs the
//! core's [`Runner`] without the GVL (Ctrl-C, SIGTERM and `Thread#raise`
//! trip its cancel token) and returns a Ruby Hash with String keys.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use magnus::{function, prelude::*, Error, RModule, Ruby, Value};
use pe_failover_core::cancel::CancelToken;
use pe_failover_core::log::Logger;
use pe_failover_core::ncship;
use pe_failover_core::runner::{self, Runner};
use serde::Serialize;

use crate::helpers::errors::{to_ruby, IntoRuby};
use crate::helpers::nogvl::{guard, without_gvl};

pub fn init(native: &RModule) -> Result<(), Error> {
    native.define_module_function("_sync", function!(sync, 5))?;
    native.define_module_function("_receive", function!(receive, 1))?;
    native.define_module_function("_apply", function!(apply, 2))?;
    native.define_module_function("_watch", function!(watch, 2))?;
    native.define_module_function("_status", function!(status, 1))?;
    native.define_module_function("_pin_host_key", function!(pin_host_key, 3))?;
    native.define_module_function("_nc_dump", function!(nc_dump, 2))?;
    native.define_module_function("_nc_apply", function!(nc_apply, 4))?;
    Ok(())
}

/// Loads the configuration; log lines go to syslog as configured and to
/// stderr only when the configuration asks (`log.stderr: true`) or, when
/// it leaves it unset, if `stderr_on_tty` and stderr is a terminal.
fn load(ruby: &Ruby, config: &str, stderr_on_tty: bool) -> Result<Runner, Error> {
    let runner = Runner::load(PathBuf::from(config)).into_ruby(ruby)?;
    let log = &runner.config().log;
    let stderr = log
        .stderr
        .unwrap_or(stderr_on_tty && std::io::stderr().is_terminal());
    let logger = Logger::new(log.syslog, Some(stderr));
    Ok(runner.logger(logger))
}

/// Any serializable value as Ruby objects (Hash with String keys, Array,
/// String, Integer, Float, true/false, nil).
pub fn to_value<T: Serialize>(ruby: &Ruby, value: &T) -> Result<Value, Error> {
    let json = serde_json::to_value(value).map_err(|e| {
        to_ruby(
            ruby,
            pe_failover_core::Error::new(
                pe_failover_core::ErrorKind::Internal,
                format!("cannot convert the result: {e}"),
            ),
        )
    })?;
    json_to_ruby(ruby, &json)
}

fn json_to_ruby(ruby: &Ruby, v: &serde_json::Value) -> Result<Value, Error> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => ruby.qnil().as_value(),
        J::Bool(b) => {
            if *b {
                ruby.qtrue().as_value()
            } else {
                ruby.qfalse().as_value()
            }
        }
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                ruby.integer_from_i64(i).as_value()
            } else if let Some(u) = n.as_u64() {
                ruby.integer_from_u64(u).as_value()
            } else {
                ruby.float_from_f64(n.as_f64().unwrap_or(0.0)).as_value()
            }
        }
        J::String(s) => ruby.str_new(s).as_value(),
        J::Array(items) => {
            let ary = ruby.ary_new_capa(items.len());
            for item in items {
                ary.push(json_to_ruby(ruby, item)?)?;
            }
            ary.as_value()
        }
        J::Object(map) => {
            let hash = ruby.hash_new();
            for (k, item) in map {
                hash.aset(k.as_str(), json_to_ruby(ruby, item)?)?;
            }
            hash.as_value()
        }
    })
}

/// `_sync(config, replica_or_nil, noop, nc_or_nil, watcher)` → Hash `{ok,
/// noop, digest, entries, lines, replicas: [{host, port, ok, outcome,
/// changes, added, changed, removed, ...}], nc, via_watcher}`. `nc`: nil
/// ships classifier groups when the configuration enables them, true/false
/// forces it on or off; the report's `nc` is then `{ok, noop, prepared,
/// error, advice, replicas: [{host, port, ok, outcome, ...}], lines}` (nil
/// when off). `watcher`: whether a running active watcher may run the CA
/// part (`via_watcher` says it did).
fn sync(
    ruby: &Ruby,
    config: String,
    replica: Option<String>,
    noop: bool,
    nc: Option<bool>,
    watcher: bool,
) -> Result<Value, Error> {
    guard(ruby, || {
        let token = CancelToken::new();
        let runner = load(ruby, &config, false)?
            .cancel_token(token.clone())
            .progress(true)
            .use_watcher(watcher);
        let run = without_gvl(ruby, &token, move || {
            runner.sync_with_nc(replica.as_deref(), noop, nc)
        })?
        .into_ruby(ruby)?;
        to_value(ruby, &run)
    })
}

/// `_receive(config)` → Hash `{ok, outcome, sender, txn, digest, ...}` of
/// the last session: protocol sessions on this process's stdin and stdout,
/// one after another for as long as the sender starts another, each logged.
fn receive(ruby: &Ruby, config: String) -> Result<Value, Error> {
    guard(ruby, || {
        let token = CancelToken::new();
        let runner = load(ruby, &config, false)?.cancel_token(token.clone());
        let report = without_gvl(ruby, &token, move || runner.receive_stdio())?.into_ruby(ruby)?;
        let mut value = serde_json::to_value(&report).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("ok".into(), true.into());
        }
        json_to_ruby(ruby, &value)
    })
}

/// `_apply(config, force)` → Hash `{ok, lines, report}`.
fn apply(ruby: &Ruby, config: String, force: bool) -> Result<Value, Error> {
    guard(ruby, || {
        let token = CancelToken::new();
        let runner = load(ruby, &config, false)?.cancel_token(token.clone());
        let run = without_gvl(ruby, &token, move || runner.apply(force))?.into_ruby(ruby)?;
        to_value(ruby, &run)
    })
}

/// `_watch(config, once)` → Hash `{ok, role, cancelled, rounds, ...}` once
/// stopped (Ctrl-C or SIGTERM trip the cancel token; Ruby then raises the
/// pending Interrupt or SignalException).
fn watch(ruby: &Ruby, config: String, once: bool) -> Result<Value, Error> {
    guard(ruby, || {
        let token = CancelToken::new();
        let runner = load(ruby, &config, true)?.cancel_token(token.clone());
        let summary = without_gvl(ruby, &token, move || runner.watch(once))?.into_ruby(ruby)?;
        to_value(ruby, &summary)
    })
}

/// `_status(config)` → Hash `{host, role, healthy, checked_at, stale_after,
/// entries: [{kind, component, peer, healthy, last_success, age_seconds,
/// digest, staged_digest, applied_digest, pending_txns, outcome, fenced,
/// last_error}], problems, warnings}`.
fn status(ruby: &Ruby, config: String) -> Result<Value, Error> {
    guard(ruby, || {
        let token = CancelToken::new();
        let runner = load(ruby, &config, false)?;
        let report = without_gvl(ruby, &token, move || runner.status())?.into_ruby(ruby)?;
        to_value(ruby, &report)
    })
}

/// `_pin_host_key(host, port, known_hosts)` → Hash `{type, fingerprint,
/// line, added}`.
fn pin_host_key(ruby: &Ruby, host: String, port: u16, known_hosts: String) -> Result<Value, Error> {
    guard(ruby, || {
        let token = CancelToken::new();
        let path = PathBuf::from(known_hosts);
        let key = without_gvl(ruby, &token, move || {
            runner::pin_host_key(&host, port, &path, Duration::from_secs(10))
        })?
        .into_ruby(ruby)?;
        to_value(ruby, &key)
    })
}

/// `_nc_dump(config, transformed)` → String: this host's classifier groups
/// as pretty JSON (an array, the shape of `GET /v1/groups`), as the
/// classifier returns them or with `nc.hostnames` applied.
fn nc_dump(ruby: &Ruby, config: String, transformed: bool) -> Result<Value, Error> {
    guard(ruby, || {
        let token = CancelToken::new();
        let runner = load(ruby, &config, false)?;
        let form = if transformed {
            ncship::DumpForm::Transformed
        } else {
            ncship::DumpForm::Raw
        };
        let json = without_gvl(ruby, &token, move || ncship::nc_dump(runner.config(), form))?
            .into_ruby(ruby)?;
        Ok(ruby.str_new(&json).as_value())
    })
}

/// `_nc_apply(config, noop, replace, force)` → Hash `{ok, lines, report,
/// error, advice}`: brings this host's classifier to the latest dump
/// received (with `noop`: the diff and plan, nothing written; what
/// `pe_failover nc diff` prints). `replace` uses one import-hierarchy call
/// (or the configuration's `nc.replace` when false).
fn nc_apply(
    ruby: &Ruby,
    config: String,
    noop: bool,
    replace: bool,
    force: bool,
) -> Result<Value, Error> {
    guard(ruby, || {
        let token = CancelToken::new();
        let runner = load(ruby, &config, false)?.cancel_token(token.clone());
        if !runner.config().nc.enabled {
            return Err(to_ruby(
                ruby,
                pe_failover_core::Error::new(
                    pe_failover_core::ErrorKind::InvalidInput,
                    "Node Classifier replication is disabled in the configuration (nc.enabled is false); enable it (class parameter nc_enabled) to apply groups",
                ),
            ));
        }
        let replace = if replace { Some(true) } else { None };
        let run = without_gvl(ruby, &token, move || {
            Ok::<_, pe_failover_core::Error>(runner.apply_nc(force, noop, replace))
        })?
        .into_ruby(ruby)?;
        to_value(ruby, &run)
    })
}
