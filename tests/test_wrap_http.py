"""``mcpshare wrap --http``: stdio entries become Streamable HTTP entries for the broker's HTTP front (no shim process),
their definitions move to mcpshare's servers file, and ``unwrap`` gives the original back byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from helpers import NODE_ENTRIES, server_argv, tool_json, tool_text
from mcpshare.config import HttpServerConfig, load_codex_toml, load_mcp_json, shared_servers_path
from mcpshare.http_servers import SharedServers
from mcpshare.wrap import BACKUP_SUFFIX, HTTP_TOKEN_VAR, HttpTarget, unwrap_file, wrap_file
from test_broker import BrokerEnv, wait_for_servers
from test_threads import unused_port

pytestmark = pytest.mark.timeout(90)

DATA = Path(__file__).parent / "data" / "wrap"
SAMPLES = {"codex_config.toml": "config.toml", "mcp.json": ".mcp.json", "claude.json": ".claude.json"}
PORT = 17999


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home directory for the servers file (never the user's)."""
    path = tmp_path / "home"
    path.mkdir()
    return path


def sample(tmp_path: Path, name: str) -> Path:
    """A copy of a sample under the name its host gives it (``.mcp.json`` belongs to its directory's project)."""
    target = tmp_path / "project" / SAMPLES[name]
    target.parent.mkdir(exist_ok=True)
    shutil.copyfile(DATA / name, target)
    return target


def servers_of(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        return tomllib.loads(text)["mcp_servers"]
    return json.loads(text)["mcpServers"]


# ---------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", list(SAMPLES))
def test_wrap_http_then_unwrap_gives_back_the_original_byte_for_byte(tmp_path: Path, home: Path, name: str) -> None:
    path = sample(tmp_path, name)
    original = path.read_bytes()
    target = HttpTarget(PORT, home=home)

    wrapped = wrap_file(path, http=target)

    assert wrapped.changed and path.read_bytes() != original
    assert (path.parent / (path.name + BACKUP_SUFFIX)).read_bytes() == original
    assert stat.S_IMODE(target.servers_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.servers_file.parent.stat().st_mode) == 0o700
    once = path.read_bytes()
    again = wrap_file(path, http=target)  # idempotent
    assert again.changed == [] and path.read_bytes() == once
    assert {label: again.skipped[label] for label in wrapped.changed} == dict.fromkeys(
        wrapped.changed, "already wrapped (HTTP)"
    )

    unwrapped = unwrap_file(path, home=home)

    assert unwrapped.restored and unwrapped.changed == wrapped.changed
    assert path.read_bytes() == original
    assert not target.servers_file.exists()  # nobody uses its definitions any more


def test_codex_entries_become_url_entries_with_the_token_from_the_environment(tmp_path: Path, home: Path) -> None:
    """Codex refuses a url entry that still has command, args, env, env_vars or cwd: they all move to the servers
    file; the token is named, never written; host-side fields (timeouts, tool filters) stay on the entry."""
    path = sample(tmp_path, "codex_config.toml")
    before = servers_of(path)

    result = wrap_file(path, http=HttpTarget(PORT, home=home))

    assert result.changed == ["time", "files"]
    assert result.skipped["github"].startswith("env_vars: an HTTP client sends no environment")
    assert (result.skipped["docs"], result.skipped["old"]) == ("http", "disabled")
    after = servers_of(path)
    assert after["time"] == {"url": f"http://127.0.0.1:{PORT}/mcp/time", "bearer_token_env_var": HTTP_TOKEN_VAR}
    assert after["files"] == {
        "url": f"http://127.0.0.1:{PORT}/mcp/files",
        "bearer_token_env_var": HTTP_TOKEN_VAR,
        "tool_timeout_sec": 60,
        "enabled_tools": ["read_file", "list_directory"],
        "required": True,
    }
    assert after["github"] == before["github"] and after["docs"] == before["docs"]
    config = load_codex_toml(path)
    assert isinstance(config.get("time"), HttpServerConfig)
    shared = SharedServers.load(shared_servers_path(home))
    assert shared.servers == {
        "time": {"command": "uvx", "args": ["mcp-server-time", "--local-timezone=Europe/Paris"]},
        "files": {"command": "/usr/local/bin/mcp-server-filesystem", "cwd": "docs"},
    }
    # A user-wide file says nothing of the client's cwd: the note says where a workspace server runs.
    assert any("served in the broker's working directory" in note for note in result.notes)
    assert "?cwd=" not in path.read_text()


def test_json_entries_become_http_entries_and_project_entries_keep_their_workspace(tmp_path: Path, home: Path) -> None:
    project_file = sample(tmp_path, "mcp.json")
    claude = sample(tmp_path, "claude.json")

    wrap_file(project_file, http=HttpTarget(PORT, home=home))
    wrap_file(claude, http=HttpTarget(PORT, home=home))

    everything = servers_of(project_file)["everything"]
    assert everything == {
        "type": "http",
        "url": f"http://127.0.0.1:{PORT}/mcp/everything?cwd={project_file.parent}",
        "headers": {"Authorization": f"Bearer ${{{HTTP_TOKEN_VAR}}}"},
        "description": "reference server",
    }
    projects = json.loads(claude.read_text())["projects"]["/home/alice/project"]["mcpServers"]
    assert projects["db"]["url"] == f"http://127.0.0.1:{PORT}/mcp/db?cwd=/home/alice/project"
    assert "sk-test-123" not in project_file.read_text() and "postgres://" not in claude.read_text()
    # The definitions, with their secrets, are where the broker reads them (0600), as they were written.
    shared = SharedServers.load(shared_servers_path(home))
    assert shared.servers["everything"]["env"] == {"API_KEY": "sk-test-123"}
    assert shared.servers["db"] == {"type": "stdio", "command": "db-mcp", "env": {"DB_URL": "postgres://localhost/app"}}
    # The JSON hosts expand the header from their environment; mcpshare's loader reads it the same way.
    loaded = load_mcp_json(project_file, environ={HTTP_TOKEN_VAR: "t0ken"}).get("everything")
    assert isinstance(loaded, HttpServerConfig) and loaded.http_headers == {"Authorization": "Bearer t0ken"}


def test_one_name_in_two_projects_gets_two_routes(tmp_path: Path, home: Path) -> None:
    """Two projects' ``db`` with different commands must not share a definition: the second gets ``db-2``. The same
    definition twice shares its route; unwrapping one file keeps what the other still uses."""
    first, second, third = (tmp_path / name / ".mcp.json" for name in ("a", "b", "c"))
    for path, command in ((first, "db-a"), (second, "db-b"), (third, "db-a")):
        path.parent.mkdir()
        path.write_text(json.dumps({"mcpServers": {"db": {"command": command}}}))
    target = HttpTarget(PORT, home=home)
    for path in (first, second, third):
        wrap_file(path, http=target)

    routes = [servers_of(path)["db"]["url"].split("/mcp/")[1].split("?")[0] for path in (first, second, third)]
    assert routes == ["db", "db-2", "db"]
    shared = SharedServers.load(target.servers_file)
    assert shared.servers == {"db": {"command": "db-a"}, "db-2": {"command": "db-b"}}

    unwrap_file(first, home=home)
    assert SharedServers.load(target.servers_file).servers == {"db": {"command": "db-a"}, "db-2": {"command": "db-b"}}
    unwrap_file(third, home=home)
    assert SharedServers.load(target.servers_file).servers == {"db-2": {"command": "db-b"}}


def test_an_edited_file_is_unwrapped_entry_by_entry_from_the_servers_file(tmp_path: Path, home: Path) -> None:
    """Edited since the wrap: the backup cannot be restored over the edits, so each HTTP entry gets its definition
    back from the servers file; the user's edit stays, and the result equals the original otherwise."""
    path = sample(tmp_path, "mcp.json")
    wrap_file(path, http=HttpTarget(PORT, home=home))
    path.write_text(path.read_text().replace('"reference server"', '"edited"'))

    result = unwrap_file(path, home=home)

    assert not result.restored and result.changed == ["everything", "local"]
    assert any("not byte-identical" in note for note in result.notes)
    assert path.read_text() == (DATA / "mcp.json").read_text().replace('"reference server"', '"edited"')
    assert not shared_servers_path(home).exists()


def test_entries_that_read_the_clients_environment_stay_on_the_shim(tmp_path: Path, home: Path) -> None:
    path = tmp_path / ".mcp.json"
    path.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "vars": {"command": "x", "env": {"KEY": "${API_KEY}"}},
                    "passed": {"command": "x", "env_vars": ["API_KEY"]},
                    "plain": {"command": "x", "args": ["a"]},
                }
            }
        )
    )

    result = wrap_file(path, http=HttpTarget(PORT, home=home))

    assert result.changed == ["plain"]
    assert result.skipped["vars"].startswith("${...} in its definition")
    assert result.skipped["passed"].startswith("env_vars:")


def test_claude_desktop_takes_no_http_entries(tmp_path: Path, home: Path) -> None:
    path = tmp_path / "claude_desktop_config.json"
    shutil.copyfile(DATA / "claude_desktop_config.json", path)

    with pytest.raises(ValueError, match="Claude Desktop's config file runs stdio servers only"):
        wrap_file(path, http=HttpTarget(PORT, home=home))
    assert path.read_bytes() == (DATA / "claude_desktop_config.json").read_bytes()
    assert not shared_servers_path(home).exists()


def test_a_shim_wrap_and_an_http_wrap_of_one_file_unwrap_together(tmp_path: Path, home: Path) -> None:
    """What ``--http`` leaves (env_vars) can go through the shim; one unwrap restores the original."""
    path = sample(tmp_path, "codex_config.toml")
    wrap_file(path, http=HttpTarget(PORT, home=home))

    shimmed = wrap_file(path, mcpshare_command=["/opt/bin/mcpshare"])

    assert shimmed.changed == ["github"]
    assert shimmed.skipped["time"] == "already wrapped (HTTP)"
    assert unwrap_file(path, home=home).restored
    assert path.read_bytes() == (DATA / "codex_config.toml").read_bytes()
    assert not shared_servers_path(home).exists()


# ---------------------------------------------------------------------------------------------- real clients


async def test_sdk_and_inspector_clients_use_the_rewritten_entries(
    broker_env: BrokerEnv, marker: str, inspector_cli_cmd: list[str]
) -> None:
    """A Codex config.toml (user-wide) and a project's .mcp.json, wrapped with --http; a broker serves its HTTP front
    (`serve --http PORT`, reading the servers file from its HOME). The SDK's streamable HTTP client connects as
    each host would read its entry, and the MCP Inspector CLI in HTTP mode calls server-everything through the
    .mcp.json entry. The user-wide entry's server runs in the broker's directory, the project's in the project."""
    home = broker_env.home
    project = broker_env.root / "project"
    project.mkdir()
    server = server_argv("--show-env=FROM", marker=marker)
    codex = home / ".codex" / "config.toml"
    codex.parent.mkdir()
    codex.write_text(f"[mcp_servers.test]\ncommand = {json.dumps(server[0])}\nargs = {json.dumps(server[1:])}\n")
    everything = ["node", str(NODE_ENTRIES["server-everything"]), "stdio"]
    mcp_json = project / ".mcp.json"
    entries = {
        "test": {"command": server[0], "args": server[1:], "env": {"FROM": "project"}},
        "everything": {"type": "stdio", "command": everything[0], "args": everything[1:]},
    }
    mcp_json.write_text(json.dumps({"mcpServers": entries}, indent=2) + "\n")
    originals = {path: path.read_bytes() for path in (codex, mcp_json)}
    port = unused_port()
    target = HttpTarget(port, home=home)
    for path in (codex, mcp_json):
        assert wrap_file(path, http=target).changed

    broker = broker_env.start_broker("--http", str(port))
    await broker_env.wait_ready()
    token = Path(broker_env.paths.token).read_text().strip()
    environ = {HTTP_TOKEN_VAR: token}  # what the hosts have in their environment
    user_wide = load_codex_toml(codex).get("test")
    assert isinstance(user_wide, HttpServerConfig) and user_wide.bearer_token_env_var == HTTP_TOKEN_VAR
    in_project = load_mcp_json(mcp_json, environ=environ).get("test")
    assert isinstance(in_project, HttpServerConfig)

    async def whoami(url: str, headers: dict[str, str]) -> dict[str, Any]:
        async with (
            create_mcp_http_client(headers=headers) as client,
            streamable_http_client(url, http_client=client) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            assert tool_text(await session.call_tool("echo", {"text": "over http"})) == "over http"
            return tool_json(await session.call_tool("whoami", {}))

    with anyio.fail_after(60):
        codex_headers = {"Authorization": f"Bearer {environ[user_wide.bearer_token_env_var]}"}
        from_codex = await whoami(user_wide.url, codex_headers)
        from_project = await whoami(in_project.url, dict(in_project.http_headers))
        assert from_codex["cwd"] == str(broker_env.root)  # the broker's working directory
        assert from_project["cwd"] == str(project)  # ?cwd= in the URL
        assert (from_codex["env"], from_project["env"]) == ({"FROM": None}, {"FROM": "project"})
        assert from_codex["pid"] != from_project["pid"]  # two workspaces, two keys, two processes

        inspector = load_mcp_json(mcp_json, environ=environ).get("everything")
        assert isinstance(inspector, HttpServerConfig)
        header = f"Authorization: {inspector.http_headers['Authorization']}"
        done = await anyio.run_process(
            [
                *inspector_cli_cmd,
                "--transport",
                "http",
                "--server-url",
                inspector.url,
                "--header",
                header,
                "--method",
                "tools/call",
                "--tool-name",
                "echo",
                "--tool-arg",
                "message=through the front",
            ],
            env=broker_env.run_env(),
            cwd=broker_env.root,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()
        assert json.loads(done.stdout)["content"][0]["text"] == "Echo: through the front"

        broker.send_signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(broker.wait, 15) == 0
        await wait_for_servers(marker, 0, timeout=5)
    for path, original in originals.items():
        assert unwrap_file(path, home=home).restored
        assert path.read_bytes() == original
    assert not shared_servers_path(home).exists()


def test_the_cli_says_how_the_token_and_the_port_reach_the_client(broker_env: BrokerEnv, tmp_path: Path) -> None:
    """``mcpshare wrap --http`` (the CLI) writes the servers file under HOME and says what is left to do."""
    path = tmp_path / ".mcp.json"
    path.write_text(json.dumps({"mcpServers": {"local": {"command": "./server"}}}))
    done = subprocess.run(
        [*broker_env.shim("x")[:3], "wrap", "--http", "--port", str(PORT), str(path)],
        env=broker_env.run_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"the entries point at http://127.0.0.1:{PORT}/mcp/ (start it: `mcpshare service install`)" in done.stdout
    assert f'export {HTTP_TOKEN_VAR}="$(mcpshare service token)"' in done.stdout
    assert shared_servers_path(broker_env.home).exists()
    assert os.environ.get("HOME") != str(broker_env.home)  # (the test's own HOME was never touched)
