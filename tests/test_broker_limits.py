"""The broker at the limits of a normal machine: a soft and hard limit of 1024 open files, a flood of connections
that never say hello, hundreds of shims at once. It must stay up, keep every session it has, and turn away what it
cannot take with a clear refusal, so that the shim runs its server directly instead of hanging.

The broker runs under ``ulimit -n 1024`` (soft and hard: it cannot raise it), started by hand like
``mcpshare serve``; the clients are real shims and raw sockets; processes and descriptors are counted with psutil.
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from helpers import SERVERS_DIR, count_server_processes
from mcpshare import runtime
from test_broker import SHIM, WAITER, BrokerEnv, RawShim, marked_servers
from test_broker_environment import start

pytestmark = pytest.mark.timeout(240)

RAW_SERVER = SERVERS_DIR / "raw_server.py"
LIMIT = 1024


@pytest.fixture
def many_files() -> Iterator[None]:
    """Let this test process hold well over 1024 descriptors itself (it plays hundreds of clients)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if wanted < 2600:
        pytest.skip(f"the hard limit of open files here ({hard}) is too low to play this many clients")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def start_limited_broker(env: BrokerEnv) -> psutil.Process:
    """``mcpshare serve`` under ``ulimit -n 1024`` (soft and hard), as a user with a default limit would run it."""
    proc = env.start_broker(ulimit=f"-n {LIMIT}")
    env.wait_ready_sync(proc)
    broker = psutil.Process(proc.pid)
    assert broker.rlimit(psutil.RLIMIT_NOFILE) == (LIMIT, LIMIT)
    return broker


def raw_server_argv(marker: str) -> list[str]:
    return [sys.executable, str(RAW_SERVER), f"--marker={marker}"]


def echo(client: RawShim, request_id: int, text: str) -> None:
    """One echo call through a shim; fails unless the answer is the text."""
    answer = client.ask(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": text}},
        }
    )
    while "id" not in answer:  # a notification
        answer = json.loads(client.stdout.readline())
    assert answer["id"] == request_id and text in json.dumps(answer["result"]), answer


def test_a_flood_of_idle_connections_costs_no_session(
    broker_env: BrokerEnv, marker: str, tmp_path: Path, many_files: None
) -> None:
    """1100 connections that never say hello (more than the broker's 1024 descriptors): the sessions it has keep
    working during the flood, a new client still connects, and the broker closes the idle ones."""
    broker = start_limited_broker(broker_env)
    env = {**os.environ, **broker_env.env}
    argv = [*SHIM, "echo", "--", *raw_server_argv(marker)]
    live = [RawShim(argv, env, tmp_path) for _ in range(2)]
    idle: list[socket.socket] = []
    newcomer = None
    try:
        for client in live:
            start(client)
            echo(client, 2, "before")
        for _ in range(1100):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(broker_env.paths.socket)
            idle.append(sock)
        for request_id, client in enumerate(live, 10):
            echo(client, request_id, "during")
        newcomer = RawShim(argv, env, tmp_path)
        start(newcomer)
        echo(newcomer, 2, "new")
        assert broker.is_running() and broker.num_fds() < LIMIT
        assert len(marked_servers(marker)) == 1  # all three share the one server: nobody fell back
        # The idle connections are closed by the broker (evicted, or after the hello timeout): each reads EOF.
        deadline = time.monotonic() + 15
        with selectors.DefaultSelector() as selector:  # epoll: descriptors above 1024
            for sock in idle:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
            while selector.get_map() and time.monotonic() < deadline:
                for ready, _ in selector.select(0.5):
                    sock = ready.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        if sock.recv(65536):
                            continue  # a refusal line; EOF follows
                    except BlockingIOError:
                        continue
                    except OSError:
                        pass
                    selector.unregister(sock)
            still_open = len(selector.get_map())
        assert still_open == 0
        for request_id, client in enumerate([*live, newcomer], 20):
            echo(client, request_id, "after")
        log = Path(broker_env.paths.log).read_text()
        assert "connection(s) that sent no hello" in log
    finally:
        for sock in idle:
            sock.close()
        for client in [*live, newcomer]:
            if client is not None:
                client.close()


def test_four_hundred_shims_either_share_or_fall_back_and_none_hangs(
    broker_env: BrokerEnv, marker: str, tmp_path: Path, many_files: None
) -> None:
    """400 shims x 1 server at once against a broker limited to 1024 descriptors (a session takes 3 there): the
    broker stays up; each shim answers, through the shared server or, refused with a message naming the limit,
    by running the server itself."""
    broker = start_limited_broker(broker_env)
    env = {**os.environ, **broker_env.env}
    argv = [*SHIM, "echo", "--", *raw_server_argv(marker)]
    logs = tmp_path / "stderr"
    logs.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(400):
            with open(logs / f"{index}.txt", "wb") as errlog:
                procs.append(
                    subprocess.Popen(
                        argv, env=env, cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog
                    )
                )
        request = (
            b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
            b'"capabilities":{},"clientInfo":{"name":"t","version":"1"}}}\n'
            b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}\n'
        )
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(request)
            proc.stdin.flush()
        answered = _read_answers(procs, 120.0)
        assert len(answered) == 400, f"{400 - len(answered)} shims never answered (hung)"
        assert broker.is_running()
        texts = [(logs / f"{index}.txt").read_text() for index in range(400)]
        fell_back = [text for text in texts if "NOT shared" in text]
        for text in fell_back:
            assert "the broker cannot serve 'echo' now" in text and "open files" in text, text
        shared = [text for text in texts if "NOT shared" not in text]
        assert all(text == "" for text in shared), [text for text in shared if text][:3]
        assert shared, "the broker served nobody"
        assert fell_back, "expected the limit to be reached: the test no longer tests it"
        ours = {proc.pid for proc in procs}
        marked = count_server_processes(marker)
        direct = {p.pid for p in marked if p.pid in ours}  # a shim that fell back exec'd the server in its place
        waiting = [pid for pid in ours - direct if psutil.Process(pid).exe() == WAITER]  # one that handed over
        assert (len(direct), len(waiting)) == (len(fell_back), len(shared))
        assert [p.ppid() for p in marked if p.pid not in ours] == [broker.pid]  # and one shared server
        assert broker.num_fds() <= LIMIT
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for proc in procs:
            proc.wait(timeout=30)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except BrokenPipeError:
                        pass
    assert broker.is_running()
    assert runtime.broker_pid(broker_env.paths.lock) == broker.pid


def _read_answers(procs: list[subprocess.Popen[bytes]], timeout: float) -> set[int]:
    """Indices of the shims whose stdout gave the answer to request 2 within ``timeout`` (select, no thread each)."""
    buffers: dict[int, bytes] = {}
    done: set[int] = set()
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:  # epoll: these are descriptors above 1024
        for index, proc in enumerate(procs):
            assert proc.stdout is not None
            selector.register(proc.stdout.fileno(), selectors.EVENT_READ, index)
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(0.5):
                index = key.data
                data = os.read(key.fd, 65536)
                buffers[index] = buffers.get(index, b"") + data
                if b'"id":2' in buffers[index].replace(b" ", b""):
                    done.add(index)
                if not data or index in done:
                    selector.unregister(key.fd)  # answered, or ended without answering
    return done
