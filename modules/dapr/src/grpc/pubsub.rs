//! Dapr's pub/sub over gRPC: PublishEvent, BulkPublishEvent (and its
//! Alpha1 name) and the streaming subscription SubscribeTopicEventsAlpha1,
//! served through `ops::pubsub` on the caller's session.

use dapr::dapr::proto::runtime::v1;
use futures_util::Stream;
use mecha_abi::msg::Delivery;
use mecha_client::{Client, PubsubSubscription, SubscribeOptions};
use v1::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as In;
use v1::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as Out;

use super::streamed::Streamed;
use super::{client_for, failed};
use crate::ops::delivery::{self, Outstanding, Verdict};
use crate::ops::pubsub;

/// Answers queued towards one streaming subscriber. Small: the pubsub
/// module's in-flight window already bounds what is outstanding, and a
/// subscriber that stops reading stops the pump rather than growing this.
const STREAM_QUEUE: usize = 8;

/// How long a new streaming subscription waits for its initial request; a
/// stream that sends none is ended rather than left holding its slot.
const INITIAL_REQUEST_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// PublishEvent.
pub async fn publish(
    request: tonic::Request<v1::PublishEventRequest>,
) -> Result<tonic::Response<()>, tonic::Status> {
    let client = client_for(&request).await?;
    let req = request.into_inner();
    pubsub::publish(
        &client,
        &req.pubsub_name,
        &req.topic,
        req.data,
        &req.data_content_type,
        req.metadata.into_iter().collect(),
    )
    .await
    .map_err(tonic::Status::from)?;
    Ok(tonic::Response::new(()))
}

/// BulkPublishEvent and BulkPublishEventAlpha1: the entries that failed are
/// listed in the answer; the call itself fails only when the request is
/// malformed as a whole.
pub async fn bulk_publish(
    request: tonic::Request<v1::BulkPublishRequest>,
) -> Result<tonic::Response<v1::BulkPublishResponse>, tonic::Status> {
    let client = client_for(&request).await?;
    let req = request.into_inner();
    let entries = req
        .entries
        .into_iter()
        .map(|e| pubsub::BulkEntry {
            entry_id: e.entry_id,
            event: e.event,
            content_type: e.content_type,
            metadata: e.metadata.into_iter().collect(),
        })
        .collect();
    let metadata: Vec<_> = req.metadata.into_iter().collect();
    let failed = pubsub::bulk_publish(&client, &req.pubsub_name, &req.topic, entries, &metadata)
        .await
        .map_err(tonic::Status::from)?;
    Ok(tonic::Response::new(v1::BulkPublishResponse {
        failed_entries: failed
            .into_iter()
            .map(|(entry_id, error)| v1::BulkPublishResponseFailedEntry { entry_id, error })
            .collect(),
    }))
}

/// SubscribeTopicEventsAlpha1: the first message names the topic; the
/// answer starts with `initial_response`, then carries one `event_message`
/// per delivery, and the app's `event_processed` answers settle them.
///
/// The subscription joins the consumer group named by the metadata
/// `consumerID` (Dapr's name for it), else the tenant's default group, so
/// the instances of one app share the topic's events as Dapr's do. The
/// stream ends when the app closes its side or its connection, which
/// cancels the native subscription (its unanswered deliveries go to the
/// group's other members). Streams are bounded by the native session's
/// stream limit, and each by the in-flight window
/// ([`delivery::STREAM_IN_FLIGHT`]).
pub async fn subscribe(
    request: tonic::Request<tonic::Streaming<v1::SubscribeTopicEventsRequestAlpha1>>,
) -> Result<tonic::Response<Streamed<v1::SubscribeTopicEventsResponseAlpha1>>, tonic::Status> {
    let client = client_for(&request).await?;
    let mut inbound = request.into_inner();
    let first = tokio::time::timeout(INITIAL_REQUEST_WITHIN, inbound.message())
        .await
        .map_err(|_| {
            tonic::Status::deadline_exceeded(format!(
                "no initial request within {INITIAL_REQUEST_WITHIN:?}"
            ))
        })??
        .ok_or_else(|| {
            tonic::Status::invalid_argument("the stream ended before its initial request")
        })?;
    let Some(In::InitialRequest(init)) = first.subscribe_topic_events_request_type else {
        return Err(tonic::Status::invalid_argument(
            "the first message of SubscribeTopicEventsAlpha1 must be initial_request",
        ));
    };
    pubsub::check_target(&init.pubsub_name, &init.topic).map_err(tonic::Status::from)?;
    let group = subscription_group(&init.metadata)?;
    let options = SubscribeOptions {
        max_in_flight: delivery::STREAM_IN_FLIGHT,
        ack_deadline: None,
    };
    let sub = client
        .subscribe(&init.pubsub_name, &init.topic, &group, options)
        .await
        .map_err(failed)?;
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_QUEUE);
    let initial = v1::SubscribeTopicEventsResponseAlpha1 {
        subscribe_topic_events_response_type: Some(Out::InitialResponse(
            v1::SubscribeTopicEventsResponseInitialAlpha1 {},
        )),
    };
    // The queue is new and empty, so this cannot fail for lack of room.
    let _ = tx.try_send(Ok(initial));
    let pump = Pump {
        client,
        sub,
        pubsub_name: init.pubsub_name,
        dead_letter_topic: init.dead_letter_topic.filter(|t| !t.is_empty()),
        outstanding: Outstanding::default(),
    };
    tokio::spawn(pump.run(inbound, tx));
    Ok(tonic::Response::new(Box::pin(received(rx))))
}

/// The consumer group of a subscription's metadata. Other entries are
/// component-specific hints in Dapr and are ignored; `rawPayload=true`,
/// which would hand the app undecoded envelopes, is refused by name.
fn subscription_group(
    metadata: &std::collections::HashMap<String, String>,
) -> Result<String, tonic::Status> {
    if metadata
        .get("rawPayload")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Err(tonic::Status::invalid_argument(
            "metadata rawPayload=true is not supported on streaming subscriptions: events \
             arrive with their CloudEvent attributes as fields",
        ));
    }
    Ok(metadata.get("consumerID").cloned().unwrap_or_default())
}

/// The answers in `rx`, as the response stream.
fn received<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<Result<T, tonic::Status>>,
) -> impl Stream<Item = Result<T, tonic::Status>> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// One streaming subscription: moves deliveries to the app and the app's
/// answers to the pubsub module.
struct Pump {
    client: Client,
    sub: PubsubSubscription,
    pubsub_name: String,
    dead_letter_topic: Option<String>,
    outstanding: Outstanding,
}

type Tx = tokio::sync::mpsc::Sender<Result<v1::SubscribeTopicEventsResponseAlpha1, tonic::Status>>;

impl Pump {
    async fn run(
        mut self,
        mut inbound: tonic::Streaming<v1::SubscribeTopicEventsRequestAlpha1>,
        tx: Tx,
    ) {
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                message = inbound.message() => match message {
                    Ok(Some(m)) => match m.subscribe_topic_events_request_type {
                        Some(In::EventProcessed(done)) => self.answered(done).await,
                        Some(In::InitialRequest(_)) => {
                            let e = tonic::Status::invalid_argument(
                                "only the first message of the stream may be initial_request",
                            );
                            let _ = tx.send(Err(e)).await;
                            break;
                        }
                        None => {}
                    },
                    // The app closed its side of the stream, or its
                    // connection: the subscription ends.
                    Ok(None) | Err(_) => break,
                },
                next = self.sub.next() => match next {
                    Some(Ok(d)) => {
                        if tx.send(Ok(self.deliver(d))).await.is_err() {
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        let _ = tx.send(Err(failed(e))).await;
                        break;
                    }
                    None => break,
                },
            }
        }
        if let Err(e) = self.sub.cancel().await {
            tracing::debug!("cancelling a streaming subscription: {e}");
        }
    }

    /// The event message for `d`, remembering `d` for the app's answer.
    fn deliver(&mut self, d: Delivery) -> v1::SubscribeTopicEventsResponseAlpha1 {
        let event = delivery::event_of(&d, &self.pubsub_name);
        self.outstanding.insert(event.id.clone(), d);
        v1::SubscribeTopicEventsResponseAlpha1 {
            subscribe_topic_events_response_type: Some(Out::EventMessage(topic_event(event))),
        }
    }

    /// Settles the delivery the app answered. An answer naming no
    /// outstanding delivery (already answered, or forgotten) changes
    /// nothing; an unknown status counts as RETRY, so no message is lost.
    async fn answered(&mut self, done: v1::SubscribeTopicEventsRequestProcessedAlpha1) {
        let Some(d) = self.outstanding.take(&done.id) else {
            return;
        };
        let verdict = done
            .status
            .map_or(Some(Verdict::Success), |s| Verdict::from_dapr(s.status))
            .unwrap_or(Verdict::Retry);
        let dlq = self.dead_letter_topic.as_deref();
        if let Err(e) = delivery::settle(&self.client, &d, verdict, dlq).await {
            // The delivery stays outstanding in the module, which delivers
            // it again after its ack deadline: at least once still holds.
            tracing::debug!("settling event {}: {e}", done.id);
        }
    }
}

/// Dapr's `TopicEventRequest` of an event.
fn topic_event(event: delivery::Event) -> v1::TopicEventRequest {
    let extensions = (!event.extensions.is_empty()).then(|| prost_types::Struct {
        fields: event
            .extensions
            .into_iter()
            .map(|(name, value)| {
                let value = prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(value)),
                };
                (name, value)
            })
            .collect(),
    });
    v1::TopicEventRequest {
        id: event.id,
        source: event.source,
        r#type: event.event_type,
        spec_version: event.spec_version,
        data_content_type: event.data_content_type,
        data: event.data,
        topic: event.topic,
        pubsub_name: event.pubsub_name,
        path: String::new(),
        extensions,
    }
}
