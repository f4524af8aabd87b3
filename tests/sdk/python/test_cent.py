"""cent (PyPI 5.2.0, the official Python HTTP API client) against the real gyre
binary: every server API method of issue 2, batch, and a wrong key. A
centrifuge-python client observes the effect of each call."""

import asyncio
import base64
import time

import pytest
import requests
from centrifuge import Client as RtClient, ClientState, SubscriptionState

from cent import (
    AsyncClient,
    BatchRequest,
    BroadcastRequest,
    ChannelsRequest,
    Client,
    Disconnect,
    DisconnectRequest,
    InfoRequest,
    PublishRequest,
    RefreshRequest,
    SubscribeRequest,
    UnsubscribeRequest,
)
from cent.dto import ChannelsResult, InfoResult, PublishResult
from cent.exceptions import CentApiResponseError, CentUnauthorizedError

from harness import API_KEY, TIMEOUT, Recorder, client_handler, conn_token, subscription_handler, uniq


@pytest.fixture
async def cent(gyre):
    client = AsyncClient(gyre.api_url, API_KEY, timeout=TIMEOUT)
    try:
        yield client
    finally:
        await client._session.close()


@pytest.fixture
def sync_cent(gyre):
    session = requests.Session()
    session.trust_env = False  # never go through an environment proxy to 127.0.0.1
    client = Client(gyre.api_url, API_KEY, timeout=TIMEOUT, session=session)
    try:
        yield client
    finally:
        client.close()


class Observers:
    """centrifuge-python clients watching what the API calls do."""

    def __init__(self, gyre):
        self.gyre = gyre
        self.clients = []

    async def connect(self, user):
        rec = Recorder()
        c = RtClient(self.gyre.ws_url, events=client_handler(rec), token=conn_token(user),
                     timeout=TIMEOUT, min_reconnect_delay=0.1, max_reconnect_delay=0.5, proxy=None)
        self.clients.append(c)
        await asyncio.wait_for(c.connect(), TIMEOUT)
        ctx = await rec.wait("connected")
        return c, rec, ctx

    async def subscribe(self, c, channel):
        rec = Recorder()
        sub = c.new_subscription(channel, events=subscription_handler(rec))
        await asyncio.wait_for(sub.subscribe(), TIMEOUT)
        await rec.wait("subscribed")
        return sub, rec

    async def close(self):
        for c in self.clients:
            try:
                await asyncio.wait_for(c.disconnect(), TIMEOUT)
            except Exception:  # noqa: BLE001
                pass


@pytest.fixture
async def obs(gyre):
    o = Observers(gyre)
    try:
        yield o
    finally:
        await o.close()


async def pubs(rec, n, timeout=TIMEOUT):
    await rec.wait("publication", timeout=timeout, pred=lambda _c: len(rec.of("publication")) >= n)
    return [c.pub.data for c in rec.of("publication")]


async def test_publish(cent, obs):
    c, _r, _ = await obs.connect(uniq("u"))
    channel = uniq("pub")
    _sub, srec = await obs.subscribe(c, channel)
    res = await asyncio.wait_for(cent.publish(PublishRequest(channel=channel, data={"text": "hi"})), TIMEOUT)
    assert isinstance(res, PublishResult)
    assert (res.offset, res.epoch) == (0, "")  # no history
    assert await pubs(srec, 1) == [{"text": "hi"}]


async def test_publish_tags_and_idempotency(cent, obs):
    c, _r, _ = await obs.connect(uniq("u"))
    channel = uniq("tags")
    _sub, srec = await obs.subscribe(c, channel)
    req = PublishRequest(channel=channel, data={"v": 1}, tags={"kind": "test"}, idempotency_key="k1")
    await asyncio.wait_for(cent.publish(req), TIMEOUT)
    await asyncio.wait_for(cent.publish(req), TIMEOUT)  # duplicate: not delivered again
    await cent.publish(PublishRequest(channel=channel, data={"v": 2}))
    await pubs(srec, 2)
    await asyncio.sleep(0.3)
    got = srec.of("publication")
    assert [p.pub.data for p in got] == [{"v": 1}, {"v": 2}]
    assert got[0].pub.tags == {"kind": "test"}


async def test_publish_b64data_to_protobuf_client(cent, gyre):
    rec = Recorder()
    c = RtClient(gyre.ws_url, events=client_handler(rec), token=conn_token(uniq("u")),
                 use_protobuf=True, timeout=TIMEOUT, proxy=None)
    try:
        await asyncio.wait_for(c.connect(), TIMEOUT)
        channel = uniq("bin")
        srec = Recorder()
        sub = c.new_subscription(channel, events=subscription_handler(srec))
        await sub.subscribe()
        await srec.wait("subscribed")
        raw = bytes([0, 1, 2, 0xFE, 0xFF, 10, 13])
        await asyncio.wait_for(
            cent.publish(PublishRequest(channel=channel, data=None, b64data=base64.b64encode(raw).decode())),
            TIMEOUT)
        ctx = await srec.wait("publication")
        assert ctx.pub.data == raw
    finally:
        await c.disconnect()


async def test_publish_unknown_namespace_102(cent):
    with pytest.raises(CentApiResponseError) as ei:
        await asyncio.wait_for(cent.publish(PublishRequest(channel="nope:x", data={})), TIMEOUT)
    assert ei.value.code == 102


async def test_publish_sync_client(sync_cent, obs):
    c, _r, _ = await obs.connect(uniq("u"))
    channel = uniq("spub")
    _sub, srec = await obs.subscribe(c, channel)
    res = await asyncio.to_thread(sync_cent.publish, PublishRequest(channel=channel, data={"sync": True}))
    assert isinstance(res, PublishResult)
    assert await pubs(srec, 1) == [{"sync": True}]


async def test_broadcast(cent, obs):
    c, _r, _ = await obs.connect(uniq("u"))
    ch1, ch2 = uniq("b1"), uniq("b2")
    _s1, r1 = await obs.subscribe(c, ch1)
    _s2, r2 = await obs.subscribe(c, ch2)
    res = await asyncio.wait_for(
        cent.broadcast(BroadcastRequest(channels=[ch1, ch2, "nope:x"], data={"all": 1})), TIMEOUT)
    assert len(res.responses) == 3
    assert res.responses[0].error is None and res.responses[0].result is not None
    assert res.responses[1].error is None and res.responses[1].result is not None
    assert res.responses[2].error is not None and res.responses[2].error.code == 102
    assert await pubs(r1, 1) == [{"all": 1}]
    assert await pubs(r2, 1) == [{"all": 1}]


async def test_subscribe_and_unsubscribe_server_side(cent, obs):
    user = uniq("u")
    c, rec, _ = await obs.connect(user)
    channel = f"srv:{uniq('c')}"
    res = await asyncio.wait_for(
        cent.subscribe(SubscribeRequest(user=user, channel=channel, data={"welcome": 1})), TIMEOUT)
    assert res is not None
    ctx = await rec.wait("subscribed", pred=lambda x: x.channel == channel)
    assert ctx.channel == channel
    assert ctx.data == {"welcome": 1}, "subscribe push carries the API data"
    await cent.publish(PublishRequest(channel=channel, data={"to": "server-sub"}))
    pctx = await rec.wait("publication", pred=lambda x: x.channel == channel)
    assert pctx.pub.data == {"to": "server-sub"}
    await asyncio.wait_for(cent.unsubscribe(UnsubscribeRequest(user=user, channel=channel)), TIMEOUT)
    uctx = await rec.wait("unsubscribed", pred=lambda x: x.channel == channel)
    assert uctx.channel == channel
    assert c.state == ClientState.CONNECTED


async def test_unsubscribe_client_side_2000(cent, obs):
    user = uniq("u")
    c, _rec, _ = await obs.connect(user)
    channel = uniq("uns")
    sub, srec = await obs.subscribe(c, channel)
    await asyncio.wait_for(cent.unsubscribe(UnsubscribeRequest(user=user, channel=channel)), TIMEOUT)
    ctx = await srec.wait("unsubscribed")
    assert ctx.code == 2000
    assert sub.state == SubscriptionState.UNSUBSCRIBED


async def test_disconnect_default_and_custom(cent, obs):
    user = uniq("u")
    _c, rec, _ = await obs.connect(user)
    await asyncio.wait_for(cent.disconnect(DisconnectRequest(user=user)), TIMEOUT)
    ctx = await rec.wait("disconnected")
    assert ctx.code == 3503

    user2 = uniq("u")
    _c2, rec2, _ = await obs.connect(user2)
    await cent.disconnect(DisconnectRequest(user=user2, disconnect=Disconnect(code=4501, reason="bye now")))
    ctx2 = await rec2.wait("disconnected")
    assert (ctx2.code, ctx2.reason) == (4501, "bye now")


async def test_disconnect_whitelist_and_client(cent, obs):
    user = uniq("u")
    c1, rec1, ctx1 = await obs.connect(user)
    c2, rec2, ctx2 = await obs.connect(user)
    c3, rec3, ctx3 = await obs.connect(user)
    # Only the given client.
    await cent.disconnect(DisconnectRequest(user=user, client=ctx3.client))
    await rec3.wait("disconnected")
    # Everyone but the whitelisted one.
    await cent.disconnect(DisconnectRequest(user=user, whitelist=[ctx1.client]))
    await rec2.wait("disconnected")
    await asyncio.sleep(0.3)
    assert c1.state == ClientState.CONNECTED
    assert "disconnected" not in rec1.names()
    assert c2.state == ClientState.DISCONNECTED
    assert c3.state == ClientState.DISCONNECTED


async def test_refresh(cent, obs):
    user = uniq("u")
    c, rec, first = await obs.connect(user)
    # A new expiry in the future: the connection stays.
    res = await asyncio.wait_for(
        cent.refresh(RefreshRequest(user=user, expire_at=int(time.time()) + 3600)), TIMEOUT)
    assert res is not None
    await asyncio.sleep(0.3)
    assert c.state == ClientState.CONNECTED
    n = len(rec.events)
    # expired=true closes the connection with 3005 (a reconnect code): the SDK reconnects.
    await asyncio.wait_for(cent.refresh(RefreshRequest(user=user, expired=True)), TIMEOUT)
    ctx = await rec.wait("connecting", after=n)
    assert ctx.code == 3005, ctx
    second = await rec.wait("connected", after=n, timeout=2 * TIMEOUT)
    assert second.client != first.client


async def test_channels(cent, obs):
    c, _r, _ = await obs.connect(uniq("u"))
    channel = uniq("chs")
    await obs.subscribe(c, channel)
    res = await asyncio.wait_for(cent.channels(ChannelsRequest(pattern=channel)), TIMEOUT)
    assert isinstance(res, ChannelsResult)
    assert set(res.channels) == {channel}
    assert res.channels[channel].num_clients == 1
    everything = await cent.channels(ChannelsRequest())
    assert channel in everything.channels
    none = await cent.channels(ChannelsRequest(pattern=f"{channel}-not-there"))
    assert none.channels == {}


async def test_info(cent, obs):
    await obs.connect(uniq("u"))
    res = await asyncio.wait_for(cent.info(InfoRequest()), TIMEOUT)
    assert isinstance(res, InfoResult)
    assert len(res.nodes) == 1
    node = res.nodes[0]
    assert node.uid and node.name and node.version
    assert node.num_clients >= 1
    assert node.num_users >= 1


@pytest.mark.parametrize("parallel", [False, True])
async def test_batch(cent, obs, parallel):
    c, _r, _ = await obs.connect(uniq("u"))
    channel = uniq("batch")
    _sub, srec = await obs.subscribe(c, channel)
    res = await asyncio.wait_for(cent.batch(BatchRequest(requests=[
        PublishRequest(channel=channel, data={"i": 1}),
        PublishRequest(channel=channel, data={"i": 2}),
        ChannelsRequest(pattern=channel),
        InfoRequest(),
    ], parallel=parallel)), TIMEOUT)
    assert len(res.replies) == 4
    assert isinstance(res.replies[0], PublishResult)
    assert isinstance(res.replies[2], ChannelsResult)
    assert res.replies[2].channels[channel].num_clients == 1
    assert isinstance(res.replies[3], InfoResult) and len(res.replies[3].nodes) == 1
    got = await pubs(srec, 2)
    if parallel:
        assert sorted(d["i"] for d in got) == [1, 2]
    else:
        assert got == [{"i": 1}, {"i": 2}]


async def test_wrong_key_401(gyre):
    bad = AsyncClient(gyre.api_url, "wrong-key", timeout=TIMEOUT)
    try:
        with pytest.raises(CentUnauthorizedError):
            await asyncio.wait_for(bad.publish(PublishRequest(channel="x", data={})), TIMEOUT)
        with pytest.raises(CentUnauthorizedError):
            await asyncio.wait_for(bad.info(InfoRequest()), TIMEOUT)
    finally:
        await bad._session.close()
    session = requests.Session()
    session.trust_env = False
    sync_bad = Client(gyre.api_url, "wrong-key", timeout=TIMEOUT, session=session)
    with pytest.raises(CentUnauthorizedError):
        await asyncio.to_thread(sync_bad.publish, PublishRequest(channel="x", data={}))
    sync_bad.close()
    raw = gyre.api("publish", {"channel": "x", "data": {}}, key="wrong-key")
    assert raw.status == 401
