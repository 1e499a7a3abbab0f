"""Replays abi/vectors byte for byte, and checks the client's opcode table against SPEC §3.

The expected values below are written by hand from each vector's ``meaning`` (and
SPEC §10), not produced by this client's decoder, so encode and decode are each
checked against an independent statement of the value. A vector added later without
an entry here is still round-tripped; one naming a type this client lacks fails,
unless SPEC §3 marks its opcode's payloads "to be specified".
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest import SPEC, VECTORS, read_vectors

from mecha import errors
from mecha.codec import DecodeError, EncodeError, decode, encode
from mecha.payloads import (
    PAYLOAD_TYPES,
    AckItem,
    AckReply,
    BindingAckRequest,
    BindingEvent,
    BindingSubscribeReply,
    BindingSubscribeRequest,
    BulkGetItem,
    BulkGetReply,
    BulkGetRequest,
    BulkSetRequest,
    ComponentSpec,
    DeleteItem,
    DeleteReply,
    DeleteRequest,
    ErrorBody,
    ExtendLockReply,
    ExtendLockRequest,
    GetRequest,
    Hello,
    HelloReply,
    InvokeBindingReply,
    InvokeBindingRequest,
    LinkHello,
    LinkReady,
    ModuleRestartReply,
    DaemonUpgradeRequest,
    DaemonUpgradeReply,
    ModuleRestartRequest,
    ModuleStatus,
    NextIdReply,
    NextIdRequest,
    ReloadReply,
    SecretBulkGetRequest,
    SecretBulkReply,
    SecretGetRequest,
    SecretReply,
    SetItem,
    SetReply,
    SetRequest,
    StateEntry,
    StatusReply,
    StreamCancel,
    TransactReply,
    TransactRequest,
    TryLockReply,
    TryLockRequest,
    UnlockReply,
    UnlockRequest,
    UnlockStatus,
)
from mecha.protocol import F_END, F_RESPONSE, F_STREAM, OPCODES, PENDING_OPCODES, PUSH_TYPES, Header

F_TRACE = 0x08  # SPEC §2.1: a request whose payload starts with a trace context

EMPTY = object()


def err(status: int, message: str) -> tuple[int, ErrorBody]:
    return status, ErrorBody(message)


EXPECTED: dict[str, Any] = {
    "hello_request": Hello(1, 1, "mecha-python/0.1.0"),
    "hello_reply": HelloReply(1, "0.1.0", "uid:1000", 4194304),
    "ping_request": EMPTY,
    "ping_reply": EMPTY,
    "status_request": EMPTY,
    "status_reply": StatusReply("0.1.0", 812, 86400123, [
        ModuleStatus("state", 815, "running", 0, ["statestore", "cache"]),
        ModuleStatus("pubsub", 0, "restarting", 2, ["events"]),
    ]),
    "module_restart_request": ModuleRestartRequest("state", None),
    "module_restart_permission_denied": err(6, "MODULE_RESTART (0x0004) is an admin operation; "
                                               "uid 1000 is not root, the daemon's uid, or in adminUids"),
    "module_restart_request_upgrade": ModuleRestartRequest("state", "/opt/mecha/bin/mecha-mod-state-0.2.0"),
    "module_restart_reply": ModuleRestartReply(2417),
    "daemon_upgrade_request": DaemonUpgradeRequest("/usr/bin/mechad"),
    "daemon_upgrade_reply": DaemonUpgradeReply(812, 5120),
    "reload_request": EMPTY,
    "reload_reply": ReloadReply(["lock"], ["state"], [], ["sequencer", "secrets"]),
    "stream_cancel_request": StreamCancel(61),
    "stream_cancel_reply": EMPTY,
    "state_get_request": GetRequest("", "order:1001"),
    "state_get_reply": StateEntry(b'{"qty":3}', "41"),
    "state_set_request_etag_ttl": SetRequest("statestore", SetItem("session:7f3a", b"cart=3", "41", 30000)),
    "state_set_reply": SetReply("42"),
    "state_set_request_plain": SetRequest("", SetItem("counter", b"7")),
    "state_set_request_empty_value": SetRequest("", SetItem("flag:maintenance", b"", None, 60000)),
    "state_set_request_utf8_key": SetRequest("", SetItem("usuário:東京", "olá".encode(), "7")),
    "state_delete_request_etag": DeleteRequest("statestore", DeleteItem("session:7f3a", "42")),
    "state_delete_reply_existed": DeleteReply(True),
    "state_delete_request_no_etag": DeleteRequest("", DeleteItem("order:9999")),
    "state_delete_reply_missing": DeleteReply(False),
    "state_bulk_get_request": BulkGetRequest("", ["order:1001", "order:1002", "order:1003"]),
    "state_bulk_get_reply_with_missing": BulkGetReply([
        BulkGetItem("order:1001", StateEntry(b'{"qty":3}', "41")),
        BulkGetItem("order:1002", None),
        BulkGetItem("order:1003", StateEntry(b'{"qty":1}', "39")),
    ]),
    "state_bulk_set_request": BulkSetRequest("", [
        SetItem("user:1:name", b"Ada"),
        SetItem("user:1:email", b"ada@example.com", "12", 86400000),
    ]),
    "state_bulk_set_reply": TransactReply(["43", "44"]),
    "state_transact_request": TransactRequest("statestore", [
        SetItem("inventory:sku-1", b"9", "40"), DeleteItem("reservation:77")]),
    "state_transact_reply": TransactReply(["45", None]),
    "lock_try_lock_request_wait": TryLockRequest("lockstore", "invoice:7", "worker-1", 10000, 2000),
    "lock_try_lock_reply": TryLockReply(True, 42),
    "lock_try_lock_reply_not_acquired": TryLockReply(False, 0),
    "lock_unlock_request": UnlockRequest("", "invoice:7", "worker-2"),
    "lock_unlock_reply_belongs_to_others": UnlockReply(UnlockStatus.LOCK_BELONGS_TO_OTHERS),
    "lock_extend_request": ExtendLockRequest("", "invoice:7", "worker-1", 10000),
    "lock_extend_reply": ExtendLockReply(UnlockStatus.SUCCESS, 42),
    "seq_next_request": NextIdRequest("", "order", 3),
    "seq_next_reply": NextIdReply(1001, 3),
    "secret_get_request": SecretGetRequest("vault", "db-password"),
    "secret_get_reply": SecretReply([("db-password", "s3cr3t")]),
    "secret_bulk_get_request": SecretBulkGetRequest(""),
    "secret_bulk_get_reply": SecretBulkReply([
        ("db", [("password", "pw"), ("user", "app")]), ("token", [("token", "t0k")])]),
    "binding_invoke_request": InvokeBindingRequest("orders-api", "post", b'{"id":7}', [("path", "/orders")]),
    "binding_invoke_reply": InvokeBindingReply(b"created", [("statusCode", "201")]),
    "binding_subscribe_request": BindingSubscribeRequest("nightly", 8, 0),
    "binding_subscribe_reply": BindingSubscribeReply(3, "nightly"),
    "binding_event_push": BindingEvent("nightly", 4, 1, b"", [("time", "2026-12-07T02:00:00Z")]),
    "binding_ack_request": BindingAckRequest("nightly", [AckItem(4, 1)], False),
    "binding_ack_reply": AckReply(1),
    "error_secret_permission_denied": err(6, 'tenant "uid:1000" may not use secret store "vault": '
                                             "it is not listed in allowedTenants"),
    "error_not_found": err(1, 'key "order:9999" not found'),
    "error_etag_mismatch": err(2, 'etag mismatch on key "session:7f3a"'),
    "error_invalid_argument": err(3, "undecodable payload: 1 trailing bytes after the value"),
    "error_unknown_opcode": err(4, "unknown opcode 0x7f01"),
    "error_unsupported_version": err(5, "client speaks ABI versions 2..=3, this daemon speaks 1..=1"),
    "error_permission_denied": err(6, 'tenant "uid:1001" may not use store "billing"'),
    "error_resource_exhausted": err(7, "payload of 5000000 bytes exceeds the maximum frame size "
                                       "of 4194304 bytes"),
    "error_unavailable": err(8, "module state is unavailable: the module exited; retry"),
    "error_deadline_exceeded": err(9, "module state did not answer before the deadline"),
    "error_internal": err(10, "store failure: I/O error reading /var/lib/mecha/state/statestore.redb"),
    "error_unsupported": err(11, "component cache (state.example) does not support ttl"),
    "error_bad_magic": err(3, 'bad magic [47, 45, 54, 20]: expected "MCHA"'),
    "link_hello_request": LinkHello(1, "state", "/var/lib/mecha/state", [
        ComponentSpec("statestore", "state.redb", [("path", "statestore.redb")]),
        ComponentSpec("cache", "state.memory", []),
    ]),
    "link_ready_reply": LinkReady("state", "0.1.0"),
    "link_ping_request": EMPTY,
    "link_ping_reply": EMPTY,
    "link_drain_request": EMPTY,
    "link_drain_reply": EMPTY,
    "link_cancel_request": EMPTY,
    "link_forwarded_state_get_request": GetRequest("", "order:1001"),
    "link_forwarded_state_get_reply": StateEntry(b'{"qty":3}', "41"),
}

VALID = read_vectors(VECTORS / "v1.txt")
INVALID = read_vectors(VECTORS / "v1-invalid.txt")


def spec_opcode_rows() -> dict[int, tuple[str, str, str]]:
    """SPEC §3's table of defined opcodes: opcode → (name, request, reply) cells."""
    rows = {}
    for m in re.finditer(r"^\| `0x([0-9A-F]{4})` \| (\w+) +\| (.+?) \| (.+?) \|$",
                         SPEC.read_text(encoding="utf-8"), re.M):
        rows[int(m[1], 16)] = (m[2], m[3].strip(), m[4].strip())
    assert len(rows) > 20, "could not parse SPEC §3"
    return rows


def pending_in_spec() -> set[int]:
    return {op for op, (_, req, _) in spec_opcode_rows().items() if "to be specified" in req}


def test_vector_files_parse() -> None:
    assert len(VALID) >= 60 and len(INVALID) >= 11
    assert len({v["name"] for v in VALID}) == len(VALID)


@pytest.mark.parametrize("v", VALID, ids=[v["name"] for v in VALID])
def test_vector(v: dict[str, str]) -> None:
    frame = bytes.fromhex(v["frame"])
    h = Header.unpack(frame[:24])
    assert h.pack() == frame[:24], "header re-encodes differently"
    assert h.payload_len == len(frame) - 24
    # §8: on a module link, a request's ext bytes of tenant prefix come first; on a
    # HELLO answer ext holds the daemon's feature bits (§7.1.1), not a prefix.
    prefix = 0 if h.flags & F_RESPONSE else h.ext
    if prefix:
        frame[24:24 + prefix].decode("utf-8")
    payload = frame[24 + prefix:]
    if h.flags & F_TRACE:  # §2.1: a 26-byte trace context precedes the payload
        assert payload[0] == 0 and len(payload) >= 26
        payload = payload[26:]
    tname = v["type"]
    if tname != "empty" and tname not in PAYLOAD_TYPES:
        if h.opcode in pending_in_spec():
            pytest.skip(f"{tname}: payloads of opcode {h.opcode:#06x} are pending in SPEC §3")
        pytest.fail(f"vector {v['name']} names type {tname}, which the Python client does not support")

    # The type agrees with the client's opcode table for this opcode and direction.
    if h.status != 0:
        assert tname == "ErrorBody"
    elif h.opcode in OPCODES:
        _, req_t, rep_t = OPCODES[h.opcode]
        if h.flags & F_STREAM and not h.flags & F_RESPONSE:  # §6.11: a push, or END OK
            want = None if h.flags & F_END else PUSH_TYPES[h.opcode]
        else:
            want = rep_t if h.flags & F_RESPONSE else req_t
        assert tname == ("empty" if want is None else want.__name__)
    else:
        pytest.fail(f"opcode {h.opcode:#06x} of vector {v['name']} is not in the client's table")

    if v["name"] not in EXPECTED:  # a new vector of a supported type: at least round-trip it
        if tname != "empty":
            assert encode(decode(PAYLOAD_TYPES[tname], payload)) == payload
        return
    expected = EXPECTED[v["name"]]
    if isinstance(expected, tuple):  # an error answer: status and ErrorBody
        status, expected = expected
        assert h.status == status
    if expected is EMPTY:
        assert tname == "empty" and payload == b""
        return
    tp = PAYLOAD_TYPES[tname]
    assert type(expected) is tp
    assert decode(tp, payload) == expected
    assert encode(expected) == payload


def test_every_expected_value_has_a_vector() -> None:
    assert set(EXPECTED) <= {v["name"] for v in VALID}


@pytest.mark.parametrize("v", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_vector_is_rejected(v: dict[str, str]) -> None:
    assert v["type"] in PAYLOAD_TYPES, f"invalid vector names unsupported type {v['type']}"
    with pytest.raises(DecodeError):
        decode(PAYLOAD_TYPES[v["type"]], bytes.fromhex(v["payload"]))


def test_hostile_vec_count_is_rejected_before_looping() -> None:
    # BulkGetRequest: store "", then a keys count of 2^62 followed by 3 bytes.
    with pytest.raises(DecodeError):
        decode(BulkGetRequest, bytes(8) + (1 << 62).to_bytes(8, "little") + b"abc")


def test_encode_rejects_out_of_range_values() -> None:
    for bad in (NextIdRequest("", "k", -1), NextIdRequest("", "k", 1 << 32),
                GetRequest("", "\udc80"), SetRequest("", SetItem("k", "not bytes"))):  # type: ignore[arg-type]
        with pytest.raises(EncodeError):
            encode(bad)


def test_opcode_table_matches_spec() -> None:
    """Every opcode SPEC §3 defines is in the client's table with the same name and
    payload types, except those whose payloads are pending; and nothing else is."""
    rows = spec_opcode_rows()
    assert PENDING_OPCODES == pending_in_spec()
    for op, (name, req, rep) in rows.items():
        if op in PENDING_OPCODES:
            continue
        assert op in OPCODES, f"SPEC defines {name} ({op:#06x}); the Python client lacks it"
        cname, ctreq, ctrep = OPCODES[op]
        assert cname == name
        assert req == ("empty" if ctreq is None else f"`{ctreq.__name__}`"), name
        # LINK_CANCEL, LINK_ROUTE, LINK_UNROUTE, PEER_ANNOUNCE: "none: never answered"
        if op not in (0xF004, 0xF006, 0xF007, 0xF102):
            assert rep == ("empty" if ctrep is None else f"`{ctrep.__name__}`"), name
    assert set(OPCODES) == set(rows) - PENDING_OPCODES


@pytest.mark.parametrize("name", [n for n, e in EXPECTED.items() if isinstance(e, tuple)])
def test_status_maps_to_exception(name: str) -> None:
    status, body = EXPECTED[name]
    e = errors.error_for(status, body.message)
    assert e.status == status and e.message == body.message
    assert isinstance(e, {1: errors.NotFound, 2: errors.EtagMismatch, 3: errors.InvalidArgument,
                          4: errors.UnknownOpcode, 5: errors.UnsupportedVersion,
                          6: errors.PermissionDenied, 7: errors.ResourceExhausted,
                          8: errors.Unavailable, 9: errors.DeadlineExceeded,
                          10: errors.Internal, 11: errors.Unsupported}[status])


def test_unknown_status_is_internal() -> None:
    e = errors.error_for(77, "future")
    assert isinstance(e, errors.Internal) and e.status == 77
