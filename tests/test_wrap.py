"""``mcpshare wrap`` / ``unwrap``: host configs are rewritten to launch the shim, minimally, and given back exactly."""

from __future__ import annotations

import difflib
import json
import re
import shutil
import stat
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from mcpshare import shim
from mcpshare.config import ConfigError, StdioServerConfig, load_config
from mcpshare.wrap import (
    BACKUP_SUFFIX,
    SIDECAR_SUFFIX,
    default_mcpshare_command,
    is_wrapped,
    unwrap_entry,
    unwrap_file,
    wrap_entry,
    wrap_file,
)

DATA = Path(__file__).parent / "data" / "wrap"
LAUNCHER = ["/opt/mcpshare/bin/mcpshare"]
SAMPLES = ["codex_config.toml", "mcp.json", "claude_desktop_config.json", "claude.json"]
CLAUDE_PROJECT = "/home/alice/project"


@pytest.fixture
def copy_sample(tmp_path: Path):
    """Copy a sample from tests/data/wrap into a fresh directory (the samples themselves are never written)."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copyfile(DATA / name, target)
        return target

    return copy


def backup_of(path: Path) -> Path:
    return path.with_name(path.name + BACKUP_SUFFIX)


def sidecar_of(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def servers_of(path: Path) -> dict[str, Any]:
    """The raw server tables of a file (top level only), as the standard-library parser reads them."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        return tomllib.loads(text).get("mcp_servers", {})
    return json.loads(text).get("mcpServers", {})


def removed_lines(before: str, after: str) -> list[str]:
    diff = difflib.ndiff(before.splitlines(), after.splitlines())
    return [line[2:] for line in diff if line.startswith("- ")]


# ---------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", SAMPLES)
def test_unwrap_after_wrap_gives_back_the_original_byte_for_byte(copy_sample, name: str) -> None:
    path = copy_sample(name)
    original = path.read_bytes()

    wrapped = wrap_file(path, mcpshare_command=LAUNCHER)
    assert wrapped.changed
    assert path.read_bytes() != original
    assert backup_of(path).read_bytes() == original

    unwrapped = unwrap_file(path)

    assert path.read_bytes() == original
    assert unwrapped.restored
    assert unwrapped.changed == wrapped.changed
    assert unwrapped.backup is None
    assert not backup_of(path).exists() and not sidecar_of(path).exists()


@pytest.mark.parametrize("name", SAMPLES)
def test_wrap_changes_only_command_and_args_lines(copy_sample, name: str) -> None:
    path = copy_sample(name)
    before = path.read_text(encoding="utf-8")

    wrap_file(path, mcpshare_command=LAUNCHER)

    for line in removed_lines(before, path.read_text(encoding="utf-8")):
        assert re.search(r'\bcommand\b|"args"|\bargs =', line), line


@pytest.mark.parametrize("name", SAMPLES)
def test_wrapping_twice_changes_nothing(copy_sample, name: str) -> None:
    path = copy_sample(name)
    first = wrap_file(path, mcpshare_command=LAUNCHER)
    once = path.read_bytes()

    again = wrap_file(path, mcpshare_command=LAUNCHER)

    assert again.changed == []
    assert path.read_bytes() == once
    assert {label: again.skipped[label] for label in first.changed} == dict.fromkeys(first.changed, "already wrapped")
    assert backup_of(path).read_bytes() == (DATA / name).read_bytes()


def test_a_wrap_by_another_launcher_is_recognized(copy_sample) -> None:
    path = copy_sample("mcp.json")
    wrap_file(path, mcpshare_command=[sys.executable, "-m", "mcpshare"])

    again = wrap_file(path, mcpshare_command=LAUNCHER)

    assert again.changed == []
    assert unwrap_file(path).restored
    assert path.read_bytes() == (DATA / "mcp.json").read_bytes()


@pytest.mark.parametrize("name", SAMPLES)
def test_unwrapping_one_by_one_is_exact_when_nothing_was_edited(copy_sample, name: str) -> None:
    """Without the sidecar's hash, unwrap cannot trust the backup and edits entry by entry: that path alone gives
    the original back too, because wrap only ever put a prefix in front of the original args."""
    path = copy_sample(name)
    wrap_file(path, mcpshare_command=LAUNCHER)
    sidecar_of(path).unlink()

    result = unwrap_file(path)

    assert path.read_bytes() == (DATA / name).read_bytes()
    assert result.restored


# ---------------------------------------------------------------------------------------------- what is wrapped


def test_codex_entries_become_the_connect_form(copy_sample) -> None:
    path = copy_sample("codex_config.toml")

    result = wrap_file(path, mcpshare_command=LAUNCHER)

    assert result.changed == ["time", "github", "files"]
    assert result.skipped == {"docs": "http", "old": "disabled"}
    servers = servers_of(path)
    assert servers["github"]["command"] == LAUNCHER[0]
    assert servers["github"]["args"] == [
        "connect",
        "github",
        "--env-keys",
        "LOG_LEVEL,GITHUB_TOKEN,GH_HOST",
        "--share",
        "global",
        "--startup-timeout",  # the broker, not the host, now waits for the server's handshake
        "20",
        "--",
        "npx",
        "-y",
        "@modelcontextprotocol/server-github",
    ]
    # No env, no args: no --env-keys, and args appear.
    assert servers["files"]["args"] == ["connect", "files", "--", "/usr/local/bin/mcp-server-filesystem"]
    assert servers["time"]["args"][:4] == ["connect", "time", "--", "uvx"]


def test_other_fields_stay_as_they_were(copy_sample) -> None:
    path = copy_sample("codex_config.toml")
    before = servers_of(path)

    wrap_file(path, mcpshare_command=LAUNCHER)

    after = servers_of(path)
    for name in before:
        untouched = {key: value for key, value in before[name].items() if key not in ("command", "args")}
        assert {key: after[name][key] for key in untouched} == untouched
    assert after["docs"] == before["docs"]
    assert after["old"] == before["old"]
    whole = tomllib.loads(path.read_text(encoding="utf-8"))
    assert whole["profiles"] == {"fast": {"model": "gpt-5-mini", "features": {"web_search": True}}}
    assert whole["history"] == {"persistence": "save-all"}


def test_toml_comments_and_layout_survive(copy_sample) -> None:
    path = copy_sample("codex_config.toml")
    before = path.read_text(encoding="utf-8")

    wrap_file(path, mcpshare_command=LAUNCHER)

    after = path.read_text(encoding="utf-8")
    comments = re.findall(r"#[^\n]*", before)
    assert comments and [comment for comment in comments if comment not in after] == []
    # A multi-line array stays one item per line, its item comments in place; a literal string stays literal.
    assert '  "--",\n  "npx",\n  "-y",  # no prompt\n' in after
    assert f"command = '{LAUNCHER[0]}', args = [" in after
    assert f'command = "{LAUNCHER[0]}"   # the runner' in after


def test_json_keeps_indentation_key_order_and_final_newline(copy_sample) -> None:
    for name, indent in (("mcp.json", "  "), ("claude_desktop_config.json", "    ")):
        path = copy_sample(name)
        before = path.read_text(encoding="utf-8")

        wrap_file(path, mcpshare_command=LAUNCHER)

        after = path.read_text(encoding="utf-8")
        assert after.endswith("\n") == before.endswith("\n")
        assert list(json.loads(after)) == list(json.loads(before))
        assert list(servers_of(path)) == list(json.loads(before)["mcpServers"])
        for line in after.splitlines():
            lead = line[: len(line) - len(line.lstrip())]
            assert lead == indent * (len(lead) // len(indent)), line


def test_json_arrays_follow_the_files_style(copy_sample) -> None:
    inline = copy_sample("mcp.json")
    wrap_file(inline, mcpshare_command=LAUNCHER)
    assert '"args": ["connect", "local", "--", "./bin/local-server"]' in inline.read_text(encoding="utf-8")

    multiline = copy_sample("claude_desktop_config.json")
    wrap_file(multiline, mcpshare_command=LAUNCHER)
    text = multiline.read_text(encoding="utf-8")
    items = ",\n".join(" " * 16 + f'"{item}"' for item in ("connect", "notes", "--", "notes-mcp"))
    assert '"args": [\n' + items + "\n" + " " * 12 + "]" in text


def test_claude_json_project_servers_are_wrapped_and_labelled(copy_sample) -> None:
    path = copy_sample("claude.json")

    result = wrap_file(path, mcpshare_command=LAUNCHER)

    assert result.changed == ["memory", f"fetch@{CLAUDE_PROJECT}", f"db@{CLAUDE_PROJECT}"]
    assert result.skipped == {"context": "http"}
    db = json.loads(path.read_text(encoding="utf-8"))["projects"][CLAUDE_PROJECT]["mcpServers"]["db"]
    assert (db["command"], db["args"]) == (LAUNCHER[0], ["connect", "db", "--env-keys", "DB_URL", "--", "db-mcp"])
    assert db["env"] == {"DB_URL": "postgres://localhost/app"}
    assert "théâtre" in path.read_text(encoding="utf-8")  # non-ASCII text is not escaped


def _raw_entries(path: Path, project: str | None) -> dict[str, Any]:
    """The server entries as the host reads them (the launch it performs), not as mcpshare loads them."""
    if path.suffix == ".toml":
        return tomllib.loads(path.read_text(encoding="utf-8"))["mcp_servers"]
    data = json.loads(path.read_text(encoding="utf-8"))
    entries = dict(data.get("mcpServers", {}))
    if project is not None:
        entries.update(data.get("projects", {}).get(project, {}).get("mcpServers", {}))
    return entries


@pytest.mark.parametrize("name", SAMPLES)
def test_wrapped_entries_launch_the_shim_and_load_as_the_original(copy_sample, name: str) -> None:
    """The host launches `mcpshare connect NAME ... -- <original>`; mcpshare itself (the broker, a ThreadManager)
    loads the very same server it would have loaded before the wrap: it must never run a shim as a server."""
    path = copy_sample(name)
    project = CLAUDE_PROJECT if name == "claude.json" else None
    original = load_config(path, project=project)

    wrap_file(path, mcpshare_command=LAUNCHER)

    loaded = load_config(path, project=project)
    assert loaded.servers == original.servers
    assert {name: str(error) for name, error in loaded.unusable.items()} == {
        name: str(error) for name, error in original.unusable.items()
    }
    raw = _raw_entries(path, project)
    for server_name, before in original.servers.items():
        entry = raw[server_name]
        if not isinstance(before, StdioServerConfig) or not before.enabled:
            assert not isinstance(entry.get("args"), list) or "connect" not in entry["args"]
            continue
        assert entry["command"] == LAUNCHER[0]
        assert entry["args"][:2] == ["connect", server_name]
        assert unwrap_entry(entry["command"], entry["args"]) == (before.command, list(before.args))


def test_the_shim_reads_the_wrapped_form(copy_sample) -> None:
    """The contract between wrap and ``mcpshare connect``: same server, same command line, same env keys."""
    path = copy_sample("codex_config.toml")
    wrap_file(path, mcpshare_command=[sys.executable, "-m", "mcpshare"])

    github = tomllib.loads(path.read_text(encoding="utf-8"))["mcp_servers"]["github"]
    assert github["command"] == sys.executable
    assert github["args"][:3] == ["-m", "mcpshare", "connect"]
    request = shim.parse_args(list(github["args"][3:]), environ={})

    assert request.server == "github"
    assert request.command == ["npx", "-y", "@modelcontextprotocol/server-github"]
    assert request.env_keys == ["LOG_LEVEL", "GITHUB_TOKEN", "GH_HOST"]
    assert request.share == "global"
    assert request.config is None


def test_only_selected_servers_are_wrapped(copy_sample) -> None:
    path = copy_sample("claude.json")

    result = wrap_file(path, mcpshare_command=LAUNCHER, servers=["fetch", "nope"])

    assert result.changed == [f"fetch@{CLAUDE_PROJECT}"]
    assert result.skipped["memory"] == "not selected"
    assert result.skipped["nope"] == "not in file"
    again = wrap_file(path, mcpshare_command=LAUNCHER, servers=[f"db@{CLAUDE_PROJECT}"])
    assert again.changed == [f"db@{CLAUDE_PROJECT}"]
    # Both partial wraps derive from the backup, so unwrap still restores it exactly.
    assert unwrap_file(path).restored
    assert path.read_bytes() == (DATA / "claude.json").read_bytes()


def test_a_file_without_servers_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('model = "o3"\n\n[profiles.x]\nmodel = "o4"\n', encoding="utf-8")

    result = wrap_file(path, mcpshare_command=LAUNCHER)

    assert (result.changed, result.skipped, result.backup) == ([], {}, None)
    assert not backup_of(path).exists()
    assert unwrap_file(path).changed == []


def test_a_file_with_only_http_servers_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / ".mcp.json"
    path.write_text('{"mcpServers": {"web": {"type": "http", "url": "https://x.example/mcp"}}}', encoding="utf-8")
    before = path.read_bytes()

    result = wrap_file(path, mcpshare_command=LAUNCHER)

    assert result.skipped == {"web": "http"}
    assert path.read_bytes() == before
    assert not backup_of(path).exists()


# ---------------------------------------------------------------------------------------------- edits after wrap


def test_unwrap_after_user_edits_keeps_the_edits(copy_sample) -> None:
    path = copy_sample("codex_config.toml")
    wrap_file(path, mcpshare_command=LAUNCHER)
    text = path.read_text(encoding="utf-8")
    text = text.replace('LOG_LEVEL = "warn"', 'LOG_LEVEL = "debug"')
    text += '\n[mcp_servers.added]\ncommand = "added-server"\nargs = ["--fast"]\n'
    path.write_text(text, encoding="utf-8")

    result = unwrap_file(path)

    assert not result.restored
    assert result.changed == ["time", "github", "files"]
    assert result.skipped["added"] == "not wrapped"
    assert result.backup == backup_of(path)
    assert backup_of(path).read_bytes() == (DATA / "codex_config.toml").read_bytes()
    assert any("not byte-identical" in note for note in result.notes)
    servers = servers_of(path)
    original = servers_of(DATA / "codex_config.toml")
    assert servers["github"]["env"] == {"LOG_LEVEL": "debug"}
    assert servers["added"] == {"command": "added-server", "args": ["--fast"]}
    for name in ("time", "github", "files", "docs", "old"):
        expected = dict(original[name], env={"LOG_LEVEL": "debug"}) if name == "github" else original[name]
        assert servers[name] == expected
    # Everything but the user's two edits is back as it was, comments and layout included.
    assert removed_lines((DATA / "codex_config.toml").read_text(encoding="utf-8"), path.read_text()) == [
        'LOG_LEVEL = "warn"  # quieter'
    ]


def test_wrap_after_user_edits_keeps_the_original_backup(copy_sample) -> None:
    path = copy_sample("mcp.json")
    wrap_file(path, mcpshare_command=LAUNCHER)
    data = json.loads(path.read_text(encoding="utf-8"))
    data["mcpServers"]["added"] = {"command": "added-server", "args": ["x"]}
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    result = wrap_file(path, mcpshare_command=LAUNCHER)

    assert result.changed == ["added"]
    assert result.skipped["everything"] == "already wrapped"
    assert any("edited since" in note for note in result.notes)
    assert backup_of(path).read_bytes() == (DATA / "mcp.json").read_bytes()

    unwrapped = unwrap_file(path)

    assert not unwrapped.restored
    assert unwrapped.changed == ["everything", "local", "added"]
    servers = servers_of(path)
    assert servers["added"] == {"command": "added-server", "args": ["x"]}
    assert servers["everything"] == servers_of(DATA / "mcp.json")["everything"]
    assert servers["local"] == servers_of(DATA / "mcp.json")["local"]  # no "args": [] left behind
    assert not any(is_wrapped(entry) for entry in servers.values())


def test_a_stale_backup_is_kept_aside_not_overwritten(copy_sample) -> None:
    path = copy_sample("mcp.json")
    wrap_file(path, mcpshare_command=LAUNCHER)
    # The host rewrote the file from scratch: nothing of ours is left in it.
    fresh = '{\n  "mcpServers": {\n    "new": {"command": "new-server"}\n  }\n}\n'
    path.write_text(fresh, encoding="utf-8")

    result = wrap_file(path, mcpshare_command=LAUNCHER)

    rotated = path.with_name(path.name + BACKUP_SUFFIX + ".1")
    assert rotated.read_bytes() == (DATA / "mcp.json").read_bytes()
    assert backup_of(path).read_text(encoding="utf-8") == fresh
    assert any(str(rotated) in note for note in result.notes)
    assert unwrap_file(path).restored
    assert path.read_text(encoding="utf-8") == fresh


def test_unwrap_without_a_backup_works_from_the_embedded_commands(tmp_path: Path) -> None:
    path = tmp_path / ".mcp.json"
    path.write_text(
        '{"mcpServers": {\n'
        '  "a": {"command": "/x/mcpshare", "args": ["connect", "a", "--env-keys", "K", "--", "srv", "-v"]},\n'
        '  "b": {"command": "/x/mcpshare", "args": ["connect", "b", "--", "bare"]},\n'
        '  "c": {"command": "mcpshare", "args": ["connect", "c", "--config", "/etc/mcp.toml"]}\n'
        "}}\n",
        encoding="utf-8",
    )

    result = unwrap_file(path)

    assert result.changed == ["a", "b"]
    assert result.skipped == {"c": "wrapped without an embedded command (nothing to restore)"}
    assert result.backup is None
    assert any("no backup" in note for note in result.notes)
    assert path.read_text(encoding="utf-8") == (
        '{"mcpServers": {\n'
        '  "a": {"command": "srv", "args": ["-v"]},\n'
        '  "b": {"command": "bare"},\n'
        '  "c": {"command": "mcpshare", "args": ["connect", "c", "--config", "/etc/mcp.toml"]}\n'
        "}}\n"
    )


def test_unwrap_of_a_file_never_wrapped_does_nothing(copy_sample) -> None:
    path = copy_sample("codex_config.toml")

    result = unwrap_file(path)

    assert result.changed == []
    assert result.skipped["github"] == "not wrapped"
    assert result.skipped["docs"] == "http"
    assert path.read_bytes() == (DATA / "codex_config.toml").read_bytes()


# ---------------------------------------------------------------------------------------------- files


def test_dry_run_writes_nothing(copy_sample) -> None:
    path = copy_sample("codex_config.toml")
    original = path.read_bytes()

    dry = wrap_file(path, mcpshare_command=LAUNCHER, dry_run=True)

    assert dry.dry_run and dry.changed == ["time", "github", "files"]
    assert path.read_bytes() == original
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    real = wrap_file(path, mcpshare_command=LAUNCHER)
    assert (real.changed, real.skipped) == (dry.changed, dry.skipped)
    wrapped = path.read_bytes()

    undo = unwrap_file(path, dry_run=True)

    assert undo.restored and undo.changed == dry.changed
    assert path.read_bytes() == wrapped
    assert backup_of(path).exists() and sidecar_of(path).exists()


def test_file_mode_is_kept_and_the_backup_is_no_more_readable(copy_sample) -> None:
    path = copy_sample("claude.json")
    path.chmod(0o600)

    wrap_file(path, mcpshare_command=LAUNCHER)

    for written in (path, backup_of(path), sidecar_of(path)):
        assert stat.S_IMODE(written.stat().st_mode) == 0o600, written
    path.chmod(0o640)
    unwrap_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_no_temporary_files_are_left_behind(copy_sample) -> None:
    path = copy_sample("mcp.json")

    wrap_file(path, mcpshare_command=LAUNCHER)

    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        [path.name, backup_of(path).name, sidecar_of(path).name]
    )


def test_a_symlinked_config_stays_a_symlink(copy_sample, tmp_path: Path) -> None:
    target = copy_sample("codex_config.toml")
    link_dir = tmp_path / "home"
    link_dir.mkdir()
    link = link_dir / "config.toml"
    link.symlink_to(target)

    wrap_file(link, mcpshare_command=LAUNCHER)

    assert link.is_symlink()
    assert servers_of(target)["github"]["command"] == LAUNCHER[0]
    unwrap_file(link)
    assert link.is_symlink()
    assert target.read_bytes() == (DATA / "codex_config.toml").read_bytes()


def test_crlf_and_bom_are_kept(tmp_path: Path) -> None:
    toml = tmp_path / "config.toml"
    toml.write_bytes((DATA / "codex_config.toml").read_bytes().replace(b"\n", b"\r\n"))
    json_file = tmp_path / "claude_desktop_config.json"
    json_file.write_bytes(b"\xef\xbb\xbf" + (DATA / "claude_desktop_config.json").read_bytes().replace(b"\n", b"\r\n"))
    originals = {toml: toml.read_bytes(), json_file: json_file.read_bytes()}

    for path, original in originals.items():
        wrap_file(path, mcpshare_command=LAUNCHER)
        wrapped = path.read_bytes()
        assert re.search(rb"(?<!\r)\n", wrapped) is None, path
        assert wrapped.startswith(b"\xef\xbb\xbf") == original.startswith(b"\xef\xbb\xbf")
        sidecar_of(path).unlink()  # the entry-by-entry path must keep them too
        unwrap_file(path)
        assert path.read_bytes() == original


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("name", "content", "where"),
    [
        ("config.toml", '[mcp_servers.x]\ncommand = "npx"\nargs = ["-y",,]\n', "line 3"),
        (".mcp.json", '{\n  "mcpServers": {\n    "x": {"command": "npx",}\n  }\n}\n', "line 3"),
        (".mcp.json", '{"mcpServers": {"x": {"command": "a"}, "x": {"command": "b"}}}', "duplicate key 'x'"),
    ],
)
def test_a_file_that_does_not_parse_is_named_with_its_line(tmp_path: Path, name: str, content: str, where: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")

    for operation in (wrap_file, unwrap_file):
        with pytest.raises(ConfigError) as caught:
            operation(path)
        assert str(path) in str(caught.value)
        assert where in str(caught.value)
    assert path.read_text(encoding="utf-8") == content
    assert not backup_of(path).exists()


def test_unknown_format_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config format '\.yaml'"):
        (tmp_path / "servers.yaml").write_text("x: 1\n")
        wrap_file(tmp_path / "servers.yaml", mcpshare_command=LAUNCHER)
    with pytest.raises(ConfigError, match="cannot read"):
        wrap_file(tmp_path / "missing.toml", mcpshare_command=LAUNCHER)


@pytest.mark.parametrize(
    ("entry", "field", "reason"),
    [
        ({"command": "x", "url": "http://h/mcp"}, "url", "give exactly one"),
        ({"command": "x", "args": "-v"}, "args", "must be a list of strings"),
        ({"comand": "x"}, "comand", "unknown field (did you mean 'command'?)"),
        ("x", None, "must be a table of settings"),
    ],
)
def test_an_invalid_entry_stops_the_wrap_with_the_loaders_error(
    tmp_path: Path, entry: Any, field: str | None, reason: str
) -> None:
    """wrap validates the whole file first, as the loader does: nothing is written, no backup is made."""
    path = tmp_path / ".mcp.json"
    path.write_text(json.dumps({"mcpServers": {"bad": entry, "ok": {"command": "x"}}}), encoding="utf-8")
    before = path.read_bytes()
    with pytest.raises(ConfigError) as loaded:
        load_config(path)

    for dry_run in (True, False):
        with pytest.raises(ConfigError) as caught:
            wrap_file(path, mcpshare_command=LAUNCHER, dry_run=dry_run)
        assert str(caught.value) == str(loaded.value)
        assert (caught.value.file, caught.value.server, caught.value.field) == (str(path), "bad", field)
        assert reason in caught.value.reason
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mcp.json"]


def test_valid_entries_the_shim_cannot_carry_are_skipped_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / ".mcp.json"
    path.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "--opt": {"command": "x"},
                    "comma": {"command": "x", "env": {"A,B": "1"}},
                    "ok": {"command": "x"},
                }
            }
        ),
        encoding="utf-8",
    )

    result = wrap_file(path, mcpshare_command=LAUNCHER)

    assert result.changed == ["ok"]
    assert set(result.skipped) == {"--opt", "comma"}
    assert all(reason.startswith("invalid: ") for reason in result.skipped.values())


# ---------------------------------------------------------------------------------------------- entry helpers


def test_unwrap_entry_reads_every_launcher_and_option_spelling() -> None:
    assert unwrap_entry("/v/bin/mcpshare", ["connect", "a", "--", "npx", "-y"]) == ("npx", ["-y"])
    assert unwrap_entry("python3", ["-m", "mcpshare", "connect", "a", "--share=global", "--", "srv"]) == ("srv", [])
    assert unwrap_entry("uvx", ["mcpshare", "connect", "a", "--env-keys", "A,B", "--", "s", "--", "x"]) == (
        "s",
        ["--", "x"],
    )
    assert unwrap_entry(r"C:\Tools\MCPShare.exe", ["connect", "a", "--", "srv.exe"]) == ("srv.exe", [])
    assert unwrap_entry("mcpshare", ["connect", "a", "--config", "f.toml"]) is None
    assert unwrap_entry("mcpshare", ["connect", "a", "--"]) is None
    assert unwrap_entry("npx", ["-y", "server", "connect", "--", "x"]) is None


def test_is_wrapped_looks_at_the_command_line_only() -> None:
    assert is_wrapped({"command": "/v/bin/mcpshare", "args": ["connect", "a", "--", "npx"]})
    assert is_wrapped({"command": "mcpshare", "args": ["connect", "a"]})
    assert is_wrapped({"command": "python", "args": ["-m", "mcpshare", "connect", "a", "--", "x"]})
    assert not is_wrapped({"command": "npx", "args": ["-y", "connect"]})
    assert not is_wrapped({"command": "mcpshare-server"})
    assert not is_wrapped({"url": "http://h/mcp"})


def test_wrap_entry_and_unwrap_entry_are_inverse() -> None:
    entry = {"command": "npx", "args": ["-y", "pkg"], "env": {"A": "1"}, "env_vars": ["B", "A"], "share": "thread"}

    command, args = wrap_entry("srv", entry, mcpshare_command=LAUNCHER)

    assert command == LAUNCHER[0]
    assert args == ["connect", "srv", "--env-keys", "A,B", "--share", "thread", "--", "npx", "-y", "pkg"]
    assert unwrap_entry(command, args) == ("npx", ["-y", "pkg"])
    with pytest.raises(ValueError, match="http"):
        wrap_entry("web", {"url": "http://h/mcp"}, mcpshare_command=LAUNCHER)


def test_the_launcher_must_be_recognizable_as_mcpshare(copy_sample) -> None:
    path = copy_sample("mcp.json")

    with pytest.raises(ValueError, match="must end in 'mcpshare'"):
        wrap_file(path, mcpshare_command=["/usr/bin/env", "sharer"])
    assert path.read_bytes() == (DATA / "mcp.json").read_bytes()


def test_default_launcher_is_the_script_next_to_the_interpreter(tmp_path: Path, monkeypatch) -> None:
    bindir = tmp_path / "venv" / "bin"
    bindir.mkdir(parents=True)
    python = bindir / "python"
    monkeypatch.setattr(sys, "executable", str(python))

    assert default_mcpshare_command() == [str(python), "-m", "mcpshare"]

    script = bindir / "mcpshare"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert default_mcpshare_command() == [str(script)]


def test_a_file_rewritten_by_its_host_during_the_wrap_is_not_overwritten(copy_sample, monkeypatch) -> None:
    """Claude Code rewrites ~/.claude.json while it runs: our edit of the older content must not replace its write."""
    import mcpshare.wrap as wrap_module

    path = copy_sample("claude.json")
    check_output = wrap_module._check_output

    def host_writes_meanwhile(*args: Any, **kwargs: Any) -> None:
        check_output(*args, **kwargs)
        path.write_text(path.read_text(encoding="utf-8").replace('"numStartups": 42', '"numStartups": 43'))

    monkeypatch.setattr(wrap_module, "_check_output", host_writes_meanwhile)

    with pytest.raises(ConfigError, match="changed while mcpshare was editing it"):
        wrap_file(path, mcpshare_command=LAUNCHER)
    assert '"numStartups": 43' in path.read_text(encoding="utf-8")
    assert not backup_of(path).exists()


def test_a_launcher_given_as_one_string_is_one_word(copy_sample) -> None:
    """``mcpshare wrap`` passes the script path as a plain string; it must not be split into characters."""
    path = copy_sample("mcp.json")

    wrap_file(path, mcpshare_command="/opt/bin/mcpshare")

    assert servers_of(path)["local"] == {
        "command": "/opt/bin/mcpshare",
        "args": ["connect", "local", "--", "./bin/local-server"],
    }
