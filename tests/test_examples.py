"""The README's runnable example runs as documented, shares one process, and leaves none behind."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import require_node_entry
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
