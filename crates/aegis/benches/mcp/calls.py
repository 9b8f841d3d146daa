"""Times MCP tool calls through the official MCP Python SDK over stdio, for benches/mcp.rs.

Arguments: the aegis binary, the instance, the number of calls. One `run_command true` call
warms the session first; then prints one line per call: its wall-clock seconds, from the
client's request until its result.
"""

import asyncio
import json
import os
import sys
import time

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

AEGIS, INSTANCE, CALLS = sys.argv[1], sys.argv[2], int(sys.argv[3])


async def run_true(session):
    result = await session.call_tool("run_command", {"instance": INSTANCE, "command": "true"})
    text = "".join(block.text for block in result.content if block.type == "text")
    if result.is_error or json.loads(text)["exit_code"] != 0:
        sys.exit(f"run_command failed: {text}")


async def main():
    server = StdioServerParameters(command=AEGIS, args=["mcp"], env=dict(os.environ))
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            await run_true(session)
            for _ in range(CALLS):
                started = time.perf_counter()
                await run_true(session)
                print(time.perf_counter() - started, flush=True)


asyncio.run(main())
