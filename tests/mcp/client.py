"""An MCP client nobody here wrote: the official MCP Python SDK, driving wsbx.

Usage: client.py stdio WSBX_BINARY
       client.py http URL TOKEN

Lists the tools, runs code, gets a plot back as image content, uses a session, and checks
that bad calls are errors the server survives. Prints one JSON object with what it saw; the
Rust test (tests/mcp.rs) asserts on it.
"""

import asyncio
import json
import sys

import httpx2
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 4, 9])\nplt.show()\nprint('plotted')"


def texts(result):
    return "\n".join(c.text for c in result.content if c.type == "text")


async def exercise(session):
    seen = {}
    await session.initialize()
    tools = await session.list_tools()
    seen["tools"] = sorted(t.name for t in tools.tools)
    seen["run_python_schema"] = sorted(next(t for t in tools.tools if t.name == "run_python").input_schema["properties"])

    result = await session.call_tool("run_python", {"code": "print(6*7)"})
    seen["python"] = {"text": texts(result), "is_error": bool(result.is_error)}

    result = await session.call_tool("run_python", {"code": PLOT})
    images = [c for c in result.content if c.type == "image"]
    seen["plot"] = {"text": texts(result), "images": [(i.mime_type, len(i.data)) for i in images]}
    if images:
        seen["plot"]["png_magic"] = images[0].data[:8]

    result = await session.call_tool("run_javascript", {"code": "console.log([1,2,3].map(x => x * 2))"})
    seen["javascript"] = texts(result)

    result = await session.call_tool("run_python", {"code": "while True: pass", "timeout_ms": 300})
    seen["timeout"] = {"text": texts(result), "is_error": bool(result.is_error)}

    created = await session.call_tool("create_session", {"language": "python"})
    text = texts(created)
    session_id = text.split("session_id: ")[1].split()[0]
    # The structured content names it as the other tools take it.
    assert created.structured_content["session_id"] == session_id, created.structured_content
    await session.call_tool("run_python", {"code": "import pandas as pd\ndf = pd.DataFrame({'a': [1, 2, 3]})", "session_id": session_id})
    result = await session.call_tool("run_python", {"code": "print(df.a.sum())", "session_id": session_id})
    seen["session"] = texts(result)
    closed = await session.call_tool("close_session", {"session_id": session_id})
    seen["closed"] = texts(closed)
    after = await session.call_tool("run_python", {"code": "print(df)", "session_id": session_id})
    seen["after_close"] = {"text": texts(after), "is_error": bool(after.is_error)}

    # Bad calls: an unknown tool and wrong argument types are errors, and the server goes on.
    for name, args in [("no_such_tool", {}), ("run_python", {"code": 5}), ("run_python", {})]:
        try:
            result = await session.call_tool(name, args)
            seen.setdefault("bad", []).append({"is_error": bool(result.is_error), "text": texts(result)[:200]})
        except Exception as e:  # a JSON-RPC error
            seen.setdefault("bad", []).append({"error": type(e).__name__, "text": str(e)[:200]})
    result = await session.call_tool("run_shell", {"code": "echo still serving"})
    seen["still_serving"] = texts(result)
    return seen


async def main():
    mode = sys.argv[1]
    if mode == "stdio":
        params = StdioServerParameters(command=sys.argv[2], args=["mcp"])
        async with stdio_client(params) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                seen = await exercise(session)
    else:
        url, token = sys.argv[2], sys.argv[3]
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
            async with streamable_http_client(url, http_client=http) as streams:
                async with ClientSession(streams[0], streams[1]) as session:
                    seen = await exercise(session)
    print(json.dumps(seen))


asyncio.run(main())
