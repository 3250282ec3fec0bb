"""A hand-written stdio MCP server (stdlib only) that misbehaves on request.

The SDK never lets a server send malformed frames, so the mux's handling of bad server output is tested against
this script instead. It speaks the 2025-11-25 handshake and offers tools that each break one rule:

    echo(text)                 a normal answer
    echo_value(value)          answers with ``value`` as its structured content, as Python's json reads and writes it
    sleep(seconds)             answers after a delay (requests are handled one at a time, like a naive server)
    garbage(text)              a non-JSON line, then the answer
    bad_utf8(text)             a line of invalid UTF-8, then the answer
    huge_line(mb)              one line of ``mb`` megabytes of JSON (no newline until the end), then the answer
    duplicate(text)            the answer twice
    unknown_id(text)           a response to an id nobody asked, then the answer
    notify_unknown(text)       a notification with an unknown method, then the answer
    server_request(text)       a server-to-client request ``x/custom`` whose id is the client's request id
    hang()                     never answers anything again (stdin is still read)
    close_stdout()             closes stdout but keeps running (until stdin closes)
    crash(code)                exits at once with ``code``

Extra argv of the form ``--marker=...`` are ignored (tests count processes by them); ``--ignore=METHOD`` makes it
answer requests of METHOD never at all (a server that drops what it does not know, like ``server/discover``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

TOOLS = [
    "echo",
    "echo_value",
    "sleep",
    "garbage",
    "bad_utf8",
    "huge_line",
    "duplicate",
    "unknown_id",
    "notify_unknown",
    "server_request",
    "hang",
    "close_stdout",
    "crash",
]

out = sys.stdout.buffer
hung = False


def write(data: bytes) -> None:
    if hung:
        return
    try:
        out.write(data)
        out.flush()
    except (BrokenPipeError, ValueError, OSError):
        pass


def send(message: dict[str, Any]) -> None:
    write(json.dumps(message).encode() + b"\n")


def text_result(request_id: Any, text: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": {"content": [{"type": "text", "text": text}]}}


def call_tool(request_id: Any, name: str, args: dict[str, Any]) -> None:
    global hung
    text = str(args.get("text", ""))
    if name == "echo":
        send(text_result(request_id, text))
    elif name == "echo_value":
        result = {"content": [{"type": "text", "text": repr(args.get("value"))}], "structuredContent": args}
        send({"jsonrpc": "2.0", "id": request_id, "result": result})
    elif name == "sleep":
        time.sleep(float(args.get("seconds", 1)))
        send(text_result(request_id, "slept"))
    elif name == "garbage":
        write(b"this is not json-rpc, just a server logging to stdout\n")
        send(text_result(request_id, text))
    elif name == "bad_utf8":
        write(b'{"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "\xff\xfe"}}\n')
        send(text_result(request_id, text))
    elif name == "huge_line":
        size = int(float(args.get("mb", 1)) * 1024 * 1024)
        chunk = b"x" * 65536
        write(b'{"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "')
        for _ in range(size // len(chunk)):
            write(chunk)
        write(b'"}}\n')
        send(text_result(request_id, "huge sent"))
    elif name == "duplicate":
        send(text_result(request_id, text))
        send(text_result(request_id, text + " (again)"))
    elif name == "unknown_id":
        send(text_result(987654321, "nobody asked"))
        send(text_result(request_id, text))
    elif name == "notify_unknown":
        send({"jsonrpc": "2.0", "method": "notifications/x-custom", "params": {"text": text}})
        send(text_result(request_id, text))
    elif name == "server_request":
        send({"jsonrpc": "2.0", "id": request_id, "method": "x/custom", "params": {"text": text}})
        send(text_result(request_id, text))
    elif name == "hang":
        hung = True
    elif name == "close_stdout":
        send(text_result(request_id, "closing stdout"))
        out.close()
        os.close(1)
        hung = True
    elif name == "crash":
        sys.stderr.write(f"raw_server: crashing with exit code {args.get('code', 1)}\n")
        sys.stderr.flush()
        os._exit(int(args.get("code", 1)))
    else:
        send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32602, "message": f"unknown tool {name}"}})


IGNORED = {arg.removeprefix("--ignore=") for arg in sys.argv[1:] if arg.startswith("--ignore=")}


def handle(message: dict[str, Any]) -> None:
    method = message.get("method")
    request_id = message.get("id")
    if method is None or request_id is None or method in IGNORED:
        return  # responses and notifications need no answer; ignored methods get none either
    if method == "initialize":
        send(
            {
                "jsonrpc": "2.0",
                "id": request_id,
                "result": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {"tools": {"listChanged": True}},
                    "serverInfo": {"name": "raw_server", "version": "1"},
                },
            }
        )
    elif method == "tools/list":
        tools = [{"name": name, "inputSchema": {"type": "object"}} for name in TOOLS]
        send({"jsonrpc": "2.0", "id": request_id, "result": {"tools": tools}})
    elif method == "tools/call":
        params = message.get("params") or {}
        call_tool(request_id, params.get("name", ""), params.get("arguments") or {})
    elif method == "ping":
        send({"jsonrpc": "2.0", "id": request_id, "result": {}})
    else:
        send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": f"no method {method}"}})


def main() -> None:
    for raw in sys.stdin.buffer:
        try:
            message = json.loads(raw)
        except ValueError:
            continue
        if isinstance(message, dict):
            handle(message)


if __name__ == "__main__":
    main()
