"""Channel state (issue 3) with centrifuge-python against the real gyre binary, with
the JSON protocol and with use_protobuf=True: recovery of the publications missed
while disconnected, an epoch change after a gyre restart (recovered false; 112 with
get_state), history with limit/since/reverse, presence and presence stats, join and
leave (client-requested and forced), subscription tokens of a protected namespace with
refresh through get_token, and fossil delta compression."""

import asyncio
import json
import time

import pytest
from centrifuge import (
    Client,
    ClientState,
    DeltaType,
    ReplyError,
    StreamPosition,
    SubscriptionState,
)

from harness import (
    TIMEOUT,
    GyreServer,
    Recorder,
    client_handler,
    conn_token,
    free_port,
    sub_token,
    subscription_handler,
    uniq,
)

HISTORY = {"history_size": 100, "history_ttl": "300s"}

NAMESPACES = [
    {"name": "rec", "allow_subscribe_for_client": True, **HISTORY, "force_recovery": True},
    {"name": "hist", "allow_subscribe_for_client": True, **HISTORY,
     "allow_history_for_subscriber": True, "allow_positioning": True},
    {"name": "nohist", "allow_subscribe_for_client": True, "allow_history_for_subscriber": True},
    {"name": "pres", "allow_subscribe_for_client": True, "presence": True, "join_leave": True,
     "allow_presence_for_subscriber": True},
    {"name": "fjl", "allow_subscribe_for_client": True, "presence": True, "join_leave": True,
     "force_push_join_leave": True},
    {"name": "prot", "presence": True, "allow_presence_for_subscriber": True},
    {"name": "delta", "allow_subscribe_for_client": True, **HISTORY, "force_recovery": True,
     "allowed_delta_types": ["fossil"]},
]

OVERRIDES = {
    "client": {"expired_sub_close_delay": "1s", "presence_update_interval": "1s"},
    "channel": {"namespaces": NAMESPACES},
}


@pytest.fixture(scope="module")
def gyre():
    """This module's own gyre (its namespaces), overriding the conftest one."""
    server = GyreServer(OVERRIDES).start()
    try:
        yield server
    finally:
        server.stop()


class Proto:
    def __init__(self, name: str):
        self.name = name
        self.protobuf = name == "protobuf"

    def enc(self, obj):
        return json.dumps(obj, separators=(",", ":")).encode() if self.protobuf else obj

    def dec(self, data):
        if self.protobuf:
            assert isinstance(data, (bytes, bytearray)), f"protobuf payload must be bytes: {data!r}"
            return json.loads(data)
        return data


@pytest.fixture(params=["json", "protobuf"])
def proto(request):
    return Proto(request.param)


def sub_handler(rec: Recorder):
    """subscription_handler of the harness plus join/leave."""
    base = type(subscription_handler(rec))

    class H(base):
        async def on_join(self, ctx):
            await rec.record("join", ctx)

        async def on_leave(self, ctx):
            await rec.record("leave", ctx)

    return H()


class Harness:
    def __init__(self, gyre, proto: Proto):
        self.gyre = gyre
        self.proto = proto
        self.clients = []

    def client(self, token="", url=None, **kw):
        rec = Recorder()
        opts = dict(min_reconnect_delay=0.1, max_reconnect_delay=0.5)
        opts.update(kw)
        c = Client(url or self.gyre.ws_url, events=client_handler(rec), token=token,
                   use_protobuf=self.proto.protobuf, timeout=TIMEOUT, proxy=None, **opts)
        self.clients.append(c)
        return c, rec

    async def connected(self, user, url=None, **claims):
        c, rec = self.client(token=conn_token(user, **claims), url=url)
        await asyncio.wait_for(c.connect(), TIMEOUT)
        ctx = await rec.wait("connected")
        return c, rec, ctx

    async def subscribed(self, c, channel, **opts):
        rec = Recorder()
        sub = c.new_subscription(channel, events=sub_handler(rec), **opts)
        await asyncio.wait_for(sub.subscribe(), TIMEOUT)
        ctx = await rec.wait("subscribed")
        return sub, rec, ctx

    async def publish(self, channel, datas, **extra):
        return [await self.gyre.api_ok_async("publish", {"channel": channel, "data": d, **extra})
                for d in datas]

    def pubs(self, rec, after=0):
        return [(p.pub.offset, self.proto.dec(p.pub.data)) for p in rec.of("publication")[after:]]

    async def wait_pubs(self, rec, n, timeout=TIMEOUT):
        await rec.wait("publication", timeout=timeout, pred=lambda _c: len(rec.of("publication")) >= n)

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


def big_doc(version):
    return {
        "id": "document-1",
        "version": version,
        "title": f"Quarterly report, revision {version}",
        "items": [{"idx": i, "name": f"line item number {i}", "qty": i % 7,
                   "price": i * 10 + (version if i == version % 40 else 0)} for i in range(40)],
    }


# -- recovery -------------------------------------------------------------------------


async def test_recovers_exactly_the_missed_publications(h):
    channel = f"rec:{uniq('c')}"
    c, crec, _ = await h.connected(uniq("u"))
    sub, srec, first = await h.subscribed(c, channel)
    assert first.recoverable is True, first
    assert first.was_recovering is False
    assert first.stream_position.offset == 0
    epoch = first.stream_position.epoch
    assert epoch

    live = await h.publish(channel, [{"n": 1}, {"n": 2}])
    assert [(r["offset"], r["epoch"]) for r in live] == [(1, epoch), (2, epoch)]
    await h.wait_pubs(srec, 2)

    await asyncio.wait_for(c.disconnect(), TIMEOUT)
    await crec.wait("disconnected")
    assert sub.state == SubscriptionState.SUBSCRIBING

    missed = await h.publish(channel, [{"n": n, "text": f"missed {n}"} for n in range(3, 8)])
    assert [r["offset"] for r in missed] == [3, 4, 5, 6, 7]

    n = len(srec.events)
    await asyncio.wait_for(c.connect(), TIMEOUT)
    ctx = await srec.wait("subscribed", after=n)
    assert ctx.was_recovering is True, ctx
    assert ctx.recovered is True, ctx
    assert ctx.stream_position.epoch == epoch
    await h.wait_pubs(srec, 7)

    await h.publish(channel, [{"n": 8}])
    await h.wait_pubs(srec, 8)
    await asyncio.sleep(0.3)
    assert h.pubs(srec) == (
        [(1, {"n": 1}), (2, {"n": 2})]
        + [(n, {"n": n, "text": f"missed {n}"}) for n in range(3, 8)]
        + [(8, {"n": 8})]
    )


def _start_on_port(port):
    """A gyre on a given port (a restart keeps the port the client reconnects to)."""
    server = GyreServer(OVERRIDES)
    server._start_once(port)  # noqa: SLF001 - the harness picks its own port otherwise
    return server


async def test_epoch_change_after_restart_not_recovered(proto):
    port = free_port()
    servers = [await asyncio.to_thread(_start_on_port, port)]
    h = Harness(servers[0], proto)
    try:
        channel = f"rec:{uniq('c')}"
        c, crec, _ = await h.connected(uniq("u"))
        _sub, srec, first = await h.subscribed(c, channel)
        old_epoch = first.stream_position.epoch
        assert old_epoch
        await h.publish(channel, [{"n": 1}, {"n": 2}])
        await h.wait_pubs(srec, 2)

        n = len(crec.events)
        sn = len(srec.events)
        await asyncio.to_thread(servers[0].stop)
        ctx = await crec.wait("connecting", after=n, pred=lambda x: x.code != 0)
        assert ctx.code == 3001, ctx
        servers.append(await asyncio.to_thread(_start_on_port, port))
        h.gyre = servers[-1]
        again = await srec.wait("subscribed", after=sn, timeout=3 * TIMEOUT)
        assert again.was_recovering is True, again
        assert again.recovered is False, again
        assert again.stream_position.epoch and again.stream_position.epoch != old_epoch, again
        assert again.stream_position.offset == 0

        r = await h.publish(channel, [{"n": "new"}])
        assert (r[0]["offset"], r[0]["epoch"]) == (1, again.stream_position.epoch)
        await h.wait_pubs(srec, 3)
        assert h.pubs(srec) == [(1, {"n": 1}), (2, {"n": 2}), (1, {"n": "new"})]
    finally:
        await h.close()
        for s in servers:
            await asyncio.to_thread(s.stop)


async def test_get_state_reloaded_after_112(proto):
    port = free_port()
    servers = [await asyncio.to_thread(_start_on_port, port)]
    h = Harness(servers[0], proto)
    try:
        channel = f"rec:{uniq('c')}"
        positions = []

        async def get_state(ch):
            assert ch == channel
            res = await servers[-1].api_ok_async("history", {"channel": ch, "limit": 0})
            pos = StreamPosition(offset=res.get("offset", 0), epoch=res["epoch"])
            positions.append(pos)
            return pos

        c, _crec, _ = await h.connected(uniq("u"))
        _sub, srec, first = await h.subscribed(c, channel, get_state=get_state)
        assert len(positions) == 1
        assert first.recovered is True, first

        sn = len(srec.events)
        await asyncio.to_thread(servers[0].stop)
        servers.append(await asyncio.to_thread(_start_on_port, port))
        h.gyre = servers[-1]
        again = await srec.wait("subscribed", after=sn, timeout=3 * TIMEOUT)
        assert len(positions) == 2, positions
        assert positions[1].epoch != positions[0].epoch
        assert again.recovered is True, again
        assert again.stream_position.epoch == positions[1].epoch
        await h.publish(channel, [{"n": "fresh"}])
        await h.wait_pubs(srec, 1)
        assert h.pubs(srec) == [(1, {"n": "fresh"})]
    finally:
        await h.close()
        for s in servers:
            await asyncio.to_thread(s.stop)


# -- history ----------------------------------------------------------------------------


async def test_history_limit_since_reverse(h):
    channel = f"hist:{uniq('c')}"
    c, _r, _ = await h.connected(uniq("u"))
    sub, _srec, _ = await h.subscribed(c, channel)
    res = await h.publish(channel, [{"i": i} for i in range(1, 11)])
    epoch = res[0]["epoch"]
    assert [r["offset"] for r in res] == list(range(1, 11))

    def view(hr):
        return [(p.offset, h.proto.dec(p.data)["i"]) for p in hr.publications]

    top = await asyncio.wait_for(sub.history(), TIMEOUT)
    assert (top.publications, top.offset, top.epoch) == ([], 10, epoch)

    first3 = await asyncio.wait_for(sub.history(limit=3), TIMEOUT)
    assert view(first3) == [(1, 1), (2, 2), (3, 3)]
    assert (first3.offset, first3.epoch) == (10, epoch)

    last3 = await asyncio.wait_for(sub.history(limit=3, reverse=True), TIMEOUT)
    assert view(last3) == [(10, 10), (9, 9), (8, 8)]

    after4 = await asyncio.wait_for(sub.history(limit=3, since=StreamPosition(4, epoch)), TIMEOUT)
    assert view(after4) == [(5, 5), (6, 6), (7, 7)]

    before7 = await asyncio.wait_for(
        sub.history(limit=2, since=StreamPosition(7, epoch), reverse=True), TIMEOUT)
    assert view(before7) == [(6, 6), (5, 5)]

    everything = await asyncio.wait_for(sub.history(limit=-1), TIMEOUT)
    assert [o for o, _ in view(everything)] == list(range(1, 11))

    with pytest.raises(ReplyError) as ei:
        await asyncio.wait_for(sub.history(limit=3, since=StreamPosition(4, "notTheEpoch")), TIMEOUT)
    assert ei.value.code == 112


async def test_history_without_history_108(h):
    c, _r, _ = await h.connected(uniq("u"))
    sub, _srec, _ = await h.subscribed(c, f"nohist:{uniq('c')}")
    with pytest.raises(ReplyError) as ei:
        await asyncio.wait_for(sub.history(limit=3), TIMEOUT)
    assert ei.value.code == 108
    assert c.state == ClientState.CONNECTED


async def test_positioned_subscription(h):
    channel = f"hist:{uniq('c')}"
    await h.publish(channel, [{"a": 1}, {"a": 2}, {"a": 3}])
    c, _r, _ = await h.connected(uniq("u"))
    _sub, _srec, ctx = await h.subscribed(c, channel, positioned=True)
    assert ctx.positioned is True, ctx
    assert ctx.recoverable is False
    top = await h.gyre.api_ok_async("history", {"channel": channel, "limit": 0})
    assert (ctx.stream_position.offset, ctx.stream_position.epoch) == (3, top["epoch"])


# -- presence ---------------------------------------------------------------------------


async def test_presence_and_stats_two_clients(h):
    channel = f"pres:{uniq('c')}"
    user_a, user_b = uniq("a"), uniq("b")
    a, _ra, actx = await h.connected(user_a, info={"name": "alice"})
    b, _rb, bctx = await h.connected(user_b)
    sub_a, _sa, _ = await h.subscribed(a, channel)
    sub_b, _sb, _ = await h.subscribed(b, channel)

    p = await asyncio.wait_for(sub_a.presence(), TIMEOUT)
    assert set(p.clients) == {actx.client, bctx.client}
    assert (p.clients[actx.client].user, p.clients[actx.client].client) == (user_a, actx.client)
    assert h.proto.dec(p.clients[actx.client].conn_info) == {"name": "alice"}
    assert p.clients[bctx.client].user == user_b
    assert p.clients[bctx.client].conn_info in (None, b"")

    stats = await asyncio.wait_for(sub_b.presence_stats(), TIMEOUT)
    assert (stats.num_clients, stats.num_users) == (2, 2)

    a2, _r2, _ = await h.connected(user_a)
    await h.subscribed(a2, channel)
    stats = await asyncio.wait_for(sub_b.presence_stats(), TIMEOUT)
    assert (stats.num_clients, stats.num_users) == (3, 2)

    await sub_b.unsubscribe()
    await asyncio.wait_for(b.rpc("ping", h.proto.enc({})), TIMEOUT)  # round trip
    stats = await asyncio.wait_for(sub_a.presence_stats(), TIMEOUT)
    assert (stats.num_clients, stats.num_users) == (2, 1)
    p2 = await asyncio.wait_for(sub_a.presence(), TIMEOUT)
    assert {ci.user for ci in p2.clients.values()} == {user_a}


async def test_presence_refused_103_and_108(h):
    c, _r, _ = await h.connected(uniq("u"))
    with pytest.raises(ReplyError) as ei:
        await asyncio.wait_for(c.presence(f"pres:{uniq('c')}"), TIMEOUT)
    assert ei.value.code == 103
    sub, _s, _ = await h.subscribed(c, f"hist:{uniq('c')}")
    with pytest.raises(ReplyError) as ei2:
        await asyncio.wait_for(sub.presence_stats(), TIMEOUT)
    assert ei2.value.code == 108


# -- join / leave -------------------------------------------------------------------------


async def test_join_leave_with_join_leave_option(h):
    channel = f"pres:{uniq('c')}"
    user_a, user_b, user_c = uniq("a"), uniq("b"), uniq("c")
    a, _ra, _ = await h.connected(user_a)
    _sub_a, sa, _ = await h.subscribed(a, channel, join_leave=True)

    b, _rb, bctx = await h.connected(user_b, info={"role": "b"})
    sub_b, sb, _ = await h.subscribed(b, channel)  # no join_leave: gets none
    join = await sa.wait("join", pred=lambda x: x.info.user == user_b)
    assert join.info.client == bctx.client
    assert h.proto.dec(join.info.conn_info) == {"role": "b"}

    cc, _rc, cctx = await h.connected(user_c)
    await h.subscribed(cc, channel)
    await sa.wait("join", pred=lambda x: x.info.user == user_c)

    await sub_b.unsubscribe()
    leave = await sa.wait("leave", pred=lambda x: x.info.user == user_b)
    assert leave.info.client == bctx.client

    await cc.disconnect()
    leave_c = await sa.wait("leave", pred=lambda x: x.info.user == user_c)
    assert leave_c.info.client == cctx.client

    await asyncio.sleep(0.2)
    others = [f"{n}:{ctx.info.user}" for n, ctx in sa.events
              if n in ("join", "leave") and ctx.info.user != user_a]
    assert others == [f"join:{user_b}", f"join:{user_c}", f"leave:{user_b}", f"leave:{user_c}"]
    assert [n for n in sb.names() if n in ("join", "leave")] == []


async def test_force_push_join_leave(h):
    channel = f"fjl:{uniq('c')}"
    user_a, user_b = uniq("a"), uniq("b")
    a, _ra, _ = await h.connected(user_a)
    _sub_a, sa, _ = await h.subscribed(a, channel)  # join_leave not asked
    b, _rb, bctx = await h.connected(user_b)
    sub_b, _sb, _ = await h.subscribed(b, channel)
    assert (await sa.wait("join", pred=lambda x: x.info.user == user_b)).info.client == bctx.client
    await sub_b.unsubscribe()
    assert (await sa.wait("leave", pred=lambda x: x.info.user == user_b)).info.client == bctx.client


# -- subscription tokens ----------------------------------------------------------------------


async def test_protected_namespace_token_and_refresh(h):
    user = uniq("u")
    c, _r, cctx = await h.connected(user)
    channel = f"prot:{uniq('c')}"
    drec = Recorder()
    denied = c.new_subscription(channel, events=sub_handler(drec))
    await denied.subscribe()
    assert (await drec.wait("unsubscribed")).code == 103
    c.remove_subscription(denied)

    calls = []

    async def get_token(ch):
        calls.append(ch)
        return sub_token(user, ch, ttl=3600, info={"seat": 2})

    sub, srec, _ = await h.subscribed(
        c, channel, token=sub_token(user, channel, ttl=3, info={"seat": 1}), get_token=get_token)
    p = await asyncio.wait_for(sub.presence(), TIMEOUT)
    assert h.proto.dec(p.clients[cctx.client].chan_info) == {"seat": 1}

    n = len(srec.events)
    deadline = time.monotonic() + 8
    while not calls and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert calls == [channel], "get_token called once to refresh (sub_refresh)"
    await asyncio.sleep(3)  # past exp + expired_sub_close_delay
    assert [e for e, _ in srec.events[n:] if e in ("subscribing", "unsubscribed", "error")] == []
    assert sub.state == SubscriptionState.SUBSCRIBED
    await h.publish(channel, [{"after": "refresh"}])
    await h.wait_pubs(srec, 1)
    assert h.pubs(srec) == [(0, {"after": "refresh"})]


# -- delta ------------------------------------------------------------------------------


async def test_fossil_delta_decoded(h):
    channel = f"delta:{uniq('c')}"
    c, crec, _ = await h.connected(uniq("u"))
    sub, srec, _ = await h.subscribed(c, channel, delta=DeltaType.FOSSIL)
    assert sub._delta_negotiated is True  # noqa: SLF001 - subscribe result delta: true
    docs = [big_doc(v) for v in range(1, 7)]
    await h.publish(channel, docs, delta=True)
    await h.wait_pubs(srec, 6)
    assert h.pubs(srec) == list(zip(range(1, 7), docs))
    # What the server sent: the first full, the rest deltas.
    assert [p.pub.delta for p in srec.of("publication")] == [False] + [True] * 5

    await asyncio.wait_for(c.disconnect(), TIMEOUT)
    await crec.wait("disconnected")
    await h.publish(channel, [big_doc(v) for v in (7, 8, 9)], delta=True)
    n = len(srec.events)
    await asyncio.wait_for(c.connect(), TIMEOUT)
    ctx = await srec.wait("subscribed", after=n)
    assert ctx.recovered is True, ctx
    await h.publish(channel, [big_doc(10)], delta=True)
    await h.wait_pubs(srec, 10)
    assert h.pubs(srec) == [(v, big_doc(v)) for v in range(1, 11)]
    assert [p.pub.delta for p in srec.of("publication")][6:] == [False, True, True, True]
