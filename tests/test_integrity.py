"""
Nothing lost, nothing faked: checkpoint checksums and run identity, resume that refuses changed
flags, damaged shards and tokenizers, and one-line errors instead of traceback walls.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanochat.checkpoint_manager import (
    CheckpointError,
    checkpoint_dir_for,
    load_checkpoint,
    load_model,
    save_checkpoint,
    remove_stale_temp_files,
)
from nanochat.common import run_main
from nanochat.dataset import ShardError, get_data_dir, parquets_iter_batched
from nanochat.errors import NanochatError
from scripts import base_train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--depth=1", "--max_seq_len=32", "--device_batch_size=4", "--total_batch_size=256", "--eval_tokens=512",
        "--sample_every=-1", "--core_metric_every=-1", "--device_type=cpu", "--eval_every=-1"]


def flip_byte(path: Path, offset_frac: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * offset_frac)] ^= 0x10
    path.write_bytes(bytes(data))


def script(module: str, *args: str) -> subprocess.CompletedProcess:
    """Run a script as a user would; its environment is this test's (base dir, dataset)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


# ---- checksums and run identity ----


def test_a_flipped_byte_in_a_checkpoint_is_refused_and_names_the_fallback(synthetic_setup):
    base_train.main(TINY + ["--num_iterations=4", "--save_every=2", "--model_tag=t"])
    ckpt = synthetic_setup / "base_checkpoints" / "t"
    flip_byte(ckpt / "model_000004.pt")
    with pytest.raises(CheckpointError, match=r"model_000004.pt does not match the checksum.*load step 2 instead"):
        load_model("base", "cpu", "eval", model_tag="t")
    load_model("base", "cpu", "eval", model_tag="t", step=2)  # the earlier step is intact
    # a garbled optimizer file is refused on resume, with its name
    flip_byte(ckpt / "optim_000002_rank0.pt")
    with pytest.raises(SystemExit, match="optim_000002_rank0.pt"):
        base_train.main(TINY + ["--num_iterations=4", "--save_every=2", "--model_tag=t", "--resume_from_step=2"])


def test_a_step_mixing_files_of_two_runs_is_refused(synthetic_setup):
    base_train.main(TINY + ["--num_iterations=2", "--model_tag=a"])
    base_train.main(TINY + ["--num_iterations=2", "--model_tag=b", "--matrix_lr=0.05"])
    a, b = (synthetic_setup / "base_checkpoints" / tag for tag in "ab")
    # what a kill in the middle of a save leaves: another run's new model beside the old meta
    (a / "model_000002.pt").write_bytes((b / "model_000002.pt").read_bytes())
    with pytest.raises(CheckpointError, match="another run"):
        load_checkpoint(str(a), 2, "cpu")
    metas = [json.loads((d / "meta_000002.json").read_text()) for d in (a, b)]
    assert metas[0]["run_id"] != metas[1]["run_id"]


def test_a_fresh_run_refuses_an_occupied_tag_and_overwrite_starts_over(synthetic_setup):
    base_train.main(TINY + ["--num_iterations=4", "--save_every=2", "--model_tag=o"])
    ckpt = synthetic_setup / "base_checkpoints" / "o"
    first_run = json.loads((ckpt / "meta_000004.json").read_text())["run_id"]
    with pytest.raises(SystemExit, match=r"already holds checkpoints .*--resume.*--overwrite"):
        base_train.main(TINY + ["--num_iterations=2", "--model_tag=o"])
    assert (ckpt / "model_000004.pt").exists()  # untouched by the refused run
    base_train.main(TINY + ["--num_iterations=2", "--model_tag=o", "--overwrite"])
    assert sorted(p.name for p in ckpt.iterdir()) == ["meta_000002.json", "model_000002.pt", "optim_000002_rank0.pt"]
    assert json.loads((ckpt / "meta_000002.json").read_text())["run_id"] != first_run


def test_resume_refuses_every_changed_flag_that_changes_the_math(synthetic_setup):
    args = TINY + ["--num_iterations=4", "--save_every=2", "--model_tag=f"]
    base_train.main(args)
    ckpt = synthetic_setup / "base_checkpoints" / "f"
    run_id = json.loads((ckpt / "meta_000004.json").read_text())["run_id"]
    changed = [a for a in args if not a.startswith(("--device_batch_size", "--total_batch_size"))]
    with pytest.raises(SystemExit) as exc:
        base_train.main(changed + ["--device_batch_size=2", "--total_batch_size=512", "--matrix_lr=0.03",
                                   "--resume_from_step=2"])
    message = str(exc.value)
    for flag in ("device_batch_size: saved 4, now 2", "total_batch_size: saved 256, now 512", "matrix_lr: saved 0.02, now 0.03"):
        assert flag in message
    assert (ckpt / "model_000004.pt").exists()  # the good checkpoints were not overwritten
    # flags that only change logging, evaluation or saving may differ; the run keeps its identity
    base_train.main(args + ["--resume_from_step=2", "--eval_every=1", "--keep_last=3"])
    assert json.loads((ckpt / "meta_000004.json").read_text())["run_id"] == run_id


def test_the_next_save_removes_temp_files_of_dead_saves(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    dead = ckpt / "model_000004.pt.tmp-999999999"  # no such process
    live = ckpt / f"optim_000004_rank1.pt.tmp-{os.getpid()}"  # a save still in progress (another rank)
    dead.write_bytes(b"half a model")
    live.write_bytes(b"half an optimizer")
    model = torch.nn.Linear(2, 2)
    save_checkpoint(str(ckpt), 6, model.state_dict(), None, {"model_config": {}})
    assert not dead.exists() and live.exists()
    assert remove_stale_temp_files(str(ckpt)) == []


# ---- data and tokenizer files ----


def test_a_flipped_bit_in_a_synthetic_shard_fails_loudly_with_its_path(synthetic_setup):
    shard = Path(sorted(Path(get_data_dir()).glob("*.parquet"))[0])
    before = [texts for texts in parquets_iter_batched("train")]
    assert before
    flip_byte(shard, 0.3)  # inside a data page: its CRC no longer matches
    with pytest.raises(ShardError, match=shard.name):
        list(parquets_iter_batched("train"))


@pytest.mark.slow
def test_damaged_files_and_bad_flags_end_with_one_line(synthetic_setup, tmp_path):
    tokenizer_dir = synthetic_setup / "tokenizer"
    pickle_bytes = (tokenizer_dir / "tokenizer.pkl").read_bytes()
    (tokenizer_dir / "tokenizer.pkl").write_bytes(pickle_bytes[: len(pickle_bytes) // 2])
    assert_one_line_error(script("scripts.base_train", *TINY, "--num_iterations=1"), "tokenizer.pkl", "tok_train")
    (tokenizer_dir / "tokenizer.pkl").write_bytes(pickle_bytes)
    token_bytes = tokenizer_dir / "token_bytes.pt"
    good = token_bytes.read_bytes()
    token_bytes.write_bytes(good[:100])
    assert_one_line_error(script("scripts.base_train", *TINY, "--num_iterations=1"), "token_bytes.pt", "tok_train")
    token_bytes.write_bytes(good)

    for bad in ("--device_batch_size=0", "--depth=0"):
        proc = script("scripts.base_train", *TINY, bad)
        assert proc.returncode == 2 and "must be at least 1" in proc.stderr and "Traceback" not in proc.stderr
    proc = script("scripts.mid_train", "--source=foo")
    assert proc.returncode == 2 and "invalid choice: 'foo'" in proc.stderr

    empty = tmp_path / "empty_base"
    (empty / "base_data_synthetic").mkdir(parents=True)
    (empty / "tokenizer").mkdir()
    for name in ("tokenizer.pkl", "token_bytes.pt"):
        (empty / "tokenizer" / name).write_bytes((tokenizer_dir / name).read_bytes())
    os.environ["NANOCHAT_BASE_DIR"] = str(empty)  # restored by the base_dir fixture's monkeypatch
    assert_one_line_error(script("scripts.base_train", *TINY, "--num_iterations=1"), "no parquet shards",
                          "nanochat.dataset")


@pytest.mark.slow
def test_resume_of_a_checkpoint_without_loop_state_and_a_bad_identity_line_are_one_line(base_checkpoint):
    # a step with model and optimizer files but none of the state a resume needs (an imported model, say)
    model_data, _, meta = load_checkpoint(checkpoint_dir_for("base", "d1"), 10, "cpu")
    save_checkpoint(checkpoint_dir_for("mid", "d1"), 10, model_data, [{}, {}], meta)
    proc = script("scripts.mid_train", "--device_type=cpu", "--resume", "--device_batch_size=2",
                  "--total_batch_size=128", "--num_iterations=2")
    assert_one_line_error(proc, "cannot resume", "loop_state")

    identity = base_checkpoint / "identity_conversations_synthetic.jsonl"
    identity.write_text('[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]\n{"oops\n')
    proc = script("scripts.mid_train", "--device_type=cpu", "--overwrite", "--device_batch_size=2",
                  "--total_batch_size=128", "--num_iterations=2")
    assert_one_line_error(proc, f"{identity}, line 2", "invalid JSON")


def test_run_main_turns_typed_errors_and_a_full_disk_into_one_line():
    def typed():
        raise CheckpointError("step 4 is broken; load step 2")

    def disk_full():
        raise OSError(errno.ENOSPC, "No space left on device", "/ckpt/model_000004.pt")

    def bug():
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(SystemExit, match="^error: step 4 is broken; load step 2$"):
        run_main(typed)
    with pytest.raises(SystemExit, match=r"no space left .*model_000004.pt.*--resume"):
        run_main(disk_full)
    with pytest.raises(KeyError):
        run_main(bug)
    assert issubclass(CheckpointError, NanochatError) and issubclass(ShardError, NanochatError)


def test_speedrun_fresh_overwrites_instead_of_resuming(tmp_path):
    (tmp_path / "meta_000010.json").write_text("{}")
    fn = "source <(sed -n '/^resume_flag() {/,/^}/p' speedrun.sh); resume_flag \"$1\""
    for fresh, expected in (("0", "--resume"), ("1", "--overwrite")):
        out = subprocess.run(["bash", "-c", fn, "_", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "NANOCHAT_FRESH": fresh})
        assert out.stdout.strip() == expected
    out = subprocess.run(["bash", "-c", fn, "_", str(tmp_path / "absent")], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == ""
