"""Three gyre nodes sharing one private nats-server (broker and presence
manager type nats), driven by centrifuge-python and the HTTP API:
cross-node delivery, info, presence, recovery on another node, join/leave,
API disconnect across nodes."""

import asyncio

import pytest
from centrifuge import Client, StreamPosition

from harness import TIMEOUT, Recorder, client_handler, conn_token, uniq
from nats_cluster import NatsServer, start_cluster, subscription_handler_with_join_leave


@pytest.fixture(scope="module")
def cluster():
    nats = NatsServer().start()
    nodes = []
    try:
        nodes = start_cluster(nats, 3)
        yield nodes
    finally:
        for n in nodes:
            n.stop()
        nats.stop()


class Clients:
    def __init__(self):
        self.clients = []

    async def connect(self, node, user, rec=None):
        rec = rec or Recorder()
        c = Client(node.ws_url, events=client_handler(rec), token=conn_token(user), timeout=TIMEOUT,
                   min_reconnect_delay=0.1, max_reconnect_delay=0.5, proxy=None)
        self.clients.append(c)
        await asyncio.wait_for(c.connect(), TIMEOUT)
        await rec.wait("connected")
        return c, rec

    async def subscribe(self, c, channel, **kw):
        rec = Recorder()
        sub = c.new_subscription(channel, events=subscription_handler_with_join_leave(rec), **kw)
        await asyncio.wait_for(sub.subscribe(), TIMEOUT)
        ctx = await rec.wait("subscribed")
        return sub, rec, ctx

    async def close(self):
        for c in self.clients:
            try:
                await asyncio.wait_for(c.disconnect(), TIMEOUT)
            except Exception:  # noqa: BLE001 - teardown goes on
                pass


@pytest.fixture
async def clients():
    cs = Clients()
    try:
        yield cs
    finally:
        await cs.close()


async def test_client_on_node1_receives_publication_sent_through_node2(cluster, clients):
    n1, n2, _ = cluster
    c, _ = await clients.connect(n1, uniq("u"))
    channel = uniq("rec:cross")
    _, rec, _ = await clients.subscribe(c, channel)
    res = await n2.api_ok_async("publish", {"channel": channel, "data": {"via": "node2"}})
    assert res["offset"] == 1 and res["epoch"], res
    pub = await rec.wait("publication")
    assert pub.pub.data == {"via": "node2"}
    assert pub.pub.offset == 1


async def test_info_on_node3_lists_three_nodes(cluster, clients):
    n1, _, n3 = cluster
    c, _ = await clients.connect(n1, uniq("u"))
    await clients.subscribe(c, uniq("rec:info"))
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        nodes = (await n3.api_ok_async("info", {}))["nodes"]
        names = sorted(n["name"] for n in nodes)
        node1 = [n for n in nodes if n["name"] == "node1"]
        if names == ["node1", "node2", "node3"] and node1 and node1[0]["num_clients"] >= 1:
            break
        assert asyncio.get_running_loop().time() < deadline, f"info on node3: {nodes}"
        await asyncio.sleep(0.3)
    assert len({n["uid"] for n in nodes}) == 3


async def test_presence_on_node3_shows_client_of_node1(cluster, clients):
    n1, _, n3 = cluster
    c, _ = await clients.connect(n1, "alice")
    channel = uniq("rec:pres")
    await clients.subscribe(c, channel)
    pres = (await n3.api_ok_async("presence", {"channel": channel}))["presence"]
    assert c.client_id in pres, pres
    assert pres[c.client_id]["user"] == "alice"
    stats = await n3.api_ok_async("presence_stats", {"channel": channel})
    assert stats == {"num_clients": 1, "num_users": 1}


async def test_disconnect_from_node1_reconnect_to_node2_recovers_exactly_the_missed(cluster, clients):
    n1, n2, n3 = cluster
    user = uniq("u")
    channel = uniq("rec:recover")
    c1, _ = await clients.connect(n1, user)
    _, rec1, ctx = await clients.subscribe(c1, channel)
    assert ctx.recoverable
    await n1.api_ok_async("publish", {"channel": channel, "data": {"n": 0}})
    first = await rec1.wait("publication")
    position = StreamPosition(offset=first.pub.offset, epoch=ctx.stream_position.epoch)
    await asyncio.wait_for(c1.disconnect(), TIMEOUT)
    for i in range(1, 4):
        await n3.api_ok_async("publish", {"channel": channel, "data": {"n": i}})

    async def get_state(_channel):
        return position

    c2, _ = await clients.connect(n2, user)
    _, rec2, ctx2 = await clients.subscribe(c2, channel, get_state=get_state)
    assert ctx2.was_recovering and ctx2.recovered, ctx2
    await rec2.wait("publication", pred=lambda p: p.pub.offset == 4)
    await asyncio.sleep(0.3)
    got = [(p.pub.offset, p.pub.data["n"]) for p in rec2.of("publication")]
    assert got == [(2, 1), (3, 2), (4, 3)], got


async def test_join_and_leave_seen_across_nodes(cluster, clients):
    n1, n2, _ = cluster
    channel = uniq("rec:jl")
    a, _ = await clients.connect(n1, uniq("a"))
    _, arec, _ = await clients.subscribe(a, channel)
    b, _ = await clients.connect(n2, uniq("b"))
    bsub, _, _ = await clients.subscribe(b, channel)
    await arec.wait("join", pred=lambda c: c.info.client == b.client_id)
    await asyncio.wait_for(bsub.unsubscribe(), TIMEOUT)
    await arec.wait("leave", pred=lambda c: c.info.client == b.client_id)


async def test_api_disconnect_on_node2_reaches_client_of_node1(cluster, clients):
    n1, n2, _ = cluster
    user = uniq("victim")
    c, crec = await clients.connect(n1, user)
    await n2.api_ok_async("disconnect", {"user": user, "disconnect": {"code": 4500, "reason": "bye"}})
    ctx = await crec.wait("disconnected")
    assert ctx.code == 4500, ctx
