"""The ``MCPSHARE_*`` environment variables, and the one rule by which each is read.

The rule, for every variable here:

- unset, or only spaces: the default;
- a switch (``flag``) is on for ``1``, ``true``, ``yes``, ``on`` and off for ``0``, ``false``, ``no``, ``off``
  (any case, spaces around ignored);
- seconds are a number >= 0; a choice is one of its listed words (any case);
- anything else is an error that names the variable, the value and what it accepts (:class:`SwitchError`): the shim
  prints it and exits 2, ``mcpshare serve`` too, instead of guessing what was meant.

The shim checks every variable here before it starts a broker (:func:`problems`), so a broker never starts with a
value it would refuse. Standard library only: the shim imports it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

ON = ("1", "true", "yes", "on")
OFF = ("0", "false", "no", "off")


class SwitchError(ValueError):
    """A ``MCPSHARE_*`` variable with a value its rule does not accept."""


class Variable:
    """One variable: its name, kind (``flag``, ``seconds``, ``choice`` or ``path``), default and meaning.

    A plain class, not a dataclass: :mod:`dataclasses` imports :mod:`inspect`, milliseconds the shim does not spend.
    """

    __slots__ = ("choices", "default", "doc", "kind", "name")

    def __init__(self, name: str, kind: str, default: object, doc: str, choices: tuple[str, ...] = ()) -> None:
        self.name = name
        self.kind = kind
        self.default = default
        self.doc = doc
        self.choices = choices


NO_AUTOSTART = "MCPSHARE_NO_AUTOSTART"
PASS_STDIO = "MCPSHARE_PASS_STDIO"
WAITER = "MCPSHARE_WAITER"
CONNECT_TIMEOUT = "MCPSHARE_CONNECT_TIMEOUT"
UVLOOP = "MCPSHARE_UVLOOP"
IDLE_GRACE = "MCPSHARE_IDLE_GRACE"
EXIT_IDLE = "MCPSHARE_BROKER_EXIT_IDLE"
RUNTIME_DIR = "MCPSHARE_RUNTIME_DIR"

VARIABLES: dict[str, Variable] = {
    variable.name: variable
    for variable in (
        Variable(NO_AUTOSTART, "flag", False, "the shim never starts a broker (as `connect --no-autostart`)"),
        Variable(
            PASS_STDIO, "flag", True, "the shim hands its stdin/stdout to the broker; off: it relays the bytes itself"
        ),
        Variable(
            WAITER,
            "choice",
            "sh",
            "what waits for a handed-over session: /bin/sh (0.1 MB) or the Python interpreter (4 MB)",
            ("sh", "python"),
        ),
        Variable(CONNECT_TIMEOUT, "seconds", 10.0, "how long the shim waits for a broker to come up"),
        Variable(UVLOOP, "flag", True, "the broker runs on uvloop when it is installed; off: on asyncio's loop"),
        Variable(IDLE_GRACE, "seconds", None, "how long a server with no client is kept (serve --idle-grace)"),
        Variable(EXIT_IDLE, "seconds", None, "how long an autostarted broker with no client and no server lives"),
        Variable(RUNTIME_DIR, "path", None, "the runtime directory (socket, lock, token, log) instead of the uid's"),
    )
}


def _text(name: str, environ: Mapping[str, str] | None) -> str:
    return (os.environ if environ is None else environ).get(name, "").strip()


def flag(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """The switch ``name`` (its default when unset); :class:`SwitchError` for a value that is neither on nor off."""
    default = VARIABLES[name].default
    assert isinstance(default, bool)
    text = _text(name, environ).lower()
    if not text:
        return default
    if text in ON:
        return True
    if text in OFF:
        return False
    raise SwitchError(f"{name}={text!r} is not a switch: use one of {'/'.join(ON)} or {'/'.join(OFF)}")


def seconds(name: str, default: float, environ: Mapping[str, str] | None = None) -> float:
    """A number of seconds >= 0 (``default`` when unset); :class:`SwitchError` otherwise."""
    text = _text(name, environ)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise SwitchError(f"{name}={text!r} is not a number of seconds (a number >= 0, e.g. 30 or 0.5)")
    return value


def choice(name: str, environ: Mapping[str, str] | None = None) -> str:
    """One of the variable's words (its default when unset); :class:`SwitchError` otherwise."""
    variable = VARIABLES[name]
    text = _text(name, environ).lower()
    if not text:
        return str(variable.default)
    if text in variable.choices:
        return text
    raise SwitchError(f"{name}={text!r} is not one of: {', '.join(variable.choices)}")


def problems(environ: Mapping[str, str] | None = None) -> list[str]:
    """What is wrong with the ``MCPSHARE_*`` variables set in ``environ``, one message each (empty: nothing)."""
    found = []
    for variable in VARIABLES.values():
        try:
            if variable.kind == "flag":
                flag(variable.name, environ)
            elif variable.kind == "seconds":
                seconds(variable.name, 0.0, environ)
            elif variable.kind == "choice":
                choice(variable.name, environ)
            elif variable.kind == "path":
                text = _text(variable.name, environ)
                if text and not os.path.isabs(os.path.expanduser(text)):
                    raise SwitchError(f"{variable.name}={text!r} is not an absolute path")
        except SwitchError as error:
            found.append(str(error))
    return found
