"""``mcpshare wrap`` / ``unwrap`` on the editors' files: VS Code, Cursor, Gemini CLI, Windsurf and Zed.

The same guarantees as for Codex and Claude files (tests/test_wrap.py): only the command lines change, comments and
layout stay, unwrap gives the file back byte for byte, and mcpshare reads a wrapped entry as the server it wraps.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

import pytest

from mcpshare import formats
from mcpshare.config import ConfigError, StdioServerConfig, load_config
from mcpshare.wrap import BACKUP_SUFFIX, SIDECAR_SUFFIX, HttpTarget, is_wrapped, unwrap_entry, unwrap_file, wrap_file
from test_formats import DATA, PLACES, place

LAUNCHER = ["/opt/mcpshare/bin/mcpshare"]
SAMPLES = list(PLACES)
WRAPPED = {
    "vscode_mcp.json": ["github", "project-tools", "playwright"],
    "cursor_mcp.json": ["postgres", "filesystem"],
    "gemini_settings.json": ["git", "weather"],
    "windsurf_mcp_config.json": ["github"],
    "zed_settings.json": ["sqlite", "brave-search"],
}
SKIPPED = {
    "vscode_mcp.json": {"context7": "http"},
    "cursor_mcp.json": {"linear": "http"},
    "gemini_settings.json": {
        "docs": "http",
        "legacy-events": "cannot run here: Gemini CLI reads 'url' as an SSE endpoint, and the SSE transport is not "
        "supported; write the Streamable HTTP endpoint as 'httpUrl'",
    },
    "windsurf_mcp_config.json": {"memory": "disabled", "figma": "http"},
    "zed_settings.json": {
        "fetch": "disabled",
        "mcp-server-context7": "cannot run here: provided by a Zed extension, which gives Zed its command; mcpshare "
        "cannot run it",
        "remote-docs": "http",
    },
}
ENVIRON = {"DATABASE_URL": "postgres://db/app", "GITHUB_TOKEN": "ghp", "WEATHER_API_KEY": "w", "FIGMA_TOKEN": "f"}


def removed_lines(before: str, after: str) -> list[str]:
    return [line[2:] for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line.startswith("- ")]


@pytest.mark.parametrize("sample", SAMPLES)
def test_wrap_then_unwrap_gives_the_file_back_byte_for_byte(tmp_path: Path, sample: str) -> None:
    path = place(tmp_path, sample)
    original = path.read_bytes()

    wrapped = wrap_file(path, mcpshare_command=LAUNCHER)

    assert wrapped.changed == WRAPPED[sample]
    assert wrapped.skipped == SKIPPED[sample]
    assert path.read_bytes() != original
    assert path.with_name(path.name + BACKUP_SUFFIX).read_bytes() == original
    again = wrap_file(path, mcpshare_command=LAUNCHER)
    assert again.changed == [] and all(again.skipped[name] == "already wrapped" for name in WRAPPED[sample])

    unwrapped = unwrap_file(path)

    assert unwrapped.restored and unwrapped.changed == WRAPPED[sample]
    assert path.read_bytes() == original
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


@pytest.mark.parametrize("sample", SAMPLES)
def test_unwrapping_entry_by_entry_is_exact_too(tmp_path: Path, sample: str) -> None:
    """Without the sidecar's hashes, unwrap edits each entry back from its embedded command: same bytes."""
    path = place(tmp_path, sample)
    wrap_file(path, mcpshare_command=LAUNCHER)
    path.with_name(path.name + SIDECAR_SUFFIX).unlink()

    assert unwrap_file(path).restored
    assert path.read_bytes() == (DATA / sample).read_bytes()


@pytest.mark.parametrize("sample", SAMPLES)
def test_only_command_lines_change_and_every_comment_stays(tmp_path: Path, sample: str) -> None:
    path = place(tmp_path, sample)
    before = path.read_text(encoding="utf-8")

    wrap_file(path, mcpshare_command=LAUNCHER)

    after = path.read_text(encoding="utf-8")
    for line in removed_lines(before, after):
        assert re.search(r'"(command|path|args)"', line), line
    comments = re.findall(r"//[^\n]*|/\*.*?\*/", before, re.DOTALL)
    comments = [comment for comment in comments if "://" not in comment]  # not the URL in Zed's header
    assert all(after.count(comment) == before.count(comment) for comment in comments)


@pytest.mark.parametrize("sample", SAMPLES)
def test_a_wrapped_file_loads_as_the_original(tmp_path: Path, sample: str) -> None:
    """The host launches the shim; mcpshare (the broker, a ThreadManager) still reads the real server."""
    path = place(tmp_path, sample)
    original = load_config(path, environ=ENVIRON, home=tmp_path)

    wrap_file(path, mcpshare_command=LAUNCHER)

    loaded = load_config(path, environ=ENVIRON, home=tmp_path)
    assert loaded.servers == original.servers
    assert {name: str(error) for name, error in loaded.unusable.items()} == {
        name: str(error) for name, error in original.unusable.items()
    }


def test_zeds_nested_command_is_wrapped_in_place(tmp_path: Path) -> None:
    path = place(tmp_path, "zed_settings.json")

    wrap_file(path, mcpshare_command=LAUNCHER)

    data = json.loads(formats.blank_comments(path.read_text(), trailing_commas=True))
    brave = data["context_servers"]["brave-search"]
    assert brave["command"]["path"] == LAUNCHER[0]
    assert brave["command"]["args"][:5] == ["connect", "brave-search", "--env-keys", "BRAVE_API_KEY", "--"]
    assert unwrap_entry(brave["command"]["path"], brave["command"]["args"]) == (
        "npx",
        ["-y", "@modelcontextprotocol/server-brave-search"],
    )
    # The comment after the reference server's name is where it was, once.
    assert '"@modelcontextprotocol/server-brave-search", // the reference server\n' in path.read_text()
    sqlite = data["context_servers"]["sqlite"]
    assert is_wrapped(sqlite) and sqlite["args"][:3] == ["connect", "sqlite", "--"]


def test_vscode_entries_that_ask_for_inputs_are_wrapped_for_vscode_to_answer(tmp_path: Path) -> None:
    """VS Code answers ${input:...} when it launches the shim (in env), so the shim carries the answer; mcpshare
    itself still refuses to guess it when it reads the file."""
    path = place(tmp_path, "vscode_mcp.json")

    wrap_file(path, mcpshare_command=LAUNCHER)

    entry = json.loads(formats.blank_comments(path.read_text(), trailing_commas=True))["servers"]["github"]
    assert entry["env"] == {"GITHUB_PERSONAL_ACCESS_TOKEN": "${input:github-token}"}
    assert entry["args"][:4] == ["connect", "github", "--env-keys", "GITHUB_PERSONAL_ACCESS_TOKEN"]
    with pytest.raises(ConfigError, match=r"\$\{input:github-token\}"):
        load_config(path, environ={}).get("github")


def test_a_typo_in_an_editors_file_stops_the_wrap(tmp_path: Path) -> None:
    text = (DATA / "zed_settings.json").read_text().replace('"args": ["mcp-server-fetch"]', '"arg": ["x"]')
    path = place(tmp_path, "zed_settings.json", text)

    with pytest.raises(ConfigError, match=r"server 'fetch', field 'arg': unknown field \(did you mean 'args'\?\)"):
        wrap_file(path, mcpshare_command=LAUNCHER)
    assert path.read_text() == text and sorted(p.name for p in path.parent.iterdir()) == ["settings.json"]


def test_wrap_http_says_it_writes_codex_and_mcp_json_only(tmp_path: Path) -> None:
    path = place(tmp_path, "cursor_mcp.json")

    with pytest.raises(ConfigError, match=r"writes Codex and mcpServers JSON files only, not Cursor's"):
        wrap_file(path, http=HttpTarget(17432, home=tmp_path))
    assert path.read_bytes() == (DATA / "cursor_mcp.json").read_bytes()


def test_wrapped_entries_run_the_embedded_server(tmp_path: Path) -> None:
    """What the host will run: the shim, with the real command after ``--``."""
    path = place(tmp_path, "gemini_settings.json")
    before = load_config(path, environ=ENVIRON)

    wrap_file(path, mcpshare_command=LAUNCHER)

    raw = json.loads(formats.blank_comments(path.read_text()))["mcpServers"]
    for name in WRAPPED["gemini_settings.json"]:
        server = before.get(name)
        assert isinstance(server, StdioServerConfig)
        assert raw[name]["command"] == LAUNCHER[0]
        assert unwrap_entry(raw[name]["command"], raw[name]["args"]) == (server.command, list(server.args))
