"""Every host's config file loads as that host means it, and what mcpshare cannot run is refused by name.

The samples in tests/data/wrap are written as each host documents its file (VS Code ``.vscode/mcp.json``, Cursor
``mcp.json``, Gemini CLI ``settings.json``, Windsurf ``mcp_config.json``, Zed ``settings.json``); the tests copy
each one to the place its host keeps it, since the place is how a file's dialect is known.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from mcpshare import formats
from mcpshare.config import (
    ConfigError,
    HttpServerConfig,
    StdioServerConfig,
    check_config,
    default_config_paths,
    load_config,
)
from mcpshare.sources import ConfigSource, HelloError, server_config

DATA = Path(__file__).parent / "data" / "wrap"

# Where each sample lives, relative to the home directory (user-wide files) or to a project ("proj/...").
PLACES = {
    "vscode_mcp.json": "proj/.vscode/mcp.json",
    "cursor_mcp.json": "proj/.cursor/mcp.json",
    "gemini_settings.json": ".gemini/settings.json",
    "windsurf_mcp_config.json": ".codeium/windsurf/mcp_config.json",
    "zed_settings.json": ".config/zed/settings.json",
}
ENVIRON = {"DATABASE_URL": "postgres://db/app", "GITHUB_TOKEN": "ghp-test", "WEATHER_API_KEY": "w-test"}


def place(home: Path, sample: str, text: str | None = None) -> Path:
    target = home / PLACES[sample]
    target.parent.mkdir(parents=True, exist_ok=True)
    if text is None:
        shutil.copyfile(DATA / sample, target)
    else:
        target.write_text(text, encoding="utf-8")
    return target


def error_of(path: Path, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={}, home=path.parent, **kwargs)
    return caught.value


# ---------------------------------------------------------------------------------------------- the samples


def test_vscode_servers_with_comments_variables_and_inputs(tmp_path: Path) -> None:
    path = place(tmp_path, "vscode_mcp.json")
    config = load_config(path, environ=ENVIRON, home=tmp_path)

    assert list(config.servers) == ["project-tools", "playwright", "context7"]
    tools = config.get("project-tools")
    assert isinstance(tools, StdioServerConfig)
    # ${workspaceFolder} is the folder that holds .vscode; VS Code passes numbers in env as their text.
    assert tools.args == ("run", "--directory", f"{tmp_path / 'proj'}/tools", "project-tools-mcp")
    assert dict(tools.env) == {"LOG_LEVEL": "info", "PORT": "8080"}
    assert config.get("playwright").args == ("@playwright/mcp@latest",)  # a trailing comma, as VS Code allows
    assert isinstance(config.get("context7"), HttpServerConfig)
    # ${input:...} is asked of the user by VS Code: refused, by file, server and field, never guessed.
    with pytest.raises(ConfigError) as caught:
        config.get("github")
    error = caught.value
    assert (error.file, error.server, error.field) == (str(path), "github", "env")
    assert "${input:github-token} is asked of the user by VS Code" in str(error)
    assert "does not guess" in str(error)


def test_a_refused_input_reaches_the_client_through_the_broker(tmp_path: Path) -> None:
    path = place(tmp_path, "vscode_mcp.json")
    hello = {"server": "github", "cwd": str(tmp_path / "proj"), "config": str(path)}

    with pytest.raises(HelloError, match=r"server 'github', field 'env'.*\$\{input:github-token\}"):
        server_config(hello, ConfigSource(home=tmp_path))
    assert server_config({**hello, "server": "playwright"}, ConfigSource(home=tmp_path)).command == "npx"


def test_cursor_env_and_workspace_variables(tmp_path: Path) -> None:
    path = place(tmp_path, "cursor_mcp.json")
    config = load_config(path, environ=ENVIRON, home=tmp_path)

    assert config.get("postgres").args[-1] == "postgres://db/app"  # ${env:DATABASE_URL}
    assert config.get("filesystem").args[-1] == str(tmp_path / "proj")  # ${workspaceFolder}
    with pytest.raises(ConfigError, match=r"server 'linear', field 'headers'.*'LINEAR_API_KEY' is not set"):
        config.get("linear")


def test_gemini_fields_map_to_mcpshare_fields(tmp_path: Path) -> None:
    path = place(tmp_path, "gemini_settings.json")
    config = load_config(path, environ=ENVIRON, home=tmp_path)

    git = config.get("git")
    assert isinstance(git, StdioServerConfig)
    assert git.tool_timeout_sec == 30.0  # "timeout" is in milliseconds; "trust" is Gemini CLI's prompt policy
    weather = config.get("weather")
    assert isinstance(weather, StdioServerConfig)
    assert dict(weather.env) == {"WEATHER_API_KEY": "w-test"}  # $VAR, as Gemini CLI expands it
    assert weather.cwd == "./mcp-servers/weather"
    assert (weather.enabled_tools, weather.disabled_tools) == (("forecast", "alerts"), ("alerts",))
    assert [tool for tool in ("forecast", "alerts", "other") if weather.allows_tool(tool)] == ["forecast"]
    docs = config.get("docs")
    assert isinstance(docs, HttpServerConfig)  # httpUrl: Streamable HTTP
    assert (docs.url, dict(docs.http_headers), docs.tool_timeout_sec) == (
        "https://docs.example.com/mcp",
        {"X-Team": "platform"},
        5.0,
    )
    with pytest.raises(ConfigError, match=r"field 'url': Gemini CLI reads 'url' as an SSE endpoint"):
        config.get("legacy-events")


def test_gemini_allowed_and_excluded_lists_disable_servers(tmp_path: Path) -> None:
    settings = {
        "mcpServers": {"a": {"command": "a"}, "b": {"command": "b"}, "c": {"command": "c"}},
        "mcp": {"allowed": ["a", "b"], "excluded": ["b"]},
    }
    path = place(tmp_path, "gemini_settings.json", json.dumps(settings))

    assert list(load_config(path, environ={}).enabled()) == ["a"]


def test_windsurf_server_url_disabled_tools_and_file_references(tmp_path: Path) -> None:
    path = place(tmp_path, "windsurf_mcp_config.json")
    config = load_config(path, environ={**ENVIRON, "FIGMA_TOKEN": "fig"}, home=tmp_path)

    github = config.get("github")
    assert dict(github.env) == {"GITHUB_PERSONAL_ACCESS_TOKEN": "ghp-test"}
    assert github.disabled_tools == ("delete_repository",)
    assert config.get("memory").enabled is False
    figma = config.get("figma")
    assert isinstance(figma, HttpServerConfig) and figma.url == "https://mcp.figma.com/mcp"  # serverUrl
    assert dict(figma.http_headers) == {"Authorization": "Bearer fig"}

    entry = {"mcpServers": {"s": {"command": "s", "env": {"TOKEN": "${file:/home/a/.token}"}}}}
    path.write_text(json.dumps(entry))
    with pytest.raises(ConfigError, match=r"server 's', field 'env'.*\$\{file:/home/a/.token\} .* not supported"):
        load_config(path, environ={}).get("s")


def test_zed_context_servers_in_every_form(tmp_path: Path) -> None:
    path = place(tmp_path, "zed_settings.json")
    config = load_config(path, environ={}, home=tmp_path)

    assert list(config.servers) == ["sqlite", "brave-search", "fetch", "remote-docs"]
    assert config.get("sqlite").args == ("mcp-server-sqlite", "--db-path", "/home/alice/data/app.db")
    brave = config.get("brave-search")  # the nested {"command": {"path", "args", "env"}} form
    assert isinstance(brave, StdioServerConfig)
    assert (brave.command, brave.args, dict(brave.env)) == (
        "npx",
        ("-y", "@modelcontextprotocol/server-brave-search"),
        {"BRAVE_API_KEY": "BSA-test-key"},
    )
    fetch = config.get("fetch")
    assert (fetch.enabled, fetch.tool_timeout_sec) == (False, 90.0)  # Zed's timeout: seconds per tool call
    assert isinstance(config.get("remote-docs"), HttpServerConfig)
    with pytest.raises(ConfigError, match="provided by a Zed extension"):
        config.get("mcp-server-context7")


def test_zed_remote_servers_are_refused(tmp_path: Path) -> None:
    text = '{"context_servers": {"r": {"command": "x", "remote": true}, "l": {"command": "y", "remote": false}}}'
    config = load_config(place(tmp_path, "zed_settings.json", text), environ={})

    assert list(config.servers) == ["l"]
    with pytest.raises(ConfigError, match=r"field 'remote': runs on the remote development host"):
        config.get("r")


def test_vscode_refusals(tmp_path: Path) -> None:
    servers = {
        "sandboxed": {"command": "x", "sandboxEnabled": True, "sandbox": {"network": {"allowedDomains": []}}},
        "unsandboxed": {"command": "x", "sandboxEnabled": False},
        "events": {"type": "sse", "url": "http://localhost:1/sse"},
        "envfile": {"command": "x", "envFile": "${workspaceFolder}/.env"},
        "unset": {"command": "x", "env": {"A": None}},
        "asks": {"command": "x", "args": ["${command:pickFile}"]},
    }
    config = load_config(place(tmp_path, "vscode_mcp.json", json.dumps({"servers": servers})), environ={})

    assert list(config.servers) == ["unsandboxed"]
    reasons = {name: (error.field, error.reason) for name, error in config.unusable.items()}
    assert reasons["sandboxed"][0] == "sandboxEnabled" and "sandbox" in reasons["sandboxed"][1]
    assert reasons["events"] == ("type", 'the SSE transport is not supported; use Streamable HTTP (type "http")')
    assert reasons["envfile"][0] == "envFile"
    assert reasons["unset"][0] == "env" and "null" in reasons["unset"][1]
    assert reasons["asks"][0] == "args" and "${command:pickFile} is answered by VS Code" in reasons["asks"][1]


def test_vscode_reads_the_mcp_servers_spelling_too(tmp_path: Path) -> None:
    text = '{"mcpServers": {"a": {"command": "old"}, "b": {"command": "b"}}, "servers": {"a": {"command": "new"}}}'
    config = load_config(place(tmp_path, "vscode_mcp.json", text), environ={})

    assert {name: server.command for name, server in config.servers.items()} == {"a": "new", "b": "b"}


def test_a_user_wide_file_names_the_clients_workspace(tmp_path: Path) -> None:
    """${workspaceFolder} in ~/.cursor/mcp.json is the folder of the client asking (the project given), and an error
    when there is none."""
    path = tmp_path / ".cursor" / "mcp.json"
    path.parent.mkdir()
    path.write_text('{"mcpServers": {"files": {"command": "fs", "args": ["${workspaceFolder}"]}}}')

    config = load_config(path, project=tmp_path / "work", environ={}, home=tmp_path)
    assert config.get("files").args == (str(tmp_path / "work"),)
    with pytest.raises(ConfigError, match=r"field 'args': item 0: \$\{workspaceFolder\} names the workspace folder"):
        load_config(path, environ={}, home=tmp_path).get("files")


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("sample", "text", "server", "field", "reason"),
    [
        ("cursor_mcp.json", '{"mcpServers": {"pg": {"comand": "npx"}}}', "pg", "comand", "did you mean 'command'?"),
        ("vscode_mcp.json", '{"servers": {"gh": {"command": "x", "arg": []}}}', "gh", "arg", "did you mean 'args'?"),
        ("gemini_settings.json", '{"mcpServers": {"g": {"command": "x", "timeout": "5s"}}}', "g", "timeout", ""),
        (
            "gemini_settings.json",
            '{"mcpServers": {"g": {"command": "x", "includeTools": "read"}}}',
            "g",
            "includeTools",
            "must be a list of strings",
        ),
        (
            "windsurf_mcp_config.json",
            '{"mcpServers": {"w": {"serverUrl": "ftp://x"}}}',
            "w",
            "serverUrl",
            "http:// or https://",
        ),
        ("zed_settings.json", '{"context_servers": {"z": {"command": "x", "enviroment": {}}}}', "z", "enviroment", ""),
        (
            "zed_settings.json",
            '{"context_servers": {"z": {"command": {"path": "x", "args": "-v"}}}}',
            "z",
            "command.args",
            "must be a list of strings",
        ),
    ],
)
def test_a_bad_entry_fails_the_file_naming_server_and_field_as_written(
    tmp_path: Path, sample: str, text: str, server: str, field: str, reason: str
) -> None:
    path = place(tmp_path, sample, text)

    error = error_of(path)

    assert (error.file, error.server, error.field) == (str(path), server, field)
    assert str(error).startswith(f"{path}: server {server!r}, field {field!r}: ")
    assert reason in error.reason


def test_syntax_errors_point_into_the_file_past_comments(tmp_path: Path) -> None:
    text = '{\n  // a comment\n  "context_servers": {\n    /* another */ "z": {"command": "x",, }\n  }\n}\n'
    error = error_of(place(tmp_path, "zed_settings.json", text))
    assert "invalid JSON at line 4, column 42" in str(error)  # the } after ",," (a trailing comma is fine)

    error = error_of(place(tmp_path, "vscode_mcp.json", '{"servers": {} /* never closed\n}'))
    assert "a /* comment that never ends (line 1)" in str(error)


def test_hosts_that_read_plain_json_get_plain_json(tmp_path: Path) -> None:
    """Claude Code rejects comments in .mcp.json, so mcpshare does too (a file that does not run there must not
    seem to work here); the error says why."""
    path = tmp_path / ".mcp.json"
    path.write_text('{\n  // servers\n  "mcpServers": {}\n}\n')

    with pytest.raises(ConfigError, match=r"invalid JSON at line 2, column 3: .*\(comments are not allowed"):
        load_config(path)


def test_the_dialect_of_an_unnamed_file_is_read_from_its_content(tmp_path: Path) -> None:
    vscode, zed, plain = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    vscode.write_text('{"servers": {"v": {"command": "x", "env": {"N": 1}}}, "inputs": [] // VS Code\n}')
    zed.write_text('{"context_servers": {"z": {"command": {"path": "zz"}}},}')
    plain.write_text('{"mcpServers": {"m": {"command": "m"}}}')

    assert load_config(vscode).get("v").env == {"N": "1"}
    assert load_config(zed).get("z").command == "zz"
    assert load_config(plain).get("m").command == "m"
    assert formats.dialect_by_content({"servers": {}}) is formats.VSCODE


def test_check_config_reads_every_project_of_claude_json(tmp_path: Path) -> None:
    """wrap validates a file before it edits it; in ~/.claude.json that includes projects other than the current."""
    path = tmp_path / ".claude.json"
    path.write_text(json.dumps({"mcpServers": {}, "projects": {"/p": {"mcpServers": {"b": {"comand": "x"}}}}}))

    assert load_config(path).servers == {}  # no project asked for: only the top level is read
    with pytest.raises(ConfigError, match=r"server 'b', field 'comand'"):
        check_config(path)


def test_blank_comments_keeps_offsets_and_strings() -> None:
    text = '{"url": "https://x//y", /* c */ "a": [1, 2,], // end\n"b": "/*not*/"}'
    blanked = formats.blank_comments(text, trailing_commas=True)

    assert len(blanked) == len(text) and blanked.count("\n") == text.count("\n")
    assert json.loads(blanked) == {"url": "https://x//y", "a": [1, 2], "b": "/*not*/"}


# ---------------------------------------------------------------------------------------------- the broker's sources


def test_the_broker_finds_servers_in_every_hosts_file(tmp_path: Path) -> None:
    """The user's files and the project's, merged in order: a project's definition of a name wins over the user's."""
    home = tmp_path
    for sample in PLACES:
        place(home, sample)
    (home / "proj" / ".gemini").mkdir()
    (home / "proj" / ".gemini" / "settings.json").write_text('{"mcpServers": {"git": {"command": "project-git"}}}')
    source = ConfigSource(home=home)

    found = default_config_paths(home=home, cwd=home / "proj", environ={})
    assert [path.relative_to(home).as_posix() for path in found] == [
        ".codeium/windsurf/mcp_config.json",
        ".gemini/settings.json",
        ".config/zed/settings.json",
        "proj/.gemini/settings.json",
        "proj/.vscode/mcp.json",
        "proj/.cursor/mcp.json",
    ]
    config = source.load(home / "proj")
    assert config.get("git").command == "project-git"
    assert config.get("sqlite").command == "uvx"  # Zed's
    assert config.get("brave-search").args[-1] == "@modelcontextprotocol/server-brave-search"
    hello = {"server": "project-tools", "cwd": str(home / "proj")}
    assert server_config(hello, source).args[2] == f"{home / 'proj'}/tools"
