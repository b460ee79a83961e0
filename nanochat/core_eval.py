"""
The CORE metric of the DCLM paper (https://arxiv.org/abs/2406.11794): in-context learning
accuracy on 22 tasks, each centered on its random baseline, then averaged.

The tasks come in the DCLM eval bundle (the copy nanochat uses, EVAL_BUNDLE_URL), which
unzips to

    eval_bundle/core.yaml               icl_tasks: label, dataset_uri, num_fewshot, icl_task_type,
                                        continuation_delimiter (optional, default " ")
    eval_bundle/eval_meta_data.csv      'Eval Task' (the label) and 'Random baseline' (percent)
    eval_bundle/eval_data/<category>/<task>.jsonl

with three kinds of rows:

    multiple_choice    {"query", "choices", "gold"}           one context, one continuation per choice
    schema             {"context_options", "continuation", "gold"}   one context per option, one continuation
    language_modeling  {"context", "continuation"}            one context, one continuation

How an example is scored:

- prompt: `num_fewshot` other rows of the task, drawn with random.Random(1234 + index), each
  rendered complete (context + delimiter + its gold continuation), joined by "\\n\\n" and put
  before the example's own context + delimiter. Each option is a (context, continuation) pair.
- tokens: BOS + the tokens of context + continuation; the continuation's tokens are the tail
  of the full string's tokens (see tokenize_prompt for the boundary rules). A sequence longer
  than the model's sequence_len loses tokens from the left.
- all options of an example go through the model in one right-padded batch.
  multiple_choice and schema: the option with the lowest mean cross-entropy over its
  continuation tokens is the prediction (ties, up to float rounding, go to the earliest
  option). language_modeling: correct iff the greedy prediction is right at every
  continuation token.

centered = (accuracy - b) / (1 - b) with b the random baseline as a fraction; CORE is the
mean of the centered accuracies.

Offline (NANOCHAT_DATASET=synthetic, tests, the CPU demo) a twin bundle in the same format
is generated from nanochat.synthetic's fact tables (synthetic/core_bundle.py, written by
write_offline_bundle): six small tasks,
two of each type, so everything after loading is the same code.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import zipfile
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import requests
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from nanochat.common import NanochatError, file_lock, get_base_dir, get_dist_info, print0, stream_url_to_file
from nanochat.synthetic import core_bundle_files

EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
BUNDLE_DIR_NAME = "eval_bundle"
OFFLINE_BUNDLE_DIR_NAME = "eval_bundle_synthetic"
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
FEWSHOT_SEED = 1234  # example i draws its few-shot examples with random.Random(FEWSHOT_SEED + i)
SUBSET_SEED = 1337  # which examples max_examples keeps
EXAMPLE_SEPARATOR = "\n\n"
TIE_RTOL = 1e-6  # mean losses this close count as a tie (float rounding of equal means)


class EvalBundleError(NanochatError):
    """The eval bundle is missing, incomplete or malformed, or could not be downloaded."""


@dataclass
class TaskSpec:
    label: str
    type: str  # one of TASK_TYPES
    num_fewshot: int
    delimiter: str  # continuation_delimiter
    rows: list[dict[str, Any]]
    random_baseline: float  # a fraction in [0, 1): the CSV's percent / 100


# -----------------------------------------------------------------------------
# The bundle on disk: download, offline twin, loading


def _bundle_is_complete(bundle_dir: str) -> bool:
    return os.path.isfile(os.path.join(bundle_dir, "core.yaml"))


def _refuse_incomplete(bundle_dir: str) -> None:
    if os.path.exists(bundle_dir) and not _bundle_is_complete(bundle_dir):
        raise EvalBundleError(f"{bundle_dir} exists but has no core.yaml; delete it so it can be written again")


def _unzip_bundle(zip_path: str, tmp_dir: str) -> str:
    """Extract into tmp_dir; return the folder holding core.yaml (the zip's top-level eval_bundle/)."""
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(tmp_dir)  # zipfile drops absolute paths and '..' components
    for candidate in (os.path.join(tmp_dir, BUNDLE_DIR_NAME), tmp_dir):
        if _bundle_is_complete(candidate):
            return candidate
    raise EvalBundleError(f"the zip has no core.yaml (neither at its top level nor under {BUNDLE_DIR_NAME}/)")


def download_eval_bundle(dest_dir: str | None = None, url: str | None = None, timeout_s: float = 60.0) -> str:
    """
    Make sure the DCLM eval bundle is unzipped at dest_dir (default <base_dir>/eval_bundle) and
    return it. Downloads only when it is not there yet; many ranks may call this at once (one
    downloads under a file lock). A failure leaves nothing under dest_dir and no temp files.
    """
    dest_dir = dest_dir or os.path.join(get_base_dir(), BUNDLE_DIR_NAME)
    url = url or EVAL_BUNDLE_URL
    if _bundle_is_complete(dest_dir):
        return dest_dir
    parent = os.path.dirname(os.path.abspath(dest_dir))
    os.makedirs(parent, exist_ok=True)
    with file_lock(dest_dir + ".lock"):
        if _bundle_is_complete(dest_dir):  # another process finished while we waited
            return dest_dir
        _refuse_incomplete(dest_dir)
        tmp_zip, tmp_dir = f"{dest_dir}.{os.getpid()}.zip.tmp", f"{dest_dir}.{os.getpid()}.tmp"
        try:
            print0(f"downloading the CORE eval bundle from {url} ...")
            with open(tmp_zip, "wb") as f:
                stream_url_to_file(url, f, timeout_s)
            os.replace(_unzip_bundle(tmp_zip, tmp_dir), dest_dir)
        except (requests.RequestException, OSError, zipfile.BadZipFile, EvalBundleError) as e:
            raise EvalBundleError(
                f"could not get the CORE eval bundle from {url} ({type(e).__name__}: {' '.join(str(e).split())}); "
                f"check the network and re-run, or download and unzip it by hand into {dest_dir}, "
                f"or evaluate offline on the synthetic twin bundle with NANOCHAT_DATASET=synthetic"
            ) from e
        finally:
            with suppress(FileNotFoundError):
                os.remove(tmp_zip)
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return dest_dir


def get_eval_bundle_dir(offline: bool | None = None) -> str:
    """
    The bundle to evaluate on: the real one (downloaded on first use), or, offline
    (NANOCHAT_DATASET=synthetic unless `offline` says otherwise), the synthetic twin.
    """
    if offline is None:
        from nanochat.dataset import get_dataset_name

        offline = get_dataset_name() == "synthetic"
    if offline:
        return write_offline_bundle(os.path.join(get_base_dir(), OFFLINE_BUNDLE_DIR_NAME))
    return download_eval_bundle(os.path.join(get_base_dir(), BUNDLE_DIR_NAME))


def _read_baselines(bundle_dir: str) -> dict[str, float]:
    path = os.path.join(bundle_dir, "eval_meta_data.csv")
    if not os.path.isfile(path):
        raise EvalBundleError(f"no eval_meta_data.csv in {bundle_dir}: the bundle is incomplete; delete it and get it again")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        return {row["Eval Task"].strip(): float(row["Random baseline"]) / 100 for row in rows}
    except (KeyError, ValueError, AttributeError) as e:
        raise EvalBundleError(f"{path} needs 'Eval Task' and numeric 'Random baseline' columns ({e!r})") from e


def _read_task_list(bundle_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(bundle_dir, "core.yaml")
    if not os.path.isdir(bundle_dir):
        raise EvalBundleError(f"no eval bundle at {bundle_dir}: download it (download_eval_bundle) or use the offline twin")
    if not os.path.isfile(path):
        raise EvalBundleError(f"no core.yaml in {bundle_dir}: the bundle is incomplete; delete it and get it again")
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise EvalBundleError(f"{path} is not valid YAML ({' '.join(str(e).split())})") from e
    tasks = config.get("icl_tasks") if isinstance(config, dict) else None
    if not isinstance(tasks, list) or not tasks:
        raise EvalBundleError(f"{path} has no icl_tasks list")
    return tasks


def _check_row(row: Any, task_type: str) -> str | None:
    """What is wrong with one JSONL row, or None."""
    def is_str_list(x: Any) -> bool:
        return isinstance(x, list) and len(x) >= 2 and all(isinstance(s, str) and s for s in x)

    if not isinstance(row, dict):
        return "not a JSON object"
    if task_type == "multiple_choice":
        if not isinstance(row.get("query"), str) or not is_str_list(row.get("choices")):
            return "needs a str 'query' and a list of at least 2 non-empty str 'choices'"
        n = len(row["choices"])
    elif task_type == "schema":
        if not is_str_list(row.get("context_options")) or not isinstance(row.get("continuation"), str):
            return "needs a list of at least 2 str 'context_options' and a str 'continuation'"
        n = len(row["context_options"])
    else:
        if not isinstance(row.get("context"), str) or not isinstance(row.get("continuation"), str):
            return "needs str 'context' and 'continuation'"
        return None if row["continuation"].strip() else "has an empty continuation"
    gold = row.get("gold")
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < n:
        return f"needs an int 'gold' in [0, {n})"
    if task_type == "schema" and not row["continuation"].strip():
        return "has an empty continuation"
    return None


def _read_rows(path: str, task_type: str) -> list[dict[str, Any]]:
    if not os.path.isfile(path):
        raise EvalBundleError(f"missing task data {path}: the bundle is incomplete; delete it and get it again")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalBundleError(f"{path} line {line_no} is not JSON ({e})") from e
            problem = _check_row(row, task_type)
            if problem:
                raise EvalBundleError(f"{path} line {line_no}: a {task_type} row {problem}")
            rows.append(row)
    return rows


def _task_from_entry(entry: Any, bundle_dir: str, baselines: dict[str, float]) -> TaskSpec:
    if not isinstance(entry, dict) or not all(k in entry for k in ("label", "dataset_uri", "icl_task_type", "num_fewshot")):
        raise EvalBundleError(f"core.yaml entry {entry!r} needs label, dataset_uri, icl_task_type and num_fewshot")
    label, task_type = str(entry["label"]), entry["icl_task_type"]
    if task_type not in TASK_TYPES:
        raise EvalBundleError(f"task {label}: icl_task_type {task_type!r} is not one of {', '.join(TASK_TYPES)}")
    shots = entry["num_fewshot"]
    num_fewshot = shots[0] if isinstance(shots, list) and shots else shots
    if not isinstance(num_fewshot, int) or num_fewshot < 0:
        raise EvalBundleError(f"task {label}: num_fewshot {shots!r} is not a non-negative int (or a list of them)")
    if label not in baselines:
        raise EvalBundleError(f"task {label} has no 'Random baseline' in {bundle_dir}/eval_meta_data.csv")
    if not 0 <= baselines[label] < 1:
        raise EvalBundleError(f"task {label}: random baseline {baselines[label] * 100}% is not in [0, 100)")
    rows = _read_rows(os.path.join(bundle_dir, "eval_data", entry["dataset_uri"]), task_type)
    if len(rows) <= num_fewshot:
        raise EvalBundleError(f"task {label} has {len(rows)} rows, too few for {num_fewshot}-shot prompts")
    delimiter = entry.get("continuation_delimiter", " ")
    return TaskSpec(label, task_type, num_fewshot, " " if delimiter is None else str(delimiter), rows, baselines[label])


def load_tasks(bundle_dir: str) -> list[TaskSpec]:
    """Every task of a bundle's core.yaml with its rows and random baseline, checked."""
    entries = _read_task_list(bundle_dir)
    baselines = _read_baselines(bundle_dir)
    return [_task_from_entry(entry, bundle_dir, baselines) for entry in entries]


# -----------------------------------------------------------------------------
# Rendering prompts


def fewshot_indices(num_rows: int, index: int, num_fewshot: int) -> list[int]:
    """The rows example `index` shows as few-shot examples: never itself, the same every time."""
    if num_fewshot == 0:
        return []
    # the same draw as rng.sample([j for j in range(num_rows) if j != index], k), without building that list
    picks = random.Random(FEWSHOT_SEED + index).sample(range(num_rows - 1), num_fewshot)
    return [j + (j >= index) for j in picks]


def option_pairs(task: TaskSpec, row: dict[str, Any]) -> list[tuple[str, str]]:
    """(context + delimiter, continuation) for each option of one row, without few-shot examples."""
    d = task.delimiter
    if task.type == "multiple_choice":
        return [(row["query"] + d, choice) for choice in row["choices"]]
    if task.type == "schema":
        return [(ctx + d, row["continuation"]) for ctx in row["context_options"]]
    return [(row["context"] + d, row["continuation"])]


def gold_index(task: TaskSpec, row: dict[str, Any]) -> int:
    return 0 if task.type == "language_modeling" else row["gold"]


def render_complete(task: TaskSpec, row: dict[str, Any]) -> str:
    """A row as a solved example: its gold option's context, delimiter and continuation."""
    context, continuation = option_pairs(task, row)[gold_index(task, row)]
    return context + continuation


def render_prompts(task: TaskSpec, index: int) -> list[tuple[str, str]]:
    """The (context, continuation) strings of every option of example `index`, few-shot prefix included."""
    shots = [render_complete(task, task.rows[j]) for j in fewshot_indices(len(task.rows), index, task.num_fewshot)]
    prefix = "".join(shot + EXAMPLE_SEPARATOR for shot in shots)
    return [(prefix + context, continuation) for context, continuation in option_pairs(task, task.rows[index])]


# -----------------------------------------------------------------------------
# Tokenizing


def tokenize_prompt(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], int]:
    """
    BOS + the tokens of context + continuation, and the index of the first continuation token.

    Trailing spaces of the context (as after the default delimiter " ") move to the
    continuation first, since the tokenizer attaches a space to the word after it. Then the
    context alone and the full string are encoded; if the context's tokens are a prefix of the
    full string's, the rest are the continuation's. If the tokenizer merged across the
    boundary, context and continuation are encoded separately and concatenated instead (a
    slightly unusual tokenization of the full string, but the continuation is scored exactly).
    """
    kept = context.rstrip(" \t")
    context, continuation = kept, context[len(kept):] + continuation
    bos = tokenizer.get_bos_token_id()
    context_ids = tokenizer.encode(context, prepend=bos)
    full_ids = tokenizer.encode(context + continuation, prepend=bos)
    start = len(context_ids)
    if len(full_ids) > start and full_ids[:start] == context_ids:
        return full_ids, start
    continuation_ids = tokenizer.encode(continuation)
    if not continuation_ids:
        raise ValueError(f"empty continuation after {context[-40:]!r}")
    return context_ids + continuation_ids, start


def truncate_left(ids: list[int], start: int, max_len: int | None) -> tuple[list[int], int]:
    """Keep the last max_len tokens; the continuation start moves with them (at least 1: it needs a token before it)."""
    if max_len is None or len(ids) <= max_len:
        return ids, start
    cut = len(ids) - max_len
    return ids[cut:], max(start - cut, 1)


def build_batch(sequences: list[tuple[list[int], int]], pad_id: int, device: torch.device | str
                ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Right-pad sequences into one (B, T) tensor; spans are each continuation's [start, end) positions."""
    width = max(len(ids) for ids, _ in sequences)
    rows = [ids + [pad_id] * (width - len(ids)) for ids, _ in sequences]
    spans = [(start, len(ids)) for ids, start in sequences]
    return torch.tensor(rows, dtype=torch.long, device=device), spans


# -----------------------------------------------------------------------------
# Scoring


def continuation_losses(logits: torch.Tensor, tokens: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
    """Mean cross-entropy (nats) of each row's continuation tokens; token p is predicted at position p - 1."""
    means = [F.cross_entropy(logits[b, start - 1 : end - 1].float(), tokens[b, start:end], reduction="none").double().mean()
             for b, (start, end) in enumerate(spans)]
    return torch.stack(means)


def pick_option(losses: torch.Tensor) -> int:
    """The option with the lowest loss; a tie (equal up to TIE_RTOL) goes to the earliest option."""
    values = losses.tolist()
    best = min(values)
    return next(i for i, v in enumerate(values) if v <= best + TIE_RTOL * abs(best))


def lm_correct(logits: torch.Tensor, tokens: torch.Tensor, span: tuple[int, int]) -> bool:
    """Greedy decoding would write the continuation: argmax right at every continuation position."""
    start, end = span
    predicted = logits[0, start - 1 : end - 1].argmax(dim=-1)
    return bool(torch.equal(predicted, tokens[0, start:end]))


def _max_len(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "sequence_len", None)


def evaluate_example(model: torch.nn.Module, tokenizer: Any, task: TaskSpec, index: int,
                     device: torch.device | str) -> bool:
    """Whether the model gets example `index` right (one forward over all its options)."""
    max_len = _max_len(model)
    sequences = [truncate_left(*tokenize_prompt(tokenizer, c, k), max_len) for c, k in render_prompts(task, index)]
    tokens, spans = build_batch(sequences, tokenizer.get_bos_token_id(), device)
    logits = model(tokens)
    if task.type == "language_modeling":
        return lm_correct(logits, tokens, spans[0])
    return pick_option(continuation_losses(logits, tokens, spans)) == task.rows[index]["gold"]


def example_indices(num_rows: int, max_examples: int = -1) -> list[int]:
    """All rows, or a fixed random subset of max_examples of them (the same on every call and rank)."""
    if max_examples < 0 or max_examples >= num_rows:
        return list(range(num_rows))
    return sorted(random.Random(SUBSET_SEED).sample(range(num_rows), max_examples))


@torch.no_grad()
def evaluate_task(model: torch.nn.Module, tokenizer: Any, task: TaskSpec, device: torch.device | str,
                  max_examples: int = -1) -> float:
    """Accuracy on one task. Under torchrun each rank takes every world_size-th example; counts are summed."""
    _, rank, _, world_size = get_dist_info()
    indices = example_indices(len(task.rows), max_examples)
    if not indices:
        raise ValueError(f"task {task.label}: no examples to evaluate (max_examples={max_examples})")
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    try:
        for index in tqdm(indices[rank::world_size], desc=task.label, disable=rank != 0, leave=False):
            correct += int(evaluate_example(model, tokenizer, task, index, device))
    finally:
        model.train(was_training)
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        dist.all_reduce(correct, op=dist.ReduceOp.SUM)
    return correct.item() / len(indices)


def centered_accuracy(accuracy: float, random_baseline: float) -> float:
    """0 at chance, 1 at perfect; negative below chance."""
    return (accuracy - random_baseline) / (1.0 - random_baseline)


def evaluate_core(model: torch.nn.Module, tokenizer: Any, device: torch.device | str, bundle_dir: str | None = None,
                  max_per_task: int = -1, tasks: list[TaskSpec] | None = None) -> dict[str, Any]:
    """
    {"tasks": {label: {"accuracy", "centered"}}, "core": mean centered accuracy}. Pass `tasks`
    (from load_tasks) to skip re-reading the bundle; autocast is the caller's business.
    """
    if tasks is None:
        tasks = load_tasks(bundle_dir or get_eval_bundle_dir())
    results = {}
    for task in tasks:
        accuracy = evaluate_task(model, tokenizer, task, device, max_per_task)
        results[task.label] = {"accuracy": accuracy, "centered": centered_accuracy(accuracy, task.random_baseline)}
    core = sum(r["centered"] for r in results.values()) / len(results)
    return {"tasks": results, "core": core}


# -----------------------------------------------------------------------------
# The offline twin bundle


def _holds(bundle_dir: str, files: dict[str, str]) -> bool:
    """Whether bundle_dir holds exactly these files' texts (a bundle written by older code does not)."""
    if not _bundle_is_complete(bundle_dir):
        return False
    for rel, text in files.items():
        try:
            with open(os.path.join(bundle_dir, *rel.split("/")), encoding="utf-8", newline="") as f:
                if f.read() != text:
                    return False
        except OSError:
            return False
    return True


def write_offline_bundle(dest_dir: str | None = None) -> str:
    """
    Write the synthetic twin bundle (same layout as the real one) to dest_dir, default
    <base_dir>/eval_bundle_synthetic, unless it is already there as this code writes it
    (a twin left by an older version is written again); byte-identical every time.
    """
    dest_dir = dest_dir or os.path.join(get_base_dir(), OFFLINE_BUNDLE_DIR_NAME)
    files = core_bundle_files()
    if _holds(dest_dir, files):
        return dest_dir
    os.makedirs(os.path.dirname(os.path.abspath(dest_dir)), exist_ok=True)
    with file_lock(dest_dir + ".lock"):
        if _holds(dest_dir, files):
            return dest_dir
        shutil.rmtree(dest_dir, ignore_errors=True)  # a half-made or older twin is derived data: just redo it
        tmp_dir = f"{dest_dir}.{os.getpid()}.tmp"
        try:
            for rel, text in files.items():
                path = os.path.join(tmp_dir, *rel.split("/"))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="utf-8", newline="") as f:
                    f.write(text)
            os.replace(tmp_dir, dest_dir)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return dest_dir

