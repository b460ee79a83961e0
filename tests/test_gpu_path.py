"""
The 8×GPU path, checked on CPU: ranks that agree on the last step, bf16 and torch.compile,
crash-safe multi-rank saves, checkpoint keeping, the preflight plan, and the CUDA settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanochat import preflight
from nanochat.checkpoint_manager import CheckpointError, find_last_step, prune_checkpoints, save_checkpoint
from nanochat.common import configure_cuda
from nanochat.gpt import GPT, GPTConfig
from nanochat.training import StepBatches, train_step
from tiny import assert_bitwise_equal, make_batches, make_tiny_model

ROOT = Path(__file__).resolve().parents[1]


def torchrun(args: list[str], nproc: int = 2, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _final_step(checkpoint_dir: Path) -> tuple[int, dict]:
    step = find_last_step(str(checkpoint_dir), with_optimizer=True)
    return step, json.loads((checkpoint_dir / f"meta_{step:06d}.json").read_text())


# ---- every stage: 2 ranks on gloo, bf16 autocast and torch.compile on CPU ----


@pytest.mark.slow
def test_mid_train_two_ranks_run_to_the_end_of_uneven_data_with_bf16_and_compile(base_checkpoint):
    # one pass over 80 conversations: each rank packs its own 40, so one runs dry a step or more
    # before the other; before the fix that rank left for the final eval while the other was still
    # in the optimizer's reduce-scatter (gloo: "collective mismatch"; NCCL: a hang)
    out = _ok(torchrun(["-m", "scripts.mid_train", "--", "--device_type=cpu", "--device_batch_size=4",
                        "--max_seq_len=64", "--total_batch_size=512", "--eval_every=-1", "--eval_tokens=512",
                        "--spelling_size=50", "--max_conversations=80", "--dtype=bfloat16", "--compile=on"]))
    step, meta = _final_step(base_checkpoint / "mid_checkpoints" / "d1")
    assert f"saved checkpoint at step {step}" in out and step > 10
    assert meta["optim_ranks"] == 2 and [s["rank"] for s in meta["data_states"]] == [0, 1]
    assert "bfloat16, compile on" in out


@pytest.mark.slow
def test_mid_train_two_ranks_resume_bitwise_through_the_warmdown_by_progress(base_checkpoint):
    # one pass over the data: the learning rate follows the ranks' mean progress, so a resumed run
    # must restore it exactly, and must again end on the step the uninterrupted run ended on
    args = ["-m", "scripts.mid_train", "--", "--device_type=cpu", "--device_batch_size=4", "--max_seq_len=64",
            "--total_batch_size=512", "--eval_every=-1", "--eval_tokens=512", "--spelling_size=50",
            "--max_conversations=60", "--save_every=4", "--keep_last=-1"]
    _ok(torchrun(args))
    ckpt = base_checkpoint / "mid_checkpoints" / "d1"
    final, _ = _final_step(ckpt)
    files = [f"model_{final:06d}.pt", f"optim_{final:06d}_rank0.pt", f"optim_{final:06d}_rank1.pt"]
    uninterrupted = {f: torch.load(ckpt / f) for f in files}
    for f in files + [f"meta_{final:06d}.json"]:
        os.remove(ckpt / f)
    _ok(torchrun(args + ["--resume"]))
    assert _final_step(ckpt)[0] == final
    for f in files:
        assert_bitwise_equal(torch.load(ckpt / f), uninterrupted[f], f)


@pytest.mark.slow
def test_chat_sft_two_ranks_one_epoch_with_bf16_and_compile(base_checkpoint):
    out = _ok(torchrun(["-m", "scripts.chat_sft", "--", "--source=base", "--device_type=cpu", "--device_batch_size=2",
                        "--target_examples_per_step=8", "--num_epochs=1", "--max_conversations=40", "--eval_every=-1",
                        "--eval_steps=2", "--eval_metrics_every=-1", "--smoltalk_size=50", "--spelling_size=20",
                        "--dtype=bfloat16", "--compile=on"]))
    step, meta = _final_step(base_checkpoint / "chatsft_checkpoints" / "d1")
    assert step == 40 // 8 and meta["optim_ranks"] == 2
    assert f"saved checkpoint at step {step}" in out


@pytest.mark.slow
def test_chat_rl_two_ranks_with_bf16_and_compile(base_checkpoint):
    # each rank's 2 problems × 2 answers decode as one bf16 batch of 4 rows at their own positions
    out = _ok(torchrun(["-m", "scripts.chat_rl", "--", "--source=base", "--device_type=cpu", "--num_samples=2",
                        "--device_batch_size=4", "--examples_per_step=4", "--max_new_tokens=6", "--num_iterations=2",
                        "--eval_every=-1", "--eval_examples=4", "--dtype=bfloat16", "--compile=on",
                        # uneven work per rank: refills where a group's rewards are all equal, and a rank may
                        # drop every group (its minibatches are then empty); the KL's reference beside it
                        "--dynamic_sampling", "--max_refills=1", "--num_minibatches=2", "--kl_coef=0.1",
                        "--adv_norm=batch", "--loss_agg=sequence"]))
    step, meta = _final_step(base_checkpoint / "chatrl_checkpoints" / "d1")
    assert step == 2 and meta["optim_ranks"] == 2
    assert "saved checkpoint at step 2" in out
    assert "precision: bf16 autocast (--dtype), compile on (--compile)" in out  # chosen as every training stage chooses


@pytest.mark.slow
def test_base_train_bf16_and_compile_then_dry_run(synthetic_setup, capsys):
    from scripts import base_train

    tiny = ["--depth=1", "--max_seq_len=32", "--device_batch_size=4", "--total_batch_size=256", "--eval_tokens=512",
            "--sample_every=-1", "--core_metric_every=-1", "--device_type=cpu", "--model_tag=bc"]
    results = base_train.main(tiny + ["--num_iterations=3", "--eval_every=-1", "--dtype=bfloat16", "--compile=on"])
    assert results["final_val_bpb"] < results["initial_val_bpb"] * 1.01
    # --dry_run prints the plan and stops before training or saving anything
    with pytest.raises(SystemExit) as exc:
        base_train.main(tiny + ["--num_iterations=3", "--model_tag=dry", "--dry_run"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "plan:" in out and "GiB estimated peak per device" in out and "3 of 256 tokens" in out
    assert not (synthetic_setup / "base_checkpoints" / "dry").exists()


# ---- saves, resume and checkpoint keeping ----


@pytest.mark.slow
def test_a_rank_dying_mid_save_leaves_no_completion_marker(tmp_path):
    ckpt = tmp_path / "ckpt"
    proc = torchrun([str(ROOT / "tests" / "workers" / "crash_in_save.py"), str(ckpt)])
    assert proc.returncode != 0  # rank 1 died; rank 0 must not have finished the save without it
    assert sorted(p.name for p in ckpt.glob("meta_*")) == ["meta_000001.json"]
    assert not (ckpt / "rank0_finished_save_2").exists()
    assert find_last_step(str(ckpt), with_optimizer=True) == 1



@pytest.mark.slow
def test_overwrite_with_two_ranks_when_one_looks_late(tmp_path):
    # rank 0 deleted the old run before rank 1 looked: rank 1 saw an empty folder, skipped the
    # barrier rank 0 waited at, and the run hung (found by gpu_check's second chat_rl)
    proc = torchrun([str(ROOT / "tests" / "workers" / "overwrite_race.py"), str(tmp_path / "ckpt")], timeout=120)
    out = _ok(proc)
    assert "rank 0: overwrite done" in out and "rank 1: overwrite done" in out

def _save_step(ckpt: Path, step: int, ranks: int) -> None:
    model = make_tiny_model()
    for rank in reversed(range(ranks)):  # rank 0 last: it writes the meta
        save_checkpoint(str(ckpt), step, model.state_dict(), [{"rank": rank}], {"model_config": vars(model.config)},
                        rank=rank)


def test_resume_skips_a_step_missing_a_ranks_optimizer_file(tmp_path, monkeypatch, caplog):
    ckpt = tmp_path / "ckpt"
    monkeypatch.setenv("WORLD_SIZE", "2")  # the meta records the world size as the number of shards
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    _save_step(ckpt, 4, ranks=2)
    _save_step(ckpt, 6, ranks=2)
    assert find_last_step(str(ckpt), with_optimizer=True) == 6
    os.remove(ckpt / "optim_000006_rank1.pt")
    assert find_last_step(str(ckpt)) == 6  # loading the model alone still may use it
    assert find_last_step(str(ckpt), with_optimizer=True) == 4
    assert "optim_000006_rank1.pt" in caplog.text
    os.remove(ckpt / "optim_000004_rank0.pt")
    with pytest.raises(CheckpointError, match="no step .* has all of its optimizer files"):
        find_last_step(str(ckpt), with_optimizer=True)


def test_prune_keeps_the_newest_complete_steps(tmp_path):
    ckpt = tmp_path / "ckpt"
    for step in (2, 4, 6, 8):
        _save_step(ckpt, step, ranks=1)
    (ckpt / "model_000010.pt").write_bytes(b"an interrupted save")  # no meta: never counted as kept
    assert prune_checkpoints(str(ckpt), keep_last=2) == [2, 4]
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "meta_000006.json", "meta_000008.json", "model_000006.pt", "model_000008.pt", "model_000010.pt",
        "optim_000006_rank0.pt", "optim_000008_rank0.pt"]
    assert prune_checkpoints(str(ckpt), keep_last=-1) == []


def test_base_train_keeps_only_the_last_checkpoints(synthetic_setup):
    from scripts import base_train

    base_train.main(["--depth=1", "--max_seq_len=32", "--device_batch_size=4", "--total_batch_size=256",
                     "--eval_tokens=512", "--sample_every=-1", "--core_metric_every=-1", "--device_type=cpu",
                     "--model_tag=k", "--num_iterations=8", "--save_every=2", "--eval_every=-1", "--keep_last=2"])
    names = sorted(p.name for p in (synthetic_setup / "base_checkpoints" / "k").iterdir())
    assert names == ["meta_000006.json", "meta_000008.json", "model_000006.pt", "model_000008.pt",
                     "optim_000006_rank0.pt", "optim_000008_rank0.pt"]


# ---- the training step ----


def test_the_next_steps_data_is_read_while_this_step_runs():
    events: list[str] = []
    model = make_tiny_model()

    def batches():
        for k, (x, y) in enumerate(make_batches(steps=6)):
            events.append(f"fetch {k}")
            yield x, y

    class Traced(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x, y):
            events.append("forward")
            loss = self.inner(x, y)
            loss.register_hook(lambda g: events.append("backward"))
            return loss

    optimizers = model.setup_optimizers()
    steps = StepBatches(batches(), 2)
    assert events == ["fetch 0", "fetch 1"]  # the first step is read up front
    train_step(Traced(), optimizers, steps, torch.autocast("cpu", enabled=False))
    # micro-batch i of the next step is read right after micro-batch i's backward is launched
    assert events == ["fetch 0", "fetch 1", "forward", "backward", "fetch 2", "forward", "backward", "fetch 3"]
    train_step(Traced(), optimizers, steps, torch.autocast("cpu", enabled=False))
    assert steps.have_next_step()  # 6 micro-batches: a third full step remains
    train_step(Traced(), optimizers, steps, torch.autocast("cpu", enabled=False))
    assert not steps.have_next_step() and steps.exhausted
    with pytest.raises(RuntimeError, match="have_next_step"):
        steps.take()


def test_evaluation_stops_at_the_end_of_a_ranks_data_instead_of_raising():
    from nanochat.loss_eval import evaluate_bpb, evaluate_loss

    model = make_tiny_model()
    batches = list(make_batches(steps=2))
    token_bytes = torch.ones(model.config.vocab_size, dtype=torch.int64)
    # asked for 5 batches, this rank has 2: it evaluates those and still reaches the all_reduce
    assert evaluate_bpb(model, iter(batches), 5, token_bytes) == evaluate_bpb(model, iter(batches), 2, token_bytes)
    assert evaluate_loss(model, iter(batches), 5) == evaluate_loss(model, iter(batches), 2)


def test_residual_stream_is_bf16_under_autocast():
    model = make_tiny_model()
    seen = []
    for block in model.transformer.h:
        block.register_forward_hook(lambda mod, inp, out: seen.append((inp[0].dtype, out.dtype)))
    x, y = next(make_batches())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, y)
    assert seen == [(torch.bfloat16, torch.bfloat16)] and loss.dtype == torch.float32
    assert model.transformer.wte.weight.dtype == torch.float32  # the weights stay fp32
    seen.clear()
    model(x, y)
    assert seen == [(torch.float32, torch.float32)]  # without autocast nothing changes


def test_cuda_settings_leave_every_tf32_getter_working(monkeypatch):
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    before = torch.get_float32_matmul_precision()
    try:
        configure_cuda("cuda")  # the CUDA branch, forced on a machine without CUDA
        # mixing the new fp32_precision attributes with these legacy getters made them raise,
        # and inductor's autotuning calls them under torch.compile
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cuda.matmul.allow_tf32 is True
        assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    finally:
        torch.set_float32_matmul_precision(before)


def test_compiled_newton_schulz_equals_eager():
    from nanochat.optimizers import compiled_newton_schulz, zeropower_via_newtonschulz5

    G = torch.randn(3, 64, 96, generator=torch.Generator().manual_seed(0))  # a batch of wide matrices
    torch.testing.assert_close(compiled_newton_schulz()(G, 5), zeropower_via_newtonschulz5(G, 5), atol=2e-5, rtol=1e-4)
    assert compiled_newton_schulz() is compiled_newton_schulz()  # compiled once, reused by every step


# ---- the preflight estimate ----


def _measured_peak(config: GPTConfig, B: int, T: int, dtype: torch.dtype) -> int:
    from nanochat.gpt import GPT

    torch.manual_seed(0)
    model = GPT(config)
    model.init_weights()
    optimizers = model.setup_optimizers()
    x, y = torch.randint(0, config.vocab_size, (2, B, T))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)

    def step():
        with autocast:
            loss = model(x, y)
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)

    step()  # from the second step on, the optimizer state is there too
    tensors = [*model.parameters(), *(t for o in optimizers for s in o.state.values() for t in s.values()
                                      if isinstance(t, torch.Tensor))]
    return preflight.measure_peak_memory(step, sum(t.numel() * t.element_size() for t in tensors))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("L,C,V,B,T", [(2, 128, 512, 8, 128), (4, 128, 1024, 8, 128), (2, 256, 2048, 4, 128),
                                       (1, 64, 512, 4, 64), (1, 64, 8192, 4, 256)])  # the last: 2 loss chunks
def test_memory_formula_matches_measured_peaks(L, C, V, B, T, dtype):
    config = GPTConfig(sequence_len=T, vocab_size=V, n_layer=L, n_head=C // 64, n_kv_head=C // 64, n_embd=C)
    measured = _measured_peak(config, B, T, dtype)
    estimate = preflight.estimate_peak_memory(config, B, T, 1, dtype).total
    # a slight over-estimate is the safe side for a check that refuses to start
    assert 0.95 * measured <= estimate <= 1.3 * measured, (measured, estimate)


@pytest.mark.parametrize("smear", [False, True])
def test_preflight_counts_every_parameter(smear):
    config = GPTConfig(sequence_len=32, vocab_size=300, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, smear=smear)
    assert sum(preflight.parameter_counts(config)) == GPT(config).num_params()


def test_measure_peak_memory_counts_live_tensors():
    def run():
        a = torch.empty(1000)
        b = torch.empty(1000)
        del a
        c = torch.empty(2000)
        del b, c

    assert preflight.measure_peak_memory(run) == 4 * (1000 + 2000)


def test_preflight_refuses_a_batch_that_does_not_fit_and_suggests_one(monkeypatch, capsys):
    from nanochat.gpt import config_for_depth

    config = config_for_depth(20, 65536, 2048)
    d20 = preflight.estimate_peak_memory(config, 32, 2048, 8, torch.bfloat16, compiled=True).total
    assert 65 * 2**30 < d20 < 78 * 2**30  # nanochat's published d20 figure: ~75 GB at B=32 on 80 GB cards
    monkeypatch.setattr(preflight, "device_memory", lambda device: 40 * 2**30)
    with pytest.raises(preflight.PreflightError, match=r"exceeds 95% of the 40.0 GiB .* try --device_batch_size=8"):
        preflight.preflight(config, 32, 2048, 8, torch.bfloat16, True, torch.device("cpu"), {"model": "d20"})
    assert "plan:" in capsys.readouterr().out
    fits = preflight.preflight(config, 8, 2048, 8, torch.bfloat16, True, torch.device("cpu"), {})
    assert fits.total <= 0.95 * 40 * 2**30
    assert preflight.estimate_peak_memory(config, 16, 2048, 8, torch.bfloat16, compiled=True).total > 0.95 * 40 * 2**30
    preflight.preflight(config, 32, 2048, 8, torch.bfloat16, True, torch.device("cpu"), {}, enforce=False)


# ---- speedrun.sh on a machine whose GPUs torch cannot see ----


def test_speedrun_stops_when_nvidia_smi_sees_gpus_that_torch_cannot(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
    (fake / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "NANOCHAT_BASE_DIR": str(tmp_path / "base")}
    env.pop("NANOCHAT_PROFILE", None)
    proc = subprocess.run(["bash", "speedrun.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "nvidia-smi lists 1 GPU(s)" in proc.stderr and "NANOCHAT_PROFILE=cpu" in proc.stderr
    assert not (tmp_path / "base").exists()  # stopped before doing anything
