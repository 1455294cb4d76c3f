"""Drives a real capsule with the unmodified official `wrenn` SDK (0.3.0).

Exec, streams, files, the PTY, the port proxy, pause/connect/wake and snapshots. Run by
tests/sdk_e2e.rs with WRENN_BASE_URL and WRENN_API_KEY set. Prints one line per check and
"ALL OK" at the end; any failure raises (non-zero exit with a traceback).
"""

import hashlib
import os
import time

import httpx
import httpx_ws
import wrenn
from wrenn import Capsule, StreamExitEvent, StreamStdoutEvent, StreamStartEvent


WS_ECHO = r"""
import base64, hashlib, socket, struct, threading
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
def recvn(c, n):
    b = b""
    while len(b) < n:
        chunk = c.recv(n - len(b))
        if not chunk:
            raise EOFError
        b += chunk
    return b
def handle(c):
    data = b""
    while b"\r\n\r\n" not in data:
        data += c.recv(4096)
    headers = {k.lower(): v for k, v in (l.split(": ", 1) for l in data.decode().split("\r\n")[1:] if ": " in l)}
    accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + GUID).encode()).digest()).decode()
    c.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Accept: %s\r\n\r\n" % accept).encode())
    while True:
        head = recvn(c, 2)
        op, ln = head[0] & 0x0F, head[1] & 0x7F
        if ln == 126:
            ln = struct.unpack(">H", recvn(c, 2))[0]
        elif ln == 127:
            ln = struct.unpack(">Q", recvn(c, 8))[0]
        mask = recvn(c, 4)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(recvn(c, ln)))
        if op == 8:
            c.sendall(b"\x88\x00")
            return
        if op == 1:
            out = ("echo:" + payload.decode()).encode()
            c.sendall(bytes([0x81, len(out)]) + out)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8765))
s.listen()
while True:
    conn, _ = s.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
"""


def check(name, cond, detail=""):
    if not cond:
        raise AssertionError(f"{name}: {detail}")
    print(f"ok {name}", flush=True)


with Capsule(wait=True) as c:
    info = c.info
    check("create+wait", info is not None and info.status == "running", repr(info))

    r = c.commands.run("echo hello; echo oops >&2; exit 42")
    check("run stdout/stderr/exit", (r.stdout, r.stderr, r.exit_code) == ("hello\n", "oops\n", 42), repr(r))
    r = c.commands.run("echo $GREETING; pwd", envs={"GREETING": "hi"}, cwd="/tmp")
    check("run envs+cwd", r.stdout == "hi\n/tmp\n", repr(r))
    c.commands.run("mkdir -p repo")
    r = c.commands.run("pwd", cwd="repo")
    check("relative cwd", r.stdout.strip().endswith("/repo"), repr(r))
    r = c.commands.run("printf '\\377\\376'")
    check("non-utf8 output", r.exit_code == 0, repr(r))

    h = c.commands.run("sleep 300", background=True, tag="sleeper")
    check("background", h.pid > 0 and h.tag == "sleeper", repr(h))
    procs = c.commands.list()
    check("process list", any(p.pid == h.pid for p in procs), repr(procs))
    c.commands.kill(h.pid)
    time.sleep(0.5)
    check("kill", all(p.pid != h.pid for p in c.commands.list()))

    events = list(c.commands.stream("for i in 1 2 3; do echo line$i; done; exit 3"))
    out = "".join(e.data for e in events if isinstance(e, StreamStdoutEvent))
    check("stream order", isinstance(events[0], StreamStartEvent) and out == "line1\nline2\nline3\n", repr(events))
    check("stream exit", isinstance(events[-1], StreamExitEvent) and events[-1].exit_code == 3, repr(events[-1]))

    bg = c.commands.run("sleep 1; echo done-late", background=True)
    late = list(c.commands.connect(bg.pid))
    check("re-attach", isinstance(late[-1], StreamExitEvent), repr(late))

    c.files.write("/tmp/a/b/hello.txt", "hello files")
    check("write+read", c.files.read("/tmp/a/b/hello.txt") == "hello files")
    blob = os.urandom(300_000)
    c.files.write("/tmp/blob.bin", blob)
    check("binary round trip", c.files.read_bytes("/tmp/blob.bin") == blob)
    names = [e.name for e in c.files.list("/tmp/a/b")]
    check("list", names == ["hello.txt"], repr(names))
    check("exists", c.files.exists("/tmp/a/b/hello.txt") and not c.files.exists("/tmp/nope"))
    d1 = c.files.make_dir("/tmp/newdir")
    d2 = c.files.make_dir("/tmp/newdir")
    check("make_dir idempotent", d1.name == d2.name == "newdir" and d2.type == "directory", repr(d2))
    c.files.remove("/tmp/a")
    check("remove", not c.files.exists("/tmp/a"))
    try:
        c.files.read("/tmp/missing")
        check("read missing", False, "no error")
    except wrenn.WrennNotFoundError:
        check("read missing -> not_found", True)

    chunks = [os.urandom(1 << 20) for _ in range(8)]
    c.files.upload_stream("/tmp/big.bin", iter(chunks))
    got = hashlib.sha256()
    size = 0
    for chunk in c.files.download_stream("/tmp/big.bin"):
        got.update(chunk)
        size += len(chunk)
    check("stream upload/download", size == 8 << 20 and got.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest())

    with c.pty(cols=100, rows=30) as term:
        term.write(b"stty size; echo marker-$((6*7))\n")
        seen = b""
        for ev in term:
            if ev.type == "output" and ev.data:
                seen += ev.data
                if b"marker-42" in seen:
                    break
        tag = term.tag
    check("pty output and size", b"30 100" in seen and tag, repr(seen[-200:]))
    with c.pty_connect(tag) as again:
        again.write(b"exit 5\n")
        code = None
        for ev in again:
            if ev.type == "exit":
                code = ev.exit_code
                break
    check("pty re-attach and exit", code == 5, repr(code))

    c.commands.run("mkdir -p /tmp/site && echo proxied > /tmp/site/index.html")
    c.commands.run("cd /tmp/site && exec python3 -m http.server 8000", background=True)
    url = c.get_url(8000)
    base = httpx.URL(os.environ["WRENN_BASE_URL"])
    check("get_url shape", url == f"http://8000-{c.capsule_id}.{base.host}:{base.port}", url)
    # The proxy host has no DNS here: connect to the API listener and send the Host header the
    # URL names, as a wildcard DNS record would.
    body = None
    for _ in range(100):
        try:
            resp = httpx.get(f"http://{base.host}:{base.port}/", headers={"Host": httpx.URL(url).netloc.decode()}, timeout=5)
            if resp.status_code == 200:
                body = resp.text
                break
            assert resp.status_code >= 500, resp.status_code
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    check("port proxy via get_url", body == "proxied\n", f"{url} -> {body!r}")

    # A WebSocket through the same proxy (what the code runner's Jupyter channel needs): a
    # minimal RFC 6455 echo server in the guest, standard library only.
    c.files.write("/tmp/ws_echo.py", WS_ECHO)
    c.commands.run("exec python3 /tmp/ws_echo.py", background=True)
    ws_url = c.get_url(8765)
    reply = None
    for _ in range(100):
        try:
            with httpx.Client(timeout=5) as hc:
                with httpx_ws.connect_ws(f"http://{base.host}:{base.port}/", hc,
                                         headers={"Host": httpx.URL(ws_url).netloc.decode()}) as ws:
                    ws.send_text("ping-through-proxy")
                    reply = ws.receive_text()
                    break
        except Exception:
            time.sleep(0.2)
    check("websocket through the port proxy", reply == "echo:ping-through-proxy", repr(reply))

    # Pause and resume as the SDK does them: pause(wait=True) polls until paused; connect()
    # resumes a paused capsule; any call that needs it running wakes it by itself.
    info = c.pause(wait=True)
    check("pause", info.status == "paused", repr(info))
    again = Capsule.connect(c.capsule_id)
    check("connect resumes", again.get_info().status == "running", repr(again.get_info()))
    check("state kept across pause", c.files.read("/tmp/site/index.html") == "proxied\n")
    c.pause(wait=True)
    r = c.commands.run("cat /tmp/site/index.html")
    check("exec wakes a paused capsule", r.stdout == "proxied\n" and c.get_info().status == "running", repr(r))

    # A snapshot of the running capsule: a Template the SDK validates; the capsule keeps running.
    t = c.create_snapshot(name="sdk-snap")
    check("create_snapshot", (t.name, t.type) == ("sdk-snap", "snapshot") and t.size_bytes > 0, repr(t))
    check("source still running", c.get_info().status == "running")
    try:
        c.create_snapshot(name="sdk-snap")
        check("snapshot name taken", False, "no error")
    except wrenn.WrennConflictError:
        check("snapshot name taken -> conflict", True)
    t = c.create_snapshot(name="sdk-snap", overwrite=True)
    check("snapshot overwrite", t.name == "sdk-snap", repr(t))
    client = wrenn.WrennClient()
    names = [x.name for x in client.snapshots.list(type="snapshot")]
    check("snapshot listed", names == ["sdk-snap"], repr(names))
    client.snapshots.delete("sdk-snap")
    check("snapshot deleted", client.snapshots.list(type="snapshot") == [])

    capsule_id = c.capsule_id

client = wrenn.WrennClient()
gone = client.capsules.get(capsule_id)
check("destroyed on exit", gone.status in ("stopped", "missing"), repr(gone))
try:
    client.capsules.get("cl-0000000000000000000000000")
    check("unknown capsule", False, "no error")
except wrenn.WrennNotFoundError:
    check("unknown capsule -> not_found", True)
print("ALL OK")
