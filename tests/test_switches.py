"""The ``MCPSHARE_*`` variables: one rule for all (:mod:`mcpshare.switches`), and what a wrong value does to the shim
and to ``mcpshare serve`` (a clear error, nothing started)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mcpshare import shim, switches
from test_broker import BrokerEnv

pytestmark = pytest.mark.timeout(60)

ENTRY = [sys.executable, "-c", "import sys; from mcpshare.entry import main; sys.exit(main())"]


@pytest.mark.parametrize("text", ["1", "true", "YES", " on ", "True"])
def test_every_flag_is_on_for_the_same_words(text: str) -> None:
    for name in (switches.NO_AUTOSTART, switches.PASS_STDIO, switches.UVLOOP):
        assert switches.flag(name, {name: text}) is True


@pytest.mark.parametrize("text", ["0", "false", "NO", " off", "False"])
def test_every_flag_is_off_for_the_same_words(text: str) -> None:
    for name in (switches.NO_AUTOSTART, switches.PASS_STDIO, switches.UVLOOP):
        assert switches.flag(name, {name: text}) is False


def test_unset_or_blank_is_the_default() -> None:
    for environ in ({}, {switches.PASS_STDIO: "  ", switches.NO_AUTOSTART: "", switches.WAITER: ""}):
        assert switches.flag(switches.PASS_STDIO, environ) is True
        assert switches.flag(switches.NO_AUTOSTART, environ) is False
        assert switches.choice(switches.WAITER, environ) == "sh"
        assert switches.seconds(switches.CONNECT_TIMEOUT, 10.0, environ) == 10.0
    assert switches.problems({}) == []


def test_no_autostart_false_keeps_autostart() -> None:
    """Before the one rule, any value but "" or "0" turned autostart off: ``MCPSHARE_NO_AUTOSTART=false`` did too."""
    assert shim.parse_args(["gh"], {switches.NO_AUTOSTART: "false"}).autostart is True
    assert shim.parse_args(["gh"], {switches.NO_AUTOSTART: "off"}).autostart is True
    assert shim.parse_args(["gh"], {switches.NO_AUTOSTART: "yes"}).autostart is False


def test_pass_stdio_off_and_waiter_python_are_read_by_the_same_rule() -> None:
    assert shim.can_pass_stdio({switches.PASS_STDIO: "OFF"}) is False  # was only 0, false or no
    assert shim.waiter({switches.WAITER: "Python"}) is None


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        (switches.PASS_STDIO, "maybe", "MCPSHARE_PASS_STDIO='maybe' is not a switch: use one of 1/true/yes/on or"),
        (switches.WAITER, "bash", "MCPSHARE_WAITER='bash' is not one of: sh, python"),
        (switches.CONNECT_TIMEOUT, "-1", "MCPSHARE_CONNECT_TIMEOUT='-1' is not a number of seconds"),
        (switches.IDLE_GRACE, "ten", "MCPSHARE_IDLE_GRACE='ten' is not a number of seconds"),
        (switches.EXIT_IDLE, "nan", "MCPSHARE_BROKER_EXIT_IDLE='nan' is not a number of seconds"),
        (switches.RUNTIME_DIR, "run/here", "MCPSHARE_RUNTIME_DIR='run/here' is not an absolute path"),
    ],
)
def test_a_wrong_value_names_the_variable_and_what_it_accepts(name: str, text: str, says: str) -> None:
    assert [problem for problem in switches.problems({name: text}) if problem.startswith(says)] != []


def test_a_shim_with_a_wrong_value_says_so_and_starts_nothing(broker_env: BrokerEnv) -> None:
    """Exit 2 with the message, and no broker (a broker would have refused the same value once started)."""
    done = subprocess.run(
        [*ENTRY, "connect", "echo", "--", sys.executable, "-c", "pass"],
        env=broker_env.run_env(MCPSHARE_IDLE_GRACE="ten", MCPSHARE_PASS_STDIO="maybe"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
        cwd=broker_env.root,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert any(line.startswith("mcpshare connect: MCPSHARE_PASS_STDIO='maybe' is not a switch") for line in lines)
    assert any(line.startswith("mcpshare connect: MCPSHARE_IDLE_GRACE='ten' is not a number") for line in lines)
    assert broker_env.brokers() == [] and broker_env.broker_pid() is None


def test_serve_with_a_wrong_value_exits_2_naming_it(broker_env: BrokerEnv) -> None:
    done = subprocess.run(
        [*ENTRY, "serve"],
        env=broker_env.run_env(MCPSHARE_UVLOOP="sometimes"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
        cwd=broker_env.root,
    )
    assert done.returncode == 2 and "MCPSHARE_UVLOOP='sometimes' is not a switch" in done.stderr, done.stderr
    assert broker_env.brokers() == []
