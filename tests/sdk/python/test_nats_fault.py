"""Fault test: nats-server is SIGKILLed and restarted (same store) in the
middle of a publish loop through the HTTP API of one node, while clients on
other nodes are subscribed with recovery.

What must hold (loss is never silent):
- every publish the API acknowledged with an offset is in history afterwards,
  with its data, and every other publish was answered with an error;
- the outage really produced errors (the API did not pretend);
- a subscriber that stayed connected saw, after each `subscribed` event that
  said `recovered: true` (or since its first subscribe), contiguous offsets:
  no client is told `recovered: true` across a gap;
- a client that was away during the outage and reconnects to another node
  recovers exactly the acknowledged publications (plus any the API reported
  as failed but that were stored - never fewer), or is told recovered: false.
"""

import asyncio
import urllib.error

import pytest
from centrifuge import Client, StreamPosition

from harness import TIMEOUT, Recorder, client_handler, conn_token, uniq
from nats_cluster import NatsServer, start_cluster, subscription_handler_with_join_leave


@pytest.fixture(scope="module")
def faulty():
    nats = NatsServer().start()
    nodes = []
    try:
        nodes = start_cluster(nats, 3)
        yield nats, nodes
    finally:
        for n in nodes:
            n.stop()
        nats.stop()


async def connect(node, user, rec):
    c = Client(node.ws_url, events=client_handler(rec), token=conn_token(user), timeout=TIMEOUT,
               min_reconnect_delay=0.1, max_reconnect_delay=0.5, proxy=None)
    await asyncio.wait_for(c.connect(), TIMEOUT)
    await rec.wait("connected")
    return c


def publish(node, channel, n):
    """One API publish: ('ok', offset) or ('err', description)."""
    try:
        r = node.api("publish", {"channel": channel, "data": {"n": n}}, timeout=5)
    except (urllib.error.URLError, OSError) as e:
        return ("err", f"transport: {e}")
    if r.status == 200 and isinstance(r.body, dict) and "result" in r.body:
        return ("ok", r.body["result"]["offset"])
    return ("err", f"{r.status} {r.body}")


def check_contiguous(events, label):
    """events: [('subscribed', ctx) | ('publication', ctx)] in arrival order.
    After each subscribed event (its offset is the recovery start when
    recovered, else the stream top) offsets must follow one by one."""
    last = None
    for name, ctx in events:
        if name == "subscribed":
            last = ctx.stream_position.offset if ctx.stream_position else None
            continue
        off = ctx.pub.offset
        if last is not None:
            assert off == last + 1, f"{label}: offset {off} after {last} without being told: {events}"
        last = off


async def test_kill_and_restart_nats_during_a_publish_loop(faulty):
    nats, (n1, n2, n3) = faulty
    channel = uniq("rec:fault")

    # A subscriber that stays connected to node1 through the outage.
    crec = Recorder()
    stay = await connect(n1, uniq("stay"), crec)
    srec = Recorder()
    events = []

    class Tap(Recorder):
        async def record(self, name, ctx):
            if name in ("subscribed", "publication"):
                events.append((name, ctx))
            await srec.record(name, ctx)

    tap = Tap()
    sub = stay.new_subscription(channel, events=subscription_handler_with_join_leave(tap))
    await asyncio.wait_for(sub.subscribe(), TIMEOUT)
    await srec.wait("subscribed")

    # A client that leaves before the outage and comes back to node2 after it.
    arec = Recorder()
    away = await connect(n3, uniq("away"), arec)
    away_events = Recorder()
    asub = away.new_subscription(channel, events=subscription_handler_with_join_leave(away_events))
    await asyncio.wait_for(asub.subscribe(), TIMEOUT)
    actx = await away_events.wait("subscribed")

    results = []
    loop = asyncio.get_running_loop()

    async def publisher():
        for i in range(150):
            results.append((i, await loop.run_in_executor(None, publish, n2, channel, i)))
            await asyncio.sleep(0.02)

    async def chaos():
        # Let some publications through, take the away client off, kill NATS.
        while sum(1 for _, r in results if r[0] == "ok") < 20:
            await asyncio.sleep(0.02)
        await asyncio.wait_for(away.disconnect(), TIMEOUT)
        nats.kill()
        await asyncio.sleep(1.5)
        nats.start()

    pub_task = asyncio.create_task(publisher())
    await chaos()
    await asyncio.wait_for(pub_task, 120)

    oks = {i: r[1] for i, r in results if r[0] == "ok"}
    errs = [(i, r[1]) for i, r in results if r[0] == "err"]
    assert errs, "the outage must have made some publishes fail (the API must not pretend)"
    assert len(oks) >= 20, results

    # Everything acknowledged is stored with its data (read through node3).
    deadline = loop.time() + 20
    while True:
        r = n3.api("history", {"channel": channel, "limit": -1})
        if r.status == 200 and "result" in r.body:
            break
        assert loop.time() < deadline, r
        await asyncio.sleep(0.2)
    hist = {p["offset"]: p["data"]["n"] for p in r.body["result"]["publications"]}
    for i, off in oks.items():
        assert hist.get(off) == i, f"acknowledged publish {i} (offset {off}) missing from history: {hist}"
    top = r.body["result"]["offset"]
    assert sorted(hist) == list(range(1, top + 1)), "history is contiguous"

    # The staying subscriber: contiguous, or explicitly told otherwise.
    deadline = loop.time() + 20
    while not any(name == "publication" and c.pub.offset == top for name, c in events):
        assert loop.time() < deadline, f"staying subscriber never reached offset {top}: {events[-5:]}"
        await asyncio.sleep(0.1)
    check_contiguous(events, "staying subscriber")

    # The away client reconnects to node2 and recovers from where it was.
    away_pubs = [c for _, c in away_events.events if _ == "publication"]
    position = StreamPosition(
        offset=away_pubs[-1].pub.offset if away_pubs else actx.stream_position.offset,
        epoch=actx.stream_position.epoch,
    )

    async def get_state(_ch):
        return position

    brec = Recorder()
    back = await connect(n2, uniq("back"), brec)
    back_events = Recorder()
    bsub = back.new_subscription(channel, events=subscription_handler_with_join_leave(back_events), get_state=get_state)
    await asyncio.wait_for(bsub.subscribe(), TIMEOUT)
    bctx = await back_events.wait("subscribed")
    assert bctx.was_recovering
    if bctx.recovered:
        await back_events.wait("publication", pred=lambda c: c.pub.offset == top, timeout=10)
        got = [c.pub.offset for n, c in back_events.events if n == "publication"]
        assert got == list(range(position.offset + 1, top + 1)), f"recovered: true but got {got}"
        assert [hist[o] for o in got] == [c.pub.data["n"] for n, c in back_events.events if n == "publication"]

    for c in (stay, back):
        await asyncio.wait_for(c.disconnect(), TIMEOUT)
    subs = sum(1 for n, _ in events if n == "subscribed")
    print(f"fault test: {len(oks)} acknowledged, {len(errs)} failed, top {top}, "
          f"staying subscriber subscribed {subs} time(s), back client recovered={bctx.recovered}")


def test_nats_without_jetstream_stops_gyre_with_a_message_that_says_so():
    from harness import GyreServer
    from nats_cluster import cluster_overrides

    nats = NatsServer(jetstream=False).start()
    server = GyreServer(cluster_overrides(nats.url, uniq("nojs"), "node1"), start_timeout=10)
    try:
        with pytest.raises(RuntimeError) as e:
            server.start()
        msg = str(e.value)
        assert "exit code: 1" in msg, msg
        assert "has no JetStream" in msg and "-js" in msg, msg
    finally:
        server.stop()
        nats.stop()


def test_unreachable_nats_at_startup_is_retried_and_ready_is_503_until_connected():
    import os
    import signal
    import subprocess
    import tempfile
    import time
    import urllib.request

    from harness import GYRE_BIN, base_config, free_port, merge
    from nats_cluster import cluster_overrides

    nats = NatsServer()  # port chosen, not started yet
    port = free_port()
    cfg = merge(base_config(port), cluster_overrides(nats.url, uniq("late"), "node1"))
    d = tempfile.mkdtemp(prefix="gyre-py-late-")
    path = os.path.join(d, "config.json")
    with open(path, "w") as f:
        import json as _json
        _json.dump(cfg, f)
    log_path = os.path.join(d, "gyre.log")
    log = open(log_path, "wb")
    proc = subprocess.Popen([GYRE_BIN, "--config", path], stdout=log, stderr=subprocess.STDOUT)
    log.close()

    def health(path="/health/ready"):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    try:
        deadline = time.monotonic() + 10
        while health() != 503:
            assert time.monotonic() < deadline, "health never answered 503 while NATS was unreachable"
            time.sleep(0.1)
        time.sleep(1.5)
        assert health() == 503
        # Liveness is independent of NATS: a kubelet would not restart this process.
        assert health("/health") == 200 and health("/health/live") == 200
        assert proc.poll() is None, "gyre exited while NATS was unreachable"
        logs = open(log_path, "rb").read().decode()
        assert "unreachable" in logs and "retrying" in logs, logs[-2000:]
        nats.start()
        deadline = time.monotonic() + 15
        while health() != 200:
            assert time.monotonic() < deadline, open(log_path, "rb").read().decode()[-2000:]
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        nats.stop()
