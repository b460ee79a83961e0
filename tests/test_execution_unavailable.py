"""
nanochat.execution without a sandbox: `execute_code` refuses, with a typed error saying what
to install or enable, and never runs the code unsandboxed. Needs no bubblewrap.
"""

import pytest

import nanochat.execution as execution
from nanochat.execution import SandboxUnavailable, execute_code


@pytest.fixture
def no_cached_sandbox(monkeypatch):
    monkeypatch.setattr(execution, "_SANDBOX", None)  # probe again, under the patched machine


def test_refuses_without_bubblewrap(monkeypatch, tmp_path, no_cached_sandbox):
    monkeypatch.setattr("shutil.which", lambda name: None)
    witness = tmp_path / "ran"
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        execute_code(f"open({str(witness)!r}, 'w')")
    assert not witness.exists()  # no silent fallback: the code never ran


def test_refuses_when_bubblewrap_cannot_build_namespaces(monkeypatch, tmp_path, no_cached_sandbox):
    fake_bwrap = tmp_path / "bwrap"  # what bwrap prints where user namespaces are forbidden
    fake_bwrap.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    fake_bwrap.chmod(0o755)
    monkeypatch.setattr("shutil.which", lambda name: str(fake_bwrap))
    monkeypatch.setattr(execution, "_new_user_namespace", lambda interpreter, fds: None)
    with pytest.raises(SandboxUnavailable, match="No permissions to creating new namespace.*user namespaces"):
        execute_code("print(1)")


def test_refuses_on_an_architecture_without_a_syscall_table(monkeypatch, no_cached_sandbox):
    monkeypatch.setattr("platform.machine", lambda: "sparc64")
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/bwrap")
    with pytest.raises(SandboxUnavailable, match="no seccomp syscall table for the sparc64"):
        execute_code("print(1)")
