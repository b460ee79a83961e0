"""chat_sft --custom_json: your own conversations in the SFT mixture, as the README's worked example does it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import chat_sft

ROOT = Path(__file__).resolve().parents[1]
MINE = [
    [{"role": "user", "content": "What is the office wifi password?"},
     {"role": "assistant", "content": "It is on the card by the coffee machine."}],
    {"messages": [{"role": "system", "content": "You answer for the Acme help desk."},
                  {"role": "user", "content": "My laptop will not start."},
                  {"role": "assistant", "content": "Hold the power button for ten seconds, then try again."},
                  {"role": "user", "content": "Still nothing."},
                  {"role": "assistant", "content": "Bring it to room 2.14 and we will look at it today."}]},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def as_messages(row) -> list[dict]:
    return row["messages"] if isinstance(row, dict) else row


def test_custom_conversations_join_the_mixture_as_often_as_named(offline, tmp_path):
    mine = write_jsonl(tmp_path / "mine.jsonl", MINE)
    plain, _ = chat_sft.build_datasets(smoltalk_size=20, spelling_size=10)
    mixed, _ = chat_sft.build_datasets(smoltalk_size=20, spelling_size=10, custom_json=[str(mine), str(mine)])
    assert len(mixed) == len(plain) + 2 * len(MINE)
    seen = [mixed[i]["messages"] for i in range(len(mixed))]
    for row in MINE:
        assert seen.count(as_messages(row)) == 2  # named twice: each conversation twice, whole


def test_chat_sft_trains_with_a_custom_file_and_records_it(base_checkpoint, tmp_path):
    mine = write_jsonl(tmp_path / "mine.jsonl", MINE)
    results = chat_sft.main(["--source=base", "--device_type=cpu", "--device_batch_size=2",
                             "--target_examples_per_step=4", "--num_iterations=2", "--eval_every=-1", "--eval_steps=1",
                             "--eval_metrics_every=-1", "--smoltalk_size=10", "--spelling_size=5",
                             f"--custom_json={mine}"])
    assert results["steps"] == 2
    meta = json.loads((base_checkpoint / "chatsft_checkpoints" / "d1" / "meta_000002.json").read_text())
    assert meta["user_config"]["custom_json"] == [str(mine)]  # so --resume refuses another file


def test_a_broken_line_is_one_error_line_naming_it(base_checkpoint, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(MINE[0]) + "\n" + json.dumps([{"role": "user", "content": "no answer"}]) + "\n")
    result = subprocess.run([sys.executable, "-m", "scripts.chat_sft", "--source=base", "--device_type=cpu",
                             f"--custom_json={bad}", "--dry_run"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {bad}, line 2: the conversation must end with an assistant message"], result.stderr[-2000:]


@pytest.mark.parametrize("flag", ["--custom_json", "--custom-json"])
def test_the_flag_repeats(flag):
    args = chat_sft.parse_args([flag, "a.jsonl", flag, "b.jsonl"])
    assert args.custom_json == ["a.jsonl", "b.jsonl"]
