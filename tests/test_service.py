"""``mcpshare service``: the generated systemd unit and launchd plist are valid and run the broker with its HTTP front.

The files are parsed as their managers read them (an INI parser for the unit, with systemd's quoting undone;
plistlib for the plist), and the unit's command line is run as it stands to show that it starts the broker. No
test talks to the real service manager: HOME is private, and where a manager is needed a stand-in ``systemctl``
on PATH records what mcpshare asked of it.
"""

from __future__ import annotations

import configparser
import os
import plistlib
import shlex
import signal
import stat
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from mcpshare import runtime, service
from test_broker import BrokerEnv, control
from test_threads import unused_port

pytestmark = pytest.mark.timeout(60)

TRICKY = {"PATH": '/opt/my tools/bin:/usr/bin:/odd%dir:/cash$dir:/q"uote', runtime.ENV_RUNTIME_DIR: "/run/x"}


def parse_unit(text: str) -> configparser.ConfigParser:
    """The unit as an INI file: every section and key once (systemd would take a repeated key differently)."""
    parser = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def unit_words(value: str, *, command: bool = True) -> list[str]:
    """A unit's command line (or assignment list) as systemd splits it: quoted words, ``%%`` and ``$$`` undone."""
    words = [word.replace("%%", "%") for word in shlex.split(value)]
    return [word.replace("$$", "$") for word in words] if command else words


def test_the_systemd_unit_parses_and_names_the_broker(tmp_path: Path) -> None:
    spec = service.ServiceSpec.build(
        17432, launcher=["/opt/my venv/bin/mcpshare"], home=tmp_path, environ={**TRICKY, "SECRET": "no"}
    )

    unit = parse_unit(service.systemd_unit(spec))

    assert unit.sections() == ["Unit", "Service", "Install"]
    assert unit_words(unit["Service"]["ExecStart"]) == ["/opt/my venv/bin/mcpshare", "serve", "--http", "17432"]
    assert unit["Service"]["WorkingDirectory"] == "%h"  # the home directory: user-wide HTTP entries' workspace
    assignments = dict(word.split("=", 1) for word in unit_words(unit["Service"]["Environment"], command=False))
    assert assignments == TRICKY  # PATH for the servers it starts, the clients' runtime dir; nothing else
    assert (unit["Service"]["Restart"], unit["Service"]["KillMode"]) == ("on-failure", "mixed")
    assert unit["Install"]["WantedBy"] == "default.target"


def test_the_launchd_plist_parses_and_names_the_broker(tmp_path: Path) -> None:
    spec = service.ServiceSpec.build(17432, launcher=["/opt/my venv/bin/mcpshare"], home=tmp_path, environ=TRICKY)

    agent = plistlib.loads(service.launchd_plist(spec))

    assert agent["Label"] == service.LAUNCHD_LABEL
    assert agent["ProgramArguments"] == ["/opt/my venv/bin/mcpshare", "serve", "--http", "17432"]
    assert agent["EnvironmentVariables"] == TRICKY
    assert agent["WorkingDirectory"] == str(tmp_path)
    assert agent["RunAtLoad"] is True and agent["KeepAlive"] == {"SuccessfulExit": False}
    assert service.plist_path(tmp_path) == tmp_path / "Library/LaunchAgents/dev.mcpshare.broker.plist"


async def test_the_units_command_line_starts_the_broker_with_its_http_front(broker_env: BrokerEnv) -> None:
    """The default launcher (this installation's mcpshare script) in the unit's ExecStart, run as systemd would run
    it (its Environment, in WorkingDirectory=%h): a broker that answers, with its HTTP front on the port; the
    plist runs the very same command line."""
    port = unused_port()
    environ = {"PATH": os.environ["PATH"], runtime.ENV_RUNTIME_DIR: str(broker_env.runtime)}
    spec = service.ServiceSpec.build(port, home=broker_env.home, environ=environ)
    unit = parse_unit(service.systemd_unit(spec))
    argv = unit_words(unit["Service"]["ExecStart"])
    assert argv == plistlib.loads(service.launchd_plist(spec))["ProgramArguments"]
    assert Path(argv[0]).name == "mcpshare" and Path(argv[0]).parent == Path(sys.executable).parent
    env = dict(word.split("=", 1) for word in unit_words(unit["Service"]["Environment"], command=False))
    # `mcpshare service token` before the broker runs (a login script exporting it): created, private, kept.
    token = run_cli(broker_env, "token", path=os.environ["PATH"])
    assert token.returncode == 0 and len(token.stdout.strip()) >= 32
    assert stat.S_IMODE(os.stat(broker_env.paths.token).st_mode) == 0o600
    broker = subprocess.Popen(  # noqa: ASYNC220 - started here, waited for in a thread
        argv,
        env={**env, "HOME": str(broker_env.home)},
        cwd=broker_env.home,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    broker_env.explicit.append(broker)
    assert await broker_env.wait_ready() == broker.pid
    status = control("status", broker_env)
    assert status is not None and status["broker"]["http"] == f"http://127.0.0.1:{port}/mcp/"
    assert Path(broker_env.paths.token).read_text().strip() == token.stdout.strip()  # the broker took that token
    broker.send_signal(signal.SIGTERM)
    assert await anyio.to_thread.run_sync(broker.wait, 15) == 0


def run_cli(env: BrokerEnv, *args: str, path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcpshare", "service", *args],
        env=env.run_env(PATH=path),
        capture_output=True,
        text=True,
        timeout=40,
        check=False,
    )


def test_without_a_service_manager_it_says_what_to_run_by_hand(broker_env: BrokerEnv, tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()  # no systemctl, no launchctl
    for command in ("install", "status"):
        done = run_cli(broker_env, command, "--port", "17001", path=str(bare))
        assert done.returncode == 1, done.stderr
        assert "no service manager found" in done.stdout
        assert "serve --http 17001 >/dev/null 2>&1 &" in done.stdout
    assert "broker: no mcpshare broker is running" in done.stdout
    assert not service.unit_path(broker_env.home).exists()


@pytest.mark.skipif(sys.platform == "darwin", reason="the stand-in is for systemd; macOS has launchd")
def test_install_and_uninstall_ask_systemd_for_the_unit(broker_env: BrokerEnv, tmp_path: Path) -> None:
    """With a systemd user manager (here a stand-in ``systemctl`` that logs its arguments): install writes the unit
    under ~/.config/systemd/user and enables it now; status asks whether it is active; uninstall disables it and
    removes the file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    fake = bin_dir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(calls))}\n[ "$2" = is-active ] && echo active\nexit 0\n')
    fake.chmod(0o755)
    path = f"{bin_dir}:{os.environ['PATH']}"

    installed = run_cli(broker_env, "install", "--port", "17002", path=path)
    assert installed.returncode == 0, installed.stderr
    unit = service.unit_path(broker_env.home)
    assert unit_words(parse_unit(unit.read_text())["Service"]["ExecStart"])[-3:] == ["serve", "--http", "17002"]
    status = run_cli(broker_env, "status", path=path)
    assert f"service (systemd): installed: {unit}; active" in status.stdout
    assert status.returncode == 1  # the stand-in started nothing: no broker answers
    removed = run_cli(broker_env, "uninstall", path=path)
    assert removed.returncode == 0 and not unit.exists()
    assert calls.read_text().splitlines() == [
        "--user show-environment",
        "--user daemon-reload",
        "--user enable --now mcpshare.service",
        "--user restart mcpshare.service",
        "--user show-environment",
        "--user is-active mcpshare.service",
        "--user show-environment",
        "--user disable --now mcpshare.service",
        "--user daemon-reload",
    ]
