"""What the broker tells the people and programs around it: the order of a client's first messages, its log, the
stderr of its servers (`mcpshare logs`), and the file-descriptor limits it runs and starts servers with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import psutil
import pytest

from helpers import NODE_ENTRIES, server_argv
from test_broker import SHIM, BrokerEnv, RawShim, marked_servers
from test_broker_environment import INITIALIZE, call, start

pytestmark = pytest.mark.timeout(90)


async def test_cold_clients_get_their_initialize_answer_before_any_notification(
    broker_env: BrokerEnv, tmp_path: Path
) -> None:
    """server-everything announces list changes right after its handshake. Eight clients starting it together
    must each see the answer to their own initialize first: a notification before it breaks strict clients."""
    everything = ["node", str(NODE_ENTRIES["server-everything"]), "stdio"]
    env = {**os.environ, **broker_env.env}
    clients = [RawShim([*SHIM, "everything", "--", *everything], env, tmp_path) for _ in range(8)]
    try:
        for client in clients:
            client.stdin.write(json.dumps(INITIALIZE).encode() + b"\n")
            client.stdin.flush()
        firsts = [json.loads(client.stdout.readline()) for client in clients]
        assert [first.get("id") for first in firsts] == [1] * 8, [f for f in firsts if f.get("id") != 1][:1]
        assert all("result" in first for first in firsts)
    finally:
        for client in clients:
            client.close()


async def test_the_log_tells_who_came_and_went_and_why_a_server_stopped(broker_env: BrokerEnv, marker: str) -> None:
    env = {**os.environ, **broker_env.env}
    client = RawShim([*SHIM, "logged", "--", *server_argv(marker=marker)], env, broker_env.root)
    try:
        start(client)
        server_pid = call(client, 2, "whoami")["pid"]
    finally:
        client.close()
    with anyio.fail_after(10):
        while "stopped MCP server 'logged'" not in (log := Path(broker_env.paths.log).read_text()):  # noqa: ASYNC110
            await anyio.sleep(0.05)
    assert "started MCP server 'logged' (key " in log and f"pid {server_pid}, 2025-11-25)" in log
    assert f"client pid {client.proc.pid} attached to 'logged'" in log
    assert f"client pid {client.proc.pid} detached from 'logged'" in log
    assert f"pid {server_pid}) after" in log and "no client for the idle grace of 0.3 s" in log
    assert "open files: soft limit" in log


def _logs(env: BrokerEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcpshare", "logs", *args],
        env=env.run_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_mcpshare_logs_shows_the_stderr_of_running_and_ended_servers(
    broker_env: BrokerEnv, marker: str, tmp_path: Path
) -> None:
    noisy = ["/bin/sh", "-c", 'echo "warming up the cache" >&2; exec "$@"', "sh", *server_argv(marker=marker)]
    env = {**os.environ, **broker_env.env}
    client = RawShim([*SHIM, "noisy", "--", *noisy], env, tmp_path)
    try:
        start(client)
        server_pid = call(client, 2, "whoami")["pid"]
        running = await anyio.to_thread.run_sync(_logs, broker_env, "noisy")
        assert running.returncode == 0, running.stderr
        assert running.stdout.splitlines()[:2] == [
            f"== noisy pid {server_pid} key {running.stdout.split(' key ')[1].split(',')[0]}, ready",
            "warming up the cache",
        ]
    finally:
        client.close()
    crash = [sys.executable, "-c", "import sys; print('config file not found: /etc/x', file=sys.stderr); sys.exit(2)"]
    done = await anyio.run_process([*SHIM, "crashy", "--", *crash], input=b"", env=env, check=False)
    assert done.returncode == 1
    ended = await anyio.to_thread.run_sync(_logs, broker_env, "crashy")
    assert ended.returncode == 0, ended.stderr
    header, line = ended.stdout.splitlines()[:2]
    assert header.startswith("== crashy pid ") and ", failed at " in header and "(exit code 2)" in header
    assert line == "config file not found: /etc/x"
    unknown = await anyio.to_thread.run_sync(_logs, broker_env, "nothing-like-it")
    assert unknown.returncode == 1
    assert "the broker has no process of 'nothing-like-it'" in unknown.stderr


def test_the_broker_raises_its_own_fd_limit_and_gives_servers_the_usual_one(
    broker_env: BrokerEnv, marker: str, tmp_path: Path
) -> None:
    """Started with a soft limit of 256 (a hard one far above it), the broker raises its soft limit to the hard
    one and logs both; the servers it starts get the 256 back (programs written for select() expect it)."""
    hard = psutil.Process().rlimit(psutil.RLIMIT_NOFILE)[1]
    if hard != psutil.RLIM_INFINITY and hard <= 512:
        pytest.skip(f"the hard limit here ({hard}) leaves nothing to raise")
    proc = broker_env.start_broker(ulimit="-Sn 256")
    broker_env.wait_ready_sync(proc)
    soft, broker_hard = psutil.Process(proc.pid).rlimit(psutil.RLIMIT_NOFILE)
    assert soft == broker_hard and soft > 256
    client = RawShim([*SHIM, "limits", "--", *server_argv(marker=marker)], broker_env.run_env(), tmp_path)
    try:
        start(client)
        (server,) = marked_servers(marker)
        assert server.rlimit(psutil.RLIMIT_NOFILE)[0] == 256
    finally:
        client.close()
    assert f"open files: soft limit {soft} (raised from 256)" in Path(broker_env.paths.log).read_text()
