"""centrifuge-python (PyPI) against the real gyre binary, with the JSON protocol
and with use_protobuf=True (subprotocol centrifuge-protobuf)."""

import asyncio
import json
import re
import time

import pytest
from centrifuge import Client, ClientState, ReplyError, SubscriptionState

from harness import (
    SECRET,
    TIMEOUT,
    Recorder,
    client_handler,
    conn_token,
    sub_token,
    subscription_handler,
    uniq,
)

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


class Proto:
    def __init__(self, name: str):
        self.name = name
        self.protobuf = name == "protobuf"

    def enc(self, obj):
        """Payload for the SDK: JSON value, or JSON text bytes with Protobuf."""
        return json.dumps(obj, separators=(",", ":")).encode() if self.protobuf else obj

    def dec(self, data):
        if self.protobuf:
            assert isinstance(data, (bytes, bytearray)), f"protobuf payload must be bytes: {data!r}"
            return json.loads(data)
        return data


@pytest.fixture(params=["json", "protobuf"])
def proto(request):
    return Proto(request.param)


class Harness:
    def __init__(self, gyre, proto: Proto):
        self.gyre = gyre
        self.proto = proto
        self.clients = []

    def client(self, token="", get_token=None, rec=None):
        rec = rec or Recorder()
        c = Client(
            self.gyre.ws_url,
            events=client_handler(rec),
            token=token,
            get_token=get_token,
            use_protobuf=self.proto.protobuf,
            timeout=TIMEOUT,
            min_reconnect_delay=0.1,
            max_reconnect_delay=0.5,
            proxy=None,
        )
        self.clients.append(c)
        return c, rec

    async def connected(self, user, **claims):
        c, rec = self.client(token=conn_token(user, **claims))
        await asyncio.wait_for(c.connect(), TIMEOUT)
        ctx = await rec.wait("connected")
        return c, rec, ctx

    async def subscribed(self, c, channel):
        rec = Recorder()
        sub = c.new_subscription(channel, events=subscription_handler(rec))
        await asyncio.wait_for(sub.subscribe(), TIMEOUT)
        await rec.wait("subscribed")
        return sub, rec

    async def close(self):
        for c in self.clients:
            try:
                await asyncio.wait_for(c.disconnect(), TIMEOUT)
            except Exception:  # noqa: BLE001 - teardown must go on
                pass


@pytest.fixture
async def h(gyre, proto):
    harness = Harness(gyre, proto)
    try:
        yield harness
    finally:
        await harness.close()


async def test_connect(h):
    c, _rec, ctx = await h.connected(uniq("u"))
    assert UUID_RE.match(ctx.client), ctx
    assert c.state == ClientState.CONNECTED
    assert c.client_id == ctx.client


async def test_bad_token_refused_3500_terminal(h):
    c, rec = h.client(token=conn_token(uniq("u"), secret=SECRET + "-wrong"))
    await asyncio.wait_for(c.connect(), TIMEOUT)
    ctx = await rec.wait("disconnected")
    assert ctx.code == 3500, ctx
    await asyncio.sleep(1.0)
    assert c.state == ClientState.DISCONNECTED
    assert "connected" not in rec.names()
    assert rec.names().count("disconnected") == 1


async def test_expired_token_get_token_then_connected(h):
    user = uniq("u")
    calls = []

    async def get_token():
        calls.append(time.time())
        return conn_token(user)

    c, rec = h.client(token=conn_token(user, ttl=-30), get_token=get_token)
    await asyncio.wait_for(c.connect(), TIMEOUT)
    ctx = await rec.wait("connected", timeout=2 * TIMEOUT)
    assert UUID_RE.match(ctx.client)
    assert len(calls) == 1
    errors = [e for e in rec.of("error") if isinstance(e.error, ReplyError)]
    assert errors and errors[0].error.code == 109, rec.events


async def test_subscribe_and_receive_api_publication(h):
    c, _rec, _ = await h.connected(uniq("u"))
    channel = uniq("news")
    sub, srec = await h.subscribed(c, channel)
    assert sub.state == SubscriptionState.SUBSCRIBED
    result = await h.gyre.api_ok_async("publish", {"channel": channel, "data": {"text": "hello", "n": 1}})
    assert result == {}
    ctx = await srec.wait("publication")
    assert h.proto.dec(ctx.pub.data) == {"text": "hello", "n": 1}
    if h.proto.protobuf:
        # The same bytes that were published (the harness sends compact JSON).
        assert ctx.pub.data == b'{"text":"hello","n":1}'
    assert ctx.pub.info is None


async def test_subscription_before_connect(h):
    """Subscription registered before connect: subscribe follows connect."""
    user = uniq("u")
    c, _rec = h.client(token=conn_token(user))
    srec = Recorder()
    channel = uniq("early")
    sub = c.new_subscription(channel, events=subscription_handler(srec))
    await sub.subscribe()
    await asyncio.wait_for(c.connect(), TIMEOUT)
    ctx = await srec.wait("subscribed")
    assert ctx.channel == channel


async def test_client_publish_allowed_for_subscriber(h):
    user = uniq("u")
    c, _rec, cctx = await h.connected(user, info={"name": "alice"})
    channel = uniq("chat")
    sub, srec = await h.subscribed(c, channel)
    await asyncio.wait_for(sub.publish(h.proto.enc({"says": "hi"})), TIMEOUT)
    ctx = await srec.wait("publication")
    assert h.proto.dec(ctx.pub.data) == {"says": "hi"}
    assert ctx.pub.info is not None
    assert ctx.pub.info.user == user
    assert ctx.pub.info.client == cctx.client
    assert h.proto.dec(ctx.pub.info.conn_info) == {"name": "alice"}


async def test_private_channel_needs_subscription_token(h):
    user = uniq("u")
    c, _rec, _ = await h.connected(user)
    channel = f"${uniq('priv')}"
    drec = Recorder()
    denied = c.new_subscription(channel, events=subscription_handler(drec))
    await denied.subscribe()
    ctx = await drec.wait("unsubscribed")
    assert ctx.code == 103, ctx
    c.remove_subscription(denied)

    srec = Recorder()
    sub = c.new_subscription(channel, events=subscription_handler(srec), token=sub_token(user, channel))
    await sub.subscribe()
    await srec.wait("subscribed")
    await h.gyre.api_ok_async("publish", {"channel": channel, "data": {"secret": True}})
    pctx = await srec.wait("publication")
    assert h.proto.dec(pctx.pub.data) == {"secret": True}


async def test_expired_subscription_token_get_token(h):
    user = uniq("u")
    c, _rec, _ = await h.connected(user)
    channel = f"${uniq('priv')}"
    calls = []

    async def get_token(ch):
        calls.append(ch)
        return sub_token(user, ch)

    srec = Recorder()
    sub = c.new_subscription(channel, events=subscription_handler(srec),
                             token=sub_token(user, channel, ttl=-30), get_token=get_token)
    await sub.subscribe()
    await srec.wait("subscribed", timeout=2 * TIMEOUT)
    assert calls == [channel]
    errs = [e.error for e in srec.of("error")]
    assert any(getattr(e, "code", None) == 109 for e in errs), srec.events


async def test_client_publish_refused_103(h):
    c, _rec, _ = await h.connected(uniq("u"))
    channel = f"ro:{uniq('c')}"
    sub, _srec = await h.subscribed(c, channel)
    with pytest.raises(ReplyError) as ei:
        await asyncio.wait_for(sub.publish(h.proto.enc({"x": 1})), TIMEOUT)
    assert ei.value.code == 103
    with pytest.raises(ReplyError) as ei2:
        await asyncio.wait_for(c.publish(f"ro:{uniq('other')}", h.proto.enc({"x": 2})), TIMEOUT)
    assert ei2.value.code == 103
    assert c.state == ClientState.CONNECTED
    assert sub.state == SubscriptionState.SUBSCRIBED


async def test_api_unsubscribe_2000(h):
    user = uniq("u")
    c, _rec, _ = await h.connected(user)
    channel = uniq("uns")
    sub, srec = await h.subscribed(c, channel)
    await h.gyre.api_ok_async("unsubscribe", {"user": user, "channel": channel})
    ctx = await srec.wait("unsubscribed")
    assert ctx.code == 2000, ctx
    assert sub.state == SubscriptionState.UNSUBSCRIBED
    assert c.state == ClientState.CONNECTED


async def test_api_disconnect_default_3503(h):
    user = uniq("u")
    c, rec, _ = await h.connected(user)
    n = len(rec.events)
    await h.gyre.api_ok_async("disconnect", {"user": user})
    ctx = await rec.wait("disconnected", after=n)
    assert ctx.code == 3503, ctx
    await asyncio.sleep(0.7)
    assert c.state == ClientState.DISCONNECTED
    assert "connecting" not in rec.names()[n:]


async def test_api_disconnect_custom_code(h):
    user = uniq("u")
    c, rec, _ = await h.connected(user)
    await h.gyre.api_ok_async("disconnect", {"user": user, "disconnect": {"code": 4500, "reason": "custom bye"}})
    ctx = await rec.wait("disconnected")
    assert (ctx.code, ctx.reason) == (4500, "custom bye")
    await asyncio.sleep(0.5)
    assert c.state == ClientState.DISCONNECTED


async def test_api_disconnect_reconnect_code(h):
    user = uniq("u")
    c, rec, first = await h.connected(user)
    n = len(rec.events)
    await h.gyre.api_ok_async("disconnect", {"user": user, "disconnect": {"code": 4000, "reason": "come back"}})
    ctx = await rec.wait("connecting", after=n)
    assert (ctx.code, ctx.reason) == (4000, "come back")
    second = await rec.wait("connected", after=n, timeout=2 * TIMEOUT)
    assert second.client != first.client


async def test_token_refresh_via_get_token(h):
    user = uniq("u")
    calls = []

    async def get_token():
        calls.append(time.time())
        return conn_token(user, ttl=3600)

    c, rec = h.client(token=conn_token(user, ttl=3), get_token=get_token)
    await asyncio.wait_for(c.connect(), TIMEOUT)
    await rec.wait("connected")
    n = len(rec.events)
    deadline = time.monotonic() + 8
    while not calls and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert calls, "get_token was called to refresh the connection token"
    # Past the original exp + expired_close_delay (1s): still connected.
    await asyncio.sleep(3)
    assert c.state == ClientState.CONNECTED
    assert [name for name in rec.names()[n:] if name in ("connecting", "disconnected")] == []
    errors = [e for e in rec.of("error")]
    assert errors == [], errors
    await asyncio.wait_for(c.rpc("ping", h.proto.enc({})), TIMEOUT)


async def test_control_unrefreshed_connection_closed_3005(h):
    user = uniq("u")

    async def never():
        await asyncio.sleep(3600)
        return ""

    c, rec = h.client(token=conn_token(user, ttl=2), get_token=never)
    await asyncio.wait_for(c.connect(), TIMEOUT)
    await rec.wait("connected")
    ctx = await rec.wait("connecting", timeout=10, pred=lambda x: x.code != 0)
    assert ctx.code == 3005, ctx


async def test_rpc(h):
    c, _rec, _ = await h.connected(uniq("u"))
    res = await asyncio.wait_for(c.rpc("ping", h.proto.enc({})), TIMEOUT)
    assert res.data in (None, b"", {}), res
    with pytest.raises(ReplyError) as ei:
        await asyncio.wait_for(c.rpc("no_such_method", h.proto.enc({})), TIMEOUT)
    # Centrifugo: with only rpc.ping on, any other method is 104 method not found.
    assert ei.value.code == 104
    with pytest.raises(ReplyError) as ei2:
        await asyncio.wait_for(c.rpc("nons:method", h.proto.enc({})), TIMEOUT)
    assert ei2.value.code == 104
    assert c.state == ClientState.CONNECTED


async def test_server_side_subscription_from_token(h):
    user = uniq("u")
    channel = f"srv:{uniq('c')}"
    c, rec, _ = await h.connected(user, channels=[channel])
    ctx = await rec.wait("subscribed", pred=lambda x: x.channel == channel)
    assert ctx.channel == channel
    await h.gyre.api_ok_async("publish", {"channel": channel, "data": {"server": "side"}})
    pctx = await rec.wait("publication", pred=lambda x: x.channel == channel)
    assert h.proto.dec(pctx.pub.data) == {"server": "side"}


async def test_subscription_token_refresh_via_get_token(h):
    user = uniq("u")
    c, _rec, _ = await h.connected(user)
    channel = f"${uniq('priv')}"
    calls = []

    async def get_token(ch):
        calls.append(ch)
        return sub_token(user, ch, ttl=3600)

    srec = Recorder()
    sub = c.new_subscription(channel, events=subscription_handler(srec),
                             token=sub_token(user, channel, ttl=3), get_token=get_token)
    await sub.subscribe()
    await srec.wait("subscribed")
    n = len(srec.events)
    deadline = time.monotonic() + 8
    while not calls and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert calls == [channel], "get_token of the subscription was called (sub_refresh)"
    await asyncio.sleep(3.5)
    assert [e for e in srec.events[n:] if e[0] in ("subscribing", "unsubscribed", "error")] == []
    assert sub.state == SubscriptionState.SUBSCRIBED
    await h.gyre.api_ok_async("publish", {"channel": channel, "data": {"still": "subscribed"}})
    pctx = await srec.wait("publication")
    assert h.proto.dec(pctx.pub.data) == {"still": "subscribed"}


async def test_control_unrefreshed_subscription_2501(h):
    user = uniq("u")
    c, _rec, _ = await h.connected(user)
    channel = f"${uniq('priv')}"

    async def never(_ch):
        await asyncio.sleep(3600)
        return ""

    srec = Recorder()
    sub = c.new_subscription(channel, events=subscription_handler(srec),
                             token=sub_token(user, channel, ttl=2), get_token=never)
    await sub.subscribe()
    await srec.wait("subscribed")
    ctx = await srec.wait("subscribing", timeout=10, pred=lambda x: x.code != 0)
    assert ctx.code == 2501, ctx
    assert c.state == ClientState.CONNECTED


async def test_unsubscribe_and_subscribe_again(h):
    c, _rec, _ = await h.connected(uniq("u"))
    channel = uniq("again")
    sub, srec = await h.subscribed(c, channel)
    await sub.unsubscribe()
    uctx = await srec.wait("unsubscribed")
    assert uctx.code == 0
    await asyncio.wait_for(c.rpc("ping", h.proto.enc({})), TIMEOUT)  # round trip
    await h.gyre.api_ok_async("publish", {"channel": channel, "data": {"n": 1}})
    await asyncio.sleep(0.3)
    assert srec.of("publication") == []
    n = len(srec.events)
    await sub.subscribe()
    await srec.wait("subscribed", after=n)
    await h.gyre.api_ok_async("publish", {"channel": channel, "data": {"n": 2}})
    pctx = await srec.wait("publication")
    assert h.proto.dec(pctx.pub.data) == {"n": 2}
    assert len(srec.of("publication")) == 1
