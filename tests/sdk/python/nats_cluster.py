"""Multi-node helpers: a private nats-server (own free port and store dir, never
the system one on 4222) and N gyre processes sharing it through
``broker: {type: nats}`` and ``presence_manager: {type: nats}``.

The nats-server binary is $NATS_SERVER_BIN, else ``nats-server`` on PATH, else
/usr/sbin/nats-server (Debian); a missing binary fails with a clear message.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any, Dict, List, Optional

from harness import GyreServer, free_port, merge, uniq


def nats_server_bin() -> str:
    env = os.environ.get("NATS_SERVER_BIN")
    if env:
        return env
    found = shutil.which("nats-server")
    if found:
        return found
    if os.path.exists("/usr/sbin/nats-server"):
        return "/usr/sbin/nats-server"
    raise RuntimeError(
        "nats-server not found: set NATS_SERVER_BIN or install it "
        "(Debian: apt-get install nats-server; tests/install-deps.sh does it)"
    )


class NatsServer:
    """``nats-server -js`` on a free port with its own store directory."""

    def __init__(self, jetstream: bool = True):
        self.jetstream = jetstream
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="gyre-nats-")
        self.proc: Optional[subprocess.Popen] = None
        self._log = os.path.join(self.dir, "nats.log")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> "NatsServer":
        args = [nats_server_bin(), "-a", "127.0.0.1", "-p", str(self.port)]
        if self.jetstream:
            args += ["-js", "-sd", os.path.join(self.dir, "store")]
        log = open(self._log, "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
        raise RuntimeError(f"nats-server did not listen on {self.port}: {self.logs()[-2000:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self) -> str:
        try:
            with open(self._log, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


REC_NAMESPACE = {
    "name": "rec",
    "history_size": 1000,
    "history_ttl": "300s",
    "force_recovery": True,
    "presence": True,
    "join_leave": True,
    "force_push_join_leave": True,
    "allow_subscribe_for_client": True,
    "allow_publish_for_subscriber": True,
    "allow_presence_for_subscriber": True,
    "allow_history_for_subscriber": True,
}


def cluster_overrides(nats_url: str, prefix: str, name: str, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    base = {
        "node": {"name": name},
        "broker": {"enabled": True, "type": "nats", "nats": {"url": nats_url, "prefix": prefix}},
        "presence_manager": {"enabled": True, "type": "nats"},
        "channel": {"namespaces": [{"name": "ro", "allow_subscribe_for_client": True}, REC_NAMESPACE]},
    }
    return merge(base, extra or {})


def start_cluster(nats: NatsServer, n: int = 3, extra: Optional[Dict[str, Any]] = None) -> List[GyreServer]:
    prefix = uniq("gyre")
    nodes: List[GyreServer] = []
    try:
        for i in range(n):
            nodes.append(GyreServer(cluster_overrides(nats.url, prefix, f"node{i + 1}", extra)).start())
    except Exception:
        for s in nodes:
            s.stop()
        raise
    return nodes


def subscription_handler_with_join_leave(rec):
    """Like harness.subscription_handler, also recording join and leave."""
    from harness import subscription_handler

    base = type(subscription_handler(rec))

    class H(base):
        async def on_join(self, ctx):
            await rec.record("join", ctx)

        async def on_leave(self, ctx):
            await rec.record("leave", ctx)

    return H()
