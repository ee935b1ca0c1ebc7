"""An MCP client built on the official Python SDK that calls through mcp-meter
with a customer's API key and reports what billing showed it.

    billed_client.py --url URL [--key KEY] --calls N

Lists the tools (with the prices mcp-meter put in their `_meta`), then calls
`echo` N times and records, for each call, either the result's billing
`_meta` or the JSON-RPC error (code, message, data) the SDK raised. Prints
ONE JSON document. Without --key the client has no credential: the connect
failure is recorded as "fatal" instead of a crash.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio
from mcp import Client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client
from mcp.shared.exceptions import MCPError

META = "mcp-meter/billing"


def meta_of(model: Any) -> Any:
    meta = getattr(model, "meta", None)
    if meta is None:
        return None
    return dict(meta).get(META)


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--key")
    parser.add_argument("--calls", type=int, default=1)
    args = parser.parse_args()

    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    out: dict[str, Any] = {}
    try:
        with anyio.fail_after(60):
            http = create_mcp_http_client(headers=headers)
            async with http, Client(
                streamable_http_client(args.url, http_client=http),
                mode="legacy",
                cache=None,
                read_timeout_seconds=30,
            ) as client:
                listed = await client.list_tools()
                out["tools"] = {tool.name: meta_of(tool) for tool in listed.tools}
                calls = []
                for n in range(args.calls):
                    try:
                        result = await client.call_tool("echo", {"message": f"call {n}"})
                        calls.append(
                            {
                                "text": result.content[0].text if result.content else None,
                                "is_error": bool(result.is_error),
                                "billing": meta_of(result),
                            }
                        )
                    except MCPError as e:
                        calls.append({"error": {"code": e.code, "message": e.message, "data": e.data}})
                out["calls"] = calls
    except BaseException as e:  # a refused connect is still one JSON document
        out["fatal"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out, ensure_ascii=False, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
