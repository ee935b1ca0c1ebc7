#!/usr/bin/env python3
"""A deliberately misbehaving stdio MCP server for fault tests.

Real SDK servers do not hang, crash or ignore cancellations on demand, so the
proxy's fault handling is tested against this small peer. It speaks the
handshake revisions over newline-delimited JSON-RPC on stdin/stdout and
appends every line it receives to the file named by $MISBEHAVING_LOG (so a
test can assert what reached the upstream).

Tools:
  echo {message}      answers with the message
  hang                never answers
  crash {code}        exits with the given status without answering
  slow {ms}           answers after ms milliseconds
  pid                 answers with this process's pid
"""
import json
import os
import sys
import threading
import time

LOG = os.environ.get("MISBEHAVING_LOG")
lock = threading.Lock()


def log(line):
    if LOG:
        with open(LOG, "a", encoding="utf-8") as f:
            f.write(line.rstrip("\n") + "\n")


def send(obj):
    with lock:
        sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
        sys.stdout.flush()


def text_result(req_id, text):
    send({"jsonrpc": "2.0", "id": req_id, "result": {"content": [{"type": "text", "text": text}]}})


def handle(msg):
    method = msg.get("method")
    req_id = msg.get("id")
    if method == "initialize":
        version = msg.get("params", {}).get("protocolVersion", "2025-11-25")
        send({"jsonrpc": "2.0", "id": req_id, "result": {
            "protocolVersion": version,
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "misbehaving", "version": "1.0.0"},
        }})
    elif method == "ping":
        send({"jsonrpc": "2.0", "id": req_id, "result": {}})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": req_id, "result": {"tools": [
            {"name": n, "inputSchema": {"type": "object"}} for n in ["echo", "hang", "crash", "slow", "pid"]
        ]}})
    elif method == "tools/call":
        params = msg.get("params", {})
        name = params.get("name")
        args = params.get("arguments", {}) or {}
        if name == "echo":
            text_result(req_id, args.get("message", ""))
        elif name == "hang":
            pass
        elif name == "crash":
            sys.stderr.write("misbehaving: crashing on purpose\n")
            sys.stderr.flush()
            os._exit(int(args.get("code", 3)))
        elif name == "slow":
            def later():
                time.sleep(int(args.get("ms", 500)) / 1000.0)
                text_result(req_id, "slow done")
            threading.Thread(target=later, daemon=True).start()
        elif name == "pid":
            text_result(req_id, str(os.getpid()))
        else:
            send({"jsonrpc": "2.0", "id": req_id, "error": {"code": -32602, "message": f"unknown tool {name}"}})
    elif req_id is not None and method is not None:
        send({"jsonrpc": "2.0", "id": req_id, "error": {"code": -32601, "message": "method not found"}})


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        log(line)
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        handle(msg)


if __name__ == "__main__":
    main()
