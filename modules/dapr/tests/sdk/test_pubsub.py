"""Pub/sub through the personality with the official SDK: ``publish_event`` wraps the payload
in a CloudEvent as Dapr does, a streaming subscription (``DaprClient.subscribe``) receives it,
and its SUCCESS / RETRY / DROP answers become mecha's ack, nack (delivered again) and drop
(acknowledged, copied to the subscription's dead-letter topic); bulk publish reports the
entries that failed; native subscribers see the same events."""

from __future__ import annotations

import json
import queue
import uuid

import grpc
import mecha
import pytest
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.clients.grpc._request import BulkPublishEntry
from dapr.clients.grpc._response import TopicEventResponse

from conftest import NOBODY, Mechad, run_as
from streams import Reader


def topic() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def test_a_published_event_reaches_a_streaming_subscriber(dapr_env: Mechad) -> None:
    t = topic()
    with DaprClient() as d:
        reader = Reader(d.subscribe("pubsub", t))
        try:
            d.publish_event("pubsub", t, json.dumps({"order": 7}),
                            data_content_type="application/json")
            msg = reader.next()
            assert msg.data() == {"order": 7}
            assert msg.topic() == t
            assert msg.pubsub_name() == "pubsub"
            assert msg.type() == "com.dapr.event.sent"
            assert msg.spec_version() == "1.0"
            assert msg.data_content_type() == "application/json"
            assert msg.source().startswith("mecha://")
            assert msg.id()
            reader.subscription.respond_success(msg)
            # Text without a content type is Dapr's text/plain.
            d.publish_event("pubsub", t, "second")
            msg = reader.next()
            assert msg.data_content_type() == "text/plain"
            assert msg.data() == "second"
            reader.subscription.respond_success(msg)
        finally:
            reader.close()


def test_retry_delivers_again_and_success_ends_it(dapr_env: Mechad) -> None:
    t = topic()
    with DaprClient() as d:
        reader = Reader(d.subscribe("pubsub", t))
        try:
            d.publish_event("pubsub", t, "again")
            first = reader.next()
            reader.subscription.respond_retry(first)
            second = reader.next()
            assert second.id() == first.id()
            assert second.data() == "again"
            reader.subscription.respond_success(second)
            # Acknowledged: the next event is a new one.
            d.publish_event("pubsub", t, "next")
            assert reader.next().data() == "next"
        finally:
            reader.close()


def test_drop_acknowledges_and_moves_to_the_dead_letter_topic(dapr_env: Mechad) -> None:
    t, dlq = topic(), topic()
    with DaprClient() as d:
        dead = Reader(d.subscribe("pubsub", dlq))
        reader = Reader(d.subscribe("pubsub", t, dead_letter_topic=dlq))
        try:
            d.publish_event("pubsub", t, "poison")
            msg = reader.next()
            reader.subscription.respond_drop(msg)
            moved = dead.next()
            assert moved.data() == "poison"
            dead.subscription.respond_success(moved)
            # Dropped, not delivered again: the next event the subscriber sees is a new one.
            d.publish_event("pubsub", t, "fine")
            assert reader.next().data() == "fine"
        finally:
            reader.close()
            dead.close()


def test_bulk_publish_reports_the_entries_that_failed(dapr_env: Mechad) -> None:
    t = topic()
    with DaprClient() as d:
        reader = Reader(d.subscribe("pubsub", t))
        try:
            answer = d.publish_events("pubsub", t, [
                BulkPublishEntry(entry_id="1", event="one", content_type="text/plain"),
                BulkPublishEntry(entry_id="2", event='{"n": 2}', content_type="application/json"),
                # Message expiry is a Dapr option mecha does not have: refused by name.
                BulkPublishEntry(entry_id="3", event="three", content_type="text/plain",
                                 metadata={"ttlInSeconds": "10"}),
            ])
            assert [e.entry_id for e in answer.failed_entries] == ["3"]
            assert "ttlInSeconds" in answer.failed_entries[0].error
            got = {}
            for _ in range(2):
                msg = reader.next()
                got[msg.data_content_type()] = msg.data()
                reader.subscription.respond_success(msg)
            assert got == {"text/plain": "one", "application/json": {"n": 2}}
        finally:
            reader.close()


def test_a_native_subscriber_sees_the_dapr_envelope(dapr_env: Mechad) -> None:
    t = topic()
    with mecha.Client(dapr_env.socket) as native:
        with native.subscribe(t, store="pubsub") as sub:
            with DaprClient() as d:
                d.publish_event("pubsub", t, b"\x00\x01", data_content_type="application/octet-stream",
                                publish_metadata={"partitionKey": "k1"})
            delivery = sub.next(timeout=20)
            assert delivery is not None
            assert delivery.data == b"\x00\x01"
            assert delivery.event_type == "com.dapr.event.sent"
            assert delivery.data_content_type == "application/octet-stream"
            assert ("partitionKey", "k1") in delivery.metadata
            sub.ack(delivery)


def test_options_mecha_cannot_honour_are_refused(dapr_env: Mechad) -> None:
    with DaprClient() as d:
        with pytest.raises(DaprGrpcError) as raised:
            d.publish_event("pubsub", topic(), "x", publish_metadata={"ttlInSeconds": "5"})
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ttlInSeconds" in raised.value.details()
        with pytest.raises(DaprGrpcError) as raised:
            d.publish_event("no-such-pubsub", topic(), "x")
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "no-such-pubsub" in raised.value.details()


def test_another_uids_events_never_reach_this_uids_subscribers(dapr_env: Mechad) -> None:
    t = topic()
    script = f"""
        from dapr.clients import DaprClient
        with DaprClient() as d:
            d.publish_event("pubsub", "{t}", "theirs")
        """
    done = run_as(NOBODY, script, dapr_env.env())
    assert done.returncode == 0, done.stderr
    with DaprClient() as d:
        reader = Reader(d.subscribe("pubsub", t))
        try:
            d.publish_event("pubsub", t, "mine")
            # A new group starts at the oldest event its topic retains: had the other uid's
            # event gone to this uid's topic, it would come first.
            msg = reader.next()
            assert msg.data() == "mine"
            reader.subscription.respond_success(msg)
        finally:
            reader.close()


def test_a_streaming_subscription_survives_a_restart_of_the_pubsub_module(
        dapr_env: Mechad) -> None:
    t = topic()
    with DaprClient() as d:
        reader = Reader(d.subscribe("pubsub", t))
        try:
            d.publish_event("pubsub", t, "before")
            first = reader.next()
            with mecha.Client(dapr_env.socket) as native:
                native.module_restart("pubsub")
            # Unanswered when the module went away: delivered again by the new instance,
            # on the same stream (the personality's native subscription subscribed again).
            again = reader.next()
            assert (again.id(), again.data()) == (first.id(), "before")
            reader.subscription.respond_success(again)
            d.publish_event("pubsub", t, "after")
            assert reader.next().data() == "after"
        finally:
            reader.close()


def test_subscribe_with_handler_answers_with_the_handlers_status(dapr_env: Mechad) -> None:
    t = topic()
    seen: queue.Queue = queue.Queue()
    calls = []

    def handler(message) -> TopicEventResponse:
        calls.append(message.id())
        seen.put((message.data(), message.id()))
        # Retried once, then processed.
        return TopicEventResponse("retry" if len(calls) == 1 else "success")

    with DaprClient() as d:
        close = d.subscribe_with_handler("pubsub", t, handler)
        try:
            d.publish_event("pubsub", t, "handled")
            first = seen.get(timeout=20)
            second = seen.get(timeout=20)
            assert first == second
            assert first[0] == "handled"
        finally:
            close()
