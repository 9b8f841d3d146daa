"""Times `Sandbox.create()` to the first `commands.run` output with the E2B Python SDK, for
benches/e2b.rs (E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY set by it).

Argument: the number of sandboxes. Prints one line per sandbox: the wall-clock seconds from
the call to `Sandbox.create()` until `commands.run("echo ready")` returned its output; then
kills the sandbox (not timed).
"""

import sys
import time

from e2b import Sandbox

for _ in range(int(sys.argv[1])):
    started = time.perf_counter()
    sandbox = Sandbox.create()
    out = sandbox.commands.run("echo ready").stdout
    elapsed = time.perf_counter() - started
    if out != "ready\n":
        sys.exit(f"unexpected output {out!r}")
    print(elapsed, flush=True)
    sandbox.kill()
