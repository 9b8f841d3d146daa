"""Drives `aegis mcp` over stdio with the official MCP Python SDK, as an assistant would.

Prints one line per step and exits non-zero at the first failed check. Arguments: the aegis
binary; the environment carries AEGIS_HOME.
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import jsonschema
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

AEGIS = sys.argv[1]


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what.splitlines()[0][:100]}", flush=True)


def text_of(result):
    return "".join(block.text for block in result.content if block.type == "text")


async def call(session, tool, **arguments):
    result = await session.call_tool(tool, arguments)
    return result, text_of(result)


async def over_http():
    """The same server over the streamable HTTP transport, on loopback only."""
    refused = subprocess.run([AEGIS, "mcp", "--http", "0.0.0.0:0"], capture_output=True,
                             text=True, timeout=60)
    check(refused.returncode != 0 and "loopback" in refused.stderr,
          f"a non-loopback address is refused: {refused.returncode} {refused.stderr}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([AEGIS, "mcp", "--http", f"127.0.0.1:{port}"],
                              stderr=subprocess.PIPE, text=True)
    try:
        check("serving MCP on" in server.stderr.readline(), "the HTTP server says where it is")
        url = f"http://127.0.0.1:{port}/mcp"
        for header, value in [("Origin", "http://evil.example"), ("Host", "evil.example")]:
            request = urllib.request.Request(
                url, method="POST", data=b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
                headers={header: value, "Content-Type": "application/json",
                         "Accept": "application/json, text/event-stream"})
            try:
                with urllib.request.urlopen(request, timeout=30) as r:
                    status = r.status
            except urllib.error.HTTPError as e:
                status = e.code
            check(status == 403, f"a request with a foreign {header} is refused: {status}")
        async with streamable_http_client(url) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                names = {t.name for t in (await session.list_tools()).tools}
                check("run_command" in names, f"tools over HTTP: {sorted(names)}")
                result, text = await call(session, "run_command", instance="m",
                                          command="echo via-$((40 + 2))")
                check(not result.is_error and json.loads(text)["stdout"] == "via-42\n",
                      f"run_command over HTTP: {text}")
    finally:
        server.terminate()
        server.wait(timeout=30)


async def main():
    server = StdioServerParameters(command=AEGIS, args=["mcp"], env=dict(os.environ))
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            check(init.server_info.name == "aegis", f"server is aegis: {init.server_info}")

            tools = (await session.list_tools()).tools
            names = {t.name for t in tools}
            wanted = {
                "create_instance", "list_instances", "instance_info", "stop_instance",
                "delete_instance", "run_command", "start_process", "read_process_output",
                "read_file", "write_file", "list_files", "read_logs", "expose_port",
            }
            check(wanted <= names, f"all tools listed: {sorted(names)}")
            for t in tools:
                jsonschema.Draft202012Validator.check_schema(t.input_schema)
                check(t.input_schema.get("type") == "object", f"{t.name}: object schema")
                check(len(t.description or "") > 20, f"{t.name}: described")
            run = next(t for t in tools if t.name == "run_command")
            check(set(run.input_schema["required"]) == {"instance", "command"},
                  f"run_command requires instance and command: {run.input_schema}")

            result, text = await call(session, "create_instance", name="m", expose=[])
            check(not result.is_error, f"create_instance: {text}")
            created = json.loads(text)
            check(created["handle"] == "m", f"created m: {text}")

            result, text = await call(
                session, "run_command", instance="m",
                command="python3 -c 'import sys; print(6 * 7); print(\"oops\", file=sys.stderr); sys.exit(3)'",
            )
            ran = json.loads(text)
            check(not result.is_error and ran["exit_code"] == 3, f"exit code passes: {text}")
            check(ran["stdout"] == "42\n" and ran["stderr"] == "oops\n", f"stdout and stderr: {text}")

            result, text = await call(session, "run_command", instance="m", command="wc -c",
                                      stdin="hello")
            check(json.loads(text)["stdout"].strip() == "5", f"stdin reaches the command: {text}")

            result, text = await call(session, "run_command", instance="m",
                                      command="head -c 100000 /dev/zero | tr '\\0' x")
            ran = json.loads(text)
            check(len(ran["stdout"]) < 70000 and "bytes cut" in ran["stdout"],
                  f"long output is cut with a note: {len(ran['stdout'])} chars")

            result, text = await call(session, "write_file", instance="m",
                                      path="/tmp/dir/note.txt", content="héllo\nworld\n")
            check(not result.is_error, f"write_file: {text}")
            result, text = await call(session, "read_file", instance="m", path="/tmp/dir/note.txt")
            check(text == "héllo\nworld\n", f"read_file gives it back: {text!r}")
            result, text = await call(session, "list_files", instance="m", path="/tmp/dir")
            check([e["name"] for e in json.loads(text)] == ["note.txt"], f"list_files: {text}")

            result, text = await call(session, "start_process", instance="m",
                                      command="cd /tmp/dir && exec python3 -m http.server 8000")
            check(not result.is_error, f"start_process: {text}")
            exec_id = json.loads(text)["exec_id"]
            result, text = await call(session, "expose_port", instance="m", port=8000)
            check(not result.is_error, f"expose_port: {text}")
            url = json.loads(text)["url"]
            body = None
            deadline = time.time() + 120
            while time.time() < deadline:
                try:
                    with urllib.request.urlopen(url.rstrip("/") + "/note.txt", timeout=30) as r:
                        body = r.read().decode()
                        break
                except Exception:
                    await asyncio.sleep(1)
            check(body == "héllo\nworld\n", f"the server answers at {url}: {body!r}")
            result, text = await call(session, "read_process_output", instance="m",
                                      exec_id=exec_id)
            out = json.loads(text)
            check(out["process"]["state"] == "running" and "GET /note.txt" in out["output"],
                  f"read_process_output: {text}")

            result, text = await call(session, "run_command", instance="nobody", command="true")
            check(result.is_error and "nobody" in text, f"unknown instance is a tool error: {text}")
            result, text = await call(session, "run_command", instance="m")
            check(result.is_error and "command" in text, f"a missing argument is a tool error: {text}")

            result, text = await call(session, "read_logs", instance="m", tail=50)
            check(not result.is_error, f"read_logs: {text[:200]}")

            result, text = await call(session, "list_instances")
            check([i["handle"] for i in json.loads(text)] == ["m"], f"list_instances: {text[:300]}")

            await over_http()

            result, text = await call(session, "delete_instance", instance="m")
            check(not result.is_error, f"delete_instance: {text}")
            result, text = await call(session, "instance_info", instance="m")
            check(result.is_error, f"gone after delete: {text}")


asyncio.run(main())
print("all checks passed", flush=True)
