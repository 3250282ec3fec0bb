"""mcpshare's benchmark suite: pooled (mcpshare) vs one process per thread (the SDK's stdio_client), side by side.

Run it with ``python bench/run.py`` (see run.py). The package holds the pieces the sections share:

* :mod:`mcpbench.core`: the section registry, the rows every section returns, the run context and profile;
* :mod:`mcpbench.procs`: marking, counting, measuring and reaping the processes a run starts (through psutil);
* :mod:`mcpbench.servers`: the servers measured (three pinned npm servers and the SDK test server);
* :mod:`mcpbench.clients`: the direct SDK client and a minimal hand-written JSON-RPC client (the "raw limit");
* :mod:`mcpbench.report`: the table, ``latest.json`` and ``processes_rss.png``;
* :mod:`mcpbench.sections`: one module per section, registered in the order they run.
"""
