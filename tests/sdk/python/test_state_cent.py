"""cent (PyPI 5.2.0) channel-state API methods against the real gyre binary:
presence, presence_stats, history (limit/since/reverse) and history_remove, with
centrifuge-python clients as the subscribers the API reports on."""

import asyncio

import pytest
import requests
from centrifuge import Client as RtClient

from cent import (
    AsyncClient,
    BatchRequest,
    Client,
    HistoryRemoveRequest,
    HistoryRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    StreamPosition,
)
from cent.dto import HistoryRemoveResult, HistoryResult, PresenceResult, PresenceStatsResult
from cent.exceptions import CentApiResponseError

from harness import API_KEY, TIMEOUT, GyreServer, Recorder, client_handler, conn_token, subscription_handler, uniq

HISTORY = {"history_size": 100, "history_ttl": "300s"}

OVERRIDES = {
    "channel": {
        "namespaces": [
            {"name": "pres", "allow_subscribe_for_client": True, "presence": True},
            {"name": "hist", "allow_subscribe_for_client": True, **HISTORY},
            {"name": "small", "allow_subscribe_for_client": True, "history_size": 3, "history_ttl": "300s"},
            {"name": "plain", "allow_subscribe_for_client": True},
        ],
    },
}


@pytest.fixture(scope="module")
def gyre():
    """This module's own gyre (its namespaces), overriding the conftest one."""
    server = GyreServer(OVERRIDES).start()
    try:
        yield server
    finally:
        server.stop()


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
    session.trust_env = False
    client = Client(gyre.api_url, API_KEY, timeout=TIMEOUT, session=session)
    try:
        yield client
    finally:
        client.close()


class Observers:
    def __init__(self, gyre):
        self.gyre = gyre
        self.clients = []

    async def connect(self, user, **claims):
        rec = Recorder()
        c = RtClient(self.gyre.ws_url, events=client_handler(rec), token=conn_token(user, **claims),
                     timeout=TIMEOUT, min_reconnect_delay=0.1, max_reconnect_delay=0.5, proxy=None)
        self.clients.append(c)
        await asyncio.wait_for(c.connect(), TIMEOUT)
        ctx = await rec.wait("connected")
        return c, ctx

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


async def test_presence_and_presence_stats(cent, obs):
    channel = f"pres:{uniq('c')}"
    empty = await asyncio.wait_for(cent.presence(PresenceRequest(channel=channel)), TIMEOUT)
    assert isinstance(empty, PresenceResult)
    assert empty.presence == {}
    stats0 = await cent.presence_stats(PresenceStatsRequest(channel=channel))
    assert (stats0.num_clients, stats0.num_users) == (0, 0)

    user_a, user_b = uniq("a"), uniq("b")
    a, actx = await obs.connect(user_a, info={"name": "alice"})
    b, bctx = await obs.connect(user_b)
    a2, a2ctx = await obs.connect(user_a)
    await obs.subscribe(a, channel)
    sub_b, _ = await obs.subscribe(b, channel)
    await obs.subscribe(a2, channel)

    res = await asyncio.wait_for(cent.presence(PresenceRequest(channel=channel)), TIMEOUT)
    assert set(res.presence) == {actx.client, bctx.client, a2ctx.client}
    ia = res.presence[actx.client]
    assert (ia.client, ia.user, ia.conn_info) == (actx.client, user_a, {"name": "alice"})
    ib = res.presence[bctx.client]
    assert (ib.client, ib.user, ib.conn_info) == (bctx.client, user_b, None)
    assert res.presence[a2ctx.client].user == user_a

    stats = await asyncio.wait_for(cent.presence_stats(PresenceStatsRequest(channel=channel)), TIMEOUT)
    assert isinstance(stats, PresenceStatsResult)
    assert (stats.num_clients, stats.num_users) == (3, 2)

    await sub_b.unsubscribe()
    await asyncio.wait_for(b.rpc("ping", {}), TIMEOUT)  # round trip: the unsubscribe was handled
    stats = await cent.presence_stats(PresenceStatsRequest(channel=channel))
    assert (stats.num_clients, stats.num_users) == (2, 1)
    res = await cent.presence(PresenceRequest(channel=channel))
    assert set(res.presence) == {actx.client, a2ctx.client}


async def test_presence_disabled_108(cent):
    channel = f"hist:{uniq('c')}"
    with pytest.raises(CentApiResponseError) as ei:
        await asyncio.wait_for(cent.presence(PresenceRequest(channel=channel)), TIMEOUT)
    assert ei.value.code == 108
    with pytest.raises(CentApiResponseError) as ei2:
        await asyncio.wait_for(cent.presence_stats(PresenceStatsRequest(channel=channel)), TIMEOUT)
    assert ei2.value.code == 108


async def test_history_limit_since_reverse(cent):
    channel = f"hist:{uniq('c')}"
    results = [await cent.publish(PublishRequest(channel=channel, data={"i": i}, tags={"k": str(i)}))
               for i in range(1, 11)]
    epoch = results[0].epoch
    assert epoch and all(r.epoch == epoch for r in results)
    assert [r.offset for r in results] == list(range(1, 11))

    def view(hr):
        return [(p.offset, p.data["i"]) for p in hr.publications]

    top = await asyncio.wait_for(cent.history(HistoryRequest(channel=channel)), TIMEOUT)
    assert isinstance(top, HistoryResult)
    assert (top.publications, top.offset, top.epoch) == ([], 10, epoch)

    first3 = await cent.history(HistoryRequest(channel=channel, limit=3))
    assert view(first3) == [(1, 1), (2, 2), (3, 3)]
    assert first3.publications[0].tags == {"k": "1"}
    assert (first3.offset, first3.epoch) == (10, epoch)

    last3 = await cent.history(HistoryRequest(channel=channel, limit=3, reverse=True))
    assert view(last3) == [(10, 10), (9, 9), (8, 8)]

    after4 = await cent.history(HistoryRequest(channel=channel, limit=3,
                                               since=StreamPosition(offset=4, epoch=epoch)))
    assert view(after4) == [(5, 5), (6, 6), (7, 7)]

    before7 = await cent.history(HistoryRequest(channel=channel, limit=2, reverse=True,
                                                since=StreamPosition(offset=7, epoch=epoch)))
    assert view(before7) == [(6, 6), (5, 5)]

    everything = await cent.history(HistoryRequest(channel=channel, limit=-1))
    assert [o for o, _ in view(everything)] == list(range(1, 11))

    with pytest.raises(CentApiResponseError) as ei:
        await cent.history(HistoryRequest(channel=channel, limit=3,
                                          since=StreamPosition(offset=4, epoch="notTheEpoch")))
    assert ei.value.code == 112


async def test_history_size_keeps_the_latest(cent):
    channel = f"small:{uniq('c')}"
    for i in range(1, 6):
        await cent.publish(PublishRequest(channel=channel, data={"i": i}))
    res = await cent.history(HistoryRequest(channel=channel, limit=-1))
    assert [(p.offset, p.data) for p in res.publications] == [(3, {"i": 3}), (4, {"i": 4}), (5, {"i": 5})]
    assert res.offset == 5


async def test_history_remove_keeps_position(cent, obs):
    channel = f"hist:{uniq('c')}"
    for i in range(1, 4):
        await cent.publish(PublishRequest(channel=channel, data={"i": i}))
    before = await cent.history(HistoryRequest(channel=channel, limit=-1))
    assert len(before.publications) == 3

    removed = await asyncio.wait_for(cent.history_remove(HistoryRemoveRequest(channel=channel)), TIMEOUT)
    assert isinstance(removed, HistoryRemoveResult)
    after = await cent.history(HistoryRequest(channel=channel, limit=-1))
    assert (after.publications, after.offset, after.epoch) == ([], 3, before.epoch)

    # The stream goes on from the kept top.
    r = await cent.publish(PublishRequest(channel=channel, data={"i": 4}))
    assert (r.offset, r.epoch) == (4, before.epoch)
    again = await cent.history(HistoryRequest(channel=channel, limit=-1))
    assert [(p.offset, p.data) for p in again.publications] == [(4, {"i": 4})]


async def test_history_and_remove_without_history_108(cent):
    channel = f"plain:{uniq('c')}"
    with pytest.raises(CentApiResponseError) as ei:
        await asyncio.wait_for(cent.history(HistoryRequest(channel=channel, limit=1)), TIMEOUT)
    assert ei.value.code == 108
    with pytest.raises(CentApiResponseError) as ei2:
        await asyncio.wait_for(cent.history_remove(HistoryRemoveRequest(channel=channel)), TIMEOUT)
    assert ei2.value.code == 108


async def test_sync_client_and_batch(sync_cent, obs):
    channel = f"pres:{uniq('c')}"
    c, ctx = await obs.connect(uniq("u"))
    await obs.subscribe(c, channel)
    hchannel = f"hist:{uniq('c')}"
    await asyncio.to_thread(sync_cent.publish, PublishRequest(channel=hchannel, data={"x": 1}))
    pres = await asyncio.to_thread(sync_cent.presence, PresenceRequest(channel=channel))
    assert set(pres.presence) == {ctx.client}
    stats = await asyncio.to_thread(sync_cent.presence_stats, PresenceStatsRequest(channel=channel))
    assert (stats.num_clients, stats.num_users) == (1, 1)
    hist = await asyncio.to_thread(sync_cent.history, HistoryRequest(channel=hchannel, limit=1))
    assert [(p.offset, p.data) for p in hist.publications] == [(1, {"x": 1})]

    res = await asyncio.to_thread(sync_cent.batch, BatchRequest(requests=[
        PresenceStatsRequest(channel=channel),
        HistoryRequest(channel=hchannel, limit=10),
        HistoryRemoveRequest(channel=hchannel),
        HistoryRequest(channel=hchannel, limit=10),
    ]))
    assert isinstance(res.replies[0], PresenceStatsResult) and res.replies[0].num_clients == 1
    assert [p.data for p in res.replies[1].publications] == [{"x": 1}]
    assert isinstance(res.replies[2], HistoryRemoveResult)
    assert (res.replies[3].publications, res.replies[3].offset) == ([], 1)
