"""The configuration API through ``DaprClient``: reads, a subscription that hears an update
made through mecha's own client, unsubscribing, and the bound on subscriptions per
connection."""

from __future__ import annotations

import queue
import time

import grpc
import mecha
import pytest
from dapr.clients import DaprClient
from dapr.proto import api_service_v1, api_v1

from conftest import DEFAULT_COMPONENTS, NOBODY, Mechad, run_as, run_mechad

STORE = "configstore"
MAX_WATCHES_PER_CONNECTION = 16


def test_get_configuration(dapr_env: Mechad) -> None:
    with mecha.Client(dapr_env.socket) as native:
        native.config_set({"feature.color": "blue", "feature.size": "L"}, store=STORE)
    with DaprClient() as d:
        got = d.get_configuration(STORE, ["feature.color", "feature.missing"])
        assert set(got.items) == {"feature.color"}
        assert got.items["feature.color"].value == "blue"
        assert got.items["feature.color"].version
        everything = d.get_configuration(STORE, [])
        assert {"feature.color", "feature.size"} <= set(everything.items)
        with pytest.raises(grpc.RpcError) as unknown:
            d.get_configuration("no-such-config-store", ["k"])
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_subscription_hears_an_update_until_unsubscribed(dapr_env: Mechad) -> None:
    heard: queue.Queue = queue.Queue()
    with DaprClient() as d, mecha.Client(dapr_env.socket) as native:
        sub_id = d.subscribe_configuration(
            STORE, ["watched.key"], lambda id, resp: heard.put((id, resp.items)))
        assert sub_id
        native.config_set({"watched.key": "v1"}, store=STORE)
        got_id, items = heard.get(timeout=20)
        assert got_id == sub_id
        assert items["watched.key"].value == "v1"
        assert items["watched.key"].version
        assert d.unsubscribe_configuration(STORE, sub_id)
        # The subscription is gone: a second unsubscribe finds nothing.
        assert not d.unsubscribe_configuration(STORE, sub_id)


def test_subscriptions_per_connection_are_bounded(dapr_env: Mechad) -> None:
    with grpc.insecure_channel(dapr_env.grpc_tcp) as ch:
        stub = api_service_v1.DaprStub(ch)
        req = api_v1.SubscribeConfigurationRequest(store_name=STORE, keys=["bounded"])
        streams = []
        for _ in range(MAX_WATCHES_PER_CONNECTION):
            stream = stub.SubscribeConfiguration(req)
            assert next(stream).id
            streams.append(stream)
        over = stub.SubscribeConfiguration(req)
        with pytest.raises(grpc.RpcError) as refused:
            next(over)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Cancelling one frees its place (once the personality has seen the cancel).
        streams.pop().cancel()
        deadline = time.monotonic() + 20
        while True:
            again = stub.SubscribeConfiguration(req)
            try:
                assert next(again).id
                break
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert time.monotonic() < deadline, "a cancelled subscription kept its place"
                time.sleep(0.05)
        again.cancel()
        for s in streams:
            s.cancel()


def test_another_uid_reads_its_own_items(dapr_env: Mechad) -> None:
    # configuration.memory keeps items per tenant.
    with mecha.Client(dapr_env.socket) as native:
        native.config_set({"only.root": "yes"}, store=STORE)
    script = """
        from dapr.clients import DaprClient
        with DaprClient() as d:
            print(sorted(d.get_configuration("configstore", ["only.root"]).items))
        """
    done = run_as(NOBODY, script, dapr_env.env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def subscribe_eventually(stub: api_service_v1.DaprStub,
                         req: api_v1.SubscribeConfigurationRequest) -> tuple[object, str]:
    """Opens a subscription, waiting (with a deadline) while the tenant is at its bound
    because subscriptions just ended are still being released; (stream, id)."""
    deadline = time.monotonic() + 20
    while True:
        stream = stub.SubscribeConfiguration(req)
        try:
            return stream, next(stream).id
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
            assert time.monotonic() < deadline, "ended subscriptions were never released"
            time.sleep(0.05)


def test_subscriptions_end_with_their_connection_and_when_unsubscribed() -> None:
    # A store that lets a tenant hold two watches: a watch the personality failed to end
    # would keep the tenant at that bound for good.
    limited = DEFAULT_COMPONENTS.replace(
        "spec: {type: configuration.memory, version: v1}",
        "spec: {type: configuration.memory, version: v1, "
        "metadata: [{name: maxSubscriptionsPerTenant, value: '2'}]}")
    assert limited != DEFAULT_COMPONENTS
    req = api_v1.SubscribeConfigurationRequest(store_name=STORE, keys=["k"])
    with run_mechad(limited) as m:
        for _ in range(3):
            with grpc.insecure_channel(m.grpc_tcp) as ch:
                stub = api_service_v1.DaprStub(ch)
                held = [subscribe_eventually(stub, req) for _ in range(2)]
                over = stub.SubscribeConfiguration(req)
                with pytest.raises(grpc.RpcError) as full:
                    next(over)
                assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "maxSubscriptionsPerTenant" in full.value.details()
            # The channel is closed with both subscriptions open: the connection's end
            # ends them, so the next round gets its two.
            assert len(held) == 2
        with grpc.insecure_channel(m.grpc_tcp) as ch:
            stub = api_service_v1.DaprStub(ch)
            for _ in range(3):
                held = [subscribe_eventually(stub, req) for _ in range(2)]
                for _, sub_id in held:
                    done = stub.UnsubscribeConfiguration(
                        api_v1.UnsubscribeConfigurationRequest(store_name=STORE, id=sub_id))
                    assert done.ok
                # Unsubscribed streams end on their own, without a cancel from the caller.
                for stream, _ in held:
                    assert list(stream) == []
