"""Fixtures for the Python real-SDK suites (centrifuge-python, cent)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from harness import GyreServer  # noqa: E402

SERVER_OVERRIDES = {
    "client": {
        "expired_close_delay": "1s",
        "expired_sub_close_delay": "1s",
        "presence_update_interval": "1s",
    },
    "channel": {
        "namespaces": [
            {"name": "ro", "allow_subscribe_for_client": True},
            {"name": "srv"},
        ],
    },
}


@pytest.fixture(scope="module")
def gyre():
    """One gyre process per test module, killed at the end even if tests fail."""
    server = GyreServer(SERVER_OVERRIDES).start()
    try:
        yield server
    finally:
        code = server.stop()
        # A crash (not our SIGTERM) is a server bug worth surfacing.
        if code is not None and code < 0 and code != -15:
            print(f"gyre exited with signal {-code}; last output:\n{server.logs()[-4000:]}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failing test, attach the tail of the gyre log to the report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        server = item.funcargs.get("gyre") if hasattr(item, "funcargs") else None
        if server is not None:
            rep.sections.append(("gyre log (tail)", server.logs()[-6000:]))
