"""The floor of any Python HTTP front: uvicorn + httptools on uvloop with an ASGI app that answers every call itself.

``python http_floor.py PORT`` serves 127.0.0.1:PORT. The app reads the POST body, parses it and answers with a
canned ``tools/call`` result (the request's id, ``Echo: hi``) in a JSON response, an ``initialize`` with a session
id, ``tools/list`` with the one ``echo`` tool, a notification with 202, GET with 405 (no stream, as the spec
allows) and DELETE with 204: the least work an MCP front on this HTTP stack can do per call, with no server behind
it. The http section times raw POSTs and SDK client calls against it next to the real fronts, so the report can
show what the HTTP round trip alone costs on this machine, and what the SDK client itself costs.
"""

from __future__ import annotations

import json
import socket
import sys
from typing import Any

import uvicorn

ANSWER = {"content": [{"type": "text", "text": "Echo: hi"}]}


TOOLS = {"tools": [{"name": "echo", "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}}}}]}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["method"] != "POST":
        status = 204 if scope["method"] == "DELETE" else 405
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    request = json.loads(body)
    headers = [(b"content-type", b"application/json")]
    if "id" not in request:
        await send({"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    if request.get("method") == "initialize":
        headers.append((b"mcp-session-id", b"floor"))
        result: dict[str, Any] = {
            "protocolVersion": "2025-11-25",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "floor", "version": "0"},
        }
    elif request.get("method") == "tools/list":
        result = TOOLS
    else:
        result = ANSWER
    data = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}).encode()
    headers.append((b"content-length", str(len(data)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def main(port: int) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config(
        app, http="httptools", lifespan="off", log_config=None, access_log=False, proxy_headers=False
    )
    await uvicorn.Server(config).serve([sock])


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(int(sys.argv[1])))
