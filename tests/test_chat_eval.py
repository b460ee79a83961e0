"""chat_eval and the task evaluation loops on the offline twins."""

from __future__ import annotations

import json

import pytest

from nanochat.common import autodetect_device_type
from nanochat.gpt import GPT
from nanochat.task_eval import centered_accuracy, evaluate_task
from scripted import OracleModel
from scripts import chat_eval
from tasks import build_eval_task
from tiny import save_stage_checkpoint, tiny_gpt


@pytest.fixture
def offline(base_dir, monkeypatch):
    monkeypatch.setenv("NANOCHAT_DATASET", "synthetic")
    return base_dir


def tiny_random_model(vocab: int) -> GPT:
    return tiny_gpt(vocab, sequence_len=128, jitter=0.02).eval()


@pytest.mark.parametrize("name", ["ARC-Easy", "MMLU", "GSM8K", "SpellingBee"])
def test_oracle_scores_one(offline, tiny_tokenizer, name):
    task = build_eval_task(name)
    n = 24
    oracle = OracleModel(tiny_tokenizer, [task[i] for i in range(n)])
    accuracy = evaluate_task(task, oracle, tiny_tokenizer, batch_size=5, max_problems=n, max_new_tokens=400,
                             progress=False)
    assert accuracy == 1.0
    assert centered_accuracy(accuracy, task.eval_type) == 1.0


def test_random_model_is_near_chance(offline, tiny_tokenizer):
    model = tiny_random_model(tiny_tokenizer.get_vocab_size())
    arc = evaluate_task(build_eval_task("ARC-Easy"), model, tiny_tokenizer, batch_size=16, max_problems=200, progress=False)
    assert 0.12 < arc < 0.40  # chance is 0.25
    gsm = evaluate_task(build_eval_task("GSM8K"), model, tiny_tokenizer, max_problems=10, max_new_tokens=16, progress=False)
    assert gsm == 0.0


def test_generative_problems_decoded_together_answer_as_each_alone(offline, tiny_tokenizer, monkeypatch):
    """Greedy answers do not depend on how many problems share a decode batch (nor on the seed)."""
    model = tiny_gpt(tiny_tokenizer.get_vocab_size(), sequence_len=128, jitter=0.3).eval()  # answers that follow the prompt
    task = build_eval_task("GSM8K")
    answers = []
    monkeypatch.setattr(type(task), "evaluate", lambda self, conversation, answer: answers.append(answer) or True)
    for batch_size in (1, 4, 7):
        assert evaluate_task(task, model, tiny_tokenizer, batch_size=batch_size, max_problems=9, max_new_tokens=12,
                             progress=False, seed=batch_size) == 1.0
    alone, by_four, by_seven = answers[:9], answers[9:18], answers[18:]
    assert len(alone) == 9 and alone == by_four == by_seven
    assert len(set(alone)) > 1 and all(alone)  # answers to different problems, each some text


def test_categorical_prediction_is_restricted_to_the_letters(offline, tiny_tokenizer):
    """A model that loves a non-letter token still answers with one of the letters."""
    task = build_eval_task("ARC-Easy")
    oracle = OracleModel(tiny_tokenizer, [task[i] for i in range(8)])
    real_forward = oracle.forward

    def forward(idx, *args, **kwargs):
        logits = real_forward(idx, *args, **kwargs)
        logits[..., tiny_tokenizer.encode("the")[0]] = 100.0
        return logits

    oracle.forward = forward
    assert evaluate_task(task, oracle, tiny_tokenizer, batch_size=3, max_problems=8, progress=False) == 1.0


def test_chat_eval_end_to_end(offline, tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(chat_eval, "EVAL_TASK_NAMES", ["ARC-Easy", "GSM8K"])  # ChatCORE over two tasks, to be quick
    save_stage_checkpoint(tiny_random_model(tiny_tokenizer.get_vocab_size()), "sft", 5, tokenizer=tiny_tokenizer)
    result = chat_eval.main(["-i", "sft", "-a", "ARC-Easy|GSM8K", "--max_problems=16", "--max_new_tokens=8",
                             "--device_type=cpu"])
    assert set(result["accuracy"]) == {"ARC-Easy", "GSM8K"}
    expected = (result["centered"]["ARC-Easy"] + result["centered"]["GSM8K"]) / 2
    assert result["ChatCORE"] == pytest.approx(expected)
    assert result["centered"]["GSM8K"] == result["accuracy"]["GSM8K"]
    assert result["centered"]["ARC-Easy"] == pytest.approx((result["accuracy"]["ARC-Easy"] - 0.25) / 0.75)
    report = (offline / "report" / "chat-evaluation-sft.md").read_text()
    assert "ChatCORE" in report

    # a model that always answers right gets ChatCORE 1.0 through the same script
    tasks = {name: build_eval_task(name) for name in ("ARC-Easy", "GSM8K")}
    oracle = OracleModel(tiny_tokenizer, [t[i] for t in tasks.values() for i in range(16)])
    monkeypatch.setattr(chat_eval, "load_model", lambda *a, **k: (oracle, tiny_tokenizer, {"step": 5}))
    perfect = chat_eval.main(["-i", "sft", "-a", "ARC-Easy|GSM8K", "--max_problems=16", "--max_new_tokens=400",
                              "--device_type=cpu"])
    assert perfect["ChatCORE"] == 1.0


def test_chatcore_needs_every_task(offline, tiny_tokenizer):
    # `-a GSM8K` once logged ChatCORE = GSM8K's accuracy, and the report's summary showed it
    save_stage_checkpoint(tiny_random_model(tiny_tokenizer.get_vocab_size()), "rl", 5, tokenizer=tiny_tokenizer)
    result = chat_eval.main(["-i", "rl", "-a", "GSM8K", "--max_problems=4", "--max_new_tokens=4"])
    assert set(result["accuracy"]) == {"GSM8K"} and result["ChatCORE"] is None
    record = json.loads((offline / "report" / "chat-evaluation-rl.json").read_text())
    assert "ChatCORE" not in record["data"] and "GSM8K" in record["data"]
    assert record["data"]["device_type"] == autodetect_device_type()  # what was used, not the empty flag


def test_chat_eval_rejects_unknown_tasks(offline):
    with pytest.raises(SystemExit):
        chat_eval.main(["-i", "sft", "-a", "ARC-Easy|Nope"])


@pytest.mark.slow
def test_chat_eval_under_torchrun_matches_one_process(offline, tiny_tokenizer):
    import os
    import subprocess
    import sys

    save_stage_checkpoint(tiny_random_model(tiny_tokenizer.get_vocab_size()), "sft", 5, tokenizer=tiny_tokenizer)
    args = ["-i", "sft", "-a", "ARC-Easy|SpellingBee", "--max_problems=12", "--max_new_tokens=8", "--device_type=cpu"]
    single = chat_eval.main(args)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "scripts.chat_eval", "--", *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for name, accuracy in single["accuracy"].items():
        assert f"{name}: accuracy {100 * accuracy:.2f}%" in proc.stdout
