"""
nanochat.execution: running model-written code in a throwaway process. Outcomes (success,
exceptions, syntax errors, early exits), limits that must hold whatever the code does
(wall clock, memory, output size), the guard against destructive calls, the isolation of
each run (cwd, environment, stdin, globals), and HumanEval's canonical and broken solutions.
"""

import gzip
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import shared_data_path

from nanochat.execution import DEFAULT_MAX_OUTPUT_BYTES, ExecutionResult, execute_code

LINUX = sys.platform.startswith("linux")
SLACK_S = 2.0  # how much later than its timeout a run may return on a busy 2-core machine


def run(code: str, **kwargs) -> ExecutionResult:
    kwargs.setdefault("timeout", 10.0)  # generous: these programs finish in well under a second
    return execute_code(code, **kwargs)


# --- outcomes ------------------------------------------------------------------------


def test_success_captures_stdout_and_stderr():
    r = run("import sys\nprint('hello', 6 * 7)\nprint('to stderr', file=sys.stderr)\nprint('naïve ✓')")
    assert r.success and r.error is None and not r.timeout and not r.memory_exceeded
    assert r.stdout == "hello 42\nnaïve ✓\n"
    assert r.stderr == "to stderr\n"
    assert "success=True" in repr(r) and len(repr(r)) < 400


def test_exception_names_type_and_message_with_traceback():
    r = run("print('before')\ndef f(x):\n    raise ValueError(f'bad value {x}')\nf(3)\nprint('after')")
    assert not r.success and not r.timeout and not r.memory_exceeded
    assert r.error == "ValueError: bad value 3"
    assert r.stdout == "before\n"  # what was printed before the raise is kept
    assert "Traceback (most recent call last)" in r.stderr
    assert 'File "<program>", line 3, in f' in r.stderr
    assert "raise ValueError(f'bad value {x}')" in r.stderr  # the source line is shown
    assert "nanochat" not in r.stderr and "<string>" not in r.stderr  # the sandbox's own frames are not


def test_assertion_without_message():
    r = run("assert 1 + 1 == 3")
    assert not r.success and r.error == "AssertionError"


def test_syntax_error():
    r = run("def f(:\n    return 1\n")
    assert not r.success and not r.timeout
    assert r.error.startswith("SyntaxError")
    assert "SyntaxError" in r.stderr and "line 1" in r.stderr


@pytest.mark.parametrize("code,error", [
    ("import sys\nsys.exit(0)\nassert False", "SystemExit: 0"),
    ("import sys\nsys.exit()", "SystemExit"),
    ("raise SystemExit(3)", "SystemExit: 3"),
    ("import os\nos._exit(0)\nassert False", "process exited with status 0 before the code finished"),
    ("exit()", "PermissionError: exit is disabled in the sandbox"),
    ("quit(0)", "PermissionError: quit is disabled in the sandbox"),
])
def test_exiting_early_is_a_failure(code, error):
    # documented decision: success means the code ran to its end; an early exit skips what
    # follows (for HumanEval: the check() assertions), so it must not count as passing
    r = run(code)
    assert not r.success and r.error == error and not r.timeout


def test_fresh_globals_each_run():
    code = "print(sorted(globals()), __name__)\nx = globals().get('leftover', 0)\nleftover = 1\nprint(x)"
    for _ in range(2):
        r = run(code)
        assert r.success, r
        assert r.stdout == "['__builtins__', '__name__'] __main__\n0\n"


def test_invalid_timeout():
    for timeout in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            execute_code("pass", timeout=timeout)


# --- the wall clock: the caller never hangs --------------------------------------------

BLOCKERS = {
    "busy_loop": "while True:\n    pass",
    "sleep": "import time\ntime.sleep(100)",
    "ignores_sigterm": "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(100)",
    # libc fork through ctypes gets past the guard: both processes then block
    "forks_and_blocks": "import ctypes, time\nctypes.CDLL(None).fork()\nprint('forked', flush=True)\ntime.sleep(100)",
    "closes_its_output": "import os, time\nprint('bye', flush=True)\nos.close(1)\nos.close(2)\ntime.sleep(100)",
    "blocks_in_a_thread": "import threading\nthreading.Event().wait()",
    "prints_forever": "while True:\n    print('y' * 10000)",
}


@pytest.mark.parametrize("name", list(BLOCKERS))
def test_timeout_returns_in_time(name):
    timeout = 1.0
    start = time.monotonic()
    r = execute_code(BLOCKERS[name], timeout=timeout)
    elapsed = time.monotonic() - start
    assert r.timeout and not r.success and r.error == "timed out after 1 s", r
    assert timeout - 0.05 <= elapsed < timeout + SLACK_S
    assert len(r.stdout) <= DEFAULT_MAX_OUTPUT_BYTES + 200


def _process_state(pid: int) -> str:
    """'Z' for a zombie, '' when gone (this container's init may never reap orphans)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(line.split()[1] for line in f if line.startswith("State:"))
    except (FileNotFoundError, ProcessLookupError):
        return ""


@pytest.mark.skipif(not LINUX, reason="uses libc fork through ctypes and /proc")
def test_process_left_behind_is_killed_and_does_not_hold_the_result():
    # the code ends at once, but a forked child keeps the output pipes open and sleeps
    code = "import ctypes, time\npid = ctypes.CDLL(None).fork()\nif pid == 0:\n    time.sleep(100)\nprint(pid, flush=True)"
    start = time.monotonic()
    r = execute_code(code, timeout=10)
    assert time.monotonic() - start < SLACK_S
    assert r.success and not r.timeout, r
    grandchild = int(r.stdout)
    time.sleep(0.2)
    assert _process_state(grandchild) in ("", "Z")


def test_non_daemon_thread_does_not_hold_the_result():
    start = time.monotonic()
    r = execute_code("import threading, time\nthreading.Thread(target=time.sleep, args=(100,)).start()\nprint('done')", timeout=10)
    assert time.monotonic() - start < SLACK_S
    assert r.success and r.stdout == "done\n", r


def test_closing_stdout_then_finishing_is_fine():
    r = run("import os\nprint('bye', flush=True)\nos.close(1)\nos.close(2)")
    assert r.success and r.stdout == "bye\n", r


# --- memory and output limits ------------------------------------------------------------


@pytest.mark.skipif(not LINUX, reason="RLIMIT_AS is enforced on Linux only")
@pytest.mark.parametrize("code", [
    "x = bytearray(2 * 1024**3)",
    "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024**2))",  # memory stays full while the error is reported
])
def test_memory_limit(code):
    r = execute_code(code, timeout=10, maximum_memory_bytes=256 * 1024**2)
    assert r.memory_exceeded and not r.success and not r.timeout, r
    assert r.error.startswith("MemoryError")


def test_no_memory_limit_when_none():
    r = run("x = bytearray(300 * 1024**2)\nprint(len(x))", maximum_memory_bytes=None)
    assert r.success and r.stdout == f"{300 * 1024**2}\n", r


def test_huge_output_is_truncated():
    # 20 MB on stdout and stderr: the run completes, each keeps its first 1 MiB plus a note
    r = run("import sys\nfor _ in range(20_000):\n    print('x' * 999)\n    print('e' * 999, file=sys.stderr)")
    assert r.success, r
    for text, name, char in ((r.stdout, "stdout", "x"), (r.stderr, "stderr", "e")):
        head, _, note = text.partition(f"\n[{name} truncated: ")
        assert len(head) == DEFAULT_MAX_OUTPUT_BYTES
        assert set(head) == {char, "\n"}
        assert note.startswith(f"{20_000_000 - DEFAULT_MAX_OUTPUT_BYTES} more bytes")


def test_output_cap_is_configurable():
    r = run("print('a' * 100)", max_output_bytes=10)
    assert r.stdout.startswith("aaaaaaaaaa\n[stdout truncated: 91 more bytes")


# --- the guard ------------------------------------------------------------------------------

GUARD_PROBE = r"""
import json, os, shutil, signal, subprocess
open('keep.txt', 'w').write('precious')
os.mkdir('keepdir')
open('keepdir/inner.txt', 'w').write('precious')
attempts = {
    'os.system': lambda: os.system('rm keep.txt'),
    'os.remove': lambda: os.remove('keep.txt'),
    'os.unlink': lambda: os.unlink('keep.txt'),
    'os.rename': lambda: os.rename('keep.txt', 'moved.txt'),
    'os.replace': lambda: os.replace('keepdir/inner.txt', 'keep.txt'),
    'os.truncate': lambda: os.truncate('keep.txt', 0),
    'os.chmod': lambda: os.chmod('keep.txt', 0),
    'os.rmdir': lambda: os.rmdir('keepdir'),
    'os.putenv': lambda: os.putenv('X', '1'),
    'os.environ': lambda: os.environ.__setitem__('X', '1'),
    'os.fork': lambda: os.fork(),
    'os.execv': lambda: os.execv('/bin/true', ['true']),
    'os.setsid': lambda: os.setsid(),
    'os.symlink': lambda: os.symlink('keep.txt', 'link'),
    'shutil.rmtree': lambda: shutil.rmtree('keepdir'),
    'shutil.move': lambda: shutil.move('keep.txt', 'moved.txt'),
    'subprocess.Popen': lambda: subprocess.Popen(['rm', 'keep.txt']),
    'subprocess.run': lambda: subprocess.run(['rm', 'keep.txt']),
    'os.popen': lambda: os.popen('rm keep.txt'),
    'multiprocessing': lambda: __import__('multiprocessing').get_context('spawn').Process(target=print).start(),
    'faulthandler.disable': lambda: __import__('faulthandler').disable(),
    # last, so that with a broken guard they cannot make the others act elsewhere
    'os.chdir': lambda: os.chdir('keepdir'),
    'os.kill': lambda: os.kill(os.getpid(), signal.SIGKILL),
    'os.killpg': lambda: os.killpg(os.getpgid(0), signal.SIGKILL),
}
outcome = {}
for name, attempt in attempts.items():
    try:
        attempt()
        outcome[name] = 'ran'
    except PermissionError as e:
        outcome[name] = str(e)
    except Exception as e:
        outcome[name] = f'{type(e).__name__}: {e}'
outcome['files'] = sorted(os.listdir('.')) + sorted(os.listdir('keepdir'))
outcome['content'] = open('keep.txt').read() + open('keepdir/inner.txt').read()
print(json.dumps(outcome))
"""


def test_guard_disables_destructive_functions():
    r = run(GUARD_PROBE)
    assert r.success, r
    outcome = json.loads(r.stdout)
    assert outcome.pop("files") == ["keep.txt", "keepdir", "inner.txt"]  # nothing removed, moved or linked
    assert outcome.pop("content") == "preciousprecious"  # nor truncated
    not_blocked = {name: what for name, what in outcome.items() if "is disabled in the sandbox" not in what}
    assert not not_blocked


def test_guard_leaves_ordinary_work_alone():
    code = (
        "import os, tempfile, json, math, re, collections, itertools, hashlib, threading\n"
        "with open('a.txt', 'w') as f:\n    f.write('data')\n"
        "os.makedirs('d/e')\n"
        "with tempfile.NamedTemporaryFile('w', delete=False) as f:\n    f.write('t')\n"
        "t = threading.Thread(target=lambda: None); t.start(); t.join()\n"
        "print(open('a.txt').read(), sorted(os.listdir('.')) == sorted(['a.txt', 'd', os.path.basename(f.name)]),"
        " hashlib.md5(b'x').hexdigest()[:6], math.comb(5, 2))\n"
    )
    r = run(code)
    assert r.success, r
    assert r.stdout == "data True 9dd4e4 10\n"


def test_guard_does_not_touch_the_caller():
    before = (os.remove, os.system, os.kill)
    run("import os\nos.remove")
    assert (os.remove, os.system, os.kill) == before
    assert "disabled" not in repr(os.remove)


# --- isolation: cwd, environment, stdin ----------------------------------------------------


def test_fresh_temp_cwd_per_run_removed_afterwards():
    code = (
        "import os\nprint(os.getcwd())\nprint(os.listdir('.'))\n"
        "print(os.environ['HOME'] == os.getcwd() == os.environ['TMPDIR'])\n"
        "open('secret.txt', 'w').write('mine')\nos.mkdir('sub', 0)  # unreadable: cleanup must cope\n"
    )
    first, second = run(code), run(code)
    assert first.success and second.success, (first, second)
    cwd1, listing1, home1 = first.stdout.splitlines()
    cwd2, listing2, _ = second.stdout.splitlines()
    assert listing1 == listing2 == "[]"  # the second run does not see the first one's files
    assert home1 == "True"
    assert cwd1 != cwd2 and os.path.dirname(cwd1) == os.path.dirname(cwd2)
    assert os.path.realpath(cwd1) != os.path.realpath(os.getcwd())
    assert not os.path.exists(cwd1) and not os.path.exists(cwd2)


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("NANOCHAT_TEST_SECRET", "hunter2")
    monkeypatch.setenv("PYTHONPATH", "/nonexistent/evil")
    r = run("import os, sys, json\nprint(json.dumps(dict(os.environ)))\nprint(json.dumps(sys.path))")
    assert r.success, r
    env_line, path_line = r.stdout.splitlines()
    env = json.loads(env_line)
    assert "hunter2" not in r.stdout and "NANOCHAT_TEST_SECRET" not in env
    assert "/nonexistent/evil" not in json.loads(path_line)  # -I: PYTHON* variables are ignored too
    assert set(env) <= {"PATH", "HOME", "TMPDIR", "LANG", "MALLOC_ARENA_MAX",
                        "OPENBLAS_MAIN_FREE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "LC_CTYPE"}


def test_stdin_is_empty():
    r = run("import sys\nprint(repr(sys.stdin.read()))\ntry:\n    input('prompt? ')\nexcept EOFError:\n    print('EOF')")
    assert r.success, r
    assert r.stdout == "''\nprompt? EOF\n"


# --- HumanEval -------------------------------------------------------------------------------


def humaneval_program(problem: dict, solution: str) -> str:
    return problem["prompt"] + solution + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


@pytest.mark.shared_data
@pytest.mark.slow
def test_humaneval_canonical_solutions_pass_and_broken_ones_fail():
    path = shared_data_path("humaneval", "HumanEval.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    assert len(problems) == 164
    programs = [humaneval_program(p, p["canonical_solution"]) for p in problems]
    programs += [humaneval_program(p, "    return None\n") for p in problems]
    # every call runs its own process: threads are enough for parallelism
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda code: execute_code(code, timeout=20.0), programs))
    canonical, broken = results[:164], results[164:]
    failed = {p["task_id"]: r for p, r in zip(problems, canonical) if not r.success}
    assert not failed, failed
    passed = [p["task_id"] for p, r in zip(problems, broken) if r.success]
    assert not passed, f"a `return None` body passes the tests of {passed}"
    assert not any(r.timeout for r in results)
    assert all(r.error.split(":")[0] in ("AssertionError", "TypeError") for r in broken)
