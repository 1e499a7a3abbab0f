//! The state methods of Dapr's gRPC service: each request's fields to
//! [`crate::ops::state`], and its answer back into Dapr's messages. Values
//! are bytes both ways.

use dapr::dapr::proto::common::v1 as common;
use dapr::dapr::proto::runtime::v1;

use super::client_for;
use crate::ops::state::{self, Concurrency, Delete, Operation, Write};

type Answer<T> = Result<tonic::Response<T>, tonic::Status>;

/// GetState: an empty answer for a missing key, as Dapr gives.
pub async fn get(request: tonic::Request<v1::GetStateRequest>) -> Answer<v1::GetStateResponse> {
    let client = client_for(&request).await?;
    let req = request.into_inner();
    state::check_grpc_consistency(req.consistency)?;
    let entry = state::get(&client, &req.store_name, &req.key, &req.metadata).await?;
    Ok(tonic::Response::new(match entry {
        Some(e) => v1::GetStateResponse {
            data: e.value,
            etag: e.etag,
            metadata: Default::default(),
        },
        None => v1::GetStateResponse::default(),
    }))
}

/// GetBulkState: one item per distinct key, each with its value and ETag,
/// or empty when missing. `parallelism` is ignored: mecha reads the keys
/// in one request.
pub async fn get_bulk(
    request: tonic::Request<v1::GetBulkStateRequest>,
) -> Answer<v1::GetBulkStateResponse> {
    let client = client_for(&request).await?;
    let req = request.into_inner();
    let items = state::bulk_get(&client, &req.store_name, req.keys, &req.metadata).await?;
    let items = items
        .into_iter()
        .map(|(key, entry)| {
            let (data, etag) = entry.map(|e| (e.value, e.etag)).unwrap_or_default();
            v1::BulkStateItem {
                key,
                data,
                etag,
                error: String::new(),
                metadata: Default::default(),
            }
        })
        .collect();
    Ok(tonic::Response::new(v1::GetBulkStateResponse { items }))
}

/// A Dapr state item as a write.
fn write(item: common::StateItem) -> Result<Write, tonic::Status> {
    let (concurrency, consistency) = options(item.options.as_ref());
    state::check_grpc_consistency(consistency)?;
    Ok(Write {
        key: item.key,
        value: item.value,
        etag: item.etag.map(|e| e.value),
        concurrency: Concurrency::from_grpc(concurrency)?,
        metadata: item.metadata,
    })
}

/// A Dapr state item as a delete.
fn delete_of(
    key: String,
    etag: Option<common::Etag>,
    opts: Option<&common::StateOptions>,
    metadata: std::collections::HashMap<String, String>,
) -> Result<Delete, tonic::Status> {
    let (concurrency, consistency) = options(opts);
    state::check_grpc_consistency(consistency)?;
    Ok(Delete {
        key,
        etag: etag.map(|e| e.value),
        concurrency: Concurrency::from_grpc(concurrency)?,
        metadata,
    })
}

fn options(options: Option<&common::StateOptions>) -> (i32, i32) {
    options.map_or((0, 0), |o| (o.concurrency, o.consistency))
}

/// SaveState: every item, all or none.
pub async fn save(request: tonic::Request<v1::SaveStateRequest>) -> Answer<()> {
    let client = client_for(&request).await?;
    let req = request.into_inner();
    let writes = req
        .states
        .into_iter()
        .map(write)
        .collect::<Result<Vec<_>, _>>()?;
    state::save(&client, &req.store_name, writes).await?;
    Ok(tonic::Response::new(()))
}

/// DeleteState, conditional when it carries an ETag.
pub async fn delete(request: tonic::Request<v1::DeleteStateRequest>) -> Answer<()> {
    let client = client_for(&request).await?;
    let req = request.into_inner();
    let d = delete_of(req.key, req.etag, req.options.as_ref(), req.metadata)?;
    state::delete(&client, &req.store_name, d).await?;
    Ok(tonic::Response::new(()))
}

/// DeleteBulkState: every item, all or none.
pub async fn delete_bulk(request: tonic::Request<v1::DeleteBulkStateRequest>) -> Answer<()> {
    let client = client_for(&request).await?;
    let req = request.into_inner();
    let deletes = req
        .states
        .into_iter()
        .map(|i| delete_of(i.key, i.etag, i.options.as_ref(), i.metadata))
        .collect::<Result<Vec<_>, _>>()?;
    state::delete_bulk(&client, &req.store_name, deletes).await?;
    Ok(tonic::Response::new(()))
}

/// ExecuteStateTransaction: upserts and deletes, all or none.
pub async fn transact(request: tonic::Request<v1::ExecuteStateTransactionRequest>) -> Answer<()> {
    let client = client_for(&request).await?;
    let req = request.into_inner();
    let operations = req
        .operations
        .into_iter()
        .map(|op| {
            let item = op.request.ok_or_else(|| {
                tonic::Status::invalid_argument("a transaction operation without its request")
            })?;
            Ok(Operation::new(&op.operation_type, write(item)?)?)
        })
        .collect::<Result<Vec<_>, tonic::Status>>()?;
    state::transact(&client, &req.store_name, operations, &req.metadata).await?;
    Ok(tonic::Response::new(()))
}
