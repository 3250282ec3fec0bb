"""The examples run as documented, share one process, and leave none behind (the README quotes them)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import psutil
import pytest

from conftest import require_module, require_node_entry
from helpers import REPO_ROOT, is_running


@pytest.mark.timeout(90)
def test_thread_manager_example_shares_one_process_and_cleans_up() -> None:
    require_node_entry("server-filesystem")
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "thread_manager.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "mcp__files__list_directory" in done.stdout or "mcp__files__" in done.stdout
    assert "[FILE] notes.txt" in done.stdout
    match = re.search(r"files pid (\d+) ready leases: 2", done.stdout)
    assert match, done.stdout
    assert not is_running(int(match.group(1))), "the shared server outlived the example"


# ---------------------------------------------------------------------------------------------- framework drop-ins

SERVER_SCRIPT = str(REPO_ROOT / "tests" / "servers" / "testserver.py")
FRAMEWORK_EXAMPLES = [
    ("openai_agents_shared.py", "agents", "openai-agents"),
    ("fastmcp_shared.py", "fastmcp", "fastmcp"),
    ("pydantic_ai_shared.py", "pydantic_ai", "pydantic-ai"),
]


def _example_servers(since: float) -> set[int]:
    """Pids of live test-server processes started since ``since`` (what an example started, found through the OS)."""
    found = set()
    for proc in psutil.process_iter(["pid", "cmdline", "create_time", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.info["create_time"] < since:
                continue
            if SERVER_SCRIPT in (proc.info["cmdline"] or ()):
                found.add(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _run_example(script: str, *args: str) -> tuple[subprocess.CompletedProcess[str], set[int]]:
    """Run an example to its end while sampling its server processes; checks none is left afterwards."""
    since = time.time() - 1  # create_time has a coarse clock; nothing else starts this script meanwhile
    seen: set[int] = set()
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            seen.update(_example_servers(since))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        done = subprocess.run(
            [sys.executable, str(REPO_ROOT / "examples" / script), *args],
            capture_output=True,
            text=True,
            timeout=100,
            check=False,
        )
    finally:
        stop.set()
        sampler.join()
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 5  # a framework's own stdio client may not wait for its child's exit
    while (left := [pid for pid in seen if is_running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"{script} left server processes behind: {left}"
    return done, seen


def _answers(stdout: str) -> dict[str, str]:
    return dict(re.findall(r"^(run-\d+): echo answered (.+)$", stdout, flags=re.MULTILINE))


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("script", "module", "extra"), FRAMEWORK_EXAMPLES)
def test_framework_example_runs_ten_concurrent_runs_on_one_process(script: str, module: str, extra: str) -> None:
    require_module(module, extra)
    done, seen = _run_example(script)
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "server processes: 1 for 10 concurrent runs", done.stdout
    assert len(seen) == 1, f"the OS saw {len(seen)} server processes: {seen}"
    answers = _answers(done.stdout)
    assert sorted(answers) == sorted(f"run-{i}" for i in range(10))
    for run, answer in answers.items():  # each run got its own answer, never another run's
        assert re.findall(r"run-\d+", answer) and set(re.findall(r"run-\d+", answer)) == {run}, (run, answer)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("script", "module", "extra"), FRAMEWORK_EXAMPLES)
def test_framework_example_unshared_runs_one_process_per_run(script: str, module: str, extra: str) -> None:
    """The same runs on the framework's own stdio class: ten processes. What the one-line swap saves, and proof that
    the example's count can see more than one."""
    require_module(module, extra)
    done, seen = _run_example(script, "--unshared")
    assert done.stdout.strip().splitlines()[-1] == "server processes: 10 for 10 concurrent runs", done.stdout
    assert len(seen) == 10
    assert sorted(_answers(done.stdout)) == sorted(f"run-{i}" for i in range(10))


# ---------------------------------------------------------------------------------------------- the README's code


@pytest.mark.timeout(60)
def test_thread_handlers_example_answers_reports_and_times_out() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "thread_handlers.py")],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "test asks: Proceed?",
        "accept:yes",
        "test/progress: 1/2 step 1",
        "test/progress: 2/2 step 2",
        "tool 'mcp__test__sleep' (test/sleep) timed out after 0.5 s and was cancelled",
        "direct",
    ]


def _readme_blocks(language: str) -> list[tuple[str, str]]:
    """(text before the block since the previous one, block) for every fenced block of ``language``."""
    readme = (REPO_ROOT / "README.md").read_text()
    found, last = [], 0
    for match in re.finditer(rf"^```{language}\n(.*?)^```$", readme, flags=re.MULTILINE | re.DOTALL):
        found.append((readme[last : match.start()], match.group(1)))
        last = match.end()
    return found


def test_every_python_block_of_the_readme_is_a_whole_example_the_tests_run() -> None:
    """A README Python block is the named example below its docstring, so it runs as written (the tests above run
    every example)."""
    blocks = _readme_blocks("python")
    assert blocks
    for before, block in blocks:
        named = re.findall(r"`(examples/\w+\.py)`", before)
        assert named, f"a README python block names no example it comes from:\n{block[:200]}"
        source = (REPO_ROOT / named[-1]).read_text()
        assert source.split("from __future__ import annotations\n\n", 1)[1] == block, f"{named[-1]} and README differ"


def test_the_readme_swap_lines_are_the_examples_lines() -> None:
    """The ``diff`` block of the framework section shows lines of the examples, so it cannot drift from them."""
    blocks = _readme_blocks("diff")
    assert blocks
    for _, block in blocks:
        source = ""
        for line in block.splitlines():
            if line.startswith("# examples/"):
                source = (REPO_ROOT / line.split()[1].rstrip(":")).read_text()
            else:
                assert line[0] in "+-" and line[1:] in source.splitlines(), line
