"""Scripted stand-ins for a trained model: they make chosen tokens likely, so tests know the right output."""

from __future__ import annotations

import torch

from nanochat.gpt import GPT, GPTConfig


class ScriptedModel(GPT):
    """
    Proposes the next token of a script and advances only when its proposal was fed back,
    so tokens the engine forces in between (tool output) do not move it along.
    """

    def __init__(self, vocab: int, script: list[int]) -> None:
        super().__init__(GPTConfig(sequence_len=512, vocab_size=vocab, n_layer=1, n_head=1, n_kv_head=1, n_embd=8))
        self.init_weights()
        self.script = script
        self.pointers: list[int] = []
        self.proposals: list[int] = []

    def start(self, prompt: list[int]) -> None:
        """Called at prefill; subclasses pick the script for this prompt."""

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
        B, T = idx.shape
        if kv_cache is not None and kv_cache.get_pos() == 0:  # prefill (batch 1); every decoded row gets its proposal
            self.start(idx[0].tolist())
            self.pointers, self.proposals = [0] * 64, [self.script[0]] * 64
        else:
            for b in range(B):
                if T == 1 and idx[b, 0].item() == self.proposals[b]:
                    self.pointers[b] += 1
        logits = torch.full((B, T, self.config.vocab_size), -10.0)
        for b in range(B):
            token = self.script[min(self.pointers[b], len(self.script) - 1)]
            self.proposals[b] = token
            logits[b, -1, token] = 10.0
        if kv_cache is not None:
            kv_cache.pos += T  # keep the engine's view of positions honest
        return logits


class OracleModel(ScriptedModel):
    """Answers every conversation of a task with its gold assistant message."""

    def __init__(self, tokenizer, conversations: list[dict]) -> None:
        super().__init__(tokenizer.get_vocab_size(), [0])
        self.answers: dict[tuple[int, ...], list[int]] = {}
        for conversation in conversations:
            prompt = tokenizer.render_for_completion(conversation)
            ids, _ = tokenizer.render_conversation(conversation, max_tokens=1 << 30)
            assert ids[: len(prompt)] == prompt
            self.answers[tuple(prompt)] = ids[len(prompt):]
        self.assistant_start = tokenizer.encode_special("<|assistant_start|>")

    def start(self, prompt: list[int]) -> None:
        self.script = self.answers[tuple(prompt)]

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
        if kv_cache is not None:
            return super().forward(idx, targets, kv_cache, loss_reduction)
        # a batch of (right-padded) prompts: favour the gold first token wherever a known prompt ends
        logits = torch.zeros(*idx.shape, self.config.vocab_size)
        for b in range(idx.size(0)):
            row = idx[b].tolist()
            for t, token in enumerate(row):
                answer = self.answers.get(tuple(row[: t + 1])) if token == self.assistant_start else None
                if answer:
                    logits[b, t, answer[0]] = 10.0
        return logits
