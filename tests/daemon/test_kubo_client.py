"""fednode's Kubo RPC client (fednode/daemon/kubo.py) against the local fake of Kubo's endpoints."""

from __future__ import annotations

import socket

import pytest
from kubo_fake import OTHER_CID, FakeKubo

from fednode.daemon.kubo import KuboClient, KuboError, PinMismatch
from protocol.multiformats import CID, RAW

CID_A = CID.hash(RAW, b"a")


async def test_pin_add_sends_kubos_request_and_checks_the_answer(kubo: FakeKubo) -> None:
    client = KuboClient(kubo.url)
    assert await client.version() == "0.29.0"
    assert not await client.pinned(CID_A)
    await client.pin_add(CID_A, recursive=False)
    assert kubo.commands("pin/add") == [[("arg", str(CID_A)), ("recursive", "false")]]
    assert kubo.pins == {str(CID_A): "direct"}
    assert await client.pinned(CID_A)
    await client.swarm_connect("/ip4/127.0.0.1/tcp/1/p2p/12D3KooWxyz")
    assert kubo.commands("swarm/connect") == [[("arg", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWxyz")]]


async def test_another_cid_in_the_answer_is_a_mismatch(kubo: FakeKubo) -> None:
    kubo.lie = True
    with pytest.raises(PinMismatch, match=OTHER_CID):
        await KuboClient(kubo.url).pin_add(CID_A)


async def test_kubo_errors_carry_kubos_message(kubo: FakeKubo) -> None:
    kubo.fail["pin/add"] = 1
    with pytest.raises(KuboError, match="HTTP 500: context deadline exceeded"):
        await KuboClient(kubo.url).pin_add(CID_A)
    with pytest.raises(KuboError, match="no /p2p/ part"):
        await KuboClient(kubo.url).swarm_connect("/ip4/127.0.0.1/tcp/1")
    with pytest.raises(KuboError, match="HTTP 404"):
        await KuboClient(kubo.url).call("no/such", [])


async def test_a_kubo_that_is_down_is_a_kubo_error() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(KuboError, match="unreachable"):
        await KuboClient(f"http://127.0.0.1:{port}").pin_add(CID_A)
