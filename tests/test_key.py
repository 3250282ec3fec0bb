"""Pool keys: equal exactly when the process they would start is the same, and never a leak of secrets."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcpshare.config import HttpServerConfig, StdioServerConfig
from mcpshare.key import PoolKey, child_environment, make_key

SECRET = "sk-live-9f8e7d6c5b4a39281706"
NO_PATH: dict[str, str] = {"PATH": ""}  # keeps keys independent of what the test machine has installed


def stdio(**fields: object) -> StdioServerConfig:
    """A stdio config with a fixed command, overridable field by field."""
    return StdioServerConfig(**{"name": "srv", "command": "server-everything", **fields})  # type: ignore[arg-type]


def executable(path: Path) -> Path:
    """Create an executable file (what shutil.which looks for)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


# ---------------------------------------------------------------------------------------------- what shares


def test_display_name_is_not_part_of_the_key(tmp_path: Path) -> None:
    one = make_key(stdio(name="github"), workspace=tmp_path, environ=NO_PATH)
    two = make_key(stdio(name="gh"), workspace=tmp_path, environ=NO_PATH)

    assert one == two
    assert one.digest() == two.digest()


env_tables = st.dictionaries(
    st.text(st.characters(categories=["Lu", "Nd"], include_characters="_"), min_size=1, max_size=8),
    st.text(max_size=12).filter(lambda value: "\0" not in value),
    max_size=6,
)


@given(env=env_tables, data=st.data())
def test_env_insertion_order_does_not_matter(env: dict[str, str], data: st.DataObject) -> None:
    shuffled = dict(data.draw(st.permutations(list(env.items()))))

    one = make_key(stdio(env=env), workspace="/", environ=NO_PATH)
    two = make_key(stdio(env=shuffled), workspace="/", environ=NO_PATH)

    assert one == two
    assert one.digest() == two.digest()
    assert hash(one) == hash(two)


def test_another_token_is_another_key(tmp_path: Path) -> None:
    alice = make_key(stdio(env={"API_TOKEN": "token-alice"}), workspace=tmp_path, environ=NO_PATH)
    bob = make_key(stdio(env={"API_TOKEN": "token-bob"}), workspace=tmp_path, environ=NO_PATH)

    assert alice != bob
    assert alice.digest() != bob.digest()


def test_args_order_matters(tmp_path: Path) -> None:
    one = make_key(stdio(args=("--read-only", "--verbose")), workspace=tmp_path, environ=NO_PATH)
    two = make_key(stdio(args=("--verbose", "--read-only")), workspace=tmp_path, environ=NO_PATH)

    assert one != two
    assert one.args == ("--read-only", "--verbose")


def test_sandbox_label_is_part_of_the_key(tmp_path: Path) -> None:
    plain = make_key(stdio(), workspace=tmp_path, environ=NO_PATH)
    boxed = make_key(stdio(), workspace=tmp_path, environ=NO_PATH, sandbox="read-only")

    assert plain != boxed
    assert boxed.sandbox == "read-only"


# ---------------------------------------------------------------------------------------------- command resolution


def test_bare_command_is_resolved_on_path(tmp_path: Path) -> None:
    program = executable(tmp_path / "bin" / "server-everything")

    key = make_key(stdio(), workspace=tmp_path, environ={"PATH": f"/nonexistent{os.pathsep}{tmp_path / 'bin'}"})

    assert key.command == str(program)


def test_explicit_env_path_wins_over_the_requester_path(tmp_path: Path) -> None:
    mine = executable(tmp_path / "mine" / "server-everything")
    executable(tmp_path / "theirs" / "server-everything")

    key = make_key(
        stdio(env={"PATH": str(tmp_path / "mine")}), workspace=tmp_path, environ={"PATH": str(tmp_path / "theirs")}
    )

    assert key.command == str(mine)


def test_same_program_through_two_path_spellings_shares(tmp_path: Path) -> None:
    executable(tmp_path / "bin" / "server-everything")

    one = make_key(stdio(), workspace=tmp_path, environ={"PATH": str(tmp_path / "bin")})
    two = make_key(stdio(), workspace=tmp_path, environ={"PATH": f"{tmp_path}/elsewhere{os.pathsep}{tmp_path}/bin/"})

    assert one == two


def test_unknown_command_is_kept_as_given(tmp_path: Path) -> None:
    key = make_key(stdio(command="no-such-program-xyz"), workspace=tmp_path, environ=NO_PATH)

    assert key.command == "no-such-program-xyz"


def test_relative_command_path_is_taken_from_the_process_cwd(tmp_path: Path) -> None:
    key = make_key(stdio(command="./bin/server", cwd="tools"), workspace=tmp_path, environ=NO_PATH)

    assert key.command == os.path.join(os.path.realpath(tmp_path), "tools", "bin", "server")


def test_command_symlink_is_not_resolved(tmp_path: Path) -> None:
    """A venv's python started through its target loses the venv: keep the path the user gave."""
    target = executable(tmp_path / "real" / "python3")
    link = tmp_path / "venv" / "bin" / "python"
    link.parent.mkdir(parents=True)
    link.symlink_to(target)

    key = make_key(stdio(command=str(link)), workspace=tmp_path, environ=NO_PATH)

    assert key.command == str(link)


# ---------------------------------------------------------------------------------------------- scopes and cwd


def test_workspace_scope_keys_on_the_workspace(tmp_path: Path) -> None:
    one = make_key(stdio(), workspace=tmp_path / "a", environ=NO_PATH)
    two = make_key(stdio(), workspace=tmp_path / "b", environ=NO_PATH)

    assert one != two
    assert one.cwd == os.path.realpath(tmp_path / "a")
    assert one.scope == "workspace"


def test_workspace_through_a_symlink_shares_with_its_target(tmp_path: Path) -> None:
    real = tmp_path / "project"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)

    assert make_key(stdio(), workspace=tmp_path / "link", environ=NO_PATH) == make_key(
        stdio(), workspace=real, environ=NO_PATH
    )


def test_relative_config_cwd_is_resolved_against_the_workspace(tmp_path: Path) -> None:
    key = make_key(stdio(cwd="docs"), workspace=tmp_path, environ=NO_PATH)

    assert key.cwd == os.path.join(os.path.realpath(tmp_path), "docs")


def test_absolute_config_cwd_is_used_as_is(tmp_path: Path) -> None:
    one = make_key(stdio(cwd=str(tmp_path)), workspace="/a", environ=NO_PATH)
    two = make_key(stdio(cwd=str(tmp_path)), workspace="/b", environ=NO_PATH)

    assert one == two
    assert one.cwd == os.path.realpath(tmp_path)


def test_workspace_scope_needs_a_workspace() -> None:
    with pytest.raises(ValueError, match="needs a workspace"):
        make_key(stdio(), workspace=None, environ=NO_PATH)


def test_global_scope_ignores_the_workspace(tmp_path: Path) -> None:
    one = make_key(stdio(share="global"), workspace=tmp_path / "a", environ=NO_PATH)
    two = make_key(stdio(share="global"), workspace=tmp_path / "b", environ=NO_PATH)
    three = make_key(stdio(share="global"), workspace=None, environ=NO_PATH)

    assert one == two == three
    assert one.cwd is None


def test_global_scope_keeps_an_explicit_cwd(tmp_path: Path) -> None:
    key = make_key(stdio(share="global", cwd="data"), workspace=tmp_path, environ=NO_PATH)

    assert key.cwd == os.path.join(os.path.realpath(tmp_path), "data")


def test_thread_scope_requires_an_instance(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="instance"):
        make_key(stdio(share="thread"), workspace=tmp_path, environ=NO_PATH)


def test_thread_scope_instances_never_share(tmp_path: Path) -> None:
    one = make_key(stdio(share="thread"), workspace=tmp_path, environ=NO_PATH, instance="thread-1")
    two = make_key(stdio(share="thread"), workspace=tmp_path, environ=NO_PATH, instance="thread-2")

    assert one != two
    assert one.cwd == two.cwd == os.path.realpath(tmp_path)


def test_instance_is_ignored_outside_thread_scope(tmp_path: Path) -> None:
    one = make_key(stdio(), workspace=tmp_path, environ=NO_PATH, instance="thread-1")
    two = make_key(stdio(), workspace=tmp_path, environ=NO_PATH, instance="thread-2")

    assert one == two
    assert one.instance is None


def test_http_servers_have_no_pool_key(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="only stdio"):
        make_key(HttpServerConfig(name="h", url="https://x"), workspace=tmp_path)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- environment


def test_env_vars_are_read_from_the_given_environment(tmp_path: Path) -> None:
    config = stdio(env_vars=("GITHUB_TOKEN", "ABSENT"))

    alice = make_key(config, workspace=tmp_path, environ={"PATH": "", "GITHUB_TOKEN": "ghp_alice"})
    bob = make_key(config, workspace=tmp_path, environ={"PATH": "", "GITHUB_TOKEN": "ghp_bob"})

    assert alice.env == (("GITHUB_TOKEN", "ghp_alice"),)  # ABSENT is simply left out
    assert alice != bob


def test_explicit_env_wins_over_passthrough(tmp_path: Path) -> None:
    config = stdio(env={"MODE": "config"}, env_vars=("MODE",))

    key = make_key(config, workspace=tmp_path, environ={"PATH": "", "MODE": "caller"})

    assert key.env == (("MODE", "config"),)


def test_environ_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCPSHARE_TEST_PASSTHROUGH", "from-os")

    key = make_key(stdio(env_vars=("MCPSHARE_TEST_PASSTHROUGH",)), workspace=tmp_path)

    assert ("MCPSHARE_TEST_PASSTHROUGH", "from-os") in key.env


def test_child_environment_puts_key_env_over_base(tmp_path: Path) -> None:
    key = make_key(stdio(env={"A": "key", "B": "key"}), workspace=tmp_path, environ=NO_PATH)

    assert child_environment(key, {"A": "base", "C": "base"}) == {"A": "key", "B": "key", "C": "base"}


def test_a_declared_variable_the_requester_lacks_is_absent_not_inherited(tmp_path: Path) -> None:
    """The base is the environment of whoever started the broker: a variable the config declares comes from the
    requester or not at all, so the key says exactly what the process gets."""
    config = stdio(env={"A": "key"}, env_vars=("TOKEN",))
    without = make_key(config, workspace=tmp_path, environ=NO_PATH)
    assert without.declared == ("A", "TOKEN")
    base = {"TOKEN": "someone else's", "HOME": "/home/u"}
    assert child_environment(without, base) == {"A": "key", "HOME": "/home/u"}
    with_token = make_key(config, workspace=tmp_path, environ={**NO_PATH, "TOKEN": "mine"})
    assert child_environment(with_token, base) == {"A": "key", "HOME": "/home/u", "TOKEN": "mine"}
    assert with_token != without


# ---------------------------------------------------------------------------------------------- identity and secrets


def test_repr_and_str_reveal_neither_env_values_nor_args(tmp_path: Path) -> None:
    config = stdio(args=("--api-key", f"arg-{SECRET}"), env={"API_TOKEN": SECRET})
    key = make_key(config, workspace=tmp_path, environ=NO_PATH)

    for text in (repr(key), str(key)):
        assert SECRET not in text
        assert "--api-key" not in text
        assert text == f"PoolKey(server-everything#{key.short()} scope=workspace)"


def test_digest_is_a_full_sha256_and_short_its_prefix(tmp_path: Path) -> None:
    key = make_key(stdio(), workspace=tmp_path, environ=NO_PATH)

    assert len(key.digest()) == 64
    assert int(key.digest(), 16) >= 0
    assert key.short() == key.digest()[:10]


def test_digest_is_stable_for_a_fixed_key() -> None:
    key = PoolKey(command="/usr/bin/node", args=("server.js",), env=(("A", "1"),), cwd="/w", scope="workspace")

    assert key.digest() == PoolKey("/usr/bin/node", ("server.js",), (("A", "1"),), "/w", "workspace").digest()
    assert key.digest() != PoolKey("/usr/bin/node", ("server.js",), (("A", "1"),), "/w", "global").digest()


def test_direct_construction_canonicalizes_env_order() -> None:
    one = PoolKey("/bin/x", (), (("B", "2"), ("A", "1")), None, "global")
    two = PoolKey("/bin/x", (), (("A", "1"), ("B", "2")), None, "global")

    assert one == two
    assert one.env == (("A", "1"), ("B", "2"))
