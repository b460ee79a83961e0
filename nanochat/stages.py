"""
The pipeline's stages, in pipeline order: the one table that checkpoint loading, the scripts'
`-i/--source` choices, the report and the exported model card read. A new stage is one line
in STAGES (and its training script).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from nanochat.common import get_base_dir


@dataclass(frozen=True)
class Stage:
    name: str  # what `-i/--source` and load_model(source) call it
    folder: str  # its checkpoints live in $NANOCHAT_BASE_DIR/<folder>/<model_tag>/
    starts_from: str | None  # the stage whose model it trains by default (None: random init)
    script: str  # the module that trains it
    section: str  # the report section its training script logs
    learns: str  # one line for the model card
    evaluations: tuple[str, ...] = ()  # report sections, besides chat_eval's, that measure its model

    @property
    def eval_section(self) -> str:
        """The report section `chat_eval -i <name>` logs."""
        return f"Chat evaluation {self.name}"

    @property
    def sections(self) -> tuple[str, ...]:
        """Every report section about this stage, in the order the pipeline logs them."""
        return (self.section, *self.evaluations, self.eval_section)

    def checkpoints_dir(self) -> str:
        """The folder of this stage's model tags under the base dir."""
        return os.path.join(get_base_dir(), self.folder)


STAGES: dict[str, Stage] = {stage.name: stage for stage in [
    Stage("base", "base_checkpoints", None, "scripts.base_train", "Base model training",
          "next-token pretraining on web text (FineWeb-Edu)", ("Base model loss", "Base model evaluation")),
    Stage("mid", "mid_checkpoints", "base", "scripts.mid_train", "Midtraining",
          "chat format, tool use and multiple choice (SmolTalk, MMLU auxiliary-train, GSM8K, identity, spelling)"),
    Stage("sft", "chatsft_checkpoints", "mid", "scripts.chat_sft", "Chat SFT",
          "supervised fine-tuning, one conversation at a time, loss on assistant tokens (ARC, GSM8K, SmolTalk, identity, spelling)"),
    Stage("dpo", "chatdpo_checkpoints", "sft", "scripts.chat_dpo", "Chat DPO",
          "direct preference optimization: preferred over rejected replies against the frozen SFT model"),
    Stage("rl", "chatrl_checkpoints", "sft", "scripts.chat_rl", "Chat RL",
          "reinforcement learning on verifiable tasks (GSM8K by default; --tasks for a mixture): sampled answers, "
          "rewarded by correctness, group-relative policy gradient"),
]}


def get_stage(name: str) -> Stage:
    """The stage called name; a ValueError listing the stages otherwise."""
    if name not in STAGES:
        raise ValueError(f"source must be one of {sorted(STAGES)}, not {name!r}")
    return STAGES[name]


def lineage(name: str) -> list[str]:
    """The stages a model of stage `name` went through, first to last (rl: base, mid, sft, rl)."""
    names = [name]
    while (parent := get_stage(names[0]).starts_from) is not None:
        names.insert(0, parent)
    return names


def starting_points() -> list[str]:
    """The stages another stage starts from: where an imported model can be trained further."""
    parents = {stage.starts_from for stage in STAGES.values()}
    return [name for name in STAGES if name in parents]
