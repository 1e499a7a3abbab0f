"""A Dapr API token (``dapr-api-token``, the SDK's ``DAPR_API_TOKEN``) stands for the tenant
the configuration maps it to, whoever presents it; a token mechad does not know is refused,
never served as someone else; and the module never sees the tokens."""

from __future__ import annotations

import os

import pytest
from dapr.clients import DaprClient

from conftest import NOBODY, run_as, run_mechad

TOKEN = "s3cr3t-token-for-checkout-0123456789"
PERSONALITY = f"""
- {{name: apiTokens, value: "checkout={TOKEN}"}}
"""
SETTINGS = f"""
tenants:
- {{name: checkout, uids: [{NOBODY}]}}
"""


def sdk_get(env: dict[str, str], key: str) -> str:
    script = f"""
        from dapr.clients import DaprClient
        try:
            with DaprClient() as d:
                print("data=" + d.get_state("statestore", {key!r}).data.decode())
        except Exception as e:
            print("error=" + str(e.code() if hasattr(e, "code") else e))
        """
    done = run_as(os.geteuid(), script, env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_a_token_stands_for_its_tenant_and_an_unknown_one_is_refused() -> None:
    with run_mechad(personality=PERSONALITY, settings=SETTINGS) as d:
        # checkout (uid nobody) stores a value through mecha's own socket.
        stored = run_as(NOBODY, f"""
            import mecha
            mecha.Client({d.socket!r}).set("cart", b"3 items", store="statestore")
            """, {"PYTHONPATH": ""})
        assert stored.returncode == 0, stored.stderr
        # Root's process presenting checkout's token is checkout.
        assert sdk_get({**d.env(), "DAPR_API_TOKEN": TOKEN}, "cart") == "data=3 items"
        # Without a token it is itself, and sees nothing of checkout's.
        assert sdk_get(d.env(), "cart") == "data="
        # A token mechad does not know is refused.
        got = sdk_get({**d.env(), "DAPR_API_TOKEN": "not-a-token-mechad-knows-1234"}, "cart")
        assert got.startswith("error=") and "PERMISSION_DENIED" in got, got
        # The module's environment and configuration never held the token.
        (pid,) = [m.pid for m in __import__("mecha").Client(d.socket).status().modules
                  if m.name == "dapr"]
        if pid:
            with open(f"/proc/{pid}/environ", "rb") as f:
                assert TOKEN.encode() not in f.read()
