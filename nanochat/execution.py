"""
Run untrusted Python (model-written code, HumanEval completions) in a throwaway process.

`execute_code(code)` runs `code` in a fresh Python interpreter and reports what happened as
an `ExecutionResult`: did it run to its end, what it printed, which exception stopped it,
whether it hit the time or memory limit. The caller never hangs: the parent enforces a
wall-clock deadline and kills the child's whole process group when it is reached.

This is a best-effort guard against ACCIDENTS by model-written code (an infinite loop, a
runaway allocation, an `os.remove` or `shutil.rmtree` in the wrong place, a stray
`subprocess` call). It is NOT a security boundary against an adversary: code that means
harm can undo the guard (ctypes, `gc.get_objects()`, `/proc`, ...). Run code you truly
distrust in a container or VM.

Why a `subprocess` of `sys.executable -I -c <this module's source>` rather than
`multiprocessing`:
- "fork" in a process with threads (torch, a thread pool, a web server) can deadlock the
  child on a lock some other thread held at fork time;
- "spawn" re-imports the caller's `__main__` (a training script that imports torch) and
  inherits its environment and `sys.path`;
- a fresh `python -I` (isolated mode: PYTHON* variables, user site-packages and the
  current directory are ignored) starts in a few tens of milliseconds, knows nothing of the parent, and gets
  exactly the environment we give it. `start_new_session=True` makes it the leader of a
  new process group, so one `killpg` also reaps anything it started; `Popen` without a
  `preexec_fn` is safe to call from many threads at once.

What the child gets: a fresh empty temporary directory as cwd, HOME and TMPDIR (deleted
afterwards); an environment of PATH, HOME, TMPDIR, LANG and a few thread-count settings
for malloc and BLAS only (nothing inherited); stdin
from /dev/null; fresh globals `{"__name__": "__main__"}`; on Linux RLIMIT_AS and
RLIMIT_DATA set to `maximum_memory_bytes`, RLIMIT_CPU at twice the timeout (a
backstop should the parent die), RLIMIT_FSIZE 64 MiB per file and no core dumps; and the
destructive functions of `os`, `shutil`, `subprocess` and `builtins` replaced by stubs
raising `PermissionError` (see `reliability_guard`). Limits that the platform does not
support (no `resource` module, RLIMIT_AS on macOS) are skipped silently. POSIX only.

Success means the code ran to its end without raising. Any exit before the end counts
as a failure, `sys.exit(0)` and `os._exit(0)` included: for a HumanEval program that
means the `check(candidate)` assertions never ran, and a policy being trained with this
as its reward must not learn that exiting early scores.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass

DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024  # per stream: a print loop must not fill the parent's memory
MAX_FILE_BYTES = 64 * 1024 * 1024  # RLIMIT_FSIZE: one file the code writes may not fill the disk
_MAX_ERROR_CHARS = 10_000
_PROGRAM_NAME = "<program>"  # filename in tracebacks of the user code
_CHILD_FLAG = "--nanochat-sandbox-child"
_READ_CHUNK = 64 * 1024
_EXIT_POLL_S = 0.05  # how often the parent checks whether the child exited while its pipes stay open


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
    """Run `code` in a sandboxed child process and report the outcome; never hangs.

    `timeout` is wall-clock seconds for the whole child (interpreter start included);
    `maximum_memory_bytes=None` sets no memory limit. stdout and stderr are each capped at
    `max_output_bytes`, with a note at the end when something was cut. Raises only when
    the sandbox itself cannot start (an OSError from the system), never for the code.
    """
    import selectors
    import subprocess
    import tempfile

    if not 0 < timeout < math.inf:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    root = tempfile.mkdtemp(prefix="nanochat-exec-")
    proc: subprocess.Popen[bytes] | None = None
    result_r = result_w = -1
    try:
        program_path = os.path.join(root, "program.py")  # the child reads, then deletes it
        with open(program_path, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(code)
        result_r, result_w = os.pipe()
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": root,
            "TMPDIR": root,
            "LANG": "C.UTF-8",
            # glibc reserves 64 MiB of address space per malloc arena (one per thread), which
            # would eat an RLIMIT_AS budget with a handful of threads
            "MALLOC_ARENA_MAX": "2",
            # numpy sets this with os.putenv at import unless it is already there, and the guard
            # blocks os.putenv; one BLAS thread also keeps numpy inside the memory limit
            "OPENBLAS_MAIN_FREE": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        argv = [
            sys.executable, "-I", "-X", "utf8", "-c", _child_source(), _CHILD_FLAG,
            program_path, str(result_w), str(maximum_memory_bytes or 0), str(2 * math.ceil(timeout) + 1),
        ]
        start = time.monotonic()
        deadline = start + timeout
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(result_w,), cwd=root, env=env, start_new_session=True,
        )
        os.close(result_w)
        result_w = -1

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
                if not sel.get_map():  # all pipes closed but the child lives on: just wait
                    time.sleep(min(0.005, remaining))
                    continue
                for key, _ in sel.select(timeout=min(_EXIT_POLL_S, remaining)):
                    data = os.read(key.fd, _READ_CHUNK)
                    if data:
                        streams[key.fd].add(data)
                    else:
                        sel.unregister(key.fd)
            # the child is done (or out of time): kill it and everything it started, then read
            # what is left in the pipes without waiting on anything that escaped the group
            _kill_group(proc)
            for key in list(sel.get_map().values()):
                _drain_nonblocking(key.fd, streams[key.fd])
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # stuck in the kernel; Popen reaps it later
            pass
        stdout = streams[proc.stdout.fileno()].text("stdout")
        stderr = streams[proc.stderr.fileno()].text("stderr")
        return _make_result(streams[result_r].data, proc.returncode, timed_out, timeout, stdout, stderr)
    finally:
        if proc is not None:
            if proc.returncode is None:  # left early (an exception, Ctrl-C): leave nothing running
                _kill_group(proc)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        for fd in (result_r, result_w):
            if fd >= 0:
                os.close(fd)
        _remove_tree(root)


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
    if hasattr(os, "waitid"):
        try:
            return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:  # someone else reaped it (SIGCHLD ignored, ...)
            return True
    return proc.poll() is not None


def _kill_group(proc) -> None:
    """SIGKILL the child's process group: the child and whatever it forked (SIGTERM could be ignored)."""
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
    """Read what is already in a pipe, never blocking: a process that escaped the group may hold it open."""
    os.set_blocking(fd, False)
    for _ in range(max_chunks):
        try:
            data = os.read(fd, _READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            return
        buffer.add(data)


def _remove_tree(root: str) -> None:
    """Delete the run's directory even if the code made parts of it unreadable."""
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    if os.path.lexists(root):
        for dirpath, dirnames, _ in os.walk(root):
            for name in dirnames:
                path = os.path.join(dirpath, name)
                if not os.path.islink(path):
                    try:
                        os.chmod(path, 0o700)
                    except OSError:
                        pass
        shutil.rmtree(root, ignore_errors=True)


def _make_result(report: bytes, returncode: int | None, timed_out: bool, timeout: float,
                 stdout: str, stderr: str) -> ExecutionResult:
    """Combine the child's own report (if it got to send one) with how the process ended."""
    if timed_out:
        return ExecutionResult(False, stdout, stderr, f"timed out after {timeout:g} s", timeout=True)
    try:
        info = json.loads(report.decode("utf-8", errors="replace"))
        return ExecutionResult(bool(info["success"]), stdout, stderr, info.get("error"),
                               memory_exceeded=bool(info.get("memory_exceeded")))
    except (ValueError, KeyError, TypeError):
        pass
    # no report: the process died (signal, os._exit, a crash in C) before the code ended
    sigxcpu = getattr(signal, "SIGXCPU", None)  # the RLIMIT_CPU backstop (threads burn CPU faster than wall time)
    if sigxcpu is not None and returncode == -sigxcpu:
        return ExecutionResult(False, stdout, stderr, "CPU time limit exceeded", timeout=True)
    if returncode is not None and returncode < 0:
        try:
            why = f"process killed by {signal.Signals(-returncode).name}"
        except ValueError:
            why = f"process killed by signal {-returncode}"
    else:
        why = f"process exited with status {returncode} before the code finished"
    memory_words = ("MemoryError", "Cannot allocate memory", "out of memory", "std::bad_alloc")
    memory = any(word in stderr[-4000:] for word in memory_words)
    return ExecutionResult(False, stdout, stderr, why, memory_exceeded=memory)


_SOURCE: str | None = None


def _child_source() -> str:
    """This module's source: the child runs it as `python -I -c`, which needs no importable
    `nanochat` package (nor imports torch via it) and no file on disk."""
    global _SOURCE
    if _SOURCE is None:
        import inspect

        _SOURCE = inspect.getsource(sys.modules[__name__])
    return _SOURCE


# --------------------------------------------------------------------------------------
# The child side: runs in the sandboxed interpreter, never in the caller's process


def _blocked(name: str):
    """A stand-in for a disabled function that says what happened instead of `None is not callable`."""

    def blocked(*args, **kwargs):
        raise PermissionError(f"{name} is disabled in the sandbox")

    blocked.__name__ = blocked.__qualname__ = name.rsplit(".", 1)[-1]
    return blocked


_BLOCKED_OS = (
    # processes and signals
    "kill", "killpg", "system", "popen", "fork", "forkpty", "posix_spawn", "posix_spawnp",
    "execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp", "execvpe",
    "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
    "setsid", "setpgid", "setpgrp", "plock", "startfile",
    # identity
    "setuid", "setgid", "seteuid", "setegid", "setreuid", "setregid", "setresuid", "setresgid",
    "chroot",
    # files: deleting, moving, truncating, permissions, links, cwd, environment
    "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace", "truncate", "ftruncate",
    "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "chflags", "lchflags",
    "link", "symlink", "chdir", "fchdir", "putenv", "unsetenv",
)


def reliability_guard() -> None:
    """Replace destructive functions with stubs raising PermissionError, in THIS process.

    Meant for the sandbox child just before it runs the code; calling it anywhere else
    cripples that process for good. Patches `os` and `posix` (the same functions live in
    both), `shutil.rmtree/move/chown`, `subprocess.Popen` and the `_posixsubprocess`
    fork behind it, `builtins.exit/quit` and `faulthandler.disable`. Writing, flushing and
    `os._exit`, which the sandbox needs to report, stay intact.
    """
    import builtins
    import faulthandler
    import shutil
    import subprocess

    for module in [os] + [sys.modules[name] for name in ("posix", "nt") if name in sys.modules]:
        for name in _BLOCKED_OS:
            if hasattr(module, name):
                setattr(module, name, _blocked(f"os.{name}"))
    try:
        import _posixsubprocess  # what subprocess and multiprocessing fork with

        _posixsubprocess.fork_exec = _blocked("_posixsubprocess.fork_exec")
    except ImportError:
        pass
    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, _blocked(f"shutil.{name}"))
    subprocess.Popen = _blocked("subprocess.Popen")  # run, call, check_output all go through it
    builtins.exit = _blocked("exit")
    builtins.quit = _blocked("quit")
    faulthandler.disable = _blocked("faulthandler.disable")


def _set_limits(memory_bytes: int, cpu_seconds: int) -> None:
    """Lower soft AND hard limits, so the code cannot raise them back; skip what the OS lacks."""
    try:
        import resource
    except ImportError:  # Windows
        return
    limits = [("RLIMIT_CPU", cpu_seconds), ("RLIMIT_FSIZE", MAX_FILE_BYTES), ("RLIMIT_CORE", 0)]
    if memory_bytes > 0 and sys.platform != "darwin":  # macOS does not enforce RLIMIT_AS and may refuse it
        limits += [("RLIMIT_AS", memory_bytes), ("RLIMIT_DATA", memory_bytes)]
    for name, value in limits:
        which = getattr(resource, name, None)
        if which is None:
            continue
        try:
            _, hard = resource.getrlimit(which)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass


def _is_memory_error(exc: BaseException | None) -> bool:
    """A MemoryError, or an exception raised while handling one."""
    seen = 0
    while exc is not None and seen < 100:
        if isinstance(exc, MemoryError):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _child_main(argv: list[str]) -> None:
    """Entry point of the sandbox child: set up, guard, run the code, report, exit."""
    import builtins
    import faulthandler
    import io
    import linecache

    program_path, result_fd, memory_bytes, cpu_seconds = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    os.set_inheritable(result_fd, False)
    with open(program_path, encoding="utf-8", errors="surrogatepass") as f:
        code = f.read()
    os.unlink(program_path)  # the code starts in an empty directory
    linecache.cache[_PROGRAM_NAME] = (len(code), None, code.splitlines(True), _PROGRAM_NAME)  # source lines in tracebacks
    sys.argv = [_PROGRAM_NAME]
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # what was printed before a timeout kill still shows
    # everything the reporting below needs, bound before the code can touch it
    write, exit_now, dumps, format_exception = os.write, os._exit, json.dumps, traceback.format_exception
    stderr_fd = os.dup(2)  # the traceback still gets out if the code closes fd 2
    os.set_inheritable(stderr_fd, False)
    memory_fallback = b'{"success": false, "error": "MemoryError", "memory_exceeded": true}'

    import tempfile

    tempfile.gettempdir()  # it probes with a write + os.unlink, which the guard blocks: probe now, cached
    _set_limits(memory_bytes, cpu_seconds)
    faulthandler.enable()  # a crash in C prints the Python stack; the guard stops the code turning this off
    reliability_guard()

    exc: BaseException | None = None
    try:
        compiled = compile(code, _PROGRAM_NAME, "exec", dont_inherit=True)
        exec(compiled, {"__name__": "__main__", "__builtins__": builtins})  # noqa: S102 - running it is the point
    except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt too: the code did not reach its end
        exc = e

    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001, S110 - closed or replaced by the code
            pass
    try:
        if exc is None:
            report = {"success": True, "error": None, "memory_exceeded": False}
        else:
            try:
                message = str(exc)
            except BaseException:  # noqa: BLE001 - a broken __str__ of the code's own exception
                message = "<unprintable>"
            error = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
            report = {"success": False, "error": error[:_MAX_ERROR_CHARS], "memory_exceeded": _is_memory_error(exc)}
            tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None  # drop this runner's frame
            try:
                text = "".join(format_exception(type(exc), exc, tb))
            except BaseException:  # noqa: BLE001 - the bare error line is better than no report
                text = error + "\n"
            data = text.encode("utf-8", errors="replace")
            while data:
                data = data[write(stderr_fd, data):]
        payload = dumps(report).encode("utf-8")
    except BaseException:  # noqa: BLE001 - most likely out of memory while formatting
        payload = memory_fallback if _is_memory_error(exc) else b'{"success": false, "error": "unreportable error"}'
    try:
        while payload:
            payload = payload[write(result_fd, payload):]
    finally:
        exit_now(0)  # not sys.exit: non-daemon threads or atexit hooks of the code must not hold us up


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == _CHILD_FLAG:
    _child_main(sys.argv[2:])
