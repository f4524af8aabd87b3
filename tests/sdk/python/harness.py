"""Harness for the Python real-SDK suites.

Starts the real ``gyre`` binary ($GYRE_BIN, default <repo>/target/debug/gyre) on a
free port with a temporary JSON config, waits for ``GET /health/ready`` to answer 200 and
kills it on teardown. Also mints HS256 tokens (PyJWT), calls the HTTP server API and
records SDK events so tests can await them with timeouts.
"""

from __future__ import annotations

import asyncio
import atexit
import copy
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import jwt

REPO_ROOT = Path(__file__).resolve().parents[3]
GYRE_BIN = os.environ.get("GYRE_BIN") or str(REPO_ROOT / "target" / "debug" / "gyre")

SECRET = "gyre-sdk-test-hmac-secret-0123456789"
API_KEY = "gyre-sdk-test-api-key"
TIMEOUT = 5.0  # default per-await timeout, seconds

_live: "set[subprocess.Popen]" = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        try:
            proc.kill()
        except OSError:
            pass


def free_port() -> int:
    """Ask the OS for a free TCP port (bind :0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def merge(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
    """Deep merge of dicts; lists and scalars of b replace those of a."""
    out = copy.deepcopy(a)
    for k, v in (b or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def base_config(port: int) -> Dict[str, Any]:
    return {
        "http_server": {"port": port},
        "health": {"enabled": True},
        "log": {"level": "debug"},
        "client": {
            "token": {"hmac_secret_key": SECRET},
            "allowed_origins": ["*"],
        },
        "http_api": {"key": API_KEY},
        "rpc": {"ping": {"enabled": True}},
        "channel": {
            "without_namespace": {
                "allow_subscribe_for_client": True,
                "allow_publish_for_subscriber": True,
            },
            "namespaces": [{"name": "ro", "allow_subscribe_for_client": True}],
        },
    }


class ApiReply:
    def __init__(self, status: int, body: Any):
        self.status = status
        self.body = body

    def __repr__(self) -> str:
        return f"ApiReply(status={self.status}, body={self.body!r})"


class GyreServer:
    """A running gyre child process."""

    def __init__(self, overrides: Optional[Dict[str, Any]] = None, start_timeout: float = 20.0):
        if not os.path.exists(GYRE_BIN):
            raise RuntimeError(f"gyre binary not found at {GYRE_BIN} (build it or set GYRE_BIN)")
        self.overrides = overrides or {}
        self.start_timeout = start_timeout
        self.proc: Optional[subprocess.Popen] = None
        self._dir = tempfile.mkdtemp(prefix="gyre-py-")
        self._log_path = os.path.join(self._dir, "gyre.log")
        self.port = 0
        self.config: Dict[str, Any] = {}

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> "GyreServer":
        last: Optional[Exception] = None
        for _ in range(3):
            try:
                self._start_once(free_port())
                return self
            except _EarlyExit as e:  # port raced away: try another one
                last = e
        raise RuntimeError(str(last))

    def _start_once(self, port: int) -> None:
        self.port = port
        self.config = merge(base_config(port), self.overrides)
        config_path = os.path.join(self._dir, "config.json")
        with open(config_path, "w") as f:
            json.dump(self.config, f, indent=2)
        log = open(self._log_path, "wb")
        env = dict(os.environ, RUST_BACKTRACE="1")
        self.proc = subprocess.Popen(
            [GYRE_BIN, "--config", config_path],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        log.close()
        _live.add(self.proc)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.http_url}/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError, ConnectionError):
                pass
            time.sleep(0.05)
        exited = self.proc.poll()
        if exited is None:
            self.proc.kill()
            self.proc.wait()
        _live.discard(self.proc)
        msg = (
            f"gyre did not become healthy on port {port} within {self.start_timeout}s"
            f" (exit code: {exited})\nconfig: {json.dumps(self.config)}\n"
            f"--- gyre output ---\n{self.logs()[-8000:]}"
        )
        logs = self.logs().lower()
        if exited is not None and ("in use" in logs or "bind" in logs):
            raise _EarlyExit(msg)
        raise RuntimeError(msg)

    def stop(self) -> Optional[int]:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _live.discard(proc)
        # Keep the server output in tests/artifacts/ (gitignored) for failed CI runs.
        try:
            artifacts = REPO_ROOT / "tests" / "artifacts"
            artifacts.mkdir(parents=True, exist_ok=True)
            if os.path.exists(self._log_path):
                shutil.copyfile(self._log_path, artifacts / f"gyre-py-{self.port}.log")
        except OSError:
            pass
        shutil.rmtree(self._dir, ignore_errors=True)
        return proc.returncode

    def logs(self) -> str:
        try:
            with open(self._log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # -- addresses --------------------------------------------------------------

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    @property
    def api_url(self) -> str:
        return f"{self.http_url}/api"

    # -- HTTP API -------------------------------------------------------------

    def api(self, method: str, body: Any = None, key: str = API_KEY, raw: Optional[bytes] = None,
            path: Optional[str] = None, timeout: float = TIMEOUT) -> ApiReply:
        """POST /api/<method> (or `path`) with X-API-Key; body sent as compact JSON."""
        data = raw if raw is not None else json.dumps(body if body is not None else {},
                                                      separators=(",", ":")).encode()
        url = f"{self.http_url}{path}" if path else f"{self.api_url}/{method}"
        req = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", "X-API-Key": key})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=timeout) as r:
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        return ApiReply(status, parsed)

    def api_ok(self, method: str, body: Any = None) -> Any:
        reply = self.api(method, body)
        assert reply.status == 200, f"API {method} {body}: {reply}"
        assert isinstance(reply.body, dict) and "error" not in reply.body and "result" in reply.body, \
            f"API {method} {body}: {reply}"
        return reply.body["result"]

    async def api_ok_async(self, method: str, body: Any = None) -> Any:
        return await asyncio.to_thread(self.api_ok, method, body)


class _EarlyExit(RuntimeError):
    pass


# -- tokens -----------------------------------------------------------------------


def conn_token(sub: str, ttl: int = 3600, secret: str = SECRET, **claims: Any) -> str:
    """HS256 connection token; ttl seconds from now (negative: already expired)."""
    payload = {"sub": sub, "exp": int(time.time()) + ttl, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


def sub_token(sub: str, channel: str, ttl: int = 3600, secret: str = SECRET, **claims: Any) -> str:
    payload = {"sub": sub, "channel": channel, "exp": int(time.time()) + ttl, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


_counter = itertools.count(1)
_counter_lock = threading.Lock()


def uniq(prefix: str) -> str:
    with _counter_lock:
        n = next(_counter)
    return f"{prefix}{os.getpid()}x{n}x{secrets.token_hex(3)}"


# -- event recording ----------------------------------------------------------------


class Recorder:
    """Records (event name, ctx) pairs and lets tests await them with a timeout."""

    def __init__(self) -> None:
        self.events: List[tuple] = []
        self._cond: Optional[asyncio.Condition] = None

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    async def record(self, name: str, ctx: Any) -> None:
        self.events.append((name, ctx))
        cond = self._condition()
        async with cond:
            cond.notify_all()

    def names(self) -> List[str]:
        return [n for n, _ in self.events]

    def of(self, name: str) -> List[Any]:
        return [c for n, c in self.events if n == name]

    async def wait(self, name: str, timeout: float = TIMEOUT,
                   pred: Callable[[Any], bool] = lambda _c: True, after: int = 0) -> Any:
        """First event `name` (at index >= after) whose ctx passes pred."""
        cond = self._condition()

        def find() -> Any:
            for n, c in self.events[after:]:
                if n == name and pred(c):
                    return (c,)
            return None

        async def waiter() -> Any:
            async with cond:
                while True:
                    hit = find()
                    if hit:
                        return hit[0]
                    await cond.wait()

        try:
            return await asyncio.wait_for(waiter(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"timeout after {timeout}s waiting for event {name!r}; got {self.events!r}"
            ) from None


def client_handler(rec: Recorder):
    """A centrifuge ClientEventHandler recording every event into `rec`."""
    from centrifuge import ClientEventHandler

    class H(ClientEventHandler):
        async def on_connecting(self, ctx):
            await rec.record("connecting", ctx)

        async def on_connected(self, ctx):
            await rec.record("connected", ctx)

        async def on_disconnected(self, ctx):
            await rec.record("disconnected", ctx)

        async def on_error(self, ctx):
            await rec.record("error", ctx)

        async def on_subscribed(self, ctx):
            await rec.record("subscribed", ctx)

        async def on_subscribing(self, ctx):
            await rec.record("subscribing", ctx)

        async def on_unsubscribed(self, ctx):
            await rec.record("unsubscribed", ctx)

        async def on_publication(self, ctx):
            await rec.record("publication", ctx)

    return H()


def subscription_handler(rec: Recorder):
    from centrifuge import SubscriptionEventHandler

    class H(SubscriptionEventHandler):
        async def on_subscribing(self, ctx):
            await rec.record("subscribing", ctx)

        async def on_subscribed(self, ctx):
            await rec.record("subscribed", ctx)

        async def on_unsubscribed(self, ctx):
            await rec.record("unsubscribed", ctx)

        async def on_publication(self, ctx):
            await rec.record("publication", ctx)

        async def on_error(self, ctx):
            await rec.record("error", ctx)

    return H()
