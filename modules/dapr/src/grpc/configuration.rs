//! The configuration methods of Dapr's gRPC service, through
//! [`crate::ops::configuration`]. A subscription is a server stream whose
//! first message carries only the subscription's id, as Dapr sends it,
//! followed by one message per change.

use std::collections::HashMap;
use std::pin::Pin;

use dapr::dapr::proto::common::v1 as common;
use dapr::dapr::proto::runtime::v1;

use super::{caller_of, client_for};
use crate::ops::configuration::{self, Items, Subscription};

type Answer<T> = Result<tonic::Response<T>, tonic::Status>;

/// The stream of a subscription (the same type as the service's
/// `Streamed<SubscribeConfigurationResponse>`, named here so that this file
/// does not import the service that imports it).
pub type Updates = Pin<
    Box<
        dyn futures_util::Stream<Item = Result<v1::SubscribeConfigurationResponse, tonic::Status>>
            + Send
            + 'static,
    >,
>;

fn items(items: Items) -> HashMap<String, common::ConfigurationItem> {
    items
        .into_iter()
        .map(|(key, i)| {
            let item = common::ConfigurationItem {
                value: i.value,
                version: i.version,
                metadata: i.metadata.into_iter().collect(),
            };
            (key, item)
        })
        .collect()
}

/// GetConfiguration (and its Alpha1 name).
pub async fn get(
    request: tonic::Request<v1::GetConfigurationRequest>,
) -> Answer<v1::GetConfigurationResponse> {
    let client = client_for(&request).await?;
    let req = request.into_inner();
    let found = configuration::get(&client, &req.store_name, req.keys, &req.metadata).await?;
    Ok(tonic::Response::new(v1::GetConfigurationResponse {
        items: items(found),
    }))
}

/// Where the stream of a subscription is: its id not sent yet, or
/// sending changes.
enum Phase {
    Opening(Subscription),
    Changes(Subscription),
}

/// SubscribeConfiguration (and its Alpha1 name).
pub async fn subscribe(
    request: tonic::Request<v1::SubscribeConfigurationRequest>,
) -> Answer<Updates> {
    let (caller, _) = caller_of(&request)?;
    let client = client_for(&request).await?;
    let req = request.into_inner();
    let sub = configuration::subscribe(
        &client,
        caller.watches(),
        &req.store_name,
        req.keys,
        &req.metadata,
    )
    .await?;
    // The stream owns the subscription: when tonic drops it (the caller
    // went away or stopped reading), the subscription and its native watch
    // end with it.
    let stream = futures_util::stream::unfold(Some(Phase::Opening(sub)), |phase| async move {
        match phase? {
            Phase::Opening(sub) => {
                let first = v1::SubscribeConfigurationResponse {
                    id: sub.id().to_owned(),
                    items: HashMap::new(),
                };
                Some((Ok(first), Some(Phase::Changes(sub))))
            }
            Phase::Changes(mut sub) => match sub.next().await? {
                Ok(changed) => {
                    let message = v1::SubscribeConfigurationResponse {
                        id: sub.id().to_owned(),
                        items: items(changed),
                    };
                    Some((Ok(message), Some(Phase::Changes(sub))))
                }
                Err(e) => Some((Err(e.to_status()), None)),
            },
        }
    });
    Ok(tonic::Response::new(Box::pin(stream)))
}

/// UnsubscribeConfiguration (and its Alpha1 name): ends a subscription
/// this connection holds.
pub async fn unsubscribe(
    request: tonic::Request<v1::UnsubscribeConfigurationRequest>,
) -> Answer<v1::UnsubscribeConfigurationResponse> {
    let (caller, _) = caller_of(&request)?;
    let client = client_for(&request).await?;
    let req = request.into_inner();
    let ok = caller.watches().unsubscribe(client.tenant(), &req.id);
    let message = if ok {
        String::new()
    } else {
        format!(
            "failed to unsubscribe to configuration request {}: no such subscription on this \
             connection",
            req.id
        )
    };
    Ok(tonic::Response::new(v1::UnsubscribeConfigurationResponse {
        ok,
        message,
    }))
}
