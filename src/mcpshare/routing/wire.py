"""JSON-RPC and MCP wire facts the routing core relies on: message shapes, error codes, method groups, ``_meta`` keys.

Messages are plain dicts (the wire format), so fields and methods the router does not know pass through untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

Message = dict[str, Any]
RequestId = str | int

HANDSHAKE_VERSION: Final = "2025-11-25"
"""The handshake-era revision a legacy backend is offered; every stdio server in use today speaks it."""
MODERN_VERSION: Final = "2026-07-28"
"""The stateless revision: no ``initialize``, a ``_meta`` envelope on every request, input returned in results."""
MODERN_VERSIONS: Final = frozenset({MODERN_VERSION})

CONNECTION_CLOSED: Final = -32000
REQUEST_TIMEOUT: Final = -32001
UNSUPPORTED_PROTOCOL_VERSION: Final = -32022
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603

# 2026-07-28 envelope keys (every request carries protocolVersion and clientCapabilities; clientInfo and logLevel
# are optional) and the keys results and notifications carry.
META_PROTOCOL_VERSION: Final = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_CAPABILITIES: Final = "io.modelcontextprotocol/clientCapabilities"
META_CLIENT_INFO: Final = "io.modelcontextprotocol/clientInfo"
META_LOG_LEVEL: Final = "io.modelcontextprotocol/logLevel"
META_SERVER_INFO: Final = "io.modelcontextprotocol/serverInfo"
META_SUBSCRIPTION_ID: Final = "io.modelcontextprotocol/subscriptionId"
META_RELATED_TASK: Final = "io.modelcontextprotocol/related-task"
ENVELOPE_KEYS: Final = frozenset({META_PROTOCOL_VERSION, META_CLIENT_CAPABILITIES, META_CLIENT_INFO, META_LOG_LEVEL})
TRACEPARENT: Final = "traceparent"

INPUT_METHODS: Final = frozenset({"tools/call", "prompts/get", "resources/read"})
"""The requests during which a server may ask its client something: SEP-2260 requires every elicitation, sampling
and roots request to belong to one originating client request, and 2026-07-28 returns input only in the results of
these three. A request of any other known MCP method never owns a server-to-client request."""

QUIET_METHODS: Final = frozenset(
    {
        "initialize",
        "ping",
        "server/discover",
        "tools/list",
        "prompts/list",
        "resources/list",
        "resources/templates/list",
        "resources/subscribe",
        "resources/unsubscribe",
        "logging/setLevel",
        "completion/complete",
        "subscriptions/listen",
        "tasks/get",
        "tasks/list",
        "tasks/result",
        "tasks/cancel",
    }
)
"""Known requests that cannot own a server-to-client request (everything the spec defines but INPUT_METHODS).
An unknown method (a server's extension) might, so it counts as one that can."""

DROPPABLE_NOTIFICATIONS: Final = frozenset({"notifications/progress", "notifications/message"})
"""Notifications a slow session may lose when its queue is full; anything else overflowing closes the session."""

LOG_LEVELS: Final = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
LOG_RANK: Final = {name: rank for rank, name in enumerate(LOG_LEVELS)}
DEFAULT_SESSION_LOG_LEVEL: Final = "info"
"""What a session that never asked for a level receives, whatever another session asked the server for."""

CLIENT_CAPABILITIES: Final[Mapping[str, Any]] = {
    "roots": {"listChanged": True},
    "sampling": {},
    "elicitation": {"form": {}, "url": {}},
}
"""The one fixed capability set the pool declares to every server (a server's tool list may depend on it)."""


def error_response(request_id: RequestId | None, code: int, message: str, data: Any = None) -> Message:
    """A JSON-RPC error response."""
    error: Message = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def result_response(request_id: RequestId, result: Any) -> Message:
    """A JSON-RPC success response."""
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def notification(method: str, params: Any = None) -> Message:
    message: Message = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return message


def kind_of(message: Any) -> Literal["request", "notification", "response", "invalid"]:
    """Classify a decoded JSON-RPC message by its shape."""
    if not isinstance(message, dict):
        return "invalid"
    method = message.get("method")
    if isinstance(method, str):
        return "request" if "id" in message else "notification"
    if "id" in message and ("result" in message or "error" in message):
        return "response"
    return "invalid"


def meta_of(params: Any) -> dict[str, Any] | None:
    """``params._meta`` when it is an object."""
    if isinstance(params, dict):
        meta = params.get("_meta")
        if isinstance(meta, dict):
            return meta
    return None


def valid_id(value: Any) -> bool:
    """A JSON-RPC id this router accepts: a string or an integer (not a boolean)."""
    return isinstance(value, str | int) and not isinstance(value, bool)


def is_modern_request(params: Any) -> bool:
    """Whether a request carries the 2026-07-28 envelope (its protocolVersion names a modern revision)."""
    meta = meta_of(params)
    return meta is not None and meta.get(META_PROTOCOL_VERSION) in MODERN_VERSIONS


def input_required(result: Any) -> bool:
    """Whether a result is a 2026-07-28 ``input_required`` one (input requests plus an opaque request state)."""
    return isinstance(result, dict) and result.get("resultType") == "input_required"


def name_of(method: str, params: Any) -> str | None:
    """What a request of INPUT_METHODS acts on: the tool or prompt name, or the resource URI."""
    if not isinstance(params, dict):
        return None
    value = params.get("uri" if method == "resources/read" else "name")
    return value if isinstance(value, str) else None
