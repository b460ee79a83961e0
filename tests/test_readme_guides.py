"""The README's guides hold: the GPU batch table is the preflight formula's, the worked examples parse and run."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from nanochat.checkpoint_manager import CheckpointError, checkpoint_dir_for, load_model, save_checkpoint
from nanochat.gpt import GPT, GPTConfig, config_for_depth
from nanochat.precision import resolve_dtype
from nanochat.preflight import GIB, largest_fitting_batch
from nanochat.tokenizer import get_tokenizer_dir
from nanochat.training import grad_accum_steps_for
from scripts import base_train, chat_cli, chat_sft
from tasks.customjson import CustomJSON

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"### {title}")
    end = README.find("\n## ", start)
    following = README.find("\n### ", start + 1)
    return README[start:min(e for e in (end, following) if e > 0)]


def test_the_gpu_batch_table_is_the_preflight_formula():
    text = section("Smaller GPUs")
    header = re.search(r"\| depth \(parameters\) \|(.*)\|", text).group(1)
    memories = [int(m) for m in re.findall(r"(\d+) GB", header)]
    rows = re.findall(r"^\| d(\d+) \(([\d.]+)([MB])\) \|(.*)\|$", text, flags=re.M)
    assert len(memories) == 6 and len(rows) == 5
    for depth, size, unit, cells in rows:
        config = config_for_depth(int(depth), 65536, 2048)
        with torch.device("meta"):
            params = GPT(config).num_params()
        assert round(params / (1e6 if unit == "M" else 1e9), 0 if unit == "M" else 2) == float(size), depth
        for memory, cell in zip(memories, cells.split("|")):
            expected = [largest_fitting_batch(config, 2048, world, torch.bfloat16, True, int(0.95 * memory * GIB))
                        for world in (1, 8)]
            shown = [0 if x.strip() == "–" else int(x) for x in cell.split("/")]
            assert shown == expected, (depth, memory, cell)


def test_the_multi_node_example_divides_the_batch_it_says_it_does():
    text = section("Several nodes")
    command = re.search(r"torchrun (.*?)\n    -m scripts\.base_train -- (.*)\n", text)
    assert "--nnodes=2" in command.group(1) and "--nproc_per_node=8" in command.group(1)
    args = base_train.parse_args(shlex.split(command.group(2)))
    ranks = 2 * 8
    assert grad_accum_steps_for(args.total_batch_size, args.device_batch_size, args.max_seq_len, ranks) == 1
    with pytest.raises(ValueError, match="not a multiple"):  # the default batch, as the README warns
        grad_accum_steps_for(args.total_batch_size, 32, args.max_seq_len, ranks)


def test_the_custom_conversations_example_parses_and_its_commands_are_valid(tmp_path):
    text = section("Fine-tuning on your own conversations")
    jsonl = re.search(r"<<'END'\n(.*?)\nEND\n", text, flags=re.S).group(1)
    path = tmp_path / "my_chats.jsonl"
    path.write_text(jsonl + "\n")
    task = CustomJSON(path)
    assert len(task) == 2 and task[1]["messages"][0]["role"] == "system"
    sft_line = next(line for line in text.splitlines() if line.startswith("python -m scripts.chat_sft"))
    args = chat_sft.parse_args(shlex.split(sft_line, comments=True)[3:])
    assert args.custom_json == ["my_chats.jsonl", "my_chats.jsonl"]
    cli_line = next(line for line in text.splitlines() if line.startswith("python -m scripts.chat_cli"))
    assert shlex.split(cli_line)[3:5] == ["-i", "sft"]
    assert chat_cli.main.__module__ == "scripts.chat_cli"


def test_mps_defaults_to_float32_as_the_mac_guide_says():
    assert "--dtype=auto" in section("On a Mac") and resolve_dtype("mps", "auto") == torch.float32


def test_moving_a_model_as_the_readme_says(tiny_tokenizer, tmp_path, monkeypatch):
    """The tokenizer folder and one step's model and meta are enough to load it elsewhere; damage is refused."""
    here, there = tmp_path / "here", tmp_path / "there"
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(here))
    tiny_tokenizer.save(get_tokenizer_dir())
    config = GPTConfig(sequence_len=32, vocab_size=tiny_tokenizer.get_vocab_size(), n_layer=1, n_head=1, n_kv_head=1,
                       n_embd=16)
    model = GPT(config)
    model.init_weights()
    save_checkpoint(checkpoint_dir_for("sft", "d1"), 7, model.state_dict(), [{}],
                    {"model_config": vars(config), "step": 7})
    moved = ["tokenizer", "chatsft_checkpoints/d1/model_000007.pt", "chatsft_checkpoints/d1/meta_000007.json"]
    assert "tar cf d20-sft.tar tokenizer chatsft_checkpoints/d20/model_000700.pt chatsft_checkpoints/d20/meta_000700.json" \
        in README  # the same three kinds of path
    for rel in moved:
        (there / rel).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (here / rel).is_dir() else shutil.copy2
        copy(here / rel, there / rel)
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(there))
    loaded, _, meta = load_model("sft", "cpu", "eval")
    assert meta["step"] == 7
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    weights = there / moved[1]
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_model("sft", "cpu", "eval")
