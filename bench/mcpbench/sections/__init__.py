"""The benchmark sections. Importing this package registers them; each one's ``order`` says when it runs.

To add a section: write a module here with an ``@section(...)``-decorated ``async def (ctx) -> list[Row]`` and
import it below. ``requires=("some.module",)`` skips it cleanly where that module does not import.
"""

from mcpbench.sections import attach, attribution, broker, http, processes, storm, throughput

__all__ = ["attach", "attribution", "broker", "http", "processes", "storm", "throughput"]
