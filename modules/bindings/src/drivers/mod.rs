//! The binding types, one file per type, and the factory that opens a
//! binding from its component spec (`spec.type` → driver), reading the
//! fields every binding shares: `allowedTenants`, `maxResponseBytes` and
//! Dapr's `direction`.
//!
//! Output bindings implement [`Output`]; input bindings are an [`Input`]
//! (the delivery every input type shares) and a [`Source`] of events that
//! the module runs as a task of its own.

pub mod beneath;
pub mod cron;
pub mod http;
pub mod localstorage;
pub mod postgresql;
pub mod redis;
pub mod redis_stream;

use std::path::Path;
use std::sync::Arc;

use mecha_abi::msg::{ComponentSpec, InvokeBindingReply};
use mecha_module::metadata::Metadata;
use mecha_module::{BoxFuture, DriverError};

use crate::error::BindingError;
use crate::input::ledger::Ledger;
use crate::input::Input;
use crate::schedule::Schedule;

/// The fields every binding accepts.
pub const COMMON_FIELDS: [&str; 3] = ["allowedTenants", "maxResponseBytes", "direction"];

/// The largest result an operation answers without `maxResponseBytes`:
/// 4 MiB, below the default frame limit.
pub const DEFAULT_MAX_RESPONSE: u64 = 4 << 20;

/// The highest `maxResponseBytes`: the largest frame the daemon accepts
/// from a module.
pub const MAX_RESPONSE_CAP: u64 = 64 << 20;

/// The types this module serves, for messages.
const KNOWN_TYPES: &str =
    "bindings.cron, bindings.http, bindings.localstorage, bindings.postgresql (or \
     bindings.postgres), bindings.redis";

/// One operation on an output binding.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    /// The operation's name.
    pub operation: &'a str,
    /// The operation's input.
    pub data: &'a [u8],
    /// The request's metadata.
    pub metadata: &'a [(String, String)],
    /// The largest result the operation may answer (`maxResponseBytes`).
    pub limit: usize,
    /// The request's W3C trace context (`traceparent` text), which a
    /// binding that calls a traced protocol passes on.
    pub trace_parent: Option<&'a str>,
}

impl<'a> Call<'a> {
    /// The request metadata entry `name`, matched exactly, else ignoring
    /// ASCII case (Dapr's clients send the names as documented; a client
    /// that capitalises differently still means the same entry).
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.metadata
            .iter()
            .find(|(n, _)| n == name)
            .or_else(|| {
                self.metadata
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
            })
            .map(|(_, v)| v.as_str())
    }

    /// The required request metadata entry `name`.
    pub fn required(&self, name: &str) -> Result<&'a str, BindingError> {
        self.get(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            BindingError::Invalid(format!(
                "operation {:?} needs the request metadata entry {name:?}",
                self.operation
            ))
        })
    }

    /// The error for an operation the type does not define.
    pub fn unknown(&self, kind: &str, known: &[&str]) -> BindingError {
        BindingError::Invalid(format!(
            "{kind} has no operation {:?} (it has: {})",
            self.operation,
            known.join(", ")
        ))
    }

    /// The error for a result over the limit.
    pub fn too_large(&self, what: impl std::fmt::Display) -> BindingError {
        BindingError::TooLarge(format!(
            "the result of operation {:?} ({what}) is larger than the binding's \
             maxResponseBytes, {} bytes; nothing of it is returned",
            self.operation, self.limit
        ))
    }
}

/// An output binding.
pub trait Output: Send + Sync {
    /// Runs one operation. The module bounds it by the request's deadline.
    fn invoke<'a>(
        &'a self,
        call: Call<'a>,
    ) -> BoxFuture<'a, Result<InvokeBindingReply, BindingError>>;
}

/// Where an input binding's events come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A cron schedule's ticks.
    Cron(Schedule),
    /// The entries of a Redis stream.
    RedisStream(Box<redis_stream::StreamSource>),
}

/// What a binding does.
pub enum Role {
    /// An output binding.
    Output(Box<dyn Output>),
    /// An input binding: its delivery and its events' source.
    Input(Arc<Input>, Source),
}

/// Who may use a binding, from its `allowedTenants`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// `allowedTenants: "*"`, or no list on a binding that reaches nothing
    /// outside mecha (`bindings.cron`).
    Everyone,
    /// The tenants the list names.
    Tenants(Vec<String>),
    /// No list on a binding that reaches outside mecha (a network service or
    /// the file system): deny by default, as secret stores do, so that a
    /// component the operator wrote for one app does not hand every tenant
    /// on the node its database, HTTP service or directory. Dapr `scopes`
    /// admit tenants instead, when the component has them.
    Unlisted,
}

/// One configured binding.
pub struct Binding {
    /// The component type, e.g. `bindings.http`.
    pub kind: String,
    /// Who may use it (`allowedTenants`).
    pub access: Access,
    /// `maxResponseBytes`.
    pub max_response: usize,
    /// What it does.
    pub role: Role,
}

/// Opens the binding `spec` describes. Input bindings keep their events in
/// `data_dir`, and share `ledger`, opened with the first of them.
pub fn open(
    spec: &ComponentSpec,
    data_dir: &Path,
    ledger: &mut Option<Arc<Ledger>>,
) -> Result<Binding, BindingError> {
    let renamed;
    let spec = match postgres_url(spec)? {
        Some(with_connection_string) => {
            renamed = with_connection_string;
            &renamed
        }
        None => spec,
    };
    let kind = spec.kind.as_str();
    // A Redis binding that names a stream is an input binding.
    let stream = kind == "bindings.redis"
        && spec
            .metadata
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("stream"));
    let redis_input = [&redis::FIELDS[..], &redis_stream::FIELDS].concat();
    let (own, input): (&[&str], bool) = match kind {
        "bindings.cron" => (&cron::FIELDS, true),
        "bindings.redis" if stream => (&redis_input, true),
        "bindings.http" => (&http::FIELDS, false),
        "bindings.localstorage" => (&localstorage::FIELDS, false),
        "bindings.postgresql" | "bindings.postgres" => (&postgresql::FIELDS, false),
        "bindings.redis" => (&redis::FIELDS, false),
        other => {
            return Err(BindingError::Driver(DriverError::Config {
                component: spec.name.clone(),
                reason: format!("unknown binding type {other:?} (known: {KNOWN_TYPES})"),
            }))
        }
    };
    let input_fields: &[&str] = if input { &crate::input::FIELDS } else { &[] };
    let known = [&COMMON_FIELDS[..], input_fields, own].concat();
    let metadata = Metadata::parse(spec, &known)?;
    check_direction(&metadata, input)?;
    let access = match metadata.list("allowedTenants")? {
        Some(list) if list.contains(&"*") => Access::Everyone,
        Some(list) => Access::Tenants(list.into_iter().map(str::to_owned).collect()),
        None if kind == "bindings.cron" => Access::Everyone,
        None => Access::Unlisted,
    };
    let max_response = metadata
        .whole("maxResponseBytes", 1..=MAX_RESPONSE_CAP)?
        .unwrap_or(DEFAULT_MAX_RESPONSE);
    let role = match kind {
        "bindings.cron" | "bindings.redis" if input => {
            let source = if kind == "bindings.cron" {
                Source::Cron(cron::schedule(&metadata)?)
            } else {
                Source::RedisStream(Box::new(redis_stream::StreamSource::open(kind, &metadata)?))
            };
            let ledger = match ledger {
                Some(ledger) => Arc::clone(ledger),
                None => {
                    let opened = Arc::new(Ledger::open(data_dir.join("ledger.redb"))?);
                    *ledger = Some(Arc::clone(&opened));
                    opened
                }
            };
            let input = Input::open(&metadata, data_dir, ledger)?;
            Role::Input(Arc::new(input), source)
        }
        "bindings.http" => Role::Output(Box::new(http::HttpBinding::open(&metadata)?)),
        "bindings.localstorage" => Role::Output(Box::new(localstorage::LocalStorage::open(
            &metadata, data_dir,
        )?)),
        "bindings.redis" => Role::Output(Box::new(redis::RedisBinding::open(kind, &metadata)?)),
        _ => Role::Output(Box::new(postgresql::PostgresBinding::open(
            kind, &metadata,
        )?)),
    };
    Ok(Binding {
        kind: kind.to_owned(),
        access,
        max_response: usize::try_from(max_response).unwrap_or(usize::MAX),
        role,
    })
}

/// Older Dapr component files name a PostgreSQL binding's connection
/// string `url`: such a spec, with the field renamed `connectionString`
/// (giving both is an error); `None` for every other spec.
fn postgres_url(spec: &ComponentSpec) -> Result<Option<ComponentSpec>, BindingError> {
    if !matches!(
        spec.kind.as_str(),
        "bindings.postgresql" | "bindings.postgres"
    ) {
        return Ok(None);
    }
    let named = |name: &str| {
        spec.metadata
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    match (named("url"), named("connectionString")) {
        (false, _) => Ok(None),
        (true, true) => Err(BindingError::Driver(DriverError::Config {
            component: spec.name.clone(),
            reason: "metadata fields \"url\" and \"connectionString\" are one setting (url is \
                     Dapr's older name); give only one"
                .to_owned(),
        })),
        (true, false) => {
            let mut renamed = spec.clone();
            for (name, _) in &mut renamed.metadata {
                if name.eq_ignore_ascii_case("url") {
                    "connectionString".clone_into(name);
                }
            }
            Ok(Some(renamed))
        }
    }
}

/// Dapr's `direction` field (`input`, `output`, or both, comma-separated)
/// must include what the type is: a component that asks only for a
/// direction its type does not have would not do what its author expects.
fn check_direction(metadata: &Metadata<'_>, input: bool) -> Result<(), BindingError> {
    let Some(directions) = metadata.list("direction")? else {
        return Ok(());
    };
    let wanted = if input { "input" } else { "output" };
    for d in &directions {
        if !d.eq_ignore_ascii_case("input") && !d.eq_ignore_ascii_case("output") {
            return Err(metadata
                .error(format!(
                    "metadata field \"direction\" lists {d:?}; the directions are \"input\" \
                     and \"output\""
                ))
                .into());
        }
    }
    // Dapr writes `input, output` for types that are both there (its cron
    // binding has a `delete` operation); such a file loads, and the
    // direction this type lacks here is refused per request.
    if !directions.iter().any(|d| d.eq_ignore_ascii_case(wanted)) {
        return Err(metadata
            .error(format!(
                "metadata field \"direction\" is {:?}, but this binding type is {wanted} only",
                directions.join(", ")
            ))
            .into());
    }
    Ok(())
}
