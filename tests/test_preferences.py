"""Preference pairs: the hub formats from local files, malformed pairs skipped and counted, the offline twin."""

from __future__ import annotations

import json
import os

import pytest

from nanochat.synthetic import is_held_out
from tasks.preferences import (PERTURBATIONS, HHRLHF, PreferenceTwin, UltraFeedback, parse_transcript, preference_twin,
                               write_transcript)


def _write_jsonl(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _messages(*turns: str) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


def test_ultrafeedback_rows_from_local_files_and_malformed_ones_skipped(tmp_path):
    good = {"prompt": "Hi?", "chosen": _messages("Hi?", "Hello!"), "rejected": _messages("Hi?", "Go away.")}
    rows = [
        good,
        {"prompt": "Hi?", "chosen": _messages("Hi?", "Hello!")},  # no rejected
        {"prompt": "Hi?", "chosen": _messages("Hi?", "Hello!"), "rejected": _messages("Hi?", "  ")},  # empty reply
        {"prompt": "Hi?", "chosen": _messages("Hi?", "Same."), "rejected": _messages("Hi?", "Same.")},
        {"prompt": "Hi?", "chosen": _messages("Hi?", "A"), "rejected": _messages("Bye?", "B")},  # prompts differ
        {"prompt": "Hi?", "chosen": _messages("Hi?", "Hello", "More?", "Yes."),
         "rejected": _messages("Hi?", "Hello", "More?", "No.")},  # multi-turn: the prompt keeps the earlier turns
    ]
    task = UltraFeedback("train", data_files=_write_jsonl(tmp_path / "uf.jsonl", rows))
    assert len(task) == 2 and sum(task.skipped.values()) == 4
    assert task.skipped["chosen == rejected"] == 1 and task.skipped["empty rejected reply"] == 1
    assert "4 malformed skipped" in task.summary()
    pairs = sorted((task[i] for i in range(2)), key=lambda p: len(p["messages"]))
    assert pairs[0] == {"messages": _messages("Hi?"), "chosen": "Hello!", "rejected": "Go away."}
    assert pairs[1]["messages"] == _messages("Hi?", "Hello", "More?") and pairs[1]["rejected"] == "No."


def test_hh_rlhf_transcripts_from_local_files(tmp_path):
    rows = [
        {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.", "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5."},
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant: Bye!",
         "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant: Whatever."},
        {"chosen": "\n\nHuman: A\n\nAssistant: B", "rejected": "\n\nHuman: C\n\nAssistant: D"},  # prompts differ
        {"chosen": "\n\nHuman: A\n\nAssistant: B"},  # no rejected
        {"chosen": "no speaker at all", "rejected": "\n\nHuman: A\n\nAssistant: B"},
    ]
    task = HHRLHF("test", data_files=_write_jsonl(tmp_path / "hh.jsonl", rows))
    assert len(task) == 2 and sum(task.skipped.values()) == 3
    by_reply = {task[i]["chosen"]: task[i] for i in range(2)}
    assert by_reply["4."] == {"messages": _messages("What is 2+2?"), "chosen": "4.", "rejected": "5."}
    assert by_reply["Bye!"]["messages"] == _messages("Hi", "Hello", "Bye")
    messages = _messages("Hi", "Hello", "Bye", "Bye!")
    assert parse_transcript(write_transcript(messages)) == messages


def test_twin_is_deterministic_balanced_and_split_by_the_held_out_rule(offline):
    train, test = preference_twin("train", 200), preference_twin("test", 100)
    assert [train[i] for i in range(20)] == [preference_twin("train", 200)[i] for i in range(20)]
    assert train[3] != preference_twin("train", 200, seed=1)[3]
    assert {train[i]["kind"] for i in range(len(PERTURBATIONS))} == set(PERTURBATIONS)
    assert not any(is_held_out(row["prompt"]) for row in train)
    assert all(is_held_out(row["prompt"]) for row in test)
    assert not {row["prompt"] for row in train} & {row["prompt"] for row in test}
    # every twin row makes a well-formed pair, whichever loader reads it
    assert len(PreferenceTwin("test", size=100)) == 100 and not PreferenceTwin("test", size=100).skipped
    assert len(UltraFeedback("test")) == len(HHRLHF("test")) == 400
    assert HHRLHF("test")[7] == UltraFeedback("test")[7]
    # a kind held out of training: the twin makes only the kinds asked for
    assert {row["kind"] for row in preference_twin("train", 50, kinds=("refusal", "truncated"))} == {"refusal", "truncated"}
    with pytest.raises(ValueError, match="unknown perturbation"):
        preference_twin("train", kinds=("sarcasm",))


def test_twin_rejected_replies_are_spoiled_the_way_their_kind_says(offline):
    for row in preference_twin("train", 100):
        chosen, rejected = row["chosen"][-1]["content"], row["rejected"][-1]["content"]
        assert chosen != rejected
        if row["kind"] == "truncated":
            assert chosen.startswith(rejected) and "####" not in rejected
        elif row["kind"] == "wrong_identity":
            assert "nanochat" in chosen and "nanochat" not in rejected
        elif row["kind"] == "wrong_answer":
            # the same reply but for one short span: the answer
            prefix = len(os.path.commonprefix([chosen, rejected]))
            suffix = len(os.path.commonprefix([chosen[prefix:][::-1], rejected[prefix:][::-1]]))
            assert len(chosen) - prefix - suffix <= 15 and len(rejected) - prefix - suffix <= 15
