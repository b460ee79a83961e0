"""
What a new user types after the CPU speedrun: the commands speedrun.sh prints at its end and
the README's commands that read a finished run work as printed against a (tiny) CPU-run
layout under ~/.cache/nanochat-cpu; a command pointed at the wrong base dir says where the
run is and how to reach it; reading a missing base dir creates nothing.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import torch

from nanochat.checkpoint_manager import CheckpointError, checkpoint_dir_for, find_largest_model, load_model, save_checkpoint
from nanochat.common import run_main
from nanochat.dataset import DataNotFoundError, get_data_dir, list_parquet_files
from nanochat.gpt import GPT, GPTConfig
from nanochat.stages import STAGES
from nanochat.synthetic import write_shards
from nanochat.tokenizer import TokenizerNotFoundError, get_token_bytes, get_tokenizer, get_tokenizer_dir, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)  # what `source .venv/bin/activate` puts first on PATH
NANOCHAT_VARS = ("NANOCHAT_BASE_DIR", "NANOCHAT_DATASET", "RANK", "LOCAL_RANK", "WORLD_SIZE")


def fresh_shell_env(home: Path, **extra: str) -> dict[str, str]:
    """A new terminal with the venv activated: HOME is the test's, no NANOCHAT_* variables set."""
    env = {k: v for k, v in os.environ.items() if k not in NANOCHAT_VARS}
    return {**env, "HOME": str(home), "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", "OMP_NUM_THREADS": "1",
            **extra}


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> Path:
    """
    A HOME holding what `bash speedrun.sh` leaves on a machine with no GPU, in miniature: the
    offline twin's shards, a tokenizer, and a checkpoint of every stage under ~/.cache/nanochat-cpu.
    """
    home = tmp_path_factory.mktemp("home")
    base = home / ".cache" / "nanochat-cpu"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOCHAT_BASE_DIR", str(base))
        mp.setenv("NANOCHAT_DATASET", "synthetic")
        paths = write_shards(get_data_dir(), num_shards=2, chars_per_shard=20_000, docs_per_row_group=16)
        docs = pq.read_table(paths[0])["text"].to_pylist()
        tokenizer, _ = train_tokenizer(docs, vocab_size=512)
        tokenizer.save(get_tokenizer_dir())
        torch.manual_seed(0)
        config = GPTConfig(sequence_len=512, vocab_size=tokenizer.get_vocab_size(), n_layer=1, n_head=1, n_kv_head=1,
                           n_embd=64)
        model = GPT(config)
        model.init_weights()
        for source in STAGES:  # every stage, as a run that has also trained dpo (the README reads it)
            save_checkpoint(checkpoint_dir_for(source, "d1"), 1, model.state_dict(), None,
                            {"model_config": vars(config), "step": 1})
    return home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_shell(command: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def serve_once(command: str, env: dict[str, str]) -> dict:
    """Start a chat_web command, wait for /health, ask /v1/models, stop it."""
    # its own process group, so stopping it stops the server whether or not bash exec'd it
    proc = subprocess.Popen(["bash", "-c", command], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{shlex.split(command)[-1]}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"`{command}` exited with {proc.returncode}:\n{proc.stdout.read()}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    return httpx.get(f"{url}/v1/models", timeout=10).json()
            except httpx.TransportError:
                time.sleep(0.3)
        pytest.fail(f"`{command}` did not come up")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def speedrun_farewell(home: Path) -> list[str]:
    """What speedrun.sh prints after its last stage, for the CPU profile: its closing lines run in bash."""
    script = (ROOT / "speedrun.sh").read_text()
    tail = script.split("python -m nanochat.report generate\n", 1)[1]
    base = home / ".cache" / "nanochat-cpu"
    result = run_shell(tail, fresh_shell_env(home, NANOCHAT_BASE_DIR=str(base), NANOCHAT_DATASET="synthetic"))
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_the_commands_speedrun_prints_work_as_printed_from_a_fresh_shell(cpu_run):
    printed = [line.split("  #")[0].strip() for line in speedrun_farewell(cpu_run) if line.startswith("  ")]
    assert printed[0] == "source .venv/bin/activate"  # emulated by fresh_shell_env's PATH
    commands = printed[1:]
    assert any("scripts.chat_cli" in c for c in commands) and any("scripts.chat_web" in c for c in commands)
    env = fresh_shell_env(cpu_run)
    for command in commands:
        assert "nanochat-cpu" in command and "NANOCHAT_DATASET=synthetic" in command, command
        if "scripts.chat_web" in command:
            models = serve_once(f"{command} --device_type=cpu --port {free_port()}", env)
            assert [m["id"] for m in models["data"]] == ["nanochat-sft-d1"]
        elif "scripts.chat_cli" in command:
            result = run_shell(f"{command} -p hello --max_tokens=4 --device_type=cpu", env)
            assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
            assert result.stdout.strip(), "no reply"
        else:  # any other printed command runs as printed, only smaller
            result = run_shell(f"{command} --max_problems=2 --max_new_tokens=8 --device_type=cpu", env)
            assert result.returncode == 0, result.stderr[-2000:]
    assert not (cpu_run / ".cache" / "nanochat").exists()  # nothing read or made the default base dir


def test_a_command_without_the_run_s_variables_says_where_the_run_is(cpu_run):
    env = fresh_shell_env(cpu_run)
    result = run_shell("python -m scripts.chat_cli -i sft -p hello --max_tokens=4 --device_type=cpu", env)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    cpu_base = str(cpu_run / ".cache" / "nanochat-cpu")
    assert line.startswith("error: ") and f"{cpu_base} has chatsft_checkpoints" in line, line
    assert not (cpu_run / ".cache" / "nanochat").exists()  # the failed read created no folder
    # the way out the message gives works when pasted before the command
    prefix = re.search(r"put `([^`]+)` before the command", line).group(1)
    assert prefix == f"NANOCHAT_BASE_DIR={cpu_base} NANOCHAT_DATASET=synthetic"
    result = run_shell(f"{prefix} python -m scripts.chat_cli -i sft -p hello --max_tokens=4 --device_type=cpu", env)
    assert result.returncode == 0, result.stderr


def test_base_loss_without_the_dataset_variable_says_which_to_set(cpu_run, monkeypatch):
    monkeypatch.setenv("HOME", str(cpu_run))
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(cpu_run / ".cache" / "nanochat-cpu"))
    monkeypatch.delenv("NANOCHAT_DATASET", raising=False)
    base_loss = importlib.import_module("scripts.base_loss")
    with pytest.raises(SystemExit) as exc:
        run_main(lambda: base_loss.main(["--device_type=cpu", "--device_batch_size=2", "--split_tokens=256"]))
    message = str(exc.value)
    assert message.startswith("error: no parquet shards in") and "NANOCHAT_DATASET=synthetic" in message, message
    assert "\n" not in message


# the README's commands that read a finished run, each made cheap with flags that only shrink the work
CHEAP = {
    "chat_cli": ["--max_tokens=4", "--device_type=cpu"],
    "chat_eval": ["--max_problems=2", "--max_new_tokens=8", "--device_type=cpu"],
    "base_loss": ["--device_batch_size=2", "--split_tokens=256", "--device_type=cpu"],
    "base_eval": ["--max_per_task=2", "--device_type=cpu"],
    "tok_eval": ["--shard_chars=2000"],
    "export_hf": [],
}


def readme_commands() -> list[list[str]]:
    """`python -m scripts.<name> ...` lines of the README's shell blocks, for the scripts in CHEAP, as argv."""
    readme = (ROOT / "README.md").read_text()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():  # a continued line is one command
            argv = shlex.split(line, comments=True)
            while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):  # VAR=value prefixes: set by the test
                argv = argv[1:]
            if argv[:2] == ["python", "-m"] and argv[2].startswith("scripts.") and argv[2][8:] in CHEAP:
                if "--push_to_hub" not in argv:  # uploads: no network in tests
                    found.append(argv[2:])
    return found


def test_the_readme_commands_that_read_a_run_work_against_the_cpu_run(cpu_run, monkeypatch, tmp_path):
    commands = readme_commands()
    assert {c[0][8:] for c in commands} == set(CHEAP), commands  # each kind is in the README and was run
    # the README tells the reader to put the CPU run's variables first, as this test does
    assert ("NANOCHAT_BASE_DIR=~/.cache/nanochat-cpu NANOCHAT_DATASET=synthetic python -m scripts.chat_cli -i sft"
            in (ROOT / "README.md").read_text())
    monkeypatch.setenv("HOME", str(cpu_run))
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(cpu_run / ".cache" / "nanochat-cpu"))
    monkeypatch.setenv("NANOCHAT_DATASET", "synthetic")
    monkeypatch.chdir(tmp_path)  # export_hf --out writes a folder here
    for module, *args in commands:
        name = module[8:]
        argv = args + CHEAP[name]
        if name == "chat_cli" and "-p" not in argv:
            argv += ["-p", "hello"]  # the interactive form would wait for a terminal
        result = importlib.import_module(module).main(argv)
        if name == "chat_eval":
            assert set(result["accuracy"]) and all(0 <= a <= 1 for a in result["accuracy"].values())
    assert (tmp_path / "nanochat-d20" / "config.json").exists()  # export_hf's README example wrote its folder


def test_reading_a_missing_base_dir_creates_nothing(tmp_path, monkeypatch):
    missing = tmp_path / "no" / "such" / "base"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(missing))
    monkeypatch.setenv("NANOCHAT_DATASET", "synthetic")
    for read, error in ((lambda: load_model("sft", "cpu", "eval"), CheckpointError),
                        (lambda: find_largest_model(str(missing / "base_checkpoints")), CheckpointError),
                        (get_tokenizer, TokenizerNotFoundError),
                        (get_token_bytes, TokenizerNotFoundError),
                        (list_parquet_files, DataNotFoundError)):
        with pytest.raises(error):
            read()
    for name, argv in (("chat_cli", ["-p", "hi", "--device_type=cpu"]), ("chat_eval", ["-i", "sft", "--device_type=cpu"]),
                       ("base_loss", ["--device_type=cpu"]), ("tok_eval", [])):
        with pytest.raises(SystemExit):
            run_main(lambda: importlib.import_module(f"scripts.{name}").main(argv))
    assert not (tmp_path / "no").exists()
    assert not (tmp_path / ".cache").exists()


def test_an_evaluation_by_hand_after_the_run_keeps_the_speedrun_s_report(cpu_run, tmp_path, monkeypatch):
    """The issue's case: `chat_eval -i sft -a ARC-Easy --max_problems=20` after the pipeline's full evaluation."""
    from nanochat.report import get_report

    home = tmp_path / "home"
    shutil.copytree(cpu_run, home)  # a run of its own: the module's layout stays as it was
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(home / ".cache" / "nanochat-cpu"))
    monkeypatch.setenv("NANOCHAT_DATASET", "synthetic")
    monkeypatch.chdir(tmp_path)
    chat_eval = importlib.import_module("scripts.chat_eval")
    get_report().reset()
    pipeline = chat_eval.main(["-i", "sft", "--max_problems=2", "--max_new_tokens=8", "--device_type=cpu"])
    report_dir = home / ".cache" / "nanochat-cpu" / "report"
    first = (report_dir / "chat-evaluation-sft.md").read_text()
    chat_eval.main(["-i", "sft", "-a", "ARC-Easy", "--max_problems=2", "--device_type=cpu"])
    assert (report_dir / "chat-evaluation-sft.md").read_text() == first
    assert (report_dir / "chat-evaluation-sft-again-1.md").exists()
    text = Path(get_report().generate(copy_to=str(tmp_path))).read_text()
    summary = text.split("## Summary", 1)[1]
    row = next(line for line in summary.splitlines() if line.startswith("| ChatCORE"))
    assert row.startswith("| ChatCORE (offline twins) |")  # twin numbers say so
    assert f"{pipeline['ChatCORE']:.4f}" in row  # the SFT column is the full evaluation's, not the ARC-Easy run's
