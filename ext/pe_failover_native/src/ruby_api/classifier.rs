//! Node Classifier primitives: hostname transform, group diff and digest
//! (pure), and `Native::ClassifierClient` for the classifier API.
//!
//! Groups, specs and reports cross the boundary as JSON text: the facade
//! (`lib/puppet_x/pe_failover/classifier.rb`) generates and parses it, and
//! the core parses groups strictly, with errors naming the group and key.
//! Every network call runs without the GVL and can be interrupted while it
//! waits to retry.

use std::path::PathBuf;
use std::time::Duration;

use magnus::{function, method, prelude::*, Error, RClass, RModule, Ruby};
use pe_failover_core::cancel::CancelToken;
use pe_failover_core::classifier::{
    self, canonical_digest, parse_dump, ClassifierClient, GroupSpec, GuardOptions, RetryPolicy,
    SyncMode, SyncOptions,
};
use serde::Serialize;
use serde_json::{json, Value};

use crate::helpers::errors::{to_ruby, IntoRuby};
use crate::helpers::nogvl::{guard, without_gvl};

pub fn init(ruby: &Ruby, native: &RModule) -> Result<(), Error> {
    native.define_module_function("_nc_transform", function!(nc_transform, 2))?;
    native.define_module_function("_nc_diff", function!(nc_diff, 2))?;
    native.define_module_function("_nc_digest", function!(nc_digest, 1))?;
    let class: RClass = native.define_class("ClassifierClient", ruby.class_object())?;
    class.define_singleton_method("_new", function!(RbClient::new, 8))?;
    class.define_method("_base_url", method!(RbClient::base_url, 0))?;
    class.define_method("_certname", method!(RbClient::certname, 0))?;
    class.define_method("_groups", method!(RbClient::groups, 0))?;
    class.define_method("_group", method!(RbClient::group, 1))?;
    class.define_method("_update_classes", method!(RbClient::update_classes, 1))?;
    class.define_method("_classes", method!(RbClient::classes, 1))?;
    class.define_method("_status", method!(RbClient::status, 0))?;
    class.define_method("_upsert_group", method!(RbClient::upsert_group, 2))?;
    class.define_method("_delete_group", method!(RbClient::delete_group, 3))?;
    class.define_method("_fetch_active", method!(RbClient::fetch_active, 1))?;
    class.define_method("_sync", method!(RbClient::sync, 6))?;
    Ok(())
}

fn to_json<T: Serialize>(ruby: &Ruby, value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| {
        to_ruby(
            ruby,
            pe_failover_core::Error::new(
                pe_failover_core::ErrorKind::Internal,
                format!("cannot encode the result as JSON: {e}"),
            ),
        )
    })
}

fn invalid(ruby: &Ruby, message: String) -> Error {
    to_ruby(
        ruby,
        pe_failover_core::Error::new(pe_failover_core::ErrorKind::InvalidInput, message),
    )
}

/// `_nc_transform(groups_json, [[from, to], ...])` → JSON
/// `{"groups": [...], "rewrites": [...], "digest": "..."}`.
fn nc_transform(
    ruby: &Ruby,
    groups: String,
    mappings: Vec<(String, String)>,
) -> Result<String, Error> {
    guard(ruby, || {
        let groups = parse_dump(&groups).into_ruby(ruby)?;
        let dump = classifier::prepare_active(&groups, &mappings).into_ruby(ruby)?;
        let out = json!({
            "groups": dump.groups.iter().map(|g| g.to_value()).collect::<Vec<_>>(),
            "rewrites": dump.transform.rewrites,
            "digest": dump.digest,
        });
        to_json(ruby, &out)
    })
}

/// `_nc_diff(from_json, to_json)` → JSON of what turns `from` into `to`:
/// `{"added", "removed", "changed", "unchanged", "in_sync", "from_digest",
/// "to_digest"}`.
fn nc_diff(ruby: &Ruby, from: String, to: String) -> Result<String, Error> {
    guard(ruby, || {
        let from = parse_dump(&from)
            .map_err(|e| pe_failover_core::Error::new(e.kind(), format!("from: {}", e.message())))
            .into_ruby(ruby)?;
        let to = parse_dump(&to)
            .map_err(|e| pe_failover_core::Error::new(e.kind(), format!("to: {}", e.message())))
            .into_ruby(ruby)?;
        let d = classifier::diff(&to, &from).into_ruby(ruby)?;
        let summary = classifier::DiffSummary::of(&d);
        let out = json!({
            "added": summary.added,
            "removed": summary.removed,
            "changed": summary.changed,
            "unchanged": summary.unchanged,
            "in_sync": summary.is_empty(),
            "from_digest": canonical_digest(&from),
            "to_digest": canonical_digest(&to),
        });
        to_json(ruby, &out)
    })
}

/// `_nc_digest(groups_json)` → the canonical digest (64 hex digits).
fn nc_digest(ruby: &Ruby, groups: String) -> Result<String, Error> {
    guard(ruby, || {
        let groups = parse_dump(&groups).into_ruby(ruby)?;
        Ok(canonical_digest(&groups))
    })
}

/// A classifier client held by Ruby.
#[magnus::wrap(class = "PuppetX::PeFailover::Native::ClassifierClient", size)]
struct RbClient(ClassifierClient);

fn seconds(ruby: &Ruby, what: &str, value: f64) -> Result<Duration, Error> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        invalid(
            ruby,
            format!("{what} must be a non-negative number of seconds, got {value}"),
        )
    })
}

impl RbClient {
    /// `_new(server, cert, key, cacert, crl_or_nil, connect_timeout,
    /// request_timeout, retry_for)`: reads and checks the files; no network.
    // Positional like every primitive: the keywords live in the facade.
    #[allow(clippy::too_many_arguments)]
    fn new(
        ruby: &Ruby,
        server: String,
        cert: String,
        key: String,
        cacert: String,
        crl: Option<String>,
        connect_timeout: f64,
        request_timeout: f64,
        retry_for: f64,
    ) -> Result<RbClient, Error> {
        guard(ruby, || {
            let mut builder = ClassifierClient::builder(server)
                .client_cert(PathBuf::from(cert))
                .client_key(PathBuf::from(key))
                .ca_cert(PathBuf::from(cacert))
                .connect_timeout(seconds(ruby, "connect_timeout", connect_timeout)?)
                .request_timeout(seconds(ruby, "timeout", request_timeout)?)
                .retry(RetryPolicy::up_to(seconds(ruby, "retry_for", retry_for)?));
            if let Some(crl) = crl {
                builder = builder.crl(PathBuf::from(crl));
            }
            Ok(RbClient(builder.build().into_ruby(ruby)?))
        })
    }

    /// Runs `f` without the GVL on a copy of the client whose retries stop
    /// when Ruby interrupts the thread.
    fn call<R: Send>(
        &self,
        ruby: &Ruby,
        f: impl FnOnce(&ClassifierClient) -> pe_failover_core::Result<R> + Send,
    ) -> Result<R, Error> {
        let token = CancelToken::new();
        let client = self.0.with_cancel_token(token.clone());
        without_gvl(ruby, &token, move || f(&client))?.into_ruby(ruby)
    }

    fn base_url(&self) -> String {
        self.0.base_url().to_owned()
    }

    fn certname(&self) -> String {
        self.0.certname().to_owned()
    }

    /// `_groups` → JSON array of every group.
    fn groups(ruby: &Ruby, rb_self: &Self) -> Result<String, Error> {
        guard(ruby, || {
            let groups = rb_self.call(ruby, |c| c.groups())?;
            let values: Vec<Value> = groups.iter().map(|g| g.to_value()).collect();
            to_json(ruby, &values)
        })
    }

    /// `_group(id)` → JSON of the group, or nil.
    fn group(ruby: &Ruby, rb_self: &Self, id: String) -> Result<Option<String>, Error> {
        guard(ruby, || {
            let group = rb_self.call(ruby, move |c| c.group(&id))?;
            group.map(|g| to_json(ruby, &g.to_value())).transpose()
        })
    }

    /// `_update_classes(environment_or_nil)`.
    fn update_classes(ruby: &Ruby, rb_self: &Self, env: Option<String>) -> Result<(), Error> {
        guard(ruby, || {
            rb_self.call(ruby, move |c| c.update_classes(env.as_deref()))
        })
    }

    /// `_classes(environment_or_nil)` → JSON array of classes.
    fn classes(ruby: &Ruby, rb_self: &Self, env: Option<String>) -> Result<String, Error> {
        guard(ruby, || {
            let classes = rb_self.call(ruby, move |c| match env {
                Some(env) => c.classes(&env),
                None => c.all_classes(),
            })?;
            to_json(ruby, &classes)
        })
    }

    /// `_status` → JSON `{"state", "version", "detail"}`.
    fn status(ruby: &Ruby, rb_self: &Self) -> Result<String, Error> {
        guard(ruby, || {
            let status = rb_self.call(ruby, |c| c.status())?;
            to_json(ruby, &status)
        })
    }

    /// `_upsert_group(spec_json, noop)` → JSON outcome
    /// `{"action", "id", "changed", "operation", "written"}`.
    fn upsert_group(
        ruby: &Ruby,
        rb_self: &Self,
        spec: String,
        noop: bool,
    ) -> Result<String, Error> {
        guard(ruby, || {
            let value: Value = serde_json::from_str(&spec)
                .map_err(|e| invalid(ruby, format!("the group spec is not valid JSON: {e}")))?;
            let spec = GroupSpec::from_value(&value).into_ruby(ruby)?;
            let outcome = rb_self.call(ruby, move |c| classifier::upsert_group(c, &spec, noop))?;
            to_json(ruby, &outcome)
        })
    }

    /// `_delete_group(name, environment_or_nil, noop)` → JSON outcome.
    fn delete_group(
        ruby: &Ruby,
        rb_self: &Self,
        name: String,
        env: Option<String>,
        noop: bool,
    ) -> Result<String, Error> {
        guard(ruby, || {
            let outcome = rb_self.call(ruby, move |c| {
                classifier::delete_group(c, &name, env.as_deref(), noop)
            })?;
            to_json(ruby, &outcome)
        })
    }

    /// `_fetch_active([[from, to], ...])` → JSON `{"groups", "digest",
    /// "source_digest", "rewrites"}`.
    fn fetch_active(
        ruby: &Ruby,
        rb_self: &Self,
        mappings: Vec<(String, String)>,
    ) -> Result<String, Error> {
        guard(ruby, || {
            let dump = rb_self.call(ruby, move |c| classifier::fetch_active(c, &mappings))?;
            let out = json!({
                "groups": dump.groups.iter().map(|g| g.to_value()).collect::<Vec<_>>(),
                "digest": dump.digest,
                "source_digest": dump.source_digest,
                "rewrites": dump.transform.rewrites,
            });
            to_json(ruby, &out)
        })
    }

    /// `_sync(groups_json, mode, noop, force, max_delete_share, promoted)`
    /// → JSON report. `mode` is `"update"` or `"replace"`.
    // Positional like every primitive: the keywords live in the facade.
    #[allow(clippy::too_many_arguments)]
    fn sync(
        ruby: &Ruby,
        rb_self: &Self,
        groups: String,
        mode: String,
        noop: bool,
        force: bool,
        max_delete_share: f64,
        promoted: bool,
    ) -> Result<String, Error> {
        guard(ruby, || {
            let mode = match mode.as_str() {
                "update" => SyncMode::Update,
                "replace" => SyncMode::Replace,
                other => {
                    return Err(invalid(
                        ruby,
                        format!("unknown sync mode {other:?} (use \"update\" or \"replace\")"),
                    ))
                }
            };
            let desired = parse_dump(&groups).into_ruby(ruby)?;
            let options = SyncOptions {
                mode,
                noop,
                guard: GuardOptions {
                    max_delete_share,
                    passive_promoted: promoted,
                    force,
                },
                ..SyncOptions::default()
            };
            let report = rb_self.call(ruby, move |c| classifier::sync(c, &desired, &options))?;
            to_json(ruby, &report)
        })
    }
}
