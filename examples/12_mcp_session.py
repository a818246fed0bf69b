"""An MCP session with `pybox mcp`, driven by the MCP SDK's client: prints every request
the agent side sends and what comes back (needs pip install 'pybox[mcp]').

    python examples/12_mcp_session.py
"""

import json
import os
import sys

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client


def show_result(result) -> None:
    blocks = []
    for block in result.content:
        if block.type == "text":
            blocks.append({"type": "text", "text": block.text})
        else:
            blocks.append({"type": block.type, "mimeType": block.mime_type,
                           "data": f"<{len(block.data)} base64 chars>"})
    print("<-", json.dumps({"isError": result.is_error, "content": blocks}, indent=2).replace("\n", "\n   "))


async def call(session: ClientSession, tool: str, arguments: dict, progress: bool = False) -> None:
    print("->", json.dumps({"method": "tools/call", "params": {"name": tool, "arguments": arguments}}))

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        print("<- notifications/progress", json.dumps({"progress": done, "message": message}))

    result = await session.call_tool(tool, arguments, progress_callback=on_progress if progress else None)
    show_result(result)


async def main() -> None:
    server = StdioServerParameters(command=sys.executable, args=["-m", "pybox", "mcp", "--network", "none"],
                                   env=dict(os.environ))
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write) as session:
            print("-> initialize")
            init = await session.initialize()
            print("<-", json.dumps({"serverInfo": {"name": init.server_info.name,
                                                   "version": init.server_info.version}}))
            print("-> tools/list")
            tools = await session.list_tools()
            print("<-", json.dumps([{"name": t.name, "arguments": list(t.input_schema["properties"])}
                                    for t in tools.tools]))
            await call(session, "execute_ipython_cell", {"code": "x = 6 * 7\nprint('x is', x)"})
            await call(session, "execute_ipython_cell", {"code": "x + 1"})
            await call(session, "execute_ipython_cell", {"code": "import time\nfor i in range(3):\n"
                                                                 "    print('step', i, flush=True)\n"
                                                                 "    time.sleep(0.5)"}, progress=True)
            await call(session, "execute_ipython_cell", {"code": "1 / 0"})
            await call(session, "execute_ipython_cell", {"code": "import matplotlib.pyplot as plt\n"
                                                                 "plt.plot([1, 3, 2])\nplt.show()"})
            await call(session, "execute_ipython_cell", {"code": "import time\ntime.sleep(60)", "timeout": 2})
            await call(session, "execute_ipython_cell", {"code": "print('still here, x is', x)"})
            await call(session, "execute_ipython_cell", {"code": "print('z' * 3000)", "max_output_chars": 200})
            await call(session, "reset", {})
            await call(session, "execute_ipython_cell", {"code": "x"})
    print("session closed: the sandbox is removed")


anyio.run(main)
