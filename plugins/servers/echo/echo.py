#!/usr/bin/env python3
"""echo: the smallest MCP tool server, shipped with lion as an example of a
server plugin in manifest form (see plugin.toml beside it) and measured by
`lion bench plugins`.

It speaks MCP over stdio (newline-delimited JSON-RPC 2.0) with the Python
standard library only, so it runs wherever a `python3` does, with nothing
installed. A real server would use an MCP SDK; this one writes its few
messages itself to need nothing.

Tools:
  - `echo` {"text": STR}: answers {"text": STR}, as structured content (it
    declares an output schema) and as text.

It keeps no state, reads no files and opens no sockets: whatever it costs is
the interpreter's start and the protocol's round trips.
"""

import json
import sys

PROTOCOL_VERSIONS = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"]
SERVER_INFO = {"name": "lion-echo", "version": "1.0.0"}

TOOLS = [
    {
        "name": "echo",
        "description": "Answers the text it is given.",
        "inputSchema": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
            "additionalProperties": False,
        },
        "outputSchema": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    }
]


def send(message: dict) -> None:
    """Writes one JSON-RPC message as one line."""
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def reply(req_id, result: dict) -> None:
    send({"jsonrpc": "2.0", "id": req_id, "result": result})


def reply_error(req_id, code: int, message: str) -> None:
    send({"jsonrpc": "2.0", "id": req_id, "error": {"code": code, "message": message}})


def call(req_id, params: dict) -> None:
    """Answers a `tools/call`."""
    name = params.get("name")
    args = params.get("arguments") or {}
    if name != "echo":
        reply_error(req_id, -32602, f"unknown tool {name!r}")
        return
    text = args.get("text")
    if not isinstance(text, str):
        reply(req_id, {
            "content": [{"type": "text", "text": "echo needs a string `text`"}],
            "isError": True,
        })
        return
    reply(req_id, {
        "content": [{"type": "text", "text": text}],
        "structuredContent": {"text": text},
        "isError": False,
    })


def handle(msg: dict) -> None:
    method = msg.get("method")
    req_id = msg.get("id")
    if method is None or method.startswith("notifications/"):
        return  # a response or a notification: nothing to answer
    if method == "initialize":
        asked = (msg.get("params") or {}).get("protocolVersion")
        version = asked if asked in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[-1]
        reply(req_id, {
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": SERVER_INFO,
        })
    elif method == "ping":
        reply(req_id, {})
    elif method == "tools/list":
        reply(req_id, {"tools": TOOLS})
    elif method == "tools/call":
        call(req_id, msg.get("params") or {})
    elif req_id is not None:
        reply_error(req_id, -32601, f"method not found: {method}")


def main() -> None:
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            continue  # not JSON: nothing to answer
        if isinstance(msg, dict):
            handle(msg)


if __name__ == "__main__":
    main()
