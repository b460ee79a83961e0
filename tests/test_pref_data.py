"""chat_pref_data: on-policy pairs (a right answer chosen over a wrong one), reproducible by seed on any number of ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nanochat import rl
from nanochat.checkpoint_manager import load_model
from nanochat.engine import Engine
from nanochat.preference import pair_batch
from nanochat.tokenizer import RustBPETokenizer
from scripts import chat_dpo, chat_pref_data
from tasks.common import Task
from tasks.gsm8k import answer_to_parts
from tasks.preferences import UltraFeedback
from tiny import write_chat_checkpoint

ROOT = Path(__file__).resolve().parents[1]


class ParityTask(Task):
    """A verifiable task a random model gets right about half the time: an answer is right when its characters' codes sum to an even number."""

    def __init__(self, split: str = "train", size: int = 12, **kwargs) -> None:
        super().__init__(**kwargs)
        self.split, self.size = split, size

    @property
    def eval_type(self) -> str:
        return "generative"

    def num_examples(self) -> int:
        return self.size

    def get_example(self, index: int) -> dict:
        return {"messages": [{"role": "user", "content": f"{self.split} problem {index}: say something."},
                             {"role": "assistant", "content": "something"}]}

    def evaluate(self, conversation: dict, response: str) -> bool:
        return sum(map(ord, response)) % 2 == 0

    def reward(self, conversation: dict, response: str) -> float:
        return float(self.evaluate(conversation, response))


@pytest.fixture
def parity_policy(offline, tiny_tokenizer, monkeypatch) -> Path:
    """An sft checkpoint whose replies never hold a special token (so they run to max_new_tokens), and the Parity task."""
    write_chat_checkpoint(tiny_tokenizer, sequence_len=128)
    monkeypatch.setitem(rl.REWARD_TASKS, "Parity", ParityTask)
    return offline


ARGS = ["--device_type=cpu", "--tasks=Parity", "--num_samples=4", "--device_batch_size=3", "--max_new_tokens=6",
        "--eval_problems=0"]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pairs_only_where_right_and_wrong_both_exist_and_the_chosen_is_right(parity_policy, capsys):
    results = chat_pref_data.main(ARGS)["train"]
    rows = _rows(parity_policy / "preference_data" / "sft-d1-train.jsonl")
    task = ParityTask("train")
    assert results["problems"] == 12 and results["pairs"] == len(rows) > 0
    assert results["pairs"] + results["all_right"] + results["all_wrong"] == 12
    assert f"train: {len(rows)} of 12 problems gave a pair" in capsys.readouterr().out
    for row in rows:
        conversation = task[row["index"]]
        assert row["prompt"] == conversation["messages"][0]["content"]
        assert row["chosen"][:-1] == row["rejected"][:-1] == conversation["messages"][:-1]
        chosen, rejected = row["chosen"][-1]["content"], row["rejected"][-1]["content"]
        # the reward recomputed from the written replies, not read back from the file
        assert task.reward(conversation, chosen) == 1.0 and task.reward(conversation, rejected) == 0.0
        assert (row["chosen_reward"], row["rejected_reward"], row["task"]) == (1.0, 0.0, "Parity")
    # a problem whose answers were all right or all wrong gave none: resample them and look
    paired = {row["index"] for row in rows}
    model, tokenizer, _ = load_model("sft", "cpu", "eval")
    engine, pool = Engine(model, tokenizer), rl.RewardPool(2)
    for p in range(12):
        group = rl.sample_group(engine, tokenizer, "Parity", task, p, 4, rl.SamplingConfig(6, None, 3),
                                chat_pref_data.problem_seed(0, "train", p), 1.0, pool)
        assert (p in paired) == (0 < sum(group.rewards) < 4), p
    pool.close()


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_pairs(parity_policy, tmp_path):
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        chat_pref_data.main(ARGS + [f"--seed={seed}", f"--output_dir={tmp_path / name}"])
    a, b, c = ((tmp_path / name / "sft-d1-train.jsonl").read_bytes() for name in "abc")
    assert a == b != c
    assert not [p for p in tmp_path.rglob("*.tmp-*")]  # written through a temp file, none left


def test_the_files_are_read_by_the_ultrafeedback_loader_and_chat_dpo(parity_policy, tmp_path):
    results = chat_pref_data.main(ARGS + [f"--output_dir={tmp_path}", "--num_samples=6", "--eval_problems=6"])
    train, test = Path(results["train"]["file"]), Path(results["test"]["file"])
    assert results["test"]["problems"] == 6 and test == tmp_path / "sft-d1-test.jsonl"
    rows = _rows(train)
    pairs = UltraFeedback("train", data_files=str(train))
    assert len(pairs) == len(rows) and not pairs.skipped
    by_prompt = {row["prompt"]: row for row in rows}
    for pair in pairs:  # the loader shuffles the rows; each comes back as it was written
        row = by_prompt[pair["messages"][-1]["content"]]
        assert (pair["chosen"], pair["rejected"]) == (row["chosen"][-1]["content"], row["rejected"][-1]["content"])
    assert all(row["prompt"].startswith("test problem") for row in _rows(test))  # held out: the test problems
    results = chat_dpo.main(["--device_type=cpu", f"--data_files={train}", f"--val_data_files={test}",
                             "--device_batch_size=2", "--target_pairs_per_step=2", "--num_iterations=2", "--eval_every=-1"])
    assert results["steps"] == 2 and results["skipped_pairs"] == 0


def test_a_calculator_call_is_written_as_gsm8k_writes_it(tiny_tokenizer: RustBPETokenizer):
    special = tiny_tokenizer.encode_special
    text, expr, out = tiny_tokenizer.encode("It is 3*4="), tiny_tokenizer.encode("3*4"), tiny_tokenizer.encode("12")
    answer = [*text, special("<|python_start|>"), *expr, special("<|python_end|>"), special("<|output_start|>"), *out,
              special("<|output_end|>"), *tiny_tokenizer.encode(" so #### 12")]
    content = rl.answer_content(tiny_tokenizer, answer)
    assert content == [{"type": "text", "text": "It is 3*4="}, {"type": "python", "text": "3*4"},
                       {"type": "python_output", "text": "12"}, {"type": "text", "text": " so #### 12"}]
    # rendered, the parts give back the tokens the model sampled, delimiters included
    ids, _ = tiny_tokenizer.render_conversation({"messages": [{"role": "user", "content": "q"},
                                                              {"role": "assistant", "content": content}]})
    assert ids[-len(answer) - 1 : -1] == answer
    written = chat_pref_data.reply_text(content)
    assert written == "It is 3*4=<<3*4=12>> so #### 12"
    assert answer_to_parts(written) == content
    assert chat_pref_data.reply_text([{"type": "python", "text": "1/0"}]) == "<<1/0=>>"  # the tool gave no output
    assert rl.answer_content(tiny_tokenizer, tiny_tokenizer.encode("plain")) == "plain"



def test_a_written_calculator_call_trains_as_the_tool_call_it_was(tiny_tokenizer: RustBPETokenizer, tmp_path):
    user = {"role": "user", "content": "What is 3*4?"}
    row = {"prompt": user["content"], "chosen": [user, {"role": "assistant", "content": "It is <<3*4=12>>12"}],
           "rejected": [user, {"role": "assistant", "content": "It is 13"}], "calculator_notation": True}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(row) + "\n")
    pair = UltraFeedback("train", data_files=str(path))[0]
    inputs, targets = pair_batch([pair], tiny_tokenizer, 64)
    special = tiny_tokenizer.encode_special
    tool_call = [special("<|python_start|>"), *tiny_tokenizer.encode("3*4"), special("<|python_end|>")]
    output = [special("<|output_start|>"), *tiny_tokenizer.encode("12"), special("<|output_end|>")]
    chosen = inputs[0].tolist()
    at = next(i for i in range(len(chosen)) if chosen[i : i + len(tool_call)] == tool_call)
    assert chosen[at + len(tool_call) : at + len(tool_call) + len(output)] == output
    # the call is the model's to learn, the calculator's output is not (it was forced)
    assert targets[0, at - 1 : at - 1 + len(tool_call)].tolist() == tool_call
    assert (targets[0, at - 1 + len(tool_call) : at - 1 + len(tool_call) + len(output)] == -1).all()
    # without the column the same text is plain text
    del row["calculator_notation"]
    path.write_text(json.dumps(row) + "\n")
    plain, _ = pair_batch([UltraFeedback("train", data_files=str(path))[0]], tiny_tokenizer, 64)
    assert special("<|python_start|>") not in plain[0].tolist()

@pytest.mark.slow
def test_two_ranks_write_the_same_files_as_one(parity_policy, tmp_path):
    args = [*ARGS, "--device_batch_size=8"]  # chunks of 2 problems × 4 answers decoded together
    chat_pref_data.main(args + [f"--output_dir={tmp_path / 'one'}", "--eval_problems=5"])
    worker = tmp_path / "worker.py"  # chat_pref_data with the Parity task registered, as a torchrun entry point
    worker.write_text(f"import sys\nsys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]\n"
                      "from nanochat.rl import REWARD_TASKS\nfrom test_pref_data import ParityTask\n"
                      "REWARD_TASKS['Parity'] = ParityTask\nfrom scripts import chat_pref_data\n"
                      "chat_pref_data.main(sys.argv[1:])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker),
           *args, f"--output_dir={tmp_path / 'two'}", "--eval_problems=5"]  # 12 and 5 problems: uneven shares
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("sft-d1-train.jsonl", "sft-d1-test.jsonl"):
        one, two = (tmp_path / run / name for run in ("one", "two"))
        assert two.read_bytes() == one.read_bytes() and one.stat().st_size > 0, name


class LongPromptParityTask(ParityTask):
    """ParityTask whose problem 1 is longer than the model's context (1,280 positions)."""

    def get_example(self, index: int) -> dict:
        example = super().get_example(index)
        if index == 1:
            example["messages"][0]["content"] = "say " + "something else " * 1500
        return example


def test_a_prompt_that_fills_the_context_is_counted_and_its_chunk_still_answered(parity_policy, monkeypatch):
    monkeypatch.setitem(rl.REWARD_TASKS, "LongParity", LongPromptParityTask)
    results = chat_pref_data.main(["--device_type=cpu", "--tasks=LongParity", "--num_samples=4", "--device_batch_size=8",
                                   "--max_new_tokens=6", "--max_problems=4", "--eval_problems=0"])["train"]
    assert results["problems"] == 4 and results["prompt_too_long"] == 1
    # problem 0 shared its chunk with problem 1: it was answered alone instead
    assert results["pairs"] + results["all_right"] + results["all_wrong"] == 3


def test_with_greedy_the_models_own_answer_is_the_rejected_one_where_wrong_and_the_chosen_where_right(parity_policy):
    chat_pref_data.main(ARGS + ["--greedy", "--eval_problems=0"])
    rows = _rows(parity_policy / "preference_data" / "sft-d1-train.jsonl")
    model, tokenizer, _ = load_model("sft", "cpu", "eval")
    engine, pool, task = Engine(model, tokenizer), rl.RewardPool(2), ParityTask("train")
    sides = set()
    for row in rows:
        greedy = rl.sample_group(engine, tokenizer, "Parity", task, row["index"], 1, rl.SamplingConfig(6, None, 3), 0,
                                 0.0, pool)
        side = "chosen" if greedy.rewards[0] > 0 else "rejected"
        assert row[side][-1]["content"] == tokenizer.decode(greedy.rows[0][greedy.prompt_len:])  # replies never stop
        sides.add(side)
    pool.close()
    assert sides == {"chosen", "rejected"}
