"""The stage registry: what each stage starts from, and what checkpoint loading and the report read from it."""

from __future__ import annotations

import pytest

from nanochat import report
from nanochat.stages import STAGES, get_stage, lineage, starting_points


def test_each_stage_starts_from_the_one_before():
    assert list(STAGES) == ["base", "mid", "sft", "dpo", "rl"]
    assert lineage("rl") == ["base", "mid", "sft", "rl"] and lineage("base") == ["base"]
    assert lineage("dpo") == ["base", "mid", "sft", "dpo"]
    assert starting_points() == ["base", "mid", "sft"]  # import_hf's --to: the stages something trains from
    with pytest.raises(ValueError, match="base.*mid.*rl.*sft"):
        get_stage("chat")


def test_the_report_orders_and_groups_sections_by_stage():
    assert report.SECTION_ORDER == [
        "header", "tokenizer-training", "tokenizer-evaluation",
        "base-model-training", "base-model-loss", "base-model-evaluation", "chat-evaluation-base",
        "midtraining", "chat-evaluation-mid", "chat-sft", "chat-evaluation-sft",
        "preference-data", "reward-model",  # what DPO reads, made after SFT
        "chat-dpo", "chat-evaluation-dpo", "chat-rl", "chat-evaluation-rl",
    ]
    assert report.TRAINING_SECTIONS == {"tokenizer-training", "base-model-training", "midtraining", "chat-sft",
                                       "preference-data", "reward-model", "chat-dpo", "chat-rl"}
    assert report.STAGE_SECTIONS["sft"] == ["chat-sft", "chat-evaluation-sft"]
