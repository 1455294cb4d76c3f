"""Drives envd with E2B's official Python SDK, unmodified, to prove wire compatibility.

The SDK is pointed at envd with E2B_SANDBOX_URL (and E2B_DEBUG, so no control plane is needed).
Every check asserts; the script prints one line per check and exits non-zero on the first failure.
"""

import os
import sys
import tempfile

os.environ["E2B_DEBUG"] = "true"
os.environ.setdefault("E2B_API_KEY", "e2b_0000")

from e2b import CommandExitException, PtySize, Sandbox  # noqa: E402

root = tempfile.mkdtemp(prefix="wrenn-e2b-")
sbx = Sandbox.create()
assert sbx.is_running()
print("ok is_running")

r = sbx.commands.run("echo hello from e2b; echo err >&2")
assert (r.stdout, r.stderr, r.exit_code) == ("hello from e2b\n", "err\n", 0), r
print("ok run")

try:
    sbx.commands.run("exit 42")
    raise AssertionError("a failing command must raise")
except CommandExitException as e:
    assert e.exit_code == 42, e.exit_code
print("ok exit code")

r = sbx.commands.run("echo $GREETING; pwd", envs={"GREETING": "hi"}, cwd=root)
assert r.stdout == f"hi\n{os.path.realpath(root)}\n", r.stdout
print("ok envs and cwd")

path = f"{root}/nested/hello.txt"
sbx.files.write(path, "content here")
assert sbx.files.read(path) == "content here"
assert sbx.files.read(path, format="bytes") == b"content here"
assert sbx.files.exists(path)
assert not sbx.files.exists(f"{root}/missing")
print("ok files")

sbx.files.make_dir(f"{root}/sub")
names = sorted(e.name for e in sbx.files.list(root))
assert names == ["nested", "sub"], names
info = sbx.files.get_info(path)
assert info.size == 12 and info.name == "hello.txt", info
sbx.files.rename(path, f"{root}/moved.txt")
sbx.files.remove(f"{root}/sub")
names = sorted(e.name for e in sbx.files.list(root))
assert names == ["moved.txt", "nested"], names
print("ok directories")

h = sbx.commands.run("sleep 0.3; echo bg", background=True)
assert h.pid in [p.pid for p in sbx.commands.list()]
assert h.wait().stdout == "bg\n"
print("ok background")

h = sbx.commands.run("cat", background=True, stdin=True)
sbx.commands.send_stdin(h.pid, "piped\n")
sbx.commands.close_stdin(h.pid)
assert h.wait().stdout == "piped\n"
print("ok stdin")

h = sbx.commands.run("sleep 30", background=True)
assert sbx.commands.kill(h.pid)
try:
    h.wait()
except CommandExitException:
    pass
print("ok kill")

out = []
t = sbx.pty.create(size=PtySize(rows=24, cols=80))
sbx.pty.send_stdin(t.pid, b"stty size; exit\n")
t.wait(on_pty=lambda d: out.append(bytes(d)))
assert b"24 80" in b"".join(out), out
print("ok pty")

events = []
w = sbx.files.watch_dir(root)
sbx.files.write(f"{root}/watched.txt", "x")
import time  # noqa: E402

deadline = time.time() + 5
while time.time() < deadline and not events:
    events.extend(w.get_new_events())
    time.sleep(0.05)
w.stop()
assert any(e.name == "watched.txt" for e in events), events
print("ok watch")
sys.exit(0)
