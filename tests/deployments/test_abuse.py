"""Abusive clients: connections held open by slow senders (slowloris) do not block others, and
bearer tokens, right or wrong, never reach a log file."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

pytestmark = pytest.mark.ray

QUERY = {"vectors": [[0.1] * 16], "k": 3}


def test_slow_clients_do_not_block_others(apps):
    url = urlparse(apps["flat"])
    head = (
        f"POST {url.path}/v1/search HTTP/1.1\r\nHost: {url.hostname}\r\n"
        "Content-Type: application/json\r\n"
    ).encode()
    socks = []
    for i in range(64):
        s = socket.create_connection((url.hostname, url.port), timeout=5)
        # half never finish their headers, half promise a body they never send
        s.sendall(head if i % 2 else head + b"Content-Length: 100000\r\n\r\n{")
        socks.append(s)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            for i, s in enumerate(socks):
                with contextlib.suppress(OSError):  # the server may close a slow connection
                    s.sendall(b"X-a: b\r\n" if i % 2 else b" ")
            time.sleep(0.5)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        latencies = []
        with httpx.Client(timeout=10) as client:
            for _ in range(20):
                t0 = time.perf_counter()
                r = client.post(f"{apps['flat']}/v1/search", json=QUERY)
                latencies.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
        print(
            f"\nslowloris: 64 slow connections open; 20 normal requests, max {max(latencies):.3f} s"
        )
        assert max(latencies) < 2.0
    finally:
        stop.set()
        thread.join(timeout=5)
        for s in socks:
            s.close()


def test_tokens_never_reach_the_logs(apps):
    import ray

    from tests.deployments.conftest import TOKEN

    wrong = f"wrong-{uuid.uuid4().hex}"
    url = f"{apps['auth']}/v1/search"
    for token, status in ((TOKEN, 200), (wrong, 401)):
        r = httpx.post(url, json=QUERY, headers={"authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == status
    r = httpx.get(f"{apps['auth']}/v1/stats", headers={"authorization": f"Bearer {wrong}x"})
    assert r.status_code == 401
    time.sleep(2)  # log writers flush
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert files, f"no log files under {logs}"
    for path in files:
        data = path.read_bytes()
        assert TOKEN.encode() not in data, f"the token is in {path}"
        assert wrong.encode() not in data, f"a wrong token is in {path}"
