"""Server configs: the files real hosts write load as they mean, and every mistake is named precisely."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from mcpshare.config import (
    ConfigError,
    FrozenMapping,
    HttpServerConfig,
    McpConfig,
    StdioServerConfig,
    default_config_paths,
    load_codex_toml,
    load_config,
    load_mcp_json,
    merge,
    parse_server,
    parse_servers,
)
from mcpshare.sources import ConfigSource, HelloError, server_config

DATA = Path(__file__).parent / "data"


def error_of(raw: Mapping[str, Any], *, name: str = "srv", source: str = "cfg.json") -> ConfigError:
    """The ConfigError parse_server raises for one entry (fails the test if it accepts it)."""
    with pytest.raises(ConfigError) as caught:
        parse_server(name, raw, source=source)
    return caught.value


# ---------------------------------------------------------------------------------------------- Codex TOML


def test_codex_toml_loads_only_mcp_servers_tables() -> None:
    config = load_codex_toml(DATA / "codex_config.toml")

    assert list(config.servers) == ["github", "files", "docs", "old"]
    assert config.sources == (str(DATA / "codex_config.toml"),)


def test_codex_stdio_server_fields() -> None:
    github = load_codex_toml(DATA / "codex_config.toml").get("github")

    assert isinstance(github, StdioServerConfig)
    assert github.transport == "stdio"
    assert github.command == "npx"
    assert github.args == ("-y", "@modelcontextprotocol/server-github")
    assert github.env == {"LOG_LEVEL": "warn"}
    assert github.env_vars == ("GITHUB_TOKEN",)
    assert github.share == "global"


def test_codex_startup_timeout_ms_is_converted_to_seconds() -> None:
    github = load_codex_toml(DATA / "codex_config.toml").get("github")

    assert github.startup_timeout_sec == 20.0


def test_startup_timeout_sec_wins_over_ms_as_in_codex() -> None:
    server = parse_server("s", {"command": "x", "startup_timeout_ms": 1000, "startup_timeout_sec": 7})

    assert server.startup_timeout_sec == 7.0


def test_codex_tool_filters_and_foreign_fields() -> None:
    files = load_codex_toml(DATA / "codex_config.toml").get("files")

    assert isinstance(files, StdioServerConfig)
    assert files.cwd == "docs"
    assert files.tool_timeout_sec == 60.0
    assert files.enabled_tools == ("read_file", "list_directory")
    assert files.allows_tool("read_file")
    assert not files.allows_tool("list_directory")  # disabled after enabled
    assert not files.allows_tool("write_file")  # not in the allow-list


def test_codex_http_server_fields() -> None:
    docs = load_codex_toml(DATA / "codex_config.toml").get("docs")

    assert isinstance(docs, HttpServerConfig)
    assert docs.transport == "http"
    assert docs.url == "https://docs.example.com/mcp"
    assert docs.bearer_token_env_var == "DOCS_TOKEN"
    assert docs.http_headers == {"X-Team": "platform"}
    assert docs.env_http_headers == {"X-Org": "DOCS_ORG"}


def test_enabled_leaves_out_disabled_servers() -> None:
    config = load_codex_toml(DATA / "codex_config.toml")

    assert config.get("old").enabled is False
    assert list(config.enabled()) == ["github", "files", "docs"]


def test_toml_without_mcp_servers_is_an_empty_config(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('model = "o3"\n')

    assert load_codex_toml(path).servers == {}


# ---------------------------------------------------------------------------------------------- mcpServers JSON


def test_mcp_json_servers() -> None:
    config = load_mcp_json(DATA / "mcp.json", environ={"TOKEN": "abc"})

    everything = config.get("everything")
    assert isinstance(everything, StdioServerConfig)
    assert everything.args == ("-y", "@modelcontextprotocol/server-everything")
    assert everything.env == {"API_KEY": "sk-test-123"}
    search = config.get("search")
    assert isinstance(search, HttpServerConfig)
    assert search.http_headers == {"Authorization": "Bearer literal-abc"}  # ${TOKEN} expanded, as Claude Code does
    assert config.get("legacy").enabled is False  # "disabled": true
    assert list(config.enabled()) == ["everything", "search"]


@pytest.mark.parametrize("kind", ["http", "streamable-http", "streamableHttp"])
def test_http_type_spellings(kind: str) -> None:
    server = parse_server("s", {"type": kind, "url": "https://example.com/mcp"})

    assert isinstance(server, HttpServerConfig)


def test_claude_json_top_level_servers_without_project() -> None:
    config = load_mcp_json(DATA / "claude.json")

    assert list(config.servers) == ["memory", "fetch"]
    assert config.get("fetch").args == ("mcp-server-fetch",)


def test_claude_json_project_servers_override_top_level() -> None:
    config = load_mcp_json(DATA / "claude.json", project="/home/alice/project/")

    assert sorted(config.servers) == ["db", "fetch", "memory"]
    assert config.get("fetch").args == ("mcp-server-fetch", "--ignore-robots-txt")
    assert config.sources == (str(DATA / "claude.json"),)


def test_claude_json_unknown_project_gives_top_level_only() -> None:
    config = load_mcp_json(DATA / "claude.json", project="/nowhere")

    assert list(config.servers) == ["memory", "fetch"]


def test_load_config_dispatches_on_suffix() -> None:
    assert "github" in load_config(DATA / "codex_config.toml").servers
    assert "db" in load_config(DATA / "claude.json", project="/home/alice/project").servers


def test_load_config_rejects_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    path.write_text("mcpServers: {}\n")

    with pytest.raises(ConfigError, match=r"servers\.yaml: unknown config format '\.yaml'") as caught:
        load_config(path)
    assert caught.value.file == str(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.json")


# ---------------------------------------------------------------------------------------------- errors name the place


def test_env_number_is_an_error_naming_file_server_and_field() -> None:
    path = DATA / "bad_env_number.toml"

    with pytest.raises(ConfigError) as caught:
        load_codex_toml(path)

    error = caught.value
    assert (error.file, error.server, error.field) == (str(path), "api", "env")
    assert str(error) == f"{path}: server 'api', field 'env': value of 'PORT' must be a string, got a number (quote it)"


def test_unknown_field_is_rejected_with_a_suggestion() -> None:
    path = DATA / "bad_unknown_field.toml"

    with pytest.raises(ConfigError) as caught:
        load_codex_toml(path)

    assert str(caught.value) == f"{path}: server 'github', field 'comand': unknown field (did you mean 'command'?)"


def test_sse_is_rejected() -> None:
    path = DATA / "bad_sse.json"

    with pytest.raises(ConfigError) as caught:
        load_mcp_json(path)

    assert (caught.value.server, caught.value.field) == ("events", "type")
    assert "SSE transport is not supported; use Streamable HTTP" in str(caught.value)


def test_negative_timeout_names_the_field() -> None:
    path = DATA / "bad_timeout.json"

    with pytest.raises(ConfigError) as caught:
        load_mcp_json(path)

    assert str(caught.value) == f"{path}: server 'slow', field 'startup_timeout_sec': must be a positive number, got -5"


def test_toml_syntax_error_names_file_and_line() -> None:
    with pytest.raises(ConfigError, match=r"bad_syntax\.toml: invalid TOML: .*\(at line 3, column \d+\)") as caught:
        load_codex_toml(DATA / "bad_syntax.toml")
    assert caught.value.server is None


def test_json_syntax_error_names_file_and_line() -> None:
    with pytest.raises(ConfigError, match=r"bad_syntax\.json: invalid JSON at line 3, column \d+"):
        load_mcp_json(DATA / "bad_syntax.json")


def test_duplicate_json_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "dup.json"
    path.write_text('{"mcpServers": {"a": {"command": "x"}, "a": {"command": "y"}}}')

    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        load_mcp_json(path)


def test_one_bad_server_fails_the_whole_file(tmp_path: Path) -> None:
    """Nothing partial: the good server before the bad one is not returned either."""
    result: McpConfig | None = None
    with pytest.raises(ConfigError):
        result = load_codex_toml(DATA / "bad_env_number.toml")
    assert result is None


def test_a_bad_project_server_fails_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "claude.json"
    path.write_text('{"mcpServers": {"ok": {"command": "x"}}, "projects": {"/p": {"mcpServers": {"b": {"cmd": 1}}}}}')

    with pytest.raises(ConfigError, match="server 'b', field 'cmd'"):
        load_mcp_json(path, project="/p")


@pytest.mark.parametrize(
    ("raw", "field", "reason"),
    [
        ({"command": ""}, "command", "must not be empty"),
        ({"command": ["npx"]}, "command", "must be a string, got a list"),
        ({"command": "x", "args": "-y server"}, "args", "must be a list of strings, got a string"),
        ({"command": "x", "args": ["-p", 80]}, "args", "item 1 must be a string, got a number"),
        ({"command": "x", "env": {"DEBUG": True}}, "env", "value of 'DEBUG' must be a string, got a boolean"),
        ({"command": "x", "env": ["A=1"]}, "env", "must be a table of strings, got a list"),
        ({"command": "x", "env_vars": "HOME"}, "env_vars", "must be a list of variable names, got a string"),
        ({"command": "x", "cwd": 3}, "cwd", "must be a string, got a number"),
        ({"command": "x", "enabled": "yes"}, "enabled", "must be true or false, got a string"),
        ({"command": "x", "disabled": 1}, "disabled", "must be true or false, got a number"),
        ({"command": "x", "tool_timeout_sec": 0}, "tool_timeout_sec", "must be a positive number, got 0"),
        ({"command": "x", "tool_timeout_sec": True}, "tool_timeout_sec", "must be a number of seconds, got a boolean"),
        ({"command": "x", "startup_timeout_sec": float("inf")}, "startup_timeout_sec", "must be a positive number"),
        ({"command": "x", "startup_timeout_ms": "5s"}, "startup_timeout_ms", "must be a number of seconds"),
        ({"command": "x", "share": "everyone"}, "share", "must be one of 'global', 'workspace', 'thread'"),
        ({"command": "x", "enabled_tools": [1]}, "enabled_tools", "item 0 must be a string"),
        ({"command": "x", "disabled_tools": "rm"}, "disabled_tools", "must be a list of strings"),
        ({"url": "ftp://example.com"}, "url", "must be an http:// or https:// URL"),
        ({"url": "https://x", "headers": {"X": 1}}, "headers", "value of 'X' must be a string"),
        ({"url": "https://x", "bearer_token": "sk-1"}, "bearer_token", "inline bearer token is not supported"),
        ({"url": "https://x", "env": {}}, "env", "only applies to stdio servers"),
        ({"command": "x", "headers": {}}, "headers", "only applies to HTTP servers"),
        ({"command": "x", "share": "global", "type": "http"}, "type", "says 'http' but the server has no 'url'"),
        ({"command": "x", "type": "websocket"}, "type", 'must be "stdio" or "http"'),
        ({"command": "x", "enabled": True, "disabled": True}, "disabled", "contradicts 'enabled'"),
        ({"command": "x", "envFile": ".env"}, "envFile", "env files are not supported"),
    ],
)
def test_each_invalid_value_names_its_field(raw: dict[str, Any], field: str, reason: str) -> None:
    error = error_of(raw)

    assert (error.file, error.server, error.field) == ("cfg.json", "srv", field)
    assert str(error).startswith(f"cfg.json: server 'srv', field '{field}': ")
    assert reason in error.reason


def test_errors_never_echo_env_values() -> None:
    error = error_of({"command": "x", "env": {"TOKEN": 12345678901}})

    assert "12345678901" not in str(error)


def test_command_and_url_together_is_an_error() -> None:
    assert "give exactly one" in error_of({"command": "x", "url": "https://x"}).reason


def test_neither_command_nor_url_is_an_error() -> None:
    error = error_of({"args": ["x"]})

    assert str(error) == (
        "cfg.json: server 'srv': needs either 'command' (a stdio server) or 'url' (a Streamable HTTP server)"
    )


def test_foreign_fields_are_ignored() -> None:
    server = parse_server(
        "s", {"command": "x", "type": "stdio", "description": "d", "autoApprove": [], "timeout": 5, "required": True}
    )

    assert server == StdioServerConfig(name="s", command="x")


def test_entry_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match=r"^f: server 'a': must be a table of settings, got a string$"):
        parse_servers({"a": "npx server"}, source="f")


# ---------------------------------------------------------------------------------------------- value semantics


def test_configs_compare_and_hash_by_value() -> None:
    one = parse_server("s", {"command": "x", "env": {"A": "1", "B": "2"}, "args": ["a"]})
    two = StdioServerConfig(name="s", command="x", env={"B": "2", "A": "1"}, args=("a",))

    assert one == two
    assert hash(one) == hash(two)
    assert pickle.loads(pickle.dumps(one)) == one


def test_config_env_is_read_only() -> None:
    server = StdioServerConfig(name="s", command="x", env={"A": "1"})

    assert isinstance(server.env, FrozenMapping)
    with pytest.raises(TypeError):
        server.env["A"] = "2"  # type: ignore[index]


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConfigError, match="server 's', field 'share'"):
        StdioServerConfig(name="s", command="x", share="galaxy")  # type: ignore[arg-type]


def test_config_repr_hides_secrets() -> None:
    server = StdioServerConfig(name="s", command="x", args=("--token", "tok-SECRET"), env={"API_KEY": "sk-SECRET"})

    assert "SECRET" not in repr(server)
    assert "API_KEY" in repr(server)


def test_get_unknown_server_lists_known_names() -> None:
    config = load_mcp_json(DATA / "mcp.json")

    with pytest.raises(KeyError, match=r"unknown MCP server 'evrything'.*everything, legacy, search"):
        config.get("evrything")


def test_config_error_survives_pickling() -> None:
    error = ConfigError("bad", file="f", server="s", field="x")
    copy = pickle.loads(pickle.dumps(error))

    assert (str(copy), copy.file, copy.server, copy.field) == (str(error), "f", "s", "x")


# ---------------------------------------------------------------------------------------------- merge and discovery


def test_merge_later_wins_by_name_and_sources_concatenate() -> None:
    first = parse_servers({"a": {"command": "one"}, "b": {"command": "b"}}, source="first")
    second = parse_servers({"a": {"url": "https://a.example"}, "c": {"command": "c"}}, source="second")

    merged = merge(first, second)

    assert list(merged.servers) == ["a", "b", "c"]
    assert isinstance(merged.get("a"), HttpServerConfig)
    assert merged.sources == ("first", "second")
    assert merge() == McpConfig()


def test_default_config_paths_lists_existing_files_in_order(tmp_path: Path) -> None:
    """User-wide files first, then the project's (which win by name, as in each host), then mcpshare's servers
    file; only files that exist; ``$CODEX_HOME`` replaces ``~/.codex`` when set."""
    home, cwd = tmp_path / "home", tmp_path / "proj"
    wanted = [
        home / ".codex" / "config.toml",
        home / ".config" / "Claude" / "claude_desktop_config.json",
        home / ".codeium" / "windsurf" / "mcp_config.json",
        home / ".gemini" / "settings.json",
        home / ".cursor" / "mcp.json",
        home / ".config" / "Code" / "User" / "mcp.json",
        home / ".config" / "zed" / "settings.json",
        home / ".claude.json",
        cwd / ".codex" / "config.toml",
        cwd / ".gemini" / "settings.json",
        cwd / ".zed" / "settings.json",
        cwd / ".vscode" / "mcp.json",
        cwd / ".cursor" / "mcp.json",
        cwd / ".mcp.json",
        home / ".config" / "mcpshare" / "servers.json",  # what `wrap --http` moved out of the others: read last
    ]
    assert default_config_paths(home=home, cwd=cwd, environ={}) == []

    for path in reversed(wanted):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    (home / ".codex" / "config.toml").unlink()

    assert default_config_paths(home=home, cwd=cwd, environ={}) == wanted[1:]

    codex_home = tmp_path / "codex-home"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text("")
    found = default_config_paths(home=home, cwd=cwd, environ={"CODEX_HOME": str(codex_home)})
    assert found == [codex_home / "config.toml", *wanted[1:]]


def test_a_file_reached_twice_is_read_once(tmp_path: Path) -> None:
    """Run from the home directory, the project's .gemini/settings.json is the user's: it counts once, first."""
    home = tmp_path / "home"
    (home / ".gemini").mkdir(parents=True)
    (home / ".gemini" / "settings.json").write_text("{}")

    assert default_config_paths(home=home, cwd=home, environ={}) == [home / ".gemini" / "settings.json"]


# --------------------------------------------------------------------------- ${VAR} in mcpServers JSON


def test_env_references_in_mcp_json_expand_like_claude_code(tmp_path: Path) -> None:
    """``${VAR}``, ``${VAR:-default}`` (default when unset or empty) and Cursor's ``${env:VAR}`` expand in command,
    args, env, url and headers, from the environment given (the process's own by default); other fields and other
    text stay as written."""
    path = tmp_path / ".mcp.json"
    path.write_text(
        """{"mcpServers": {
        "files": {"command": "${TOOLS}/bin/files", "args": ["--root", "${HOME}/work", "${EMPTY:-fallback}", "$HOME"],
                  "env": {"API_KEY": "${env:KEY}", "MODE": "${MODE:-fast}"}},
        "remote": {"type": "http", "url": "https://${HOST:-example.com}/mcp",
                   "headers": {"Authorization": "Bearer ${TOKEN}"}}}}"""
    )
    environ = {"TOOLS": "/opt/tools", "HOME": "/home/u", "EMPTY": "", "KEY": "s3cret", "TOKEN": "t0k"}
    config = load_mcp_json(path, environ=environ)
    files = config.get("files")
    assert isinstance(files, StdioServerConfig)
    assert files.command == "/opt/tools/bin/files"
    assert files.args == ("--root", "/home/u/work", "fallback", "$HOME")
    assert dict(files.env) == {"API_KEY": "s3cret", "MODE": "fast"}
    remote = config.get("remote")
    assert isinstance(remote, HttpServerConfig)
    assert remote.url == "https://example.com/mcp"
    assert dict(remote.http_headers) == {"Authorization": "Bearer t0k"}


def test_an_unset_variable_makes_only_its_server_unusable(tmp_path: Path) -> None:
    """A server that names a variable with no value cannot run as written: asking for it is an error naming the
    file, server, field and variable (through the broker's lookup too), while the file's other servers stay usable
    and a later file can still define it."""
    path = tmp_path / ".mcp.json"
    path.write_text(
        '{"mcpServers": {"gh": {"command": "gh-mcp", "env": {"GITHUB_TOKEN": "${GITHUB_TOKEN}"}},'
        ' "files": {"command": "files-mcp"}}}'
    )
    config = load_mcp_json(path, environ={})
    assert list(config.servers) == ["files"] and list(config.unusable) == ["gh"]
    with pytest.raises(ConfigError) as caught:
        config.get("gh")
    assert (caught.value.file, caught.value.server, caught.value.field) == (str(path), "gh", "env")
    assert "value of 'GITHUB_TOKEN': environment variable 'GITHUB_TOKEN' is not set" in str(caught.value)
    with pytest.raises(KeyError, match=r"known servers .*: files, gh"):
        config.get("g")
    hello = {"server": "gh", "cwd": str(tmp_path), "config": str(path)}
    with pytest.raises(HelloError, match="environment variable 'GITHUB_TOKEN' is not set"):
        server_config(hello, ConfigSource())
    assert server_config({**hello, "server": "files"}, ConfigSource()).command == "files-mcp"
    later = McpConfig({"gh": StdioServerConfig(name="gh", command="other-gh")})
    assert merge(config, later).get("gh").command == "other-gh" and not merge(config, later).unusable
    assert load_mcp_json(path, environ={"GITHUB_TOKEN": "x"}).get("gh").env["GITHUB_TOKEN"] == "x"
