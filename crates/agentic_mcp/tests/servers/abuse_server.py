#!/usr/bin/env python3
"""A misbehaving MCP server for lion's subprocess-sandbox abuse suite.

It speaks MCP over stdio (newline-delimited JSON-RPC 2.0) with the Python 3.11
standard library only, and it writes its JSON-RPC lines ITSELF: it must be able
to break the protocol on command (a 100 MB line, malformed JSON, garbage on
stdout, no answer to initialize), which an SDK would not let it do. lion never
hand-writes JSON-RPC; only this test server does.

What it answers: `initialize`, `notifications/initialized`, `ping`,
`tools/list`, `tools/call`; it sends `roots/list` to the client on request (the
`roots` case) and reads the client's answer.

Tools:
  - `good` {"text": STR}: echoes the text. The control: a call that must keep
    working while another call on the same server misbehaves (each call runs
    in its own thread).
  - `abuse` {"case": NAME, ...params}: performs one misbehaviour and REPORTS
    WHAT IT OBSERVED as structured content, e.g. {"ok": false, "errno":
    "EACCES"}, so a test can assert that the OS refused it. When the sandbox
    kills the process instead (seccomp kill, a limit), there is no report: the
    test then checks the event lion recorded.

Every case reports `ok` (did the action succeed?), and on an OS refusal
`errno` (its symbolic name, e.g. "EACCES") and `error` (its message).

Command line:
  --never-initialize  read requests but never answer anything (a server that
                      hangs at the handshake).
  --armed             allow the cases that would harm the machine if run
                      outside a sandbox (fork_bomb, memory_bomb, fill_disk,
                      kill_all). Without it they report {"ok": false,
                      "refused": "not armed"} and do nothing. Pass it only to
                      a sandboxed server.

System call numbers are x86_64's; on another machine the raw-syscall cases
report {"ok": false, "error": "unsupported architecture"}.
"""

import ctypes
import errno as errno_mod
import hashlib
import json
import os
import platform
import signal
import socket
import sys
import tempfile
import threading
import time

PROTOCOL_VERSIONS = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"]
SERVER_INFO = {"name": "lion-abuse-server", "version": "1.0.0"}

ARMED = "--armed" in sys.argv[1:]
NEVER_INITIALIZE = "--never-initialize" in sys.argv[1:]
# `--tools-from=PATH`: a JSON list of extra echo tools ({"name", and
# optionally "description"}), read at each listing, so a test can change
# what the server offers after install.
TOOLS_FROM = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--tools-from=")), None)

# ---------------------------------------------------------------- transport

_out_lock = threading.Lock()

# This server process, told apart from any other (a new process may get a
# reused pid namespace inode number once the old namespace is freed).
INSTANCE = os.urandom(8).hex()
_pending = {}  # id of a request we sent -> [threading.Event, response]
_pending_lock = threading.Lock()
_next_id = [0]


def write_raw(data: bytes) -> None:
    """Writes bytes to stdout as they are (one writer at a time)."""
    with _out_lock:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def send(message: dict) -> None:
    """Writes one JSON-RPC message as one line."""
    write_raw(json.dumps(message, separators=(",", ":")).encode() + b"\n")


def reply(req_id, result: dict) -> None:
    send({"jsonrpc": "2.0", "id": req_id, "result": result})


def reply_error(req_id, code: int, message: str) -> None:
    send({"jsonrpc": "2.0", "id": req_id, "error": {"code": code, "message": message}})


def ask_client(method: str, params: dict) -> dict:
    """Sends a request to the client and waits for its response."""
    with _pending_lock:
        _next_id[0] += 1
        req_id = f"abuse-{_next_id[0]}"
        slot = [threading.Event(), None]
        _pending[req_id] = slot
    send({"jsonrpc": "2.0", "id": req_id, "method": method, "params": params})
    slot[0].wait()
    return slot[1]


def tool_result(req_id, report: dict, is_error: bool = False) -> None:
    reply(req_id, {
        "content": [{"type": "text", "text": json.dumps(report, sort_keys=True)}],
        "structuredContent": report,
        "isError": is_error,
    })


# ---------------------------------------------------------------- helpers

def os_error(e: OSError, **extra) -> dict:
    """The report of an action the OS refused."""
    name = errno_mod.errorcode.get(e.errno, str(e.errno)) if e.errno else None
    return {"ok": False, "errno": name, "error": str(e), **extra}


def need(params: dict, key: str):
    if key not in params:
        raise ValueError(f"missing parameter {key!r}")
    return params[key]


def not_armed(name: str) -> dict:
    return {"ok": False, "refused": "not armed", "case": name}


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# x86_64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
SYS = {
    "kill": 62,
    "ptrace": 101,
    "mount": 165,
    "umount2": 166,
    "keyctl": 250,
    "unshare": 272,
    "bpf": 321,
    "io_uring_setup": 425,
}


def pointer(buf) -> ctypes.c_void_p:
    """The address of a ctypes buffer, as a system call argument."""
    return ctypes.c_void_p(ctypes.addressof(buf))


def raw_syscall(name: str, *args) -> dict:
    """Calls a system call by number; reports its return value or errno."""
    if platform.machine() != "x86_64":
        return {"ok": False, "error": "unsupported architecture", "syscall": name}
    c_args = [a if isinstance(a, ctypes.c_void_p) else ctypes.c_long(a) for a in args]
    ctypes.set_errno(0)
    ret = _libc.syscall(ctypes.c_long(SYS[name]), *c_args)
    if ret == -1:
        err = ctypes.get_errno()
        return {"ok": False, "syscall": name, "errno": errno_mod.errorcode.get(err, str(err)),
                "error": os.strerror(err)}
    return {"ok": True, "syscall": name, "ret": ret}


# ---------------------------------------------------------------- cases
# Each case takes the call's params (and the request id for the few that
# answer in a special way) and returns the report. A docstring per case says
# what a sandbox must make of it.

def case_fork_bomb(p, _id):
    """Forks children (each sleeps `hold` s) until fork fails or `max` is
    reached. Sandbox: a pids limit stops it ({"ok": false, "errno":
    "EAGAIN"}, `forked` below the limit) whether lion runs as root or not.
    Params: max (default 100000), hold (default 30). Armed only."""
    if not ARMED:
        return not_armed("fork_bomb")
    limit, hold = int(p.get("max", 100000)), float(p.get("hold", 30))
    children, report = [], None
    for _ in range(limit):
        try:
            pid = os.fork()
        except OSError as e:
            report = os_error(e)
            break
        if pid == 0:
            time.sleep(hold)
            os._exit(0)
        children.append(pid)
    if report is None:
        report = {"ok": True}
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass
    report["forked"] = len(children)
    return report


def case_cpu_spin(p, _id):
    """Spins the CPU for `seconds` (default: forever). Sandbox: the CPU-time
    limit or the call's wall-clock timeout ends it (a kill or timeout event);
    a concurrent `good` call still answers. Params: seconds."""
    seconds = p.get("seconds")
    end = None if seconds is None else time.monotonic() + float(seconds)
    n = 0
    while end is None or time.monotonic() < end:
        n += 1
    return {"ok": True, "iterations": n}


def case_memory_bomb(p, _id):
    """Allocates and touches `chunk_mb` MiB at a time until allocation fails
    or `max_mb` is reached. Sandbox: the memory limit stops it (MemoryError
    reported, or the process OOM-killed: lion's event). Params: chunk_mb
    (default 16), max_mb (default unbounded). Armed only."""
    if not ARMED:
        return not_armed("memory_bomb")
    chunk = int(p.get("chunk_mb", 16)) << 20
    max_mb = p.get("max_mb")
    hoard = []
    try:
        while max_mb is None or len(hoard) * (chunk >> 20) < int(max_mb):
            hoard.append(b"\x01" * chunk)
    except MemoryError:
        got = len(hoard) * (chunk >> 20)
        hoard.clear()
        return {"ok": False, "error": "MemoryError", "allocated_mb": got}
    got = len(hoard) * (chunk >> 20)
    hoard.clear()
    return {"ok": True, "allocated_mb": got}


def case_fill_disk(p, _id):
    """Writes `chunk_mb` MiB at a time to a file in `path` (a granted dir)
    until a write fails or `max_mb` is reached, then removes the file.
    Sandbox: the file-size limit (EFBIG; Python ignores SIGXFSZ) or the disk's
    own limit stops it. Params: path, chunk_mb (default 1), max_mb. Armed
    only."""
    if not ARMED:
        return not_armed("fill_disk")
    directory = need(p, "path")
    chunk = b"\0" * (int(p.get("chunk_mb", 1)) << 20)
    max_mb = p.get("max_mb")
    target = os.path.join(directory, "abuse-fill.bin")
    written, report = 0, None
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as e:
        return os_error(e, written_bytes=0)
    try:
        while max_mb is None or written < int(max_mb) << 20:
            written += os.write(fd, chunk)
    except OSError as e:
        report = os_error(e)
    finally:
        os.close(fd)
        if not p.get("keep"):
            os.unlink(target)
    report = report or {"ok": True}
    report["written_bytes"] = written
    return report


def case_open_files(p, _id):
    """Opens pipes until the descriptor limit (EMFILE) or `max` descriptors,
    then closes them. Sandbox: the open-files limit stops it early ({"ok":
    false, "errno": "EMFILE"}). Params: max (default 1000000)."""
    limit = int(p.get("max", 1_000_000))
    fds, report = [], None
    try:
        while len(fds) < limit:
            r, w = os.pipe()
            fds += [r, w]
    except OSError as e:
        report = os_error(e)
    for fd in fds:
        os.close(fd)
    report = report or {"ok": True}
    report["opened"] = len(fds)
    return report


def read_report(path: str, max_bytes: int = 1 << 20) -> dict:
    """Reads a file; reports its size and SHA-256 (never its contents, which
    may be a secret that must not reach the log)."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes)
    except OSError as e:
        return os_error(e, path=path)
    return {"ok": True, "path": path, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def case_read(p, _id):
    """Reads `path` (e.g. a 0644 file outside the grant, the home's lion.db,
    /proc/<lion's pid>/environ). Sandbox: refused outside the grant (EACCES
    from Landlock, or ENOENT where it is not mounted); inside the grant, ok.
    Params: path, max_bytes (default 1 MiB)."""
    return read_report(need(p, "path"), int(p.get("max_bytes", 1 << 20)))


def case_write(p, _id):
    """Creates or truncates `path` and writes `data` to it. Sandbox: refused
    outside a read-write grant. Params: path, data (default "lion abuse")."""
    path = need(p, "path")
    data = str(p.get("data", "lion abuse")).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            n = os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as e:
        return os_error(e, path=path)
    return {"ok": True, "path": path, "bytes": n}


def case_list_dir(p, _id):
    """Lists `path`. Sandbox: refused outside the grant. Params: path."""
    path = need(p, "path")
    try:
        names = sorted(os.listdir(path))
    except OSError as e:
        return os_error(e, path=path)
    return {"ok": True, "path": path, "names": names[:1000], "count": len(names)}


def case_dotdot_escape(p, _id):
    """Reads `dir` + "/" + `rel` without normalising it (e.g. rel =
    "../../outside/secret.txt"). Sandbox: refused; the `..` walk leaves the
    grant. Params: dir, rel."""
    path = need(p, "dir").rstrip("/") + "/" + need(p, "rel")
    return read_report(path)


def case_symlink_escape(p, _id):
    """Creates a symlink in `dir` (a granted dir) pointing at `target`
    outside it, then reads through it, and removes the link. Sandbox: the
    link may be created, but the read is refused (Landlock checks the
    resolved file). Params: dir, target."""
    link = os.path.join(need(p, "dir"), "abuse-escape-link")
    target = need(p, "target")
    try:
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(target, link)
    except OSError as e:
        return os_error(e, step="symlink")
    try:
        report = read_report(link)
    finally:
        os.unlink(link)
    report["symlink_created"] = True
    return report


def case_tcp_connect(p, _id):
    """Connects to `host`:`port`, sends `data` if given and reads a reply.
    Sandbox: refused (ENETUNREACH/ECONNREFUSED) unless host:port is granted;
    the test's listener must see zero connections. Params: host, port, data,
    timeout (default 5 s)."""
    host, port = need(p, "host"), int(need(p, "port"))
    try:
        with socket.create_connection((host, port), timeout=float(p.get("timeout", 5))) as s:
            reply_bytes = b""
            if "data" in p:
                s.sendall(str(p["data"]).encode())
                s.shutdown(socket.SHUT_WR)
                while len(reply_bytes) < 4096:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    reply_bytes += chunk
            return {"ok": True, "host": host, "port": port,
                    "reply": reply_bytes.decode("utf-8", "replace")}
    except socket.timeout:
        return {"ok": False, "errno": "ETIMEDOUT", "error": "timed out"}
    except OSError as e:
        return os_error(e)


def case_udp_send(p, _id):
    """Sends one datagram `data` to `host`:`port`. Sandbox: refused
    (ENETUNREACH) without a grant; the listener must receive nothing. A sent
    datagram proves nothing on its own: check the listener. Params: host,
    port, data (default "lion abuse")."""
    host, port = need(p, "host"), int(need(p, "port"))
    data = str(p.get("data", "lion abuse")).encode()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            n = s.sendto(data, (host, port))
    except OSError as e:
        return os_error(e)
    return {"ok": True, "sent": n}


def case_dns(p, _id):
    """Resolves `name`. Sandbox: fails (no resolver reachable in an empty
    network namespace) unless the name is a granted host mapped inside.
    Params: name."""
    name = need(p, "name")
    try:
        infos = socket.getaddrinfo(name, None)
    except socket.gaierror as e:
        codes = {v: k for k, v in vars(socket).items() if k.startswith("EAI_") and isinstance(v, int)}
        return {"ok": False, "gai_error": codes.get(e.errno, str(e.errno)), "error": str(e)}
    except OSError as e:
        return os_error(e)
    return {"ok": True, "addresses": sorted({i[4][0] for i in infos})}


def case_abstract_unix(p, _id):
    """Connects to the abstract Unix socket `name` (no leading NUL), which
    the test opened outside. Sandbox: refused (ECONNREFUSED: another network
    namespace has other abstract sockets; or a Landlock scope). Params:
    name."""
    name = need(p, "name")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect("\0" + name)
            if "data" in p:
                s.sendall(str(p["data"]).encode())
    except OSError as e:
        return os_error(e)
    return {"ok": True}


def case_ptrace(p, _id):
    """PTRACE_ATTACH to `pid` (e.g. lion's), detaching at once if it worked.
    Sandbox: seccomp kills the process (lion's event) or the pid is not even
    visible (ESRCH in a pid namespace). Params: pid."""
    pid = int(need(p, "pid"))
    report = raw_syscall("ptrace", 16, pid, 0, 0)  # PTRACE_ATTACH
    if report["ok"]:
        raw_syscall("ptrace", 17, pid, 0, 0)  # PTRACE_DETACH
    return report


def case_kill_all(p, _id):
    """kill(-1, SIGKILL): every process the server may signal. Sandbox: only
    its own pid namespace is reachable (lion survives), or seccomp kills it.
    Armed only: outside a sandbox, as root, this kills the whole machine's
    processes."""
    if not ARMED:
        return not_armed("kill_all")
    return raw_syscall("kill", -1, 9)


def case_daemon(p, _id):
    """Double-forks a daemon (setsid) that writes a heartbeat (the time) to
    `heartbeat` every `interval` s, forever or for `beats` beats. Sandbox:
    the daemon dies with the server (pid namespace), so the file stops
    changing after the call/unload. Params: heartbeat, interval (default
    0.2), beats."""
    path = need(p, "heartbeat")
    interval = float(p.get("interval", 0.2))
    beats = p.get("beats")
    r, w = os.pipe()
    first = os.fork()
    if first == 0:
        try:
            os.close(r)
            os.setsid()
            second = os.fork()
            if second == 0:
                os.write(w, str(os.getpid()).encode())
                os.close(w)
                for fd in (0, 1, 2):
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                n = 0
                while beats is None or n < int(beats):
                    n += 1
                    try:
                        with open(path, "w") as f:
                            f.write(f"{n} {time.time()}\n")
                    except OSError:
                        pass
                    time.sleep(interval)
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(first, 0)
    pid = os.read(r, 32).decode()
    os.close(r)
    return {"ok": bool(pid), "daemon_pid": int(pid) if pid else None}


def case_setuid_exec(p, _id):
    """Runs a setuid binary (`path`, default /usr/bin/passwd, with `args`,
    default ["-S"]) and reports its exit status and output head. Sandbox: it
    gains nothing (no_new_privs: it runs with the server's uid, so passwd
    refuses), or it is not even visible (ENOENT/EACCES). With the default
    `passwd -S` (the caller's own status, which needs /etc/shadow, so root):
    measured as uid 65534, the setuid bit working prints the shadow fields
    ("nobody L 2025-05-20 0 99999 7 -1"); under no_new_privs passwd runs
    unprivileged and prints "nobody L never -1 -1 -1 -1" (exit 0 both
    times: compare stdout). Params: path, args."""
    import subprocess
    path = p.get("path", "/usr/bin/passwd")
    args = [str(a) for a in p.get("args", ["-S"])]
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return os_error(e, step="stat")
    try:
        # input=b"" rather than DEVNULL: a sandbox may have no /dev/null.
        done = subprocess.run([path, *args], capture_output=True, timeout=float(p.get("timeout", 10)), input=b"")
    except OSError as e:
        return os_error(e, step="exec", setuid_bit=bool(mode & 0o4000))
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "timed out", "setuid_bit": bool(mode & 0o4000)}
    return {"ok": done.returncode == 0, "returncode": done.returncode, "setuid_bit": bool(mode & 0o4000),
            "uid": os.getuid(), "euid": os.geteuid(),
            "stdout": done.stdout[:200].decode("utf-8", "replace"),
            "stderr": done.stderr[:200].decode("utf-8", "replace")}


def case_io_uring(p, _id):
    """io_uring_setup(1, params). Sandbox: ENOSYS (probed by runtimes: a
    clear errno) or a kill. An fd returned is closed."""
    params = ctypes.create_string_buffer(120)  # struct io_uring_params
    report = raw_syscall("io_uring_setup", 1, pointer(params))
    if report["ok"]:
        os.close(report["ret"])
    return report


def case_bpf(p, _id):
    """bpf(BPF_PROG_LOAD, zeroed attr). Sandbox: killed by seccomp (lion's
    event) or EPERM. Unsandboxed it reaches the kernel, which rejects the
    zeroed attr (E2BIG or EINVAL)."""
    attr = ctypes.create_string_buffer(128)
    return raw_syscall("bpf", 5, pointer(attr), 128)


def case_keyctl(p, _id):
    """keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0). Sandbox:
    killed by seccomp or EPERM/ENOSYS; keyrings are not namespaced."""
    return raw_syscall("keyctl", 0, -3, 0)


def case_unshare(p, _id):
    """unshare(CLONE_NEWUSER|CLONE_NEWNS) (`flags` to override). Sandbox:
    killed by seccomp or EPERM; a nested namespace is a way out of the
    filters. Note: a multi-threaded caller gets EINVAL for CLONE_NEWUSER."""
    return raw_syscall("unshare", int(p.get("flags", 0x10000000 | 0x00020000)))


def case_mount(p, _id):
    """mount("none", a fresh temp dir, "tmpfs"), unmounted at once if it
    worked. Sandbox: killed by seccomp or EPERM."""
    target = tempfile.mkdtemp(prefix="abuse-mount-")
    src, fstype, tgt = (ctypes.create_string_buffer(b) for b in (b"none", b"tmpfs", target.encode()))
    report = raw_syscall("mount", pointer(src), pointer(tgt), pointer(fstype), 0, 0)
    if report["ok"]:
        raw_syscall("umount2", pointer(tgt), 0)
    try:
        os.rmdir(target)
    except OSError:
        pass
    return report


def case_stdout_flood(p, _id):
    """Writes `bytes` bytes of non-JSON garbage to stdout (lines of `A`s, or
    raw bytes with kind="binary"), then answers normally. Sandbox/client: the
    output cap ends it (lion's event), or the client skips/refuses the
    garbage. Params: bytes (default 10 MB), kind."""
    total = int(p.get("bytes", 10_000_000))
    binary = p.get("kind") == "binary"
    line = (b"\xff\xfe" * 512) if binary else (b"A" * 1023 + b"\n")
    sent = 0
    with _out_lock:
        while sent < total:
            chunk = line[: total - sent]
            sys.stdout.buffer.write(chunk)
            sent += len(chunk)
        sys.stdout.buffer.write(b"\n")
        sys.stdout.buffer.flush()
    return {"ok": True, "flooded_bytes": sent}


def case_huge_line(p, req_id):
    """Answers the call with ONE JSON-RPC line of `mb` MiB (default 100): a
    valid result whose text is that long. Client: the line-length cap refuses
    it (lion's event), the server's memory is its own business. Params:
    mb."""
    size = int(p.get("mb", 100)) << 20
    head = b'{"jsonrpc":"2.0","id":' + json.dumps(req_id).encode() + b',"result":{"content":[{"type":"text","text":"'
    tail = b'"}],"isError":false}}\n'
    with _out_lock:
        sys.stdout.buffer.write(head)
        block = b"x" * (1 << 20)
        left = size
        while left > 0:
            sys.stdout.buffer.write(block[:left])
            left -= min(left, len(block))
        sys.stdout.buffer.write(tail)
        sys.stdout.buffer.flush()
    return None  # answered already


def case_malformed(p, req_id):
    """Answers the call with a malformed line instead of a result, by `kind`:
    "truncated" (default: cut-off JSON), "not_json", "wrong_version"
    ("jsonrpc": "1.0"), "wrong_id" (a result for an id never asked),
    "binary" (invalid UTF-8). Client: refuses it with a protocol error; the
    call fails or times out, it is never taken as a result."""
    kind = p.get("kind", "truncated")
    rid = json.dumps(req_id).encode()
    lines = {
        "truncated": b'{"jsonrpc":"2.0","id":' + rid + b',"result":{"content":[{"type":"te\n',
        "not_json": b"this is not json-rpc\n",
        "wrong_version": b'{"jsonrpc":"1.0","id":' + rid + b',"result":{"content":[]}}\n',
        "wrong_id": b'{"jsonrpc":"2.0","id":"never-asked-' + str(time.time_ns()).encode()
        + b'","result":{"content":[]}}\n',
        "binary": b"\xff\xfe\x00\x01{\n",
    }
    if kind not in lines:
        raise ValueError(f"unknown malformed kind {kind!r}: one of {sorted(lines)}")
    write_raw(lines[kind])
    return None  # no proper answer, on purpose


def case_exit(p, _id):
    """Exits the whole server mid-call with `code` (default 3), answering
    nothing, after writing `message` (if given) to stderr, and the value of
    the environment variable `env_to_stderr` (if given: a traceback that
    shows a secret). lion: the call fails (server died) with the stderr kept
    in the failure, granted values redacted; the warm server restarts or is
    quarantined. Params: code, message, env_to_stderr."""
    if "message" in p:
        sys.stderr.write(str(p["message"]) + "\n")
    if "env_to_stderr" in p:
        sys.stderr.write(f"the value is {os.environ.get(str(p['env_to_stderr']))} here\n")
    sys.stderr.flush()
    os._exit(int(p.get("code", 3)))


def case_stderr_flood(p, _id):
    """Writes `bytes` bytes (default 1 MB) of text to stderr, then answers.
    lion: keeps only a capped tail of it. Params: bytes."""
    total = int(p.get("bytes", 1_000_000))
    line = "E" * 1023 + "\n"
    sent = 0
    while sent < total:
        chunk = line[: total - sent]
        sys.stderr.write(chunk)
        sent += len(chunk)
    sys.stderr.flush()
    return {"ok": True, "stderr_bytes": sent}


def case_env(p, _id):
    """Reports the names of the environment variables it sees (not their
    values), and with `sha256_of` = NAME the SHA-256 of that variable's value
    (proof it got a granted secret, without putting it in any output).
    Sandbox: only granted variables are present (plus LC_CTYPE, which Python
    sets itself when the locale is C: PEP 538)."""
    report = {"ok": True, "names": sorted(os.environ)}
    name = p.get("sha256_of")
    if name is not None:
        value = os.environ.get(name)
        report["sha256"] = None if value is None else hashlib.sha256(value.encode()).hexdigest()
    return report


def case_sleep(p, _id):
    """Sleeps `seconds` then answers. lion: the per-call timeout ends it (a
    timeout event). Params: seconds."""
    time.sleep(float(need(p, "seconds")))
    return {"ok": True, "slept": float(p["seconds"])}


def case_roots(p, _id):
    """Asks the client for its roots (`roots/list`) and reports them. lion:
    offers exactly the granted directories."""
    response = ask_client("roots/list", {})
    if "error" in response:
        return {"ok": False, "error": response["error"]}
    return {"ok": True, "roots": response.get("result", {}).get("roots", [])}


def case_identity(p, _id):
    """Reports who and where the server runs: this process's instance token
    (random, made at start: whether two calls reached one server), pid,
    ppid, uid/gid, cwd, hostname, namespaces it can see. Sandbox: pid 1 or
    small pids in its own pid namespace, another hostname/uts, its own ids."""
    report = {"ok": True, "instance": INSTANCE, "pid": os.getpid(), "ppid": os.getppid(), "uid": os.getuid(), "euid": os.geteuid(),
              "gid": os.getgid(), "hostname": socket.gethostname()}
    try:
        report["cwd"] = os.getcwd()
    except OSError as e:
        report["cwd_errno"] = errno_mod.errorcode.get(e.errno)
    for ns in ("pid", "net", "mnt", "user", "uts", "ipc"):
        try:
            report[f"ns_{ns}"] = os.readlink(f"/proc/self/ns/{ns}")
        except OSError as e:
            report[f"ns_{ns}"] = errno_mod.errorcode.get(e.errno)
    return report


CASES = {
    "fork_bomb": case_fork_bomb,
    "cpu_spin": case_cpu_spin,
    "memory_bomb": case_memory_bomb,
    "fill_disk": case_fill_disk,
    "open_files": case_open_files,
    "read": case_read,
    "write": case_write,
    "list_dir": case_list_dir,
    "dotdot_escape": case_dotdot_escape,
    "symlink_escape": case_symlink_escape,
    "tcp_connect": case_tcp_connect,
    "udp_send": case_udp_send,
    "dns": case_dns,
    "abstract_unix": case_abstract_unix,
    "ptrace": case_ptrace,
    "kill_all": case_kill_all,
    "daemon": case_daemon,
    "setuid_exec": case_setuid_exec,
    "io_uring": case_io_uring,
    "bpf": case_bpf,
    "keyctl": case_keyctl,
    "unshare": case_unshare,
    "mount": case_mount,
    "stdout_flood": case_stdout_flood,
    "stderr_flood": case_stderr_flood,
    "huge_line": case_huge_line,
    "malformed": case_malformed,
    "exit": case_exit,
    "env": case_env,
    "sleep": case_sleep,
    "roots": case_roots,
    "identity": case_identity,
}

TOOLS = [
    {
        "name": "good",
        "description": "Echoes its text: the well-behaved control call.",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    },
    {
        "name": "abuse",
        "description": "Performs one misbehaviour (case) and reports what the OS let it do.",
        "inputSchema": {
            "type": "object",
            "properties": {"case": {"type": "string", "enum": sorted(CASES)}},
            "required": ["case"],
            "additionalProperties": True,
        },
    },
]


def extra_tools() -> list:
    """The extra echo tools the `--tools-from` file lists now (none without
    the flag, or when the file cannot be read)."""
    if TOOLS_FROM is None:
        return []
    try:
        with open(TOOLS_FROM, encoding="utf-8") as f:
            listed = json.load(f)
    except (OSError, ValueError):
        return []
    return [{"name": t["name"], "description": t.get("description", "Echoes its text."),
             "inputSchema": TOOLS[0]["inputSchema"]} for t in listed]


# ---------------------------------------------------------------- dispatch

def run_call(req_id, params: dict) -> None:
    """Runs one tools/call (in its own thread) and answers it."""
    name = params.get("name")
    args = params.get("arguments") or {}
    try:
        if name == "good" or name in {t["name"] for t in extra_tools()}:
            text = str(args.get("text", ""))
            tool_result(req_id, {"ok": True, "echo": text})
        elif name == "abuse":
            case = args.get("case")
            if case not in CASES:
                tool_result(req_id, {"ok": False, "error": f"unknown case {case!r}"}, is_error=True)
                return
            report = CASES[case](args, req_id)
            if report is not None:
                report.setdefault("case", case)
                tool_result(req_id, report)
        else:
            reply_error(req_id, -32602, f"unknown tool {name!r}")
    except Exception as e:  # the report of a case that broke, not a crash
        tool_result(req_id, {"ok": False, "error": f"{type(e).__name__}: {e}"}, is_error=True)


def handle(msg: dict) -> None:
    method = msg.get("method")
    req_id = msg.get("id")
    if method is None:
        # A response to a request we sent (roots/list).
        with _pending_lock:
            slot = _pending.pop(req_id, None)
        if slot is not None:
            slot[1] = msg
            slot[0].set()
        return
    if NEVER_INITIALIZE:
        return
    if method == "initialize":
        asked = (msg.get("params") or {}).get("protocolVersion")
        version = asked if asked in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[-1]
        reply(req_id, {"protocolVersion": version, "capabilities": {"tools": {"listChanged": False}},
                       "serverInfo": SERVER_INFO})
    elif method.startswith("notifications/"):
        return
    elif method == "ping":
        reply(req_id, {})
    elif method == "tools/list":
        reply(req_id, {"tools": TOOLS + extra_tools()})
    elif method == "tools/call":
        threading.Thread(target=run_call, args=(req_id, msg.get("params") or {}), daemon=True).start()
    elif req_id is not None:
        reply_error(req_id, -32601, f"method not found: {method}")


def main() -> None:
    for raw in sys.stdin.buffer:
        try:
            msg = json.loads(raw)
        except ValueError:
            continue  # a malformed line from the client: nothing to answer
        if isinstance(msg, dict):
            handle(msg)


if __name__ == "__main__":
    main()
