"""Checkpoints: exact round trips, atomic saves that survive crashes, and clear errors for bad files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from nanochat.checkpoint_manager import (
    CheckpointError,
    build_model,
    checkpoint_dir_for,
    find_largest_model,
    find_last_step,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from nanochat.gpt import GPT, GPTConfig

VOCAB = 512  # the tiny_tokenizer's vocabulary
CONFIG = GPTConfig(sequence_len=16, vocab_size=VOCAB, n_layer=1, n_head=2, n_kv_head=1, n_embd=32)


@pytest.fixture
def tok_base_dir(base_dir: Path, tiny_tokenizer) -> Path:
    """A base dir whose tokenizer/ holds the tiny tokenizer, as build_model expects."""
    tiny_tokenizer.save(os.path.join(base_dir, "tokenizer"))
    return base_dir


def make_model(config: GPTConfig = CONFIG, seed: int = 0) -> GPT:
    """A model with every weight random: init_weights zeros the head, so its logits would all be equal."""
    torch.manual_seed(seed)
    model = GPT(config)
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def meta_for(config: GPTConfig, **extra) -> dict:
    return {"model_config": dataclasses.asdict(config), **extra}


def save(checkpoint_dir: Path, step: int, model: GPT, optimizer_data: list | None = None, **extra) -> None:
    meta = meta_for(model.config, step=step, **extra)
    save_checkpoint(str(checkpoint_dir), step, model.state_dict(), optimizer_data, meta)


def logits(model: GPT) -> torch.Tensor:
    idx = torch.arange(12).view(2, 6) * 37 % VOCAB
    with torch.no_grad():
        return model(idx)


def assert_same(a, b) -> None:
    """Recursive equality for nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def adamw_after_one_step(model: GPT) -> torch.optim.AdamW:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95))
    idx = torch.randint(0, VOCAB, (2, 8))
    model(idx, targets=idx).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


# ---- round trips ----


def test_a_smear_model_round_trips_with_smear_in_its_meta(tok_base_dir: Path) -> None:
    ckpt = tok_base_dir / "base_checkpoints" / "d1"
    model = make_model(dataclasses.replace(CONFIG, smear=True))
    save(ckpt, 1, model)
    loaded, _, meta = build_model(str(ckpt), 1, "cpu", phase="eval")
    assert meta["model_config"]["smear"] is True and loaded.config.smear
    assert torch.equal(logits(loaded), logits(model))


def test_round_trip_logits_meta_and_optimizer(tok_base_dir: Path) -> None:
    ckpt = tok_base_dir / "base_checkpoints" / "d1"
    model = make_model()
    opt = adamw_after_one_step(model)
    meta = meta_for(CONFIG, step=3, val_bpb=1.25, loader={"shard": 2, "row_group": 7}, flags={"depth": 1})
    save_checkpoint(str(ckpt), 3, model.state_dict(), [opt.state_dict()], meta)

    loaded, tokenizer, loaded_meta = build_model(str(ckpt), 3, "cpu", phase="eval")
    assert torch.equal(logits(loaded), logits(model))
    assert not loaded.training
    assert tokenizer.get_vocab_size() == VOCAB
    # plus the number of optimizer shards saved with it and every file's sha256
    checksums = {name: hashlib.sha256((ckpt / name).read_bytes()).hexdigest()
                 for name in ("model_000003.pt", "optim_000003_rank0.pt")}
    # the model_config without our extensions (smear) where they are off: nanochat's loader reads it
    nanochat_config = {k: v for k, v in meta["model_config"].items() if k != "smear"}
    assert loaded_meta == {**meta, "model_config": nanochat_config, "optim_ranks": 1, "checksums": checksums}
    assert build_model(str(ckpt), 3, "cpu", phase="train")[0].training

    model_data, optimizer_data, meta_data = load_checkpoint(str(ckpt), 3, "cpu", load_optimizer=True)
    assert_same(model_data, model.state_dict())
    assert_same(optimizer_data, [opt.state_dict()])
    assert meta_data == loaded_meta

    # the restored optimizer takes the same next step as the original
    resumed_opt = torch.optim.AdamW(loaded.parameters(), lr=1e-3, betas=(0.8, 0.95))
    resumed_opt.load_state_dict(optimizer_data[0])
    idx = torch.randint(0, VOCAB, (2, 8))
    for m, o in ((model, opt), (loaded, resumed_opt)):
        m(idx, targets=idx).backward()
        o.step()
    assert_same(loaded.state_dict(), model.state_dict())


def test_compiled_model_prefix_is_stripped(tok_base_dir: Path) -> None:
    ckpt = tok_base_dir / "ckpt"
    model = make_model()
    prefixed = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    save_checkpoint(str(ckpt), 1, prefixed, None, meta_for(CONFIG))
    loaded, _, _ = build_model(str(ckpt), 1, "cpu", phase="eval")
    assert torch.equal(logits(loaded), logits(model))


def test_bf16_weights_load_into_fp32_model(tok_base_dir: Path) -> None:
    # nanochat keeps the embedding in bf16 on CUDA; such a checkpoint must still run on CPU
    ckpt = tok_base_dir / "ckpt"
    model = make_model()
    state = model.state_dict()
    state["transformer.wte.weight"] = state["transformer.wte.weight"].bfloat16()
    save_checkpoint(str(ckpt), 1, state, None, meta_for(CONFIG))
    loaded, _, _ = build_model(str(ckpt), 1, "cpu", phase="eval")
    assert loaded.transformer.wte.weight.dtype == torch.float32
    assert torch.equal(loaded.transformer.wte.weight, state["transformer.wte.weight"].float())
    logits(loaded)  # runs without a dtype mismatch


# ---- saving ----


def test_ranks_write_their_own_files(base_dir: Path, monkeypatch) -> None:
    ckpt = base_dir / "ckpt"
    model = make_model()
    state = [{"shard": torch.arange(3)}]
    save(ckpt, 5, model, state)
    # under torchrun, rank 1 writes only its optimizer shard
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    save(ckpt, 5, model, [{"shard": torch.arange(3, 6)}])
    assert sorted(os.listdir(ckpt)) == [
        "meta_000005.json", "model_000005.pt", "optim_000005_rank0.pt", "optim_000005_rank1.pt"
    ]
    assert torch.equal(load_checkpoint(str(ckpt), 5, "cpu", load_optimizer=True)[1][0]["shard"], torch.arange(3, 6))
    rank0_state = load_checkpoint(str(ckpt), 5, "cpu", load_optimizer=True, rank=0)[1]
    assert torch.equal(rank0_state[0]["shard"], torch.arange(3))


def test_meta_is_written_last(base_dir: Path, monkeypatch) -> None:
    replaced = []
    real_replace = os.replace

    def recording_replace(src, dst):
        replaced.append(os.path.basename(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    save(base_dir / "ckpt", 2, make_model(), [{"x": torch.ones(1)}])
    assert replaced == ["model_000002.pt", "optim_000002_rank0.pt", "meta_000002.json"]


def test_save_without_model_config_writes_nothing(base_dir: Path) -> None:
    ckpt = base_dir / "ckpt"
    with pytest.raises(ValueError, match="model_config"):
        save_checkpoint(str(ckpt), 1, make_model().state_dict(), None, {"step": 1})
    assert os.listdir(ckpt) == []


@pytest.mark.parametrize("step, fail_on_call", [(10, 1), (20, 1), (20, 2)])
def test_crash_mid_save_keeps_previous_checkpoint(tok_base_dir: Path, monkeypatch, step: int, fail_on_call: int) -> None:
    """A save dies halfway through writing (model or optimizer): step 10 still loads exactly, nothing partial remains."""
    ckpt = tok_base_dir / "ckpt"
    model = make_model(seed=0)
    save(ckpt, 10, model, [{"m": torch.ones(4)}])
    before = {name: (ckpt / name).read_bytes() for name in os.listdir(ckpt)}

    real_save = torch.save
    calls = []

    def dying_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == fail_on_call:
            f.write(b"PK\x03\x04 half a zip file")
            raise OSError("No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="No space"):
        save(ckpt, step, make_model(seed=1), [{"m": torch.zeros(4)}])
    monkeypatch.setattr(torch, "save", real_save)

    names = os.listdir(ckpt)
    assert not [n for n in names if "tmp" in n], names
    for name, data in before.items():  # step 10's files are untouched, even when step 10 was being re-saved
        assert (ckpt / name).read_bytes() == data
    new_files = set(names) - set(before)
    # only a model file written completely before the optimizer crashed may remain, and without its meta
    assert new_files <= {f"model_{step:06d}.pt"}
    for name in new_files:
        torch.load(ckpt / name, weights_only=True)
    assert find_last_step(str(ckpt)) == 10
    loaded, _, _ = build_model(str(ckpt), 10, "cpu", phase="eval")
    assert torch.equal(logits(loaded), logits(model))


# ---- finding checkpoints ----


def test_find_last_step_ignores_incomplete_steps(base_dir: Path) -> None:
    ckpt = base_dir / "ckpt"
    with pytest.raises(CheckpointError, match="ckpt"):
        find_last_step(str(ckpt))
    ckpt.mkdir()
    with pytest.raises(CheckpointError, match="ckpt"):
        find_last_step(str(ckpt))
    model = make_model()
    for step in (10, 200, 30):
        save(ckpt, step, model)
    torch.save(model.state_dict(), ckpt / "model_000300.pt")  # model without meta: an interrupted save
    (ckpt / "meta_000400.json").write_text(json.dumps(meta_for(CONFIG)))  # meta without model
    (ckpt / "meta_000500.json.tmp-123").write_text("{}")  # leftovers of a crashed process
    (ckpt / "model_000500.pt.tmp-123").write_bytes(b"PK")
    assert find_last_step(str(ckpt)) == 200


def test_find_largest_model(base_dir: Path) -> None:
    root = base_dir / "base_checkpoints"
    with pytest.raises(CheckpointError, match="base_checkpoints"):
        find_largest_model(str(root))
    root.mkdir()
    with pytest.raises(CheckpointError, match="base_checkpoints"):
        find_largest_model(str(root))
    for i, tag in enumerate(["d12", "d4", "d8", "mytag"]):  # d12 is the oldest: depth wins, not time
        (root / tag).mkdir()
        os.utime(root / tag, (1000 + i, 1000 + i))
    (root / "d99.txt").write_text("a file, not a tag")
    assert find_largest_model(str(root)) == "d12"

    other = base_dir / "other"
    for tag, mtime in [("alpha", 2000), ("beta", 3000), ("gamma", 1000)]:
        (other / tag).mkdir(parents=True)
        os.utime(other / tag, (mtime, mtime))
    assert find_largest_model(str(other)) == "beta"


# ---- bad checkpoints ----


@pytest.mark.parametrize("which", ["model_000001.pt", "meta_000001.json"])
def test_truncated_file_is_a_clear_error(tok_base_dir: Path, which: str) -> None:
    ckpt = tok_base_dir / "ckpt"
    save(ckpt, 1, make_model())
    path = ckpt / which
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=which) as info:
        build_model(str(ckpt), 1, "cpu", phase="eval")
    assert "truncated or corrupt" in str(info.value)


def test_missing_files_are_clear_errors(base_dir: Path) -> None:
    ckpt = base_dir / "ckpt"
    save(ckpt, 1, make_model(), [{"m": torch.ones(2)}])
    with pytest.raises(CheckpointError, match="optim_000001_rank1.pt"):
        load_checkpoint(str(ckpt), 1, "cpu", load_optimizer=True, rank=1)
    with pytest.raises(CheckpointError, match="model_000002.pt|meta_000002.json"):
        load_checkpoint(str(ckpt), 2, "cpu")
    os.remove(ckpt / "model_000001.pt")
    with pytest.raises(CheckpointError, match="model_000001.pt"):
        load_checkpoint(str(ckpt), 1, "cpu")


@pytest.mark.parametrize(
    "saved, claimed, key",
    [
        (CONFIG, dataclasses.replace(CONFIG, n_embd=64), "transformer.wte.weight"),  # shapes differ
        (CONFIG, dataclasses.replace(CONFIG, n_layer=2), "transformer.h.1.attn.c_q.weight"),  # a layer is missing
    ],
)
def test_state_dict_not_matching_config(tok_base_dir: Path, saved: GPTConfig, claimed: GPTConfig, key: str) -> None:
    ckpt = tok_base_dir / "ckpt"
    save_checkpoint(str(ckpt), 1, make_model(saved).state_dict(), None, meta_for(claimed))
    with pytest.raises(CheckpointError, match="model_000001.pt") as info:
        build_model(str(ckpt), 1, "cpu", phase="eval")
    assert key in str(info.value)


def test_tokenizer_vocab_mismatch(tok_base_dir: Path) -> None:
    ckpt = tok_base_dir / "ckpt"
    config = dataclasses.replace(CONFIG, vocab_size=300)
    save(ckpt, 1, make_model(config))
    with pytest.raises(CheckpointError) as info:
        build_model(str(ckpt), 1, "cpu", phase="eval")
    message = str(info.value)
    assert "512" in message and "300" in message and str(tok_base_dir / "tokenizer") in message


# ---- load_model ----


def test_load_model_picks_deepest_tag_and_last_step(tok_base_dir: Path) -> None:
    deep = make_model(GPTConfig(sequence_len=16, vocab_size=VOCAB, n_layer=2, n_head=2, n_kv_head=2, n_embd=32), seed=3)
    early, late, shallow = make_model(deep.config, seed=1), make_model(deep.config, seed=2), make_model(seed=4)
    assert checkpoint_dir_for("base", "d2") == str(tok_base_dir / "base_checkpoints" / "d2")
    save(Path(checkpoint_dir_for("base", "d2")), 5, early)
    save(Path(checkpoint_dir_for("base", "d2")), 7, late)
    save(Path(checkpoint_dir_for("base", "d1")), 9, shallow)

    model, _, meta = load_model("base", "cpu", "eval")
    assert meta["step"] == 7 and torch.equal(logits(model), logits(late))
    assert meta["model_tag"] == "d2"  # the tag it chose, which a stage training on saves under
    model, _, meta = load_model("base", "cpu", "eval", model_tag="d2", step=5)
    assert meta["step"] == 5 and torch.equal(logits(model), logits(early))
    model, _, _ = load_model("base", "cpu", "eval", model_tag="d1")
    assert torch.equal(logits(model), logits(shallow))
    # mid/sft/rl live in their own folders
    save(Path(checkpoint_dir_for("sft", "d1")), 1, deep)
    assert torch.equal(logits(load_model("sft", "cpu", "eval")[0]), logits(deep))


def test_load_model_bad_source(base_dir: Path) -> None:
    with pytest.raises(ValueError, match="base.*mid.*rl.*sft"):
        load_model("chat", "cpu", "eval")
    with pytest.raises(ValueError, match="base"):
        checkpoint_dir_for("pretrain", "d1")


@pytest.mark.parametrize("source, script", [("base", "scripts.base_train"), ("mid", "scripts.mid_train"),
                                            ("sft", "scripts.chat_sft"), ("rl", "scripts.chat_rl")])
def test_load_model_without_checkpoints_names_the_script(base_dir: Path, source: str, script: str) -> None:
    with pytest.raises(CheckpointError, match=script):
        load_model(source, "cpu", "eval")


def test_load_model_missing_tag_names_the_script(base_dir: Path) -> None:
    save(Path(checkpoint_dir_for("base", "d1")), 1, make_model())
    with pytest.raises(CheckpointError, match="d20.*scripts.base_train"):
        load_model("base", "cpu", "eval", model_tag="d20")
