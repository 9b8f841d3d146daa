"""The unchanged E2B Python SDK (sync and async clients) against Aegis's E2B listener.

Run by tests/e2b.rs with E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY set to a daemon started
with the listener on. Every check asserts on what the SDK returns or raises; the last line is
"all checks passed".
"""

import asyncio
import hashlib
import os
import sys
import time

from e2b import AsyncSandbox, CommandExitException, NotFoundException, Sandbox
from e2b.exceptions import AuthenticationException
from e2b.sandbox.sandbox_api import SandboxQuery


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print(f"ok   {what}", flush=True)


def listed_ids(**query):
    paginator = Sandbox.list(query=SandboxQuery(**query) if query else None)
    ids = []
    while paginator.has_next:
        ids.extend(s.sandbox_id for s in paginator.next_items())
    return ids


def commands(sbx):
    r = sbx.commands.run("echo out; echo err >&2; echo \"$GREETING-$TOP\"; pwd", cwd="/tmp", envs={"GREETING": "hi"})
    check(r.exit_code == 0, "commands.run exits 0")
    check(r.stdout == "out\nhi-from-create\n/tmp\n", f"stdout, env (call and sandbox) and cwd: {r.stdout!r}")
    check(r.stderr == "err\n", f"stderr: {r.stderr!r}")
    try:
        sbx.commands.run("echo failing >&2; exit 3")
        check(False, "a failing command raises")
    except CommandExitException as e:
        check(e.exit_code == 3 and "failing" in e.stderr, f"a failing command raises CommandExitException (exit {e.exit_code})")

    seen = []
    r = sbx.commands.run("for i in 1 2 3; do echo line$i; done", on_stdout=seen.append)
    check("".join(seen) == "line1\nline2\nline3\n", f"on_stdout streams the output: {seen!r}")

    # stdin: a command started with stdin open reads what is sent, and ends on close.
    h = sbx.commands.run("read a; echo got-$a; cat", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "first\n")
    sbx.commands.send_stdin(h.pid, "rest\n")
    sbx.commands.close_stdin(h.pid)
    r = h.wait()
    check(r.stdout == "got-first\nrest\n", f"send_stdin and close_stdin: {r.stdout!r}")


def files(sbx):
    info = sbx.files.write("/home/user/notes/hello.txt", "hello from the SDK\n")
    check(info.path == "/home/user/notes/hello.txt", f"files.write answers the path: {info.path}")
    check(sbx.files.read("/home/user/notes/hello.txt") == "hello from the SDK\n", "files.read gives the text back")
    blob = os.urandom(10 * 1024 * 1024)
    sbx.files.write("/tmp/blob.bin", blob)
    back = sbx.files.read("/tmp/blob.bin", format="bytes")
    check(hashlib.sha256(back).digest() == hashlib.sha256(blob).digest(), "10 MiB of random bytes written and read back identical")
    r = sbx.commands.run("sha256sum /tmp/blob.bin")
    check(r.stdout.split()[0] == hashlib.sha256(blob).hexdigest(), "the guest sees the same bytes")

    names = {e.name: e for e in sbx.files.list("/home/user/notes")}
    check(set(names) == {"hello.txt"}, f"files.list: {sorted(names)}")
    check(names["hello.txt"].size == len("hello from the SDK\n"), "files.list gives the size")
    check(sbx.files.exists("/home/user/notes/hello.txt"), "files.exists on a file")
    check(not sbx.files.exists("/home/user/nothing-here"), "files.exists on a missing path")
    check(sbx.files.make_dir("/home/user/made/deep"), "files.make_dir")
    sbx.files.rename("/home/user/notes/hello.txt", "/home/user/made/moved.txt")
    check(sbx.files.read("/home/user/made/moved.txt").startswith("hello"), "files.rename")
    sbx.files.remove("/home/user/made")
    check(not sbx.files.exists("/home/user/made/moved.txt"), "files.remove (recursive)")
    try:
        sbx.files.read("/home/user/made/moved.txt")
        check(False, "reading a removed file raises")
    except NotFoundException:
        check(True, "reading a removed file raises NotFoundException")


def background(sbx):
    h = sbx.commands.run("echo started; sleep 600", background=True)
    pids = [p.pid for p in sbx.commands.list()]
    check(h.pid in pids, f"commands.list has the background command ({h.pid} in {pids})")
    check(sbx.commands.kill(h.pid), "commands.kill")
    try:
        h.wait()
        check(False, "a killed command's wait raises")
    except CommandExitException as e:
        check(e.exit_code != 0, f"a killed command ends with an error ({e.error})")
    check(h.pid not in [p.pid for p in sbx.commands.list()], "a killed command is no longer listed")


def unsupported(sbx):
    # Calls Aegis does not serve answer at once with an error that says so, never a hang.
    from e2b.sandbox.commands.command_handle import PtySize
    for name, call in [
        ("pty.create", lambda: sbx.pty.create(PtySize(rows=24, cols=80))),
        ("files.watch_dir", lambda: sbx.files.watch_dir("/tmp")),
        ("files.write with gzip", lambda: sbx.files.write("/tmp/z", b"z", gzip=True)),
    ]:
        started = time.monotonic()
        try:
            call()
            check(False, f"{name} is refused")
        except Exception as e:
            check("Aegis" in str(e) and time.monotonic() - started < 30,
                  f"{name} is refused with a clear error: {type(e).__name__}: {e}")


def pause_and_resume(sbx):
    # A value in guest memory (a tmpfs) and a process running: both are there after resume.
    sbx.commands.run("mkdir -p /mnt/mem && mount -t tmpfs mem /mnt/mem && head -c 16 /dev/urandom | od -An -tx1 > /mnt/mem/value")
    before = sbx.commands.run("cat /mnt/mem/value").stdout
    h = sbx.commands.run("sleep 900", background=True)
    sbx.pause()
    info = Sandbox.get_info(sbx.sandbox_id)
    check(info.state.value == "paused", f"a paused sandbox is listed as paused ({info.state})")
    resumed = Sandbox.connect(sbx.sandbox_id, timeout=600)
    after = resumed.commands.run("cat /mnt/mem/value").stdout
    check(before == after and before.strip(), "memory is kept across pause and resume")
    check(h.pid in [p.pid for p in resumed.commands.list()], "a running command is kept across pause and resume")
    resumed.commands.kill(h.pid)
    return resumed


def isolation_and_timeout(first):
    second = Sandbox.create(metadata={"role": "second"}, timeout=600)
    check(second.sandbox_id != first.sandbox_id, "a second sandbox has its own id")
    check(not second.files.exists("/tmp/blob.bin"), "a second sandbox does not see the first one's files")
    r = second.commands.run("cat /mnt/mem/value 2>/dev/null || echo none")
    check(r.stdout == "none\n", "nor its memory")
    ids = listed_ids(metadata={"role": "second"})
    check(ids == [second.sandbox_id], f"Sandbox.list filtered by metadata: {ids}")
    check(set(listed_ids()) >= {first.sandbox_id, second.sandbox_id}, "Sandbox.list has both")

    second.set_timeout(3)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and second.sandbox_id in listed_ids():
        time.sleep(1)
    check(second.sandbox_id not in listed_ids(), "an expired timeout removes the sandbox")
    try:
        second.commands.run("true")
        check(False, "a command in an expired sandbox raises")
    except Exception as e:  # the SDK's not-found or sandbox error
        check(True, f"a command in an expired sandbox raises {type(e).__name__}")


async def async_client(sandbox_id):
    sbx = await AsyncSandbox.connect(sandbox_id)
    r = await sbx.commands.run("echo async-$((20 + 22))")
    check(r.stdout == "async-42\n", f"AsyncSandbox commands.run: {r.stdout!r}")
    await sbx.files.write("/tmp/async.txt", "from async\n")
    check(await sbx.files.read("/tmp/async.txt") == "from async\n", "AsyncSandbox files.write and read")
    entries = [e.name for e in await sbx.files.list("/tmp")]
    check("async.txt" in entries, "AsyncSandbox files.list")
    h = await sbx.commands.run("sleep 600", background=True)
    check(await sbx.commands.kill(h.pid), "AsyncSandbox commands.kill")
    try:
        await sbx.commands.run("exit 7")
        check(False, "an async failing command raises")
    except CommandExitException as e:
        check(e.exit_code == 7, "AsyncSandbox: a failing command raises CommandExitException")
    try:
        await AsyncSandbox.connect("no-such-sandbox")
        check(False, "connecting to an unknown sandbox raises")
    except NotFoundException:
        check(True, "AsyncSandbox.connect to an unknown sandbox raises NotFoundException")


def main():
    try:
        Sandbox.create(api_key="e2b_" + "0" * 40)
        check(False, "a wrong key is refused")
    except AuthenticationException:
        check(True, "a wrong API key raises AuthenticationException")

    sbx = Sandbox.create(envs={"TOP": "from-create"}, metadata={"role": "first"}, timeout=600)
    check(sbx.is_running(), f"Sandbox.create gives a running sandbox {sbx.sandbox_id}")
    commands(sbx)
    files(sbx)
    background(sbx)
    unsupported(sbx)
    sbx = pause_and_resume(sbx)
    isolation_and_timeout(sbx)
    asyncio.run(async_client(sbx.sandbox_id))

    for call in (lambda: Sandbox.connect("no-such-sandbox"), lambda: Sandbox.get_info("no-such-sandbox")):
        try:
            call()
            check(False, "an unknown sandbox id raises")
        except NotFoundException:
            check(True, "an unknown sandbox id raises NotFoundException")
    check(Sandbox.kill(sbx.sandbox_id), "Sandbox.kill")
    check(sbx.sandbox_id not in listed_ids(), "a killed sandbox is not listed")
    check(not Sandbox.kill(sbx.sandbox_id), "killing it again answers False")
    print("all checks passed")


if __name__ == "__main__":
    sys.exit(main())
