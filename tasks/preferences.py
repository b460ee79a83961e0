"""
Preference pairs: a conversation prompt (ending with a user message) and two assistant
replies to it, the `chosen` one a person (or a verifier) preferred over the `rejected` one.
What the reward model (scripts/chat_rm.py) and DPO (scripts/chat_dpo.py) learn from.

An example is {"messages": [...prompt, ending with user...], "chosen": str, "rejected": str}.

Hub formats, each also from local files with the hub's columns (data_files=):
- Anthropic/hh-rlhf, splits train and test: `chosen` and `rejected` are whole transcripts
  ("\\n\\nHuman: ...\\n\\nAssistant: ..."), the same up to the final assistant reply;
- HuggingFaceH4/ultrafeedback_binarized, splits train_prefs and test_prefs: `prompt` (str),
  `chosen` and `rejected` (message lists ending with the assistant's reply).

Offline twin (UltraFeedback's columns, plus `kind`): pairs built from the synthetic tasks,
the chosen reply right and the rejected one spoiled in one of PERTURBATIONS' ways. Row i of
a split comes from its own RNG seeded by (split, seed, i); train prompts come from the
training side of the held-out rule and test prompts from the held-out side, so no test
prompt is ever trained on. HHRLHF offline reads the same pairs written as transcripts.

Malformed pairs (a missing field, an empty reply, chosen == rejected, transcripts that do
not share their prompt) are skipped when the task loads and counted in `skipped`, by reason.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from nanochat.synthetic import ALL_KINDS, GeneratedRows, draw, make_arithmetic_problem, make_question
from tasks.common import Task, load_rows, validate_messages
from tasks.customjson import make_identity_conversation

PERTURBATIONS = ("wrong_answer", "truncated", "other_question", "wrong_identity", "refusal")
TWIN_SIZES = {"train": 4000, "test": 400}
UF_SPLITS = {"train": "train_prefs", "test": "test_prefs"}  # also accepted under the hub's own names


def validate_pair(example: Any) -> None:
    """Raise ValueError, saying what is wrong, unless example is a well-formed preference pair."""
    if not isinstance(example, dict):
        raise ValueError(f"a pair must be an object, not {type(example).__name__}")
    for key in ("messages", "chosen", "rejected"):
        if key not in example or example[key] is None:
            raise ValueError(f"missing field {key!r}")
    validate_messages(example["messages"], last="user")
    for key in ("chosen", "rejected"):
        if not isinstance(example[key], str) or not example[key].strip():
            raise ValueError(f"empty {key} reply")
    if example["chosen"].strip() == example["rejected"].strip():
        raise ValueError("chosen == rejected")


def skip_reason(error: ValueError) -> str:
    """The counter's key for a skipped pair: its error message without the details after a colon."""
    return str(error).split(":")[0]


class PreferencePairs(Task):
    """
    Preference pairs made from rows by `to_pair` (a hub format's parser); rows that do not
    make a well-formed pair are skipped and counted in `skipped` ({reason: count}).
    """

    def __init__(self, name: str, rows: Sequence[dict], to_pair: Callable[[dict], dict], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.pairs: list[dict] = []
        self.skipped: Counter[str] = Counter()
        for row in rows:
            try:
                pair = to_pair(row)
                validate_pair(pair)
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                # one bad row of 160k must not end a run: count it, say so once loaded
                self.skipped[skip_reason(e) if isinstance(e, ValueError) else f"malformed row ({type(e).__name__})"] += 1
                continue
            self.pairs.append(pair)

    def num_examples(self) -> int:
        return len(self.pairs)

    def get_example(self, index: int) -> dict:
        return self.pairs[index]

    def summary(self) -> str:
        """'N pairs (M skipped: reason k, ...)' for the run's plan."""
        skipped = sum(self.skipped.values())
        if not skipped:
            return f"{self.name}: {len(self.pairs):,} pairs"
        reasons = ", ".join(f"{reason} {count}" for reason, count in self.skipped.most_common())
        return f"{self.name}: {len(self.pairs):,} pairs ({skipped:,} malformed skipped: {reasons})"


# -----------------------------------------------------------------------------
# UltraFeedback (binarized): prompt plus two message lists


# columns a pair keeps from its row when present: the twin's perturbation `kind` (held-out accuracy
# is also reported per kind) and `calculator_notation` (chat_pref_data's replies write the
# calculator's calls as GSM8K does, <<expr=result>>; they are rendered back into tool calls)
PAIR_EXTRAS = ("kind", "calculator_notation")


def with_extras(pair: dict, row: dict) -> dict:
    """The pair, with the PAIR_EXTRAS its row has."""
    return {**pair, **{key: row[key] for key in PAIR_EXTRAS if row.get(key)}}


def ultrafeedback_pair(row: dict) -> dict:
    """A pair from an UltraFeedback row: the prompt is the chosen list up to its final reply."""
    for key in ("chosen", "rejected"):
        if not row.get(key):
            raise ValueError(f"missing field {key!r}")
    chosen, rejected = row["chosen"], row["rejected"]
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise ValueError("a reply list does not end with an assistant message")
    if [dict(m) for m in chosen[:-1]] != [dict(m) for m in rejected[:-1]]:
        raise ValueError("chosen and rejected have different prompts")
    messages = [{"role": m["role"], "content": m["content"]} for m in chosen[:-1]]
    return with_extras({"messages": messages, "chosen": chosen[-1]["content"], "rejected": rejected[-1]["content"]}, row)


class UltraFeedback(PreferencePairs):
    def __init__(self, split: str = "train", data_files: Any = None, offline: bool | None = None, **kwargs: Any) -> None:
        hub_split = UF_SPLITS.get(split, split)
        if hub_split not in UF_SPLITS.values():
            raise ValueError(f"UltraFeedback split must be one of {sorted(UF_SPLITS)} (or {sorted(UF_SPLITS.values())}), "
                             f"not {split!r}")
        twin_split = "train" if hub_split == "train_prefs" else "test"
        rows = load_rows("HuggingFaceH4/ultrafeedback_binarized", None, hub_split, data_files, offline,
                         lambda: preference_twin(twin_split))
        super().__init__(f"UltraFeedback {hub_split}", rows, ultrafeedback_pair, **kwargs)


# -----------------------------------------------------------------------------
# Anthropic HH-RLHF: two whole transcripts


_TURN = re.compile(r"\n\n(Human|Assistant): ")


def parse_transcript(text: str) -> list[dict]:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' as messages [user hi, assistant hello]."""
    if not isinstance(text, str):
        raise ValueError(f"a transcript must be a string, not {type(text).__name__}")
    parts = _TURN.split(text)
    if parts[0].strip():
        raise ValueError("a transcript must start with '\\n\\nHuman: '")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[who], "content": said.strip()} for who, said in zip(parts[1::2], parts[2::2])]


def write_transcript(messages: list[dict]) -> str:
    """The inverse of parse_transcript, for the twin: messages as an HH-RLHF transcript."""
    names = {"user": "Human", "assistant": "Assistant"}
    return "".join(f"\n\n{names[m['role']]}: {m['content']}" for m in messages)


def hh_pair(row: dict) -> dict:
    """A pair from an HH-RLHF row: the transcripts' shared turns are the prompt, their last turns the replies."""
    for key in ("chosen", "rejected"):
        if not row.get(key):
            raise ValueError(f"missing field {key!r}")
    chosen, rejected = parse_transcript(row["chosen"]), parse_transcript(row["rejected"])
    if not chosen or not rejected or chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise ValueError("a transcript does not end with an assistant reply")
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("chosen and rejected have different prompts")
    return with_extras({"messages": chosen[:-1], "chosen": chosen[-1]["content"], "rejected": rejected[-1]["content"]}, row)


class HHRLHF(PreferencePairs):
    def __init__(self, split: str = "train", data_files: Any = None, offline: bool | None = None, **kwargs: Any) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"HH-RLHF split must be 'train' or 'test', not {split!r}")
        rows = load_rows("Anthropic/hh-rlhf", None, split, data_files, offline, lambda: [
            {"chosen": write_transcript(r["chosen"]), "rejected": write_transcript(r["rejected"]), "kind": r["kind"]}
            for r in preference_twin(split)])
        super().__init__(f"HH-RLHF {split}", rows, hh_pair, **kwargs)


# -----------------------------------------------------------------------------
# The offline twin


_REFUSALS = ["I'm sorry, but I can't help with that.", "I would rather not answer that question.",
             "Sorry, I cannot assist with this request.", "That is not something I can help with."]
_OTHER_NAMES = ["ChatGPT, made by OpenAI", "Siri", "a human named Alex", "Claude", "Alexa"]


def _fact(rng: random.Random, held_out: bool) -> tuple[str, str, str]:
    """(question, right reply, the same reply with a wrong answer): a fact-table question."""
    q = make_question(rng, ALL_KINDS, held_out)
    at = q.statement.lower().rfind(q.answer.lower())  # the answer's last occurrence: the one that answers
    wrongs = [w for w in q.pool if w != q.answer and w not in q.text]
    if at < 0 or not wrongs:  # a statement that words its answer otherwise: ask an arithmetic problem instead
        return _arithmetic(rng, held_out)
    wrong = rng.choice(wrongs)
    if at == 0:
        wrong = wrong[0].upper() + wrong[1:]
    return q.text, q.statement, f"{q.statement[:at]}{wrong}{q.statement[at + len(q.answer):]}"


def _arithmetic(rng: random.Random, held_out: bool) -> tuple[str, str, str]:
    """(problem, worked answer, the same answer with a wrong final number): a GSM8K-twin problem."""
    row = make_arithmetic_problem(rng, held_out)
    answer = re.sub(r"<<[^>]*>>", "", row["answer"])  # plain text: no calculator annotations in a preference reply
    lines, final = answer.rsplit("\n", 1)
    value = int(final.removeprefix("#### "))
    wrong = value + rng.choice([-1, 1]) * rng.randint(1, 9)
    return row["question"], answer, f"{lines}\n#### {wrong}"


def _identity(rng: random.Random, held_out: bool) -> tuple[str, str, str]:
    """(who-are-you question, nanochat's answer, the same answer claiming another identity)."""
    def make(r: random.Random) -> tuple[str, str]:
        messages = make_identity_conversation(r)
        pairs = [(u["content"], a["content"]) for u, a in zip(messages[::2], messages[1::2]) if "nanochat" in a["content"]]
        return r.choice(pairs) if pairs else ("Who are you?", "I'm nanochat, a small language model.")
    question, reply = draw(rng, make, held_out, lambda pair: pair[0])
    return question, reply, reply.replace("nanochat", rng.choice(_OTHER_NAMES))


def _twin_row(rng: random.Random, kind: str, held_out: bool) -> dict:
    """One pair of the given perturbation kind, its prompt from the held-out or the training side."""
    source = rng.choice([_fact, _arithmetic])
    if kind == "wrong_identity":
        question, chosen, rejected = _identity(rng, held_out)
    elif kind == "wrong_answer":
        question, chosen, rejected = source(rng, held_out)
    elif kind == "truncated":
        question, chosen, _ = _arithmetic(rng, held_out)  # several lines: a cut-off reply is visibly unfinished
        words = chosen.split(" ")
        rejected = " ".join(words[: max(1, len(words) * rng.randint(3, 6) // 10)])
    elif kind == "other_question":
        question, chosen, _ = source(rng, held_out)
        rejected = chosen
        while rejected == chosen:  # the right answer to a different question of the same source
            _, rejected, _ = source(rng, held_out)
    elif kind == "refusal":
        question, chosen, _ = source(rng, held_out)
        rejected = rng.choice(_REFUSALS)
    else:
        raise ValueError(f"unknown perturbation {kind!r}: expected one of {PERTURBATIONS}")
    user = {"role": "user", "content": question}
    return {"prompt": question, "chosen": [user, {"role": "assistant", "content": chosen}],
            "rejected": [user, {"role": "assistant", "content": rejected}], "kind": kind}


def preference_twin(split: str, size: int | None = None, kinds: Sequence[str] = PERTURBATIONS,
                    seed: int = 0) -> GeneratedRows:
    """
    `size` pairs (default TWIN_SIZES[split]) in UltraFeedback's columns plus `kind`, the kinds
    in turn (row i is of kinds[i % len(kinds)]), each row from its own seeded RNG. Pass fewer
    kinds to hold one out: a reward model trained without it can be tested on it.
    """
    if split not in TWIN_SIZES:
        raise ValueError(f"the preference twin's split must be one of {sorted(TWIN_SIZES)}, not {split!r}")
    for kind in kinds:
        if kind not in PERTURBATIONS:
            raise ValueError(f"unknown perturbation {kind!r}: expected one of {PERTURBATIONS}")
    kinds = tuple(kinds)
    held_out = split == "test"
    return GeneratedRows(f"preference-twin-{split}-{seed}-{','.join(kinds)}", size or TWIN_SIZES[split],
                         lambda rng, i: _twin_row(rng, kinds[i % len(kinds)], held_out))


class PreferenceTwin(PreferencePairs):
    """The offline twin's pairs directly, with a choice of perturbation kinds (UltraFeedback offline gives all)."""

    def __init__(self, split: str = "train", size: int | None = None, kinds: Sequence[str] = PERTURBATIONS,
                 seed: int = 0, **kwargs: Any) -> None:
        super().__init__(f"preference twin {split}", preference_twin(split, size, kinds, seed), ultrafeedback_pair, **kwargs)


PREFERENCE_DATASETS = {"ultrafeedback": UltraFeedback, "hh-rlhf": HHRLHF}


def preference_datasets(dataset: str, data_files: Any = None, val_data_files: Any = None, max_pairs: int = 0,
                        eval_pairs: int | None = None, twin_kinds: Sequence[str] | None = None
                        ) -> tuple[PreferencePairs, PreferencePairs]:
    """
    The train pairs (the first max_pairs; 0: all) and eval_pairs held-out ones of a hub format,
    or of local files; with twin_kinds, the offline twin's, training only on those kinds while
    the held-out pairs keep every kind (does what it learned carry over to a kind it never saw?).
    """
    if twin_kinds:
        if data_files or val_data_files:
            raise ValueError("twin_kinds picks pairs of the offline twin; it cannot apply to --data_files")
        return PreferenceTwin("train", kinds=twin_kinds, stop=max_pairs or None), PreferenceTwin("test", stop=eval_pairs)
    task = PREFERENCE_DATASETS[dataset]
    return task("train", data_files=data_files, stop=max_pairs or None), task("test", data_files=val_data_files, stop=eval_pairs)
