"""Tasks: data, metrics and rewards for the chat stages. `build_eval_task` names the evaluation sets."""

from __future__ import annotations

from tasks.common import Task

EVAL_TASK_NAMES = ["ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee"]


def build_eval_task(name: str) -> Task:
    """The held-out split that chat_eval reports for a task name."""
    if name in ("ARC-Easy", "ARC-Challenge"):
        from tasks.arc import ARC

        return ARC(subset=name, split="test")
    if name == "MMLU":
        from tasks.mmlu import MMLU

        return MMLU(subset="all", split="test")
    if name == "GSM8K":
        from tasks.gsm8k import GSM8K

        return GSM8K(subset="main", split="test")
    if name == "HumanEval":
        from tasks.humaneval import HumanEval

        return HumanEval()
    if name == "SpellingBee":
        from tasks.spellingbee import SpellingBee

        return SpellingBee(size=256, split="test")
    raise ValueError(f"unknown task {name!r}; choose from {', '.join(EVAL_TASK_NAMES)}")
