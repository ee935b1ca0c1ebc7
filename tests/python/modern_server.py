"""An MCP server built on the official Python SDK (`mcp`), over Streamable HTTP.

It serves BOTH eras on one endpoint, as the SDK does by default
(`MCPServer.streamable_http_app()` -> `StreamableHTTPSessionManager`): the
stateless revision 2026-07-28 (`server/discover`, `_meta` envelope,
`Mcp-Method`/`Mcp-Name` headers, single-exchange POSTs) and the handshake
revisions (`initialize`, `Mcp-Session-Id`).

    modern_server.py [--port PORT]     (PORT 0, the default: any free port)

Binds 127.0.0.1:PORT itself (so port 0 has no bind/release race), then prints
`modern_server listening on http://127.0.0.1:PORT/mcp` on stderr once uvicorn
accepts connections.

Tools: echo, add, grüße (non-ASCII name), weather (an `x-mcp-header`
argument), ask_name (needs client input: at 2026-07-28 the call answers
`input_required` with an elicitation request and resumes when the client
retries with `inputResponses` + `requestState`; at 2025-11-25 it sends
`elicitation/create` mid-call), count (progress notifications, which commit the
response to SSE), slow (silent past the SSE ping interval: SSE with ping
comments), touch (events for `subscriptions/listen` streams at 2026-07-28; a
`notifications/tools/list_changed` on the GET stream at 2025-11-25). Resource: note://readme. Prompt: greeting.
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Annotated

import anyio
import mcp.server._streamable_http_modern as modern_http
import uvicorn
from mcp.server.mcpserver import Context, Elicit, MCPServer, Resolve
from pydantic import BaseModel, Field

mcp = MCPServer(name="python-modern-server", version="1.0.0")

# A 2026-07-28 handler silent for this long commits its response to SSE and
# keeps it alive with ping comments (the SDK default is 15 s; shortened so the
# `slow` tool exercises that path within a test's time budget).
modern_http._SSE_PING_INTERVAL = 0.5


@mcp.tool(description="Echoes the message back", structured_output=False)
def echo(message: str) -> str:
    return f"Echo: {message}"


@mcp.tool(description="Adds two integers")
def add(a: int, b: int) -> int:
    return a + b


@mcp.tool(name="grüße", description="A tool whose name is not ASCII (Mcp-Name goes base64-wrapped)")
def gruesse(name: str) -> str:
    return f"Grüße, {name}!"


@mcp.tool(description="Region is mirrored into an Mcp-Param-Region header at 2026-07-28", structured_output=False)
def weather(region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})], days: int = 1) -> str:
    return f"Sunny in {region} for {days} day(s)"


class Name(BaseModel):
    name: str = Field(description="Your name")


def ask_for_name(greeting: str) -> Elicit[Name]:
    return Elicit(f"{greeting}! What is your name?", Name)


@mcp.tool(description="Greets the user by a name it asks the client for")
def ask_name(greeting: str, who: Annotated[Name, Resolve(ask_for_name)]) -> str:
    return f"{greeting}, {who.name}!"


@mcp.tool(description="Counts to `steps`, reporting progress at each step")
async def count(steps: int, ctx: Context) -> str:
    for i in range(1, steps + 1):
        await ctx.report_progress(i, steps, f"step {i}")
        await anyio.sleep(0.05)
    return f"counted to {steps}"


@mcp.tool(description="Sleeps without notifications past the SSE ping interval")
async def slow(seconds: float) -> str:
    await anyio.sleep(seconds)
    return f"slept {seconds}"


@mcp.tool(description="Announces a tools/list change (and a note://readme update) to listeners")
async def touch(ctx: Context) -> str:
    if ctx.protocol_version == "2026-07-28":
        await ctx.notify_tools_changed()
        await ctx.notify_resource_updated("note://readme")
    else:
        # Handshake era: unrelated to this request, so it travels on the session's GET stream.
        await ctx.session.send_tool_list_changed()
    return "touched"


@mcp.resource("note://readme", name="readme", mime_type="text/plain", description="A fixed note")
def readme() -> str:
    return "Ünïcödé note from the Python SDK server ✓"


@mcp.prompt(description="A greeting prompt")
def greeting(name: str) -> str:
    return f"Please greet {name} warmly."


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Inherited by accepted connections. Without it every request on a reused
    # keep-alive connection waits ~40 ms (Nagle against the peer's delayed ACK).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", args.port))
    port = sock.getsockname()[1]

    app = mcp.streamable_http_app()
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        while not server.started:
            await anyio.sleep(0.01)
        print(f"modern_server listening on http://127.0.0.1:{port}/mcp", file=sys.stderr, flush=True)


if __name__ == "__main__":
    anyio.run(main)
