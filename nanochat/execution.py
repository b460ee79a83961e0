"""
Run untrusted Python (model-written code, HumanEval completions) inside an operating-system sandbox.

`execute_code(code)` runs `code` in a fresh Python interpreter inside a bubblewrap (`bwrap`)
sandbox and reports what happened as an `ExecutionResult`: did it run to its end, what it
printed, which exception stopped it, whether it hit the time or memory limit. The caller
never hangs: it enforces a wall-clock deadline and kills the sandbox when it is reached.

The boundary is the kernel's, not Python's:
- new user, pid, network, ipc, uts and cgroup namespaces: the code runs as uid 65534 with no
  capabilities and cannot make nested user namespaces; its processes see only each other and
  all die when the sandbox's init does (timeout, or the caller going away: --die-with-parent);
  there is no network at all, not even the host's 127.0.0.1;
- a filesystem of read-only binds of what Python needs (/usr, the lib dirs, the interpreter's
  prefix, a few /dev nodes) on a read-only root; the only writable place is the working
  directory, a private tmpfs of at most `MAX_WORKDIR_BYTES` that vanishes with the sandbox;
  no /proc and no /sys, so nothing of the host's processes (or of its own memory) is visible;
- outside the sandbox the code's uid is never root (the kernel waives RLIMIT_NPROC for root):
  it is the caller's, or 65534 when the caller is root (see `_Sandbox.command`); before it runs
  the runner sets RLIMIT_AS/DATA (`maximum_memory_bytes`), RLIMIT_NPROC (`MAX_TASKS`, threads
  included), RLIMIT_FSIZE, RLIMIT_CPU (a backstop should the caller die) and no core dumps;
- a seccomp filter refuses the system calls that reach into another process (ptrace,
  process_vm_readv/writev, pidfd_getfd, perf_event_open).
Where bubblewrap is missing or the kernel refuses it namespaces, `execute_code` raises
`SandboxUnavailable` saying what to install or enable; it never runs code unsandboxed.

Success cannot be forged by exiting early or writing to a channel. The verdict "ran to its
end" is a random per-run token that the caller checks; inside the sandbox a watcher thread,
started before the code, reads the token from a pipe that it then closes, and writes it to the
result pipe only when the runner's own frame (the very frame object that called `exec`, not
one with the same code) has moved past the `exec` call, which only a normal return can do.
The code cannot read the token: the watcher's frame is reachable only through
`sys._current_frames` and the `gc` referent walks, and the roads to raw memory are ctypes,
/proc/self/mem, hand-built code objects and another process's memory. An audit hook
(irremovable, installed before the code runs) refuses those calls, tracing (which could move
the runner's frame), new audit hooks, unmarshalling (so the code imports the standard
library from source, never from a .pyc it could forge) and C extensions other than the
interpreter's own lib-dynload minus ctypes, subinterpreters and the test modules; /proc is
not mounted and seccomp stops ptrace. What the sandbox does NOT judge is the program's own
logic: code running in the same interpreter as its tests can still patch them (replace
`check`, return objects equal to everything); a grader that must withstand that has to
compare values itself. A memory-corruption bug in CPython itself could also read the token.

Success means the code ran to its end without raising. Any exit before the end counts as a
failure, `sys.exit(0)` and `os._exit(0)` included: for a HumanEval program that means the
`check(candidate)` assertions never ran, and a policy being trained with this as its reward
must not learn that exiting early scores. Linux only (bubblewrap and seccomp).
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass

if __name__ == "__main__":  # the sandboxed runner runs this file's source as a script: no nanochat package there
    NanochatError = RuntimeError
else:
    from nanochat.errors import NanochatError

DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024  # per stream: a print loop must not fill the parent's memory
MAX_FILE_BYTES = 64 * 1024 * 1024  # RLIMIT_FSIZE: the largest file the code may write
MAX_WORKDIR_BYTES = 64 * 1024 * 1024  # size of the tmpfs working directory: all files together
MAX_TASKS = 16  # RLIMIT_NPROC inside the sandbox: processes and threads, the runner and its watcher included
SANDBOX_UID = 65534  # "nobody": the code's uid inside the sandbox (and outside it when the caller is root)
_MAX_ERROR_CHARS = 10_000
_PROGRAM_NAME = "<program>"  # filename in tracebacks of the user code
_CHILD_FLAG = "--nanochat-sandbox-child"
_READ_CHUNK = 64 * 1024
_EXIT_POLL_S = 0.05  # how often the parent checks whether the child exited while its pipes stay open
_WATCH_POLL_S = 0.005  # how often the watcher looks whether the runner's frame is past exec
_TOKEN_PREFIX = b"OK "
# where imports look for .pyc files: under the read-only /usr, so nothing is found or written
_NO_PYCACHE = "/usr/nanochat-no-pycache"
# syscalls of another process's memory or file descriptors, per architecture (audit arch, numbers):
# ptrace, process_vm_readv, process_vm_writev, pidfd_getfd, perf_event_open
_SECCOMP_DENIED = {
    "x86_64": (0xC000003E, (101, 310, 311, 438, 298)),
    "aarch64": (0xC00000B7, (117, 270, 271, 438, 241)),
}


class SandboxUnavailable(NanochatError):
    """This machine cannot provide the sandbox; the message says what to install or enable."""


@dataclass(repr=False)
class ExecutionResult:
    """What happened to one `execute_code` run."""

    success: bool  # the code ran to its end without raising
    stdout: str
    stderr: str  # the code's own stderr, then the traceback when it raised
    error: str | None = None  # "ExceptionType: message", or why the process ended early
    timeout: bool = False
    memory_exceeded: bool = False

    def __repr__(self) -> str:
        def short(text: str, n: int = 80) -> str:
            return text if len(text) <= n else f"{text[:n]}... ({len(text)} chars)"

        parts = [f"success={self.success}"]
        if self.timeout:
            parts.append("timeout=True")
        if self.memory_exceeded:
            parts.append("memory_exceeded=True")
        if self.error is not None:
            parts.append(f"error={short(self.error)!r}")
        parts.append(f"stdout={short(self.stdout)!r}")
        if self.stderr:
            parts.append(f"stderr={short(self.stderr)!r}")
        return f"ExecutionResult({', '.join(parts)})"


# --------------------------------------------------------------------------------------
# The parent side


def execute_code(
    code: str,
    timeout: float = 5.0,
    maximum_memory_bytes: int | None = 256 * 1024 * 1024,
    *,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
) -> ExecutionResult:
    """Run `code` in the sandbox and report the outcome; never hangs.

    `timeout` is wall-clock seconds for the whole run (sandbox and interpreter start
    included); `maximum_memory_bytes=None` sets no memory limit. stdout and stderr are each
    capped at `max_output_bytes`, with a note at the end when something was cut. Raises
    `SandboxUnavailable` when the machine cannot sandbox (never runs the code then), an
    OSError when the system cannot start a process, and nothing for anything the code does.
    """
    import secrets
    import selectors
    import subprocess
    import tempfile

    if not 0 < timeout < math.inf:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    sandbox = _sandbox()
    root = tempfile.mkdtemp(prefix="nanochat-exec-")  # only a name: inside, a fresh tmpfs is mounted there
    token = secrets.token_hex(16).encode()
    proc: subprocess.Popen[bytes] | None = None
    fds: list[int] = []
    try:
        program = tempfile.TemporaryFile()  # unnamed: the runner reads it through its fd
        with program:
            program.write(code.encode("utf-8", errors="surrogatepass"))
            program.flush()
            program.seek(0)
            token_r = _pipe_holding(token, fds)
            seccomp_r = _pipe_holding(_seccomp_program(), fds)
            result_r, result_w = os.pipe()
            fds += [result_r, result_w]
            userns = _new_user_namespace(sandbox.interpreter, fds) if sandbox.as_root else None
            argv = sandbox.command(root, seccomp_r, userns) + [
                sandbox.interpreter, "-I", "-X", "utf8", "-c", _child_source(), _CHILD_FLAG,
                str(program.fileno()), str(token_r), str(result_w), str(maximum_memory_bytes or 0),
                str(2 * math.ceil(timeout) + 1), str(SANDBOX_UID if sandbox.as_root else -1),
            ]
            env = {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "HOME": root,
                "TMPDIR": root,
                "LANG": "C.UTF-8",
                # glibc reserves 64 MiB of address space per malloc arena (one per thread), which
                # would eat an RLIMIT_AS budget with a handful of threads
                "MALLOC_ARENA_MAX": "2",
                "OPENBLAS_NUM_THREADS": "1",
                "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1",
            }
            start = time.monotonic()
            deadline = start + timeout
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=env, start_new_session=True,
                **sandbox.popen_kwargs(program.fileno(), token_r, seccomp_r, result_w, userns),
            )
        for fd in [fd for fd in fds if fd != result_r]:  # the sandbox holds its own copies now
            os.close(fd)
            fds.remove(fd)

        assert proc.stdout is not None and proc.stderr is not None
        streams = {proc.stdout.fileno(): _CappedBuffer(max_output_bytes),
                   proc.stderr.fileno(): _CappedBuffer(max_output_bytes),
                   result_r: _CappedBuffer(256 * 1024)}  # a report is at most ~12 escaped bytes per error char
        timed_out = False
        with selectors.DefaultSelector() as sel:
            for fd in streams:
                sel.register(fd, selectors.EVENT_READ)
            while True:
                if _has_exited(proc):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                if not sel.get_map():  # all pipes closed but the sandbox lives on: just wait
                    time.sleep(min(0.005, remaining))
                    continue
                for key, _ in sel.select(timeout=min(_EXIT_POLL_S, remaining)):
                    data = os.read(key.fd, _READ_CHUNK)
                    if data:
                        streams[key.fd].add(data)
                    else:
                        sel.unregister(key.fd)
            # done (or out of time): kill bubblewrap, whose death takes the sandbox's whole pid
            # namespace with it, then read what is left in the pipes without blocking
            _kill_group(proc)
            for key in list(sel.get_map().values()):
                _drain_nonblocking(key.fd, streams[key.fd])
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # stuck in the kernel; Popen reaps it later
            pass
        stdout = streams[proc.stdout.fileno()].text("stdout")
        stderr = streams[proc.stderr.fileno()].text("stderr")
        return _make_result(streams[result_r].data, token, proc.returncode, timed_out, timeout, stdout, stderr)
    finally:
        if proc is not None:
            if proc.returncode is None:  # left early (an exception, Ctrl-C): leave nothing running
                _kill_group(proc)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        for fd in fds:
            os.close(fd)
        os.rmdir(root)


def _pipe_holding(data: bytes, fds: list[int]) -> int:
    """A pipe whose read end yields `data` then EOF (`data` must fit the pipe buffer, 4 KiB is safe)."""
    r, w = os.pipe()
    fds += [r, w]
    while data:
        data = data[os.write(w, data):]
    os.close(w)
    fds.remove(w)
    return r


# --------------------------------------------------------------------------------------
# The sandbox command (bubblewrap)


@dataclass(frozen=True)
class _Sandbox:
    """How to start bubblewrap on this machine: found and checked once per process."""

    bwrap: str
    interpreter: str  # the real interpreter behind sys.executable (a venv's python is a link to it)
    python_roots: tuple[str, ...]  # its installation, bound read-only
    as_root: bool  # the caller is root: see `command`
    disable_userns: bool  # bubblewrap >= 0.8 can forbid nested user namespaces itself

    def command(self, workdir: str, seccomp_fd: int, userns_fd: int | None) -> list[str]:
        """bubblewrap's argv up to `--`.

        A non-root caller gets a new user namespace from bubblewrap, mapping the sandbox uid
        to the caller's. For root that would be uid 0 outside, which the kernel exempts from
        RLIMIT_NPROC, so root passes `userns_fd` (see `_new_user_namespace`: uids 0 and 65534
        mapped to themselves, no nested namespaces): bubblewrap sets up as uid 0, which can
        walk root-only paths to the interpreter, and the runner drops to uid 65534 before the
        code runs, keeping only CAP_SETUID/CAP_SETGID until then.
        """
        if self.as_root:
            argv = [self.bwrap, "--userns", str(userns_fd), "--unshare-pid", "--unshare-net", "--unshare-ipc",
                    "--unshare-uts", "--unshare-cgroup-try", "--uid", "0", "--gid", str(SANDBOX_UID),
                    "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            argv = [self.bwrap, "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
                    "--cap-drop", "ALL"] + (["--disable-userns"] if self.disable_userns else [])
        argv += ["--die-with-parent", "--new-session"]
        # directories bubblewrap creates on its (read-only) root, searchable by the sandbox uid
        for path in sorted({a for p in (*self.python_roots, workdir, "/dev/null", "/etc/ld.so.cache") for a in _ancestors(p)}):
            argv += ["--perms", "0755", "--dir", path]
        for name in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            path = "/" + name
            if os.path.islink(path):  # merged /usr: /lib -> usr/lib
                argv += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                argv += ["--ro-bind", path, path]
        for path in self.python_roots:
            argv += ["--ro-bind", path, path]
        argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
        for device in ("null", "zero", "full", "random", "urandom"):
            argv += ["--dev-bind", f"/dev/{device}", f"/dev/{device}"]
        argv += ["--perms", "1777", "--size", str(MAX_WORKDIR_BYTES), "--tmpfs", workdir, "--chdir", workdir,
                 "--remount-ro", "/", "--seccomp", str(seccomp_fd), "--"]
        return argv

    def popen_kwargs(self, *pass_fds: int | None) -> dict:
        """Popen arguments for bubblewrap: the fds it must inherit and, for root, gid 65534
        (bubblewrap's --userns path switches uid before gid and would then fail to switch gid)."""
        kwargs: dict = {"pass_fds": tuple(fd for fd in pass_fds if fd is not None)}
        if self.as_root:
            kwargs.update(group=SANDBOX_UID, extra_groups=[])
        return kwargs


def _ancestors(path: str) -> list[str]:
    """'/a/b/c' -> ['/a', '/a/b']"""
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


_SANDBOX: _Sandbox | None = None
_SANDBOX_LOCK = threading.Lock()


def check_sandbox() -> None:
    """Raise SandboxUnavailable (saying what to install or enable) unless `execute_code` can run here."""
    _sandbox()


def _sandbox() -> _Sandbox:
    """Find bubblewrap and check once that it can build the sandbox here; raise SandboxUnavailable if not."""
    global _SANDBOX
    with _SANDBOX_LOCK:
        if _SANDBOX is None:
            _SANDBOX = _probe_sandbox()
        return _SANDBOX


def _probe_sandbox() -> _Sandbox:
    import shutil
    import subprocess

    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable(f"execute_code needs Linux (bubblewrap, namespaces, seccomp), not {sys.platform}")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(
            "execute_code runs code inside bubblewrap, which is not installed: "
            "`apt-get install bubblewrap` (Debian/Ubuntu) or `dnf install bubblewrap`")
    _seccomp_program()  # raises for an architecture without a syscall table
    interpreter = os.path.realpath(sys.executable)
    help_text = subprocess.run([bwrap, "--help"], capture_output=True, text=True).stdout
    sandbox = _Sandbox(bwrap, interpreter, _python_roots(interpreter), os.geteuid() == 0,
                       "--disable-userns" in help_text)
    fds: list[int] = []
    try:  # the real command with a trivial program: fails the way a real run would
        seccomp_r = _pipe_holding(_seccomp_program(), fds)
        userns = _new_user_namespace(interpreter, fds) if sandbox.as_root else None
        probe = subprocess.run(
            sandbox.command("/tmp/nanochat-exec-probe", seccomp_r, userns) + [interpreter, "-I", "-S", "-c", "pass"],
            capture_output=True, text=True, timeout=60, **sandbox.popen_kwargs(seccomp_r, userns))
    except OSError as e:
        probe = subprocess.CompletedProcess([], 1, "", str(e))
    finally:
        for fd in fds:
            os.close(fd)
    if probe.returncode != 0:
        raise SandboxUnavailable(
            f"bubblewrap cannot build the sandbox on this machine ({probe.stderr.strip() or f'exit {probe.returncode}'}). "
            "It needs user namespaces: on Debian/Ubuntu `sysctl kernel.unprivileged_userns_clone=1`, "
            "elsewhere `sysctl user.max_user_namespaces=15000` (and on Ubuntu 24.04+ "
            "`sysctl kernel.apparmor_restrict_unprivileged_userns=0`); in a container, a seccomp/AppArmor "
            "profile that allows unshare and mount")
    return sandbox


# run as root, in a child: makes the user namespace of one sandbox (see _Sandbox.command)
_USERNS_HELPER = """
import ctypes, sys
if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0:  # CLONE_NEWUSER
    sys.exit(f"unshare(CLONE_NEWUSER) failed with errno {ctypes.get_errno()}")
with open("/proc/sys/user/max_user_namespaces", "w") as f:  # this namespace's limit: no nested ones
    f.write("0")
print("ready", flush=True)
sys.stdin.read()
"""


def _new_user_namespace(interpreter: str, fds: list[int]) -> int:
    """A fresh user namespace mapping uids and gids 0 and 65534 to themselves; returns an fd to it."""
    import subprocess

    helper = subprocess.Popen([interpreter, "-I", "-S", "-c", _USERNS_HELPER],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert helper.stdout is not None and helper.stdin is not None
        if helper.stdout.readline() != b"ready\n":
            raise OSError(f"could not create a user namespace: {helper.communicate()[1].decode(errors='replace').strip()}")
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{helper.pid}/{name}", "w") as f:
                f.write(f"0 0 1\n{SANDBOX_UID} {SANDBOX_UID} 1\n")
        fd = os.open(f"/proc/{helper.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        fds.append(fd)
        return fd
    finally:
        if helper.returncode is None:
            helper.kill()
        helper.communicate()


def _python_roots(interpreter: str) -> tuple[str, ...]:
    """The directories of this Python installation the sandbox must see (stdlib, lib-dynload,
    libpython, the binary), outermost only, leaving out what the /usr etc. binds already cover."""
    import sysconfig

    system = ("/usr/", "/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/", "/libx32/")
    candidates = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, os.path.dirname(interpreter),
                                                 sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])}
    outer = sorted(p for p in candidates if not any(p != q and p.startswith(q + "/") for q in candidates))
    return tuple(p for p in outer if not any((p + "/").startswith(s) for s in system))


def _seccomp_program() -> bytes:
    """A classic-BPF seccomp filter: EPERM for `_SECCOMP_DENIED` (and for any foreign syscall ABI), allow the rest."""
    import platform
    import struct

    machine = platform.machine()
    if machine not in _SECCOMP_DENIED:
        raise SandboxUnavailable(f"no seccomp syscall table for the {machine} architecture; known: {sorted(_SECCOMP_DENIED)}")
    audit_arch, numbers = _SECCOMP_DENIED[machine]
    load, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    allow, deny = 0x7FFF0000, 0x00050000 | errno.EPERM  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO
    checks = [(jeq, n) for n in numbers]
    if machine == "x86_64":
        checks.append((jge, 0x40000000))  # the x32 ABI numbers the same calls differently
    deny_at = 3 + len(checks) + 1
    program = [(load, 0, 0, 4), (jeq, 0, deny_at - 2, audit_arch), (load, 0, 0, 0)]  # seccomp_data.arch, .nr
    program += [(op, deny_at - (3 + i + 1), 0, k) for i, (op, k) in enumerate(checks)]
    program += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in program)


class _CappedBuffer:
    """Keeps the first `cap` bytes of a stream and counts the rest, which it drops."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.chunks: list[bytes] = []
        self.size = 0
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = self.cap - self.size
        if room > 0:
            self.chunks.append(data[:room])
            self.size += min(room, len(data))
        self.dropped += max(0, len(data) - max(room, 0))

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def text(self, name: str) -> str:
        text = self.data.decode("utf-8", errors="replace")
        if self.dropped:
            text += f"\n[{name} truncated: {self.dropped} more bytes after the first {self.cap} were dropped]\n"
        return text


def _has_exited(proc) -> bool:
    """Whether the child has exited, WITHOUT reaping it: while it is an unreaped zombie its
    pid (= its process group id) cannot be reused, so the `killpg` that follows is safe."""
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # someone else reaped it (SIGCHLD ignored, ...)
        return True


def _kill_group(proc) -> None:
    """SIGKILL bubblewrap's process group; the sandbox's pid namespace dies with it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # already gone
        pass
    if proc.returncode is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def _drain_nonblocking(fd: int, buffer: _CappedBuffer, max_chunks: int = 64) -> None:
    """Read what is already in a pipe, never blocking."""
    os.set_blocking(fd, False)
    for _ in range(max_chunks):
        try:
            data = os.read(fd, _READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            return
        buffer.add(data)


def _make_result(report: bytes, token: bytes, returncode: int | None, timed_out: bool, timeout: float,
                 stdout: str, stderr: str) -> ExecutionResult:
    """Success only on the exact token; otherwise the runner's failure report or how the process ended."""
    if timed_out:
        return ExecutionResult(False, stdout, stderr, f"timed out after {timeout:g} s", timeout=True)
    if report == _TOKEN_PREFIX + token:
        return ExecutionResult(True, stdout, stderr)
    if token in report:  # the run ended, but the code also wrote to the result pipe
        return ExecutionResult(False, stdout, stderr, "the code wrote into the sandbox's result pipe; result discarded")
    try:  # a failure report is not authenticated: at worst the code lies about how it failed
        info = json.loads(report.decode("utf-8", errors="replace"))
        error, memory = info["error"], info["memory_exceeded"]
        if isinstance(error, str) and isinstance(memory, bool):
            return ExecutionResult(False, stdout, stderr, error, memory_exceeded=memory)
    except (ValueError, KeyError, TypeError):
        pass
    # no report: the process died (signal, os._exit, a crash in C) before the code ended;
    # bubblewrap exits with 128 + N when the program was killed by signal N
    signum = -returncode if returncode is not None and returncode < 0 else None
    if returncode is not None and returncode > 128:
        signum = returncode - 128
    if signum == signal.SIGXCPU:  # the RLIMIT_CPU backstop (threads burn CPU faster than wall time)
        return ExecutionResult(False, stdout, stderr, "CPU time limit exceeded", timeout=True)
    if signum is not None:
        try:
            why = f"process killed by {signal.Signals(signum).name}"
        except ValueError:
            why = f"process killed by signal {signum}"
    else:
        why = f"process exited with status {returncode} before the code finished"
    memory_words = ("MemoryError", "Cannot allocate memory", "out of memory", "std::bad_alloc")
    memory = any(word in stderr[-4000:] for word in memory_words)
    return ExecutionResult(False, stdout, stderr, why, memory_exceeded=memory)


_SOURCE: str | None = None


def _child_source() -> str:
    """This module's source: the runner runs it as `python -I -c`, which needs no importable
    `nanochat` package (the sandbox has none) and no file on disk."""
    global _SOURCE
    if _SOURCE is None:
        import inspect

        _SOURCE = inspect.getsource(sys.modules[__name__])
    return _SOURCE


# --------------------------------------------------------------------------------------
# The runner: runs inside the sandbox, never in the caller's process

# audit events refused to the code: each is a road to the watcher's frame or to raw memory,
# or a way to move the runner's frame (tracing) or to undo the hook
_REFUSED_EVENTS = frozenset({
    "sys.addaudithook", "sys._current_frames", "sys._current_exceptions", "sys.settrace", "sys.setprofile",
    "sys._settraceallthreads", "sys._setprofileallthreads", "sys.monitoring.register_callback",  # 3.12+
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "code.__new__", "marshal.loads", "marshal.load",
})
# modules refused even from lib-dynload: raw memory (ctypes, the C-API test modules) and
# subinterpreters, which would run code without this hook
_REFUSED_MODULES = frozenset({
    "_ctypes", "ctypes", "_ctypes_test", "_testcapi", "_testinternalcapi", "_testbuffer", "_testmultiphase",
    "_testimportmultiple", "_testclinic", "_testsinglephase", "_xxtestfuzz", "xxlimited", "xxlimited_35",
    "xxsubtype", "_xxsubinterpreters", "_xxinterpchannels", "_interpreters", "_interpchannels", "_interpqueues",
})
# imported before the hook, from their .pyc files: what HumanEval programs use most
_PRELOADED = ("typing", "math", "re", "collections", "itertools", "functools", "string", "heapq")


def _make_audit_hook(lib_dynload: str, *, type=type, str=str, PermissionError=PermissionError):  # noqa: A002
    """The runner's audit hook. Its state is immutable and every name it uses is bound here,
    as the code may run inside it (a signal handler) and can rebind module globals."""
    refused_events, refused_modules = _REFUSED_EVENTS, _REFUSED_MODULES
    startswith, partition, rpartition = str.startswith, str.partition, str.rpartition

    def audit(event, args):
        if type(event) is not str:
            return
        if event in refused_events or startswith(event, "ctypes."):
            raise PermissionError(f"{event} is refused in the sandbox")
        if event != "import":
            return
        module, filename = args[0], args[1]
        if type(module) is not str or partition(module, ".")[0] in refused_modules:
            raise PermissionError(f"importing {module!r} is refused in the sandbox")
        # a C extension being loaded: only the interpreter's own, from its read-only lib-dynload
        if filename is not None and (type(filename) is not str or rpartition(filename, "/")[0] != lib_dynload):
            raise PermissionError(f"loading the C extension {filename!r} is refused in the sandbox")

    return audit


def _set_limits(memory_bytes: int, cpu_seconds: int) -> None:
    """Lower soft AND hard limits, so the code cannot raise them back."""
    import resource

    limits = [(resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 1),  # SIGXCPU first, SIGKILL a second later
              (resource.RLIMIT_FSIZE, MAX_FILE_BYTES, MAX_FILE_BYTES), (resource.RLIMIT_CORE, 0, 0),
              (resource.RLIMIT_NPROC, MAX_TASKS, MAX_TASKS)]
    if memory_bytes > 0:
        limits += [(resource.RLIMIT_AS, memory_bytes, memory_bytes), (resource.RLIMIT_DATA, memory_bytes, memory_bytes)]
    for which, soft, hard in limits:
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(which, (soft, hard))


def _is_memory_error(exc: BaseException | None) -> bool:
    """A MemoryError or ENOMEM (mmap), or an exception raised while handling one."""
    seen = 0
    while exc is not None and seen < 100:
        if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _read_fd(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, _READ_CHUNK):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _watch(token_fd: int, result_fd: int, handoff: list, frame_given, watcher_ready) -> None:
    """The watcher thread: holds the token, and writes it only once the runner's frame is past exec.

    Started before the code runs; after `watcher_ready` it runs nothing but C calls bound here
    (no allocation of tracked objects, so no garbage collection and no finalizer of the code
    runs on this thread), and its frame is out of the code's reach (see the module docstring).
    """
    payload = _TOKEN_PREFIX + _read_fd(token_fd)
    # locals only from here on: the code can rebind this module's globals, and a global read
    # here (say a poll interval it replaced with an object that has __float__) would run its
    # code on this thread
    write, exit_now, tick, poll = os.write, os._exit, _thread_lock(), _WATCH_POLL_S
    tick.acquire()  # held for good: tick.acquire(True, t) is then a plain sleep
    wait = tick.acquire
    frame_given.acquire()
    frame = handoff.pop()
    last_line = max(line for _, _, line in frame.f_code.co_lines() if line is not None)
    handoff = None
    watcher_ready.release()
    while frame.f_lineno != last_line:
        wait(True, poll)
    while payload:
        payload = payload[write(result_fd, payload):]
    exit_now(0)


def _thread_lock():
    import _thread

    return _thread.allocate_lock()


def _run_program(compiled, globals_: dict, handoff: list, frame_given, watcher_ready) -> None:
    """Run the code. The watcher holds this very frame; its last line is reached only after exec returned."""
    handoff.append(sys._getframe())
    frame_given.release()
    watcher_ready.acquire()
    exec(compiled, globals_)  # noqa: S102 - running it is the point
    _flush_standard_streams()
    _park_forever()  # LAST LINE: parked here, the watcher writes the token and exits the process


def _park_forever() -> None:
    lock = _thread_lock()
    lock.acquire()
    lock.acquire()


def _flush_standard_streams() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001, S110 - closed or replaced by the code
            pass


def _child_main(argv: list[str]) -> None:
    """Entry point of the sandboxed runner: set up, start the watcher, guard, run the code, report failures."""
    import _thread
    import builtins
    import faulthandler
    import importlib
    import io
    import linecache

    program_fd, token_fd, result_fd, memory_bytes, cpu_seconds, drop_to_uid = (int(a) for a in argv)
    if drop_to_uid >= 0:  # started as uid 0 of the sandbox's namespace (a root caller): become nobody for good
        os.setgroups([])
        os.setresgid(drop_to_uid, drop_to_uid, drop_to_uid)
        os.setresuid(drop_to_uid, drop_to_uid, drop_to_uid)  # clears every capability
    code = _read_fd(program_fd).decode("utf-8", errors="surrogatepass")
    os.set_inheritable(result_fd, False)
    linecache.cache[_PROGRAM_NAME] = (len(code), None, code.splitlines(True), _PROGRAM_NAME)  # source lines in tracebacks
    sys.argv = [_PROGRAM_NAME]
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # what was printed before a timeout kill still shows
    # everything the failure report needs, bound before the code can touch it
    write, exit_now, dumps, format_exception = os.write, os._exit, json.dumps, traceback.format_exception
    stderr_fd = os.dup(2)  # the traceback still gets out if the code closes fd 2
    os.set_inheritable(stderr_fd, False)
    memory_fallback = b'{"error": "MemoryError", "memory_exceeded": true}'
    for name in _PRELOADED:
        importlib.import_module(name)
    lib_dynload = next(path for path in sys.path if path.endswith("/lib-dynload"))  # as import spells it

    _set_limits(memory_bytes, cpu_seconds)
    handoff: list = []
    frame_given, watcher_ready = _thread.allocate_lock(), _thread.allocate_lock()
    frame_given.acquire()
    watcher_ready.acquire()
    _thread.start_new_thread(_watch, (token_fd, result_fd, handoff, frame_given, watcher_ready))
    faulthandler.enable()  # a crash in C prints the Python stack
    sys.pycache_prefix = _NO_PYCACHE  # later imports compile from source: unmarshalling is refused
    sys.addaudithook(_make_audit_hook(lib_dynload))

    exc: BaseException | None = None
    try:
        compiled = compile(code, _PROGRAM_NAME, "exec", dont_inherit=True)
        _run_program(compiled, {"__name__": "__main__", "__builtins__": builtins}, handoff, frame_given, watcher_ready)
    except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt too: the code did not reach its end
        exc = e

    _flush_standard_streams()
    try:
        try:
            message = str(exc)
        except BaseException:  # noqa: BLE001 - a broken __str__ of the code's own exception
            message = "<unprintable>"
        error = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        report = {"error": error[:_MAX_ERROR_CHARS], "memory_exceeded": _is_memory_error(exc)}
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != _PROGRAM_NAME:  # drop the runner's frames
            tb = tb.tb_next
        try:
            text = "".join(format_exception(type(exc), exc, tb))
        except BaseException:  # noqa: BLE001 - the bare error line is better than no report
            text = error + "\n"
        data = text.encode("utf-8", errors="replace")
        while data:
            data = data[write(stderr_fd, data):]
        payload = dumps(report).encode("utf-8")
    except BaseException:  # noqa: BLE001 - most likely out of memory while formatting
        payload = memory_fallback if _is_memory_error(exc) else b'{"error": "unreportable error", "memory_exceeded": false}'
    try:
        while payload:
            payload = payload[write(result_fd, payload):]
    finally:
        exit_now(0)  # not sys.exit: non-daemon threads or atexit hooks of the code must not hold us up


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == _CHILD_FLAG:
    _child_main(sys.argv[2:])
