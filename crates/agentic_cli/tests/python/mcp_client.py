"""The `mcp` Python SDK as a client of lion's plugin tools.

Usage:
  mcp_client.py stdio LION HOME EXPOSE...   runs `LION --home HOME mcp serve --expose …`
  mcp_client.py http URL TOKEN              connects to URL/mcp with the token
Lists the tools, calls `hello_world.greet` (or `greet` with bare names) and
prints one JSON object with what it got.
"""

import asyncio
import json
import sys

import httpx2
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client


async def exercise(read, write):
    async with ClientSession(read, write) as session:
        init = await session.initialize()
        listed = await session.list_tools()
        tools = {t.name: t for t in listed.tools}
        greet = tools["hello_world.greet"]
        ok = await session.call_tool("hello_world.greet", {"name": "Ada"})
        refused = await session.call_tool("hello_world.greet", {"wrong": 1})
        return {
            "server": init.server_info.name,
            "tools": sorted(tools),
            "greet_input": greet.input_schema,
            "greet_output": greet.output_schema,
            "structured": ok.structured_content,
            "text": [c.text for c in ok.content if c.type == "text"],
            "is_error": ok.is_error,
            "refused_is_error": refused.is_error,
            "refused_text": [c.text for c in refused.content if c.type == "text"],
        }


async def main():
    mode = sys.argv[1]
    if mode == "stdio":
        lion, home, expose = sys.argv[2], sys.argv[3], sys.argv[4:]
        args = ["--home", home, "mcp", "serve"]
        for e in expose:
            args += ["--expose", e]
        params = StdioServerParameters(command=lion, args=args)
        async with stdio_client(params) as (read, write):
            result = await exercise(read, write)
    elif mode == "http":
        url, token = sys.argv[2], sys.argv[3]
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            async with streamable_http_client(url + "/mcp", http_client=http) as (read, write):
                result = await exercise(read, write)
    else:
        sys.exit(f"unknown mode {mode}")
    print(json.dumps(result))


asyncio.run(main())
