"""mcpshare: one process per stdio MCP server configuration, shared by every thread and agent."""

__version__ = "0.1.0"
