//! `bindings.postgresql` (output): SQL through the SDK's PostgreSQL pool
//! (Dapr's `connectionString`, `timeout`, `maxConns`). Operations `exec` (a
//! statement; the answer's metadata holds `rows-affected`, `operation`,
//! `sql`, `start-time`, `end-time` and `duration`, as Dapr's), `query`
//! (the rows as a JSON array of arrays, one value per column, as Dapr
//! returns them) and `close` (accepted and a no-op: the pool is the node's,
//! shared by every tenant, so one tenant cannot close it for the others).
//!
//! The statement is the request metadata entry `sql`, its parameters the
//! entry `params`, a JSON array bound to `$1`, `$2`, …, each converted to
//! the type PostgreSQL infers for it. A result is read row by row and
//! refused once it passes `maxResponseBytes`.

use std::pin::Pin;
use std::time::{Instant, SystemTime};

use mecha_abi::msg::InvokeBindingReply;
use mecha_module::metadata::Metadata;
use mecha_module::remote::postgres::Postgres;
use mecha_module::BoxFuture;
use serde_json::Value;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;

use super::{Call, Output};
use crate::error::BindingError;

/// The fields of `bindings.postgresql`: the SDK's PostgreSQL fields.
pub const FIELDS: [&str; 4] = mecha_module::remote::postgres::FIELDS;

const OPERATIONS: [&str; 3] = ["exec", "query", "close"];

/// A PostgreSQL binding.
pub struct PostgresBinding {
    pg: Postgres,
}

impl PostgresBinding {
    /// Prepares the pool without connecting.
    pub fn open(kind: &str, metadata: &Metadata<'_>) -> Result<Self, BindingError> {
        Ok(Self {
            pg: Postgres::from_metadata(kind, metadata)?,
        })
    }
}

type Param = Box<dyn ToSql + Sync + Send>;

/// `value` as a parameter of type `ty`.
fn param(index: usize, ty: &Type, value: &Value) -> Result<Param, BindingError> {
    let wrong = || {
        BindingError::Invalid(format!(
            "parameter ${} is {value}, which is not a value of its type {ty}",
            index + 1
        ))
    };
    let null = value.is_null();
    Ok(match *ty {
        Type::BOOL => Box::new(if null {
            None
        } else {
            Some(value.as_bool().ok_or_else(wrong)?)
        }),
        Type::INT2 => Box::new(if null {
            None
        } else {
            Some(i16::try_from(value.as_i64().ok_or_else(wrong)?).map_err(|_| wrong())?)
        }),
        Type::INT4 => Box::new(if null {
            None
        } else {
            Some(i32::try_from(value.as_i64().ok_or_else(wrong)?).map_err(|_| wrong())?)
        }),
        Type::INT8 => Box::new(if null {
            None
        } else {
            Some(value.as_i64().ok_or_else(wrong)?)
        }),
        // f32 is what PostgreSQL stores for `real`; the narrowing is its.
        #[allow(clippy::cast_possible_truncation)]
        Type::FLOAT4 => Box::new(if null {
            None
        } else {
            Some(value.as_f64().ok_or_else(wrong)? as f32)
        }),
        Type::FLOAT8 => Box::new(if null {
            None
        } else {
            Some(value.as_f64().ok_or_else(wrong)?)
        }),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            Box::new(match value {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            })
        }
        _ => {
            return Err(BindingError::Invalid(format!(
                "parameter ${} has type {ty}, which bindings.postgresql cannot bind; cast it \
                 in the statement (for example $1::text)",
                index + 1
            )))
        }
    })
}

/// Column `i` of `row` as JSON.
fn column(row: &Row, i: usize) -> Result<Value, BindingError> {
    let ty = row.columns()[i].type_();
    let failed = |e: tokio_postgres::Error| {
        BindingError::Failed(format!("cannot read column {i} ({ty}): {e}"))
    };
    Ok(match *ty {
        Type::BOOL => row.try_get::<_, Option<bool>>(i).map_err(failed)?.into(),
        Type::INT2 => row.try_get::<_, Option<i16>>(i).map_err(failed)?.into(),
        Type::INT4 => row.try_get::<_, Option<i32>>(i).map_err(failed)?.into(),
        Type::INT8 => row.try_get::<_, Option<i64>>(i).map_err(failed)?.into(),
        Type::FLOAT4 => row.try_get::<_, Option<f32>>(i).map_err(failed)?.into(),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i).map_err(failed)?.into(),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            row.try_get::<_, Option<String>>(i).map_err(failed)?.into()
        }
        Type::BYTEA => row
            .try_get::<_, Option<Vec<u8>>>(i)
            .map_err(failed)?
            .map_or(Value::Null, |b| b.into_iter().map(Value::from).collect()),
        _ => {
            return Err(BindingError::Invalid(format!(
                "column {:?} has type {ty}, which bindings.postgresql cannot return; cast it \
                 in the query (for example {}::text)",
                row.columns()[i].name(),
                row.columns()[i].name()
            )))
        }
    })
}

/// `t` as RFC 3339 in UTC with microseconds.
fn timestamp(t: SystemTime) -> String {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let base = crate::schedule::rfc3339(since.as_secs());
    format!(
        "{}.{:06}Z",
        base.trim_end_matches('Z'),
        since.subsec_micros()
    )
}

impl PostgresBinding {
    async fn run(&self, call: Call<'_>) -> Result<InvokeBindingReply, BindingError> {
        let sql = call.required("sql")?;
        let params: Vec<Value> = match call.get("params").filter(|p| !p.is_empty()) {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| BindingError::Invalid(format!("params must be a JSON array: {e}")))?,
            None => Vec::new(),
        };
        let started = SystemTime::now();
        let clock = Instant::now();
        let client = self.pg.client().await?;
        let statement = client
            .prepare(sql)
            .await
            .map_err(|e| self.pg.error("prepare the statement", &e))?;
        if statement.params().len() != params.len() {
            return Err(BindingError::Invalid(format!(
                "the statement has {} parameters, but params holds {}",
                statement.params().len(),
                params.len()
            )));
        }
        let bound = statement
            .params()
            .iter()
            .zip(&params)
            .enumerate()
            .map(|(i, (ty, v))| param(i, ty, v))
            .collect::<Result<Vec<Param>, _>>()?;
        let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|p| p.as_ref() as _).collect();
        let mut metadata = vec![
            ("operation".to_owned(), call.operation.to_owned()),
            ("sql".to_owned(), sql.to_owned()),
        ];
        let data = if call.operation == "exec" {
            let affected = client
                .execute(&statement, &refs)
                .await
                .map_err(|e| self.pg.error("run the statement", &e))?;
            metadata.push(("rows-affected".to_owned(), affected.to_string()));
            Vec::new()
        } else {
            let rows = client
                .query_raw(&statement, refs.iter().copied())
                .await
                .map_err(|e| self.pg.error("run the query", &e))?;
            let mut rows = std::pin::pin!(rows);
            let mut out = b"[".to_vec();
            let mut first = true;
            while let Some(row) = next_row(rows.as_mut()).await {
                let row = row.map_err(|e| self.pg.error("read a row", &e))?;
                let values = (0..row.len())
                    .map(|i| column(&row, i))
                    .collect::<Result<Vec<Value>, _>>()?;
                if !first {
                    out.push(b',');
                }
                first = false;
                serde_json::to_writer(&mut out, &values)
                    .map_err(|e| BindingError::Failed(format!("cannot encode a row: {e}")))?;
                if out.len() + 1 > call.limit {
                    return Err(call.too_large("the query's rows"));
                }
            }
            out.push(b']');
            out
        };
        let ended = SystemTime::now();
        metadata.extend([
            ("start-time".to_owned(), timestamp(started)),
            ("end-time".to_owned(), timestamp(ended)),
            ("duration".to_owned(), format!("{:?}", clock.elapsed())),
        ]);
        Ok(InvokeBindingReply { data, metadata })
    }
}

/// The next row of a row stream, without a stream-combinator crate.
async fn next_row(
    mut rows: Pin<&mut tokio_postgres::RowStream>,
) -> Option<Result<Row, tokio_postgres::Error>> {
    use futures_core::Stream;
    std::future::poll_fn(|cx| rows.as_mut().poll_next(cx)).await
}

impl Output for PostgresBinding {
    fn invoke<'a>(
        &'a self,
        call: Call<'a>,
    ) -> BoxFuture<'a, Result<InvokeBindingReply, BindingError>> {
        Box::pin(async move {
            match call.operation {
                "exec" | "query" => {
                    let timeout = self.pg.timeout();
                    match tokio::time::timeout(timeout, self.run(call)).await {
                        Ok(result) => result,
                        Err(_) => Err(BindingError::Driver(mecha_module::DriverError::Unavailable(
                            format!("{:?}: the statement did not finish within its timeout ({timeout:?})", self.pg.origin().component),
                        ))),
                    }
                }
                "close" => Ok(InvokeBindingReply {
                    data: Vec::new(),
                    metadata: Vec::new(),
                }),
                _ => Err(call.unknown("bindings.postgresql", &OPERATIONS)),
            }
        })
    }
}
