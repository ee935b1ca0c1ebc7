"""A scripted MCP client built on the official Python SDK (`mcp`).

Connects to a Streamable HTTP URL or launches a stdio server, negotiates in
the chosen mode, runs a fixed list of operations and prints ONE JSON document
with what it saw. `tests/python_sdk.rs` runs it once straight at a server and
once through mcp-meter and compares the two documents.

    client_check.py --mode legacy|auto|2026-07-28 --profile everything|modern
                    (--url URL | --stdio -- COMMAND ARGS...)

Modes (how the SDK picks the protocol era, see `mcp.client.client.Client`):
  legacy      `Client(mode="legacy")`: the `initialize` handshake (2025-11-25).
  auto        `Client(mode="auto")`: probes `server/discover` at 2026-07-28 and
              falls back to `initialize` on any error except a -32022 that
              lists only modern versions (`mcp.client._probe.negotiate_auto`).
  2026-07-28  `Client(mode="2026-07-28")`: adopts the stateless revision with
              no probe; every request carries the `_meta` envelope.

Every operation is recorded as {"ok": ...} or {"error": {...}} so that an
error is part of the compared output rather than a crash. Volatile values
(sealed requestState tokens, timings) are never printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import traceback
from typing import Any

import anyio
import mcp_types as types
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

NON_ASCII = "héllo wörld — ünïcödé ✓ 日本語テキスト 🚀🦀 \u00e9\u0301 \u2028 \"quotes\" \\ back"
BIG_BYTES = 1_000_000


def big_text() -> str:
    """~1 MB (exactly BIG_BYTES of UTF-8), not one repeated byte, some multi-byte characters.

    Kept just under the Python SDK client's 1 MiB cap on one SSE event
    (`mcp.client.streamable_http.DEFAULT_MAX_SSE_EVENT_SIZE`), so the echoed
    result fits in one event whether a server answers with JSON or SSE.
    """
    unit = "0123456789abcdefghijklmnopqrstuvwxyz-ÅÆØ-"
    text = unit * (BIG_BYTES // len(unit.encode("utf-8")))
    return text + "x" * (BIG_BYTES - len(text.encode("utf-8")))


def digest(text: str) -> dict[str, Any]:
    data = text.encode("utf-8")
    return {"chars": len(text), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def dump(model: Any) -> Any:
    if hasattr(model, "model_dump"):
        return model.model_dump(by_alias=True, mode="json", exclude_none=True)
    return model


def err(e: BaseException) -> dict[str, Any]:
    if isinstance(e, MCPError):
        return {"error": {"code": e.code, "message": e.error.message, "data": e.error.data}}
    return {"error": {"exception": type(e).__name__, "message": str(e)}}


def content_summary(result: Any) -> Any:
    """The parts of a CallToolResult that must survive a proxy unchanged."""
    if not isinstance(result, types.CallToolResult):
        return {"other": dump(result)}
    items = []
    for item in result.content:
        d = dump(item)
        text = d.get("text")
        if isinstance(text, str) and len(text) > 2000:
            d["text"] = digest(text)
        items.append(d)
    return {
        "isError": bool(result.is_error),
        "content": items,
        "structuredContent": result.structured_content,
    }


class Recorder:
    def __init__(self) -> None:
        self.out: dict[str, Any] = {}

    async def run(self, key: str, fn: Any) -> Any:
        try:
            value = await fn()
        except Exception as e:  # recorded, compared, asserted on by the Rust side
            self.out[key] = err(e)
            print(f"[client_check] {key}: {type(e).__name__}: {e}", file=sys.stderr)
            return None
        self.out[key] = {"ok": value}
        return value


async def elicitation_callback(context: Any, params: Any) -> Any:
    """Answers every form elicitation with fixed content so results are deterministic."""
    schema = getattr(params, "requested_schema", None) or {}
    props = schema.get("properties", {}) if isinstance(schema, dict) else {}
    content: dict[str, Any] = {}
    for name, spec in props.items():
        spec = spec if isinstance(spec, dict) else {}
        kind = spec.get("type")
        if "default" in spec:
            content[name] = spec["default"]
        elif "enum" in spec:
            content[name] = spec["enum"][0]
        elif spec.get("oneOf"):
            content[name] = spec["oneOf"][0].get("const")
        elif kind == "string":
            content[name] = {
                "email": "zoe@example.com",
                "uri": "https://example.com/zoë",
                "date": "2000-01-02",
                "date-time": "2000-01-02T03:04:05Z",
            }.get(spec.get("format", ""), "Zoë 🦀")
        elif kind == "integer":
            content[name] = 7
        elif kind == "number":
            content[name] = 7.5
        elif kind == "boolean":
            content[name] = True
        elif kind == "array":
            items = spec.get("items", {})
            options = items.get("enum") or [o.get("const") for o in items.get("anyOf", [])]
            content[name] = options[:1]
    return types.ElicitResult(action="accept", content=content)


async def input_required_manual(client: Client) -> Any:
    """Drives the 2026-07-28 input_required round trip by hand so each leg is visible.

    Round 1 answers `resultType: input_required` with `inputRequests` and a
    sealed `requestState`; round 2 repeats the call with `inputResponses` and
    the `requestState` echoed verbatim. The sealed token is volatile (random
    nonce), so only its presence is recorded.
    """
    first = await client.session.call_tool("ask_name", {"greeting": "Bonjour"}, allow_input_required=True)
    if not isinstance(first, types.InputRequiredResult):
        return {"round1": "not input_required", "result": content_summary(first)}
    requests = first.input_requests or {}
    responses: dict[str, Any] = {}
    for key, request in requests.items():
        params = getattr(request, "params", None)
        responses[key] = await elicitation_callback(None, params)
    second = await client.session.call_tool(
        "ask_name",
        {"greeting": "Bonjour"},
        input_responses=responses,
        request_state=first.request_state,
        allow_input_required=True,
    )
    return {
        "round1": {
            "resultType": first.result_type,
            "inputRequests": {k: dump(v) for k, v in requests.items()},
            "hasRequestState": first.request_state is not None,
        },
        "round2": content_summary(second),
    }


async def listen_for_events(client: Client) -> Any:
    """Opens a `subscriptions/listen` stream (a long-lived SSE response), makes the
    server announce two changes from another request, and records the events."""
    events: list[Any] = []
    with anyio.fail_after(15):
        async with client.listen(tools_list_changed=True, resource_subscriptions=["note://readme"]) as sub:
            honored = dump(sub.honored)
            touched = content_summary(await client.call_tool("touch", {}))
            async for event in sub:
                events.append({"type": type(event).__name__, **{k: v for k, v in vars(event).items()}})
                if len(events) == 2:
                    break
    return {"honored": honored, "touch": touched, "events": sorted(events, key=lambda e: e["type"])}


NOTIFICATIONS: list[str] = []
LIST_CHANGED = anyio.Event()


async def message_handler(message: Any) -> None:
    """Records server notifications that are not tied to a request (the GET stream)."""
    if isinstance(message, types.ServerNotification):
        method = getattr(message, "method", None) or getattr(getattr(message, "root", None), "method", None)
        NOTIFICATIONS.append(str(method))
        if method == "notifications/tools/list_changed":
            LIST_CHANGED.set()


async def wait_for_list_changed(client: Client) -> Any:
    """Handshake era: a tool makes the server send notifications/tools/list_changed,
    which arrives on the standalone GET SSE stream, not the call's response."""
    touched = content_summary(await client.call_tool("touch", {}))
    with anyio.fail_after(10):
        await LIST_CHANGED.wait()
    return {"touch": touched, "received": "notifications/tools/list_changed"}


async def scripted(client: Client, profile: str, rec: Recorder) -> None:
    out = rec.out
    out["protocol_version"] = client.protocol_version
    info = client.server_info
    out["server_name"] = info.name if info is not None else None

    async def tool_names() -> list[str]:
        res = await client.list_tools()
        return sorted(t.name for t in res.tools)

    await rec.run("tools", tool_names)

    async def call(name: str, arguments: dict[str, Any], **kw: Any) -> Any:
        return content_summary(await client.call_tool(name, arguments, **kw))

    await rec.run("echo_ascii", lambda: call("echo", {"message": "hello through the meter"}))
    await rec.run("echo_non_ascii", lambda: call("echo", {"message": NON_ASCII}))
    big = big_text()
    out["big_argument"] = digest(big)
    await rec.run("echo_1mb", lambda: call("echo", {"message": big}))
    await rec.run("unknown_tool", lambda: call("no-such-tool", {}))

    if profile == "everything":
        await rec.run("sum", lambda: call("get-sum", {"a": 2, "b": 40}))
        # Over the SDK client's 1 MiB SSE-event cap: works on stdio, and over HTTP
        # only while the server (mcp-meter) answers a lone response as JSON.
        bigger = big + "z" * 200_000
        out["bigger_argument"] = digest(bigger)
        await rec.run("echo_1_2mb", lambda: call("echo", {"message": bigger}))
        progress: list[Any] = []

        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            progress.append([p, total])

        async def long_running() -> Any:
            r = await call("trigger-long-running-operation", {"duration": 0.3, "steps": 3}, progress_callback=on_progress)
            return {"result": r, "progress": progress}

        await rec.run("progress", long_running)
        # A server-to-client request (elicitation/create) in the middle of a call.
        await rec.run("elicitation", lambda: call("trigger-elicitation-request", {}))
    else:
        await rec.run("add", lambda: call("add", {"a": 2, "b": 40}))
        await rec.run("ask_name", lambda: call("ask_name", {"greeting": "Hallo"}))
        # At 2026-07-28: `Mcp-Name: =?base64?...?=` and `Mcp-Param-Region: =?base64?...?=`.
        await rec.run("non_ascii_tool", lambda: call("grüße", {"name": "Zoë"}))
        await rec.run("header_param", lambda: call("weather", {"region": "Zürich ☀", "days": 2}))
        if client.protocol_version == "2026-07-28":
            await rec.run("input_required_manual", lambda: input_required_manual(client))
        await rec.run("slow", lambda: call("slow", {"seconds": 1.2}))
        if client.protocol_version == "2026-07-28":
            await rec.run("listen", lambda: listen_for_events(client))
        else:
            await rec.run("get_stream", lambda: wait_for_list_changed(client))
        progress_m: list[Any] = []

        async def on_progress_m(p: float, total: float | None, message: str | None) -> None:
            progress_m.append([p, total, message])

        async def with_progress() -> Any:
            r = await call("count", {"steps": 3}, progress_callback=on_progress_m)
            return {"result": r, "progress": progress_m}

        await rec.run("progress", with_progress)

    async def resources() -> Any:
        res = await client.list_resources()
        return sorted(r.uri for r in res.resources)

    uris = await rec.run("resources", resources)

    async def read(uri: str) -> Any:
        res = await client.read_resource(uri)
        return [dump(c) for c in res.contents]

    if uris:
        first = uris[0]
        await rec.run("read_resource", lambda: read(first))
    await rec.run("read_unknown_resource", lambda: read("demo://no/such/resource"))

    async def prompts() -> Any:
        res = await client.list_prompts()
        return sorted(p.name for p in res.prompts)

    await rec.run("prompts", prompts)
    prompt, args = ("simple-prompt", None) if profile == "everything" else ("greeting", {"name": "Zoë"})

    async def get_prompt() -> Any:
        res = await client.get_prompt(prompt, args)
        return [dump(m) for m in res.messages]

    await rec.run("get_prompt", get_prompt)


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", required=True, choices=["legacy", "auto", "2026-07-28"])
    parser.add_argument("--profile", required=True, choices=["everything", "modern"])
    parser.add_argument("--url")
    parser.add_argument("--stdio", action="store_true")
    parser.add_argument("command", nargs="*")
    args = parser.parse_args()

    if args.url:
        server: Any = args.url
    elif args.stdio and args.command:
        server = StdioServerParameters(command=args.command[0], args=args.command[1:])
    else:
        parser.error("need --url URL or --stdio -- COMMAND ...")

    rec = Recorder()
    rec.out["mode"] = args.mode
    try:
        with anyio.fail_after(60):
            async with Client(
                server,
                mode=args.mode,
                cache=None,  # every list call must reach the server (and the proxy)
                read_timeout_seconds=30,
                elicitation_callback=elicitation_callback,
                message_handler=message_handler,
                client_info=types.Implementation(name="mcp-meter-python-check", version="1"),
            ) as client:
                await scripted(client, args.profile, rec)
    except BaseException as e:  # a connect failure is still one JSON document
        traceback.print_exc()
        rec.out["fatal"] = err(e)["error"]
    print(json.dumps(rec.out, ensure_ascii=False, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
