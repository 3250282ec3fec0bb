"""Qualified tool names: ``mcp__<server>__<tool>``, sanitized, at most 64 characters, unique, order-independent.

Pure functions, no processes: the ThreadManager tests (test_threads.py) show the same names on real servers.
"""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpshare import naming
from mcpshare.naming import MAX_NAME, assign_names, hashed_name, plain_name, sanitize

SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
HASHED = re.compile(r"_[0-9a-f]{8}$")


def test_plain_names_for_ordinary_servers_and_tools() -> None:
    names = assign_names([("github", "create_issue"), ("files", "read-file")])
    assert names == {
        "mcp__github__create_issue": ("github", "create_issue"),
        "mcp__files__read-file": ("files", "read-file"),
    }


def test_unsafe_characters_become_underscores() -> None:
    assert sanitize("my.server v2/é") == "my_server_v2__"
    assert plain_name("my.server", "get weather!") == "mcp__my_server__get_weather_"
    assert list(assign_names([("a.b", "c d")])) == ["mcp__a_b__c_d"]


def test_servers_that_sanitize_alike_get_distinct_hashed_names_and_nobody_else_does() -> None:
    names = assign_names([("my.server", "echo"), ("my_server", "echo"), ("other", "echo")])
    clashing = {name: pair for name, pair in names.items() if pair[1] == "echo" and pair[0] != "other"}
    assert len(clashing) == 2
    for name in clashing:
        assert name.startswith("mcp__my_server__echo_") and HASHED.search(name)
    assert set(clashing.values()) == {("my.server", "echo"), ("my_server", "echo")}
    assert names["mcp__other__echo"] == ("other", "echo"), "a tool that clashes with nothing keeps its plain name"


def test_separator_inside_names_cannot_make_two_tools_one() -> None:
    # "a__b" + "c" and "a" + "b__c" both read mcp__a__b__c.
    names = assign_names([("a__b", "c"), ("a", "b__c")])
    assert len(names) == 2 and all(HASHED.search(name) for name in names)


def test_names_longer_than_64_are_cut_and_hashed_keeping_the_readable_start() -> None:
    tool = "summarize_" + "very_" * 20 + "long_document"
    (name,) = assign_names([("docs", tool)])
    assert len(name) == MAX_NAME
    assert name.startswith("mcp__docs__summarize_very_very")
    assert HASHED.search(name)
    assert name == hashed_name("docs", tool)


def test_two_long_names_with_the_same_start_stay_distinct() -> None:
    prefix = "x" * 80
    names = assign_names([("srv", prefix + "_one"), ("srv", prefix + "_two")])
    assert len(names) == 2 and all(len(name) == MAX_NAME for name in names)


def test_exactly_64_characters_is_still_plain() -> None:
    tool = "t" * (MAX_NAME - len("mcp__s__"))
    assert list(assign_names([("s", tool)])) == [f"mcp__s__{tool}"]
    assert len(next(iter(assign_names([("s", tool + "t")])))) == MAX_NAME


def test_a_plain_name_equal_to_another_tools_hashed_name_is_resolved() -> None:
    long_tool = "t" * 70
    taken = hashed_name("s", long_tool)  # what the long tool would be called
    impostor = taken.removeprefix("mcp__s__")  # a tool whose *plain* name is exactly that
    assert plain_name("s", impostor) == taken and len(taken) <= MAX_NAME
    names = assign_names([("s", long_tool), ("s", impostor), ("s", "plain")])
    assert len(names) == 3
    assert set(names.values()) == {("s", long_tool), ("s", impostor), ("s", "plain")}
    assert names["mcp__s__plain"] == ("s", "plain")


def test_names_do_not_depend_on_listing_order_and_duplicates_collapse() -> None:
    pairs = [("my.server", "echo"), ("my_server", "echo"), ("srv", "x" * 90), ("srv", "echo"), ("a", "b")]
    expected = assign_names(pairs)
    for seed in range(5):
        shuffled = pairs * 2
        random.Random(seed).shuffle(shuffled)
        assert assign_names(shuffled) == expected


def test_a_suffix_collision_falls_back_to_a_longer_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    real = naming._digest

    def weak(server: str, tool: str, length: int) -> str:
        return "0" * length if length == 8 else real(server, tool, length)  # every 8-digit suffix collides

    monkeypatch.setattr(naming, "_digest", weak)
    names = assign_names([("s", "y" * 80 + "1"), ("s", "y" * 80 + "2")])
    assert len(names) == 2 and all(len(n) == MAX_NAME and re.search(r"_[0-9a-f]{16}$", n) for n in names)


def test_an_unresolvable_clash_is_an_error_not_a_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(naming, "_digest", lambda server, tool, length: "0" * length)
    with pytest.raises(ValueError, match="cannot give distinct names"):
        assign_names([("s", "y" * 80 + "1"), ("s", "y" * 80 + "2")])


names_text = st.text(alphabet=st.sampled_from("ab._-_ é/Z9"), min_size=0, max_size=70)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(names_text, names_text), max_size=25))
def test_every_assignment_is_safe_unique_and_maps_back(pairs: list[tuple[str, str]]) -> None:
    names = assign_names(pairs)
    assert all(SAFE.match(name) for name in names), names
    assert sorted(names.values()) == sorted(set(pairs)), "each distinct pair gets exactly one name"
    assert assign_names(reversed(pairs)) == names
    for name, (server, tool) in names.items():
        if name != plain_name(server, tool):
            assert name == hashed_name(server, tool) or re.search(r"_[0-9a-f]{16}$", name)
