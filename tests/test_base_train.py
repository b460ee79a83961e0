"""base_train and base_loss end to end on the synthetic twin, with tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from scripts import base_loss, base_train
from tiny import assert_bitwise_equal

TINY = ["--depth=1", "--max_seq_len=32", "--device_batch_size=4", "--total_batch_size=256", "--eval_tokens=512",
        "--sample_every=-1", "--core_metric_every=-1", "--device_type=cpu"]


def _files(checkpoint_dir, step):
    return {name: torch.load(os.path.join(checkpoint_dir, name)) for name in
            (f"model_{step:06d}.pt", f"optim_{step:06d}_rank0.pt")}


@pytest.mark.parametrize("smear", [False, True])
def test_resumed_run_is_bitwise_the_uninterrupted_run(synthetic_setup, smear):
    args = TINY + ["--num_iterations=8", "--save_every=4", "--eval_every=3", "--model_tag=t"] + ["--smear"] * smear
    base_train.main(args)
    ckpt = synthetic_setup / "base_checkpoints" / "t"
    uninterrupted = _files(ckpt, 8)
    meta8 = json.loads((ckpt / "meta_000008.json").read_text())
    assert meta8["model_config"].get("smear", False) is smear  # written only when on (nanochat loads the rest)
    assert ("smear_lambda" in uninterrupted["model_000008.pt"]) is smear
    # what a run killed after its step-4 save leaves behind
    for name in ("model_000008.pt", "optim_000008_rank0.pt", "meta_000008.json"):
        os.remove(ckpt / name)
    base_train.main(args + ["--resume"])
    assert_bitwise_equal(_files(ckpt, 8), uninterrupted)
    resumed_meta = json.loads((ckpt / "meta_000008.json").read_text())
    for key in ("loop_state", "data_states", "rng_states", "val_bpb"):
        if key == "loop_state":  # wall time differs; everything else must not
            resumed_meta[key].pop("total_time"), meta8[key].pop("total_time")
        assert resumed_meta[key] == meta8[key], key


def test_training_lowers_val_bpb_well_below_its_start(synthetic_setup):
    results = base_train.main(["--depth=2", "--max_seq_len=64", "--device_batch_size=8", "--total_batch_size=512",
                               "--num_iterations=60", "--eval_every=60", "--eval_tokens=2048", "--sample_every=-1",
                               "--core_metric_every=60", "--core_metric_max_per_task=8", "--device_type=cpu",
                               "--model_tag=learn", "--dtype=float32"])  # base_loss below evaluates in fp32 on CPU
    assert -1.0 <= results["core_metric"] <= 1.0
    assert results["final_val_bpb"] < 0.75 * results["initial_val_bpb"], results
    report = (synthetic_setup / "report" / "base-model-training.md").read_text()
    assert "final_val_bpb" in report
    # base_loss reloads the saved model and measures the same thing
    loss = base_loss.main(["--device_type=cpu", "--device_batch_size=8", "--split_tokens=2048", "--model_tag=learn"])
    assert loss["val_bpb"] == pytest.approx(results["final_val_bpb"], rel=1e-6)
    assert loss["train_bpb"] < results["initial_val_bpb"]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(synthetic_setup, monkeypatch, capsys):
    real_step = base_train.train_step
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss, extra = real_step(*args, **kwargs)
        return (loss * float("nan") if calls["n"] == 4 else loss), extra

    monkeypatch.setattr(base_train, "train_step", poisoned)
    with pytest.raises(SystemExit) as exc:
        base_train.main(TINY + ["--num_iterations=8", "--save_every=2", "--eval_every=-1", "--model_tag=nan"])
    assert exc.value.code == 1
    assert "loss is nan at step 3" in capsys.readouterr().out
    ckpt = synthetic_setup / "base_checkpoints" / "nan"
    assert sorted(os.listdir(ckpt)) == ["meta_000002.json", "model_000002.pt", "optim_000002_rank0.pt"]


def test_resume_from_corrupt_checkpoint_names_the_file(synthetic_setup):
    args = TINY + ["--num_iterations=2", "--eval_every=-1", "--model_tag=c"]
    base_train.main(args)
    model_file = synthetic_setup / "base_checkpoints" / "c" / "model_000002.pt"
    model_file.write_bytes(model_file.read_bytes()[:1000])
    with pytest.raises(SystemExit, match="model_000002.pt"):
        base_train.main(args + ["--resume"])


def test_resume_with_other_flags_is_refused(synthetic_setup):
    base_train.main(TINY + ["--num_iterations=2", "--eval_every=-1", "--model_tag=f"])
    with pytest.raises(SystemExit, match="same flags"):
        base_train.main(TINY + ["--num_iterations=4", "--eval_every=-1", "--model_tag=f", "--resume"])


def test_bad_batch_sizes_are_explained(synthetic_setup):
    with pytest.raises(ValueError, match="not a multiple"):
        base_train.main(TINY[:3] + ["--total_batch_size=100", "--num_iterations=1", "--device_type=cpu"])


@pytest.mark.slow
def test_two_rank_torchrun_training_resumes_bitwise(synthetic_setup):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = TINY + ["--num_iterations=4", "--save_every=2", "--eval_every=2", "--model_tag=ddp"]

    def torchrun(extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "scripts.base_train", "--", *args, *extra]
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    torchrun([])
    ckpt = synthetic_setup / "base_checkpoints" / "ddp"
    assert (ckpt / "optim_000004_rank1.pt").exists()
    meta = json.loads((ckpt / "meta_000004.json").read_text())
    assert [s["rank"] for s in meta["data_states"]] == [0, 1]
    saved = {name: torch.load(ckpt / name) for name in ("model_000004.pt", "optim_000004_rank0.pt", "optim_000004_rank1.pt")}
    for name in ("model_000004.pt", "optim_000004_rank0.pt", "optim_000004_rank1.pt", "meta_000004.json"):
        os.remove(ckpt / name)
    torchrun(["--resume"])
    for name, value in saved.items():
        assert_bitwise_equal(torch.load(ckpt / name), value, name)
