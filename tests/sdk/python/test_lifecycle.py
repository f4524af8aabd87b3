"""centrifuge-python (JSON and Protobuf) against gyre: ping/pong, missing
credentials and graceful shutdown."""

import asyncio

import pytest
from centrifuge import Client, ClientState

from harness import TIMEOUT, GyreServer, Recorder, client_handler, conn_token, uniq


@pytest.fixture(scope="module")
def fastping():
    server = GyreServer({"client": {"ping_interval": "2s", "pong_timeout": "1s"}}).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["json", "protobuf"])
def use_protobuf(request):
    return request.param == "protobuf"


def make_client(server, use_protobuf, rec, **kw):
    opts = dict(timeout=TIMEOUT, min_reconnect_delay=0.1, max_reconnect_delay=0.5, proxy=None)
    opts.update(kw)
    return Client(server.ws_url, events=client_handler(rec), use_protobuf=use_protobuf, **opts)


async def test_ping_pong_keeps_connection(fastping, use_protobuf):
    # max_server_ping_delay=1: without a server ping every 2s (+1s) the SDK
    # reconnects; a pong the server does not accept ends in 3012.
    rec = Recorder()
    c = make_client(fastping, use_protobuf, rec, token=conn_token(uniq("u")), max_server_ping_delay=1.0)
    try:
        await asyncio.wait_for(c.connect(), TIMEOUT)
        await rec.wait("connected")
        n = len(rec.events)
        await asyncio.sleep(7)
        assert [(name, getattr(ctx, "code", None)) for name, ctx in rec.events[n:]
                if name in ("connecting", "disconnected")] == []
        assert c.state == ClientState.CONNECTED
    finally:
        await c.disconnect()


async def test_no_token_3501(fastping, use_protobuf):
    rec = Recorder()
    c = make_client(fastping, use_protobuf, rec)
    try:
        await asyncio.wait_for(c.connect(), TIMEOUT)
        ctx = await rec.wait("disconnected")
        assert ctx.code == 3501, ctx
        await asyncio.sleep(0.5)
        assert c.state == ClientState.DISCONNECTED
    finally:
        await c.disconnect()


async def test_shutdown_3001(use_protobuf):
    server = GyreServer().start()
    rec = Recorder()
    c = make_client(server, use_protobuf, rec, token=conn_token(uniq("u")),
                    min_reconnect_delay=5.0, max_reconnect_delay=10.0)
    try:
        await asyncio.wait_for(c.connect(), TIMEOUT)
        await rec.wait("connected")
        n = len(rec.events)
        stopping = asyncio.ensure_future(asyncio.to_thread(server.stop))
        ctx = await rec.wait("connecting", after=n)
        assert ctx.code == 3001, ctx
        assert await asyncio.wait_for(stopping, 10) == 0, "gyre exits 0 on SIGTERM"
    finally:
        await c.disconnect()
        server.stop()
