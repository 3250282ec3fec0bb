"""Drop-ins for Python agent frameworks: their own MCP client classes, running on the pool's shared processes.

Each framework spawns one stdio server per agent run, per toolset or per connection. Each module here gives that
framework a class with the same constructor as its stdio class plus a ``pool`` argument, so the swap is one line
and every run, toolset or connection becomes one more session on one process per distinct server config:

* :mod:`mcpshare.integrations.openai_agents`: ``PooledMCPServerStdio`` for the OpenAI Agents SDK
  (``pip install 'mcpshare[openai-agents]'``);
* :mod:`mcpshare.integrations.fastmcp`: ``PooledStdioTransport`` for FastMCP's ``Client`` and for PydanticAI's
  ``MCPToolset``, which is built on it (``pip install 'mcpshare[fastmcp]'`` / ``'mcpshare[pydantic-ai]'``).

Each module imports its framework, and only that one; this package imports none of them.
"""
