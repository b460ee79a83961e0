"""CORE evaluation: the offline bundle, prompt rendering, tokenization, scoring, the script, the download."""

from __future__ import annotations

import http.server
import io
import json
import math
import os
import random
import socket
import threading
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nanochat import core_eval
from nanochat.core_eval import (
    EvalBundleError,
    TaskSpec,
    build_batch,
    centered_accuracy,
    continuation_losses,
    evaluate_core,
    evaluate_task,
    fewshot_indices,
    lm_correct,
    load_tasks,
    pick_option,
    render_prompts,
    tokenize_prompt,
    truncate_left,
    write_offline_bundle,
)
from scripts import base_eval
from tiny import save_stage_checkpoint, tiny_gpt


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny ops on a shared CPU: a second intra-op thread only adds contention (tens of times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def offline_dir(tmp_path_factory) -> str:
    return write_offline_bundle(str(tmp_path_factory.mktemp("bundle") / "eval_bundle_synthetic"))


@pytest.fixture(scope="module")
def offline_tasks(offline_dir) -> list[TaskSpec]:
    return load_tasks(offline_dir)


def _all_files(root) -> dict[str, bytes]:
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -----------------------------------------------------------------------------
# The offline bundle


def test_offline_bundle_is_byte_identical_and_loads(tmp_path, offline_dir, offline_tasks):
    again = write_offline_bundle(str(tmp_path / "again"))
    assert _all_files(again) == _all_files(offline_dir)
    assert set(_all_files(again)) >= {"core.yaml", "eval_meta_data.csv"}
    assert write_offline_bundle(again) == again  # already there: left alone
    (Path(again) / "core.yaml").write_text("icl_tasks: []\n")  # as an older version of the twin might have left it
    assert write_offline_bundle(again) == again and _all_files(again) == _all_files(offline_dir)  # written again

    by_type = {}
    for task in offline_tasks:
        by_type.setdefault(task.type, []).append(task)
        assert 50 <= len(task.rows) <= 100
        expected_b = {"multiple_choice": 0.25, "schema": 0.5, "language_modeling": 0.0}[task.type]
        assert task.random_baseline == expected_b
        if task.type == "multiple_choice":
            assert all(len(r["choices"]) == 4 for r in task.rows)
        if task.type == "schema":
            assert all(len(r["context_options"]) == 2 for r in task.rows)
    assert {k: len(v) for k, v in by_type.items()} == {"multiple_choice": 2, "schema": 2, "language_modeling": 2}
    assert {t.num_fewshot for t in offline_tasks} == {0, 3, 5, 10}
    assert {t.delimiter for t in offline_tasks} == {" ", "\nAnswer: "}


def test_offline_bundle_is_the_default_in_synthetic_mode(base_dir, monkeypatch):
    monkeypatch.setenv("NANOCHAT_DATASET", "synthetic")
    bundle = core_eval.get_eval_bundle_dir()
    assert bundle == str(base_dir / "eval_bundle_synthetic")
    assert len(load_tasks(bundle)) == 6


def test_broken_bundles_are_explained(tmp_path, offline_dir):
    with pytest.raises(EvalBundleError, match="no eval bundle"):
        load_tasks(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalBundleError, match="no core.yaml"):
        load_tasks(str(tmp_path / "empty"))

    def broken(name: str, edit) -> str:
        d = tmp_path / name
        for rel, data in _all_files(offline_dir).items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(data)
        edit(d)
        return str(d)

    bad_yaml = broken("yaml", lambda d: (d / "core.yaml").write_text("icl_tasks: [unclosed\n"))
    with pytest.raises(EvalBundleError, match="not valid YAML"):
        load_tasks(bad_yaml)
    gold_path = "eval_data/world_knowledge/synthetic_capitals.jsonl"
    bad_gold = broken("gold", lambda d: (d / gold_path).write_text(json.dumps({"query": "q", "choices": ["a", "b"], "gold": 2}) + "\n"))
    with pytest.raises(EvalBundleError, match=r"synthetic_capitals.jsonl line 1: .*gold"):
        load_tasks(bad_gold)
    not_json = broken("json", lambda d: (d / gold_path).write_text("{oops\n"))
    with pytest.raises(EvalBundleError, match="line 1 is not JSON"):
        load_tasks(not_json)
    no_data = broken("nodata", lambda d: (d / gold_path).unlink())
    with pytest.raises(EvalBundleError, match="missing task data"):
        load_tasks(no_data)

    def drop_baseline(d):
        lines = (d / "eval_meta_data.csv").read_text().splitlines()
        (d / "eval_meta_data.csv").write_text("\n".join(l for l in lines if not l.startswith("synthetic_pronouns")) + "\n")

    with pytest.raises(EvalBundleError, match="synthetic_pronouns has no 'Random baseline'"):
        load_tasks(broken("baseline", drop_baseline))


# -----------------------------------------------------------------------------
# Rendering


MC_ROWS = [
    {"query": "Q0?", "choices": ["a0", "b0"], "gold": 1},
    {"query": "Q1?", "choices": ["a1", "b1"], "gold": 0},
    {"query": "Q2?", "choices": ["a2", "b2"], "gold": 1},
]


def test_fewshot_prompts_are_exact_strings():
    task = TaskSpec("mc", "multiple_choice", 2, "\nA: ", MC_ROWS, 0.5)
    complete = {0: "Q0?\nA: b0", 1: "Q1?\nA: a1", 2: "Q2?\nA: b2"}
    for i in range(3):
        shots = fewshot_indices(3, i, 2)
        assert sorted(shots) == sorted({0, 1, 2} - {i})  # all the others, never itself
        assert shots == random.Random(1234 + i).sample([j for j in range(3) if j != i], 2)  # the documented seed rule
        prefix = f"{complete[shots[0]]}\n\n{complete[shots[1]]}\n\n"
        q = MC_ROWS[i]["query"]
        assert render_prompts(task, i) == [(prefix + f"{q}\nA: ", f"a{i}"), (prefix + f"{q}\nA: ", f"b{i}")]
        assert render_prompts(task, i) == render_prompts(task, i)

    zero = TaskSpec("mc0", "multiple_choice", 0, " ", MC_ROWS, 0.5)
    assert render_prompts(zero, 1) == [("Q1? ", "a1"), ("Q1? ", "b1")]

    schema = TaskSpec("s", "schema", 1, " ", [
        {"context_options": ["Ann has", "Bob has"], "continuation": "her hat.", "gold": 0},
        {"context_options": ["Cy has", "Di has"], "continuation": "her cat.", "gold": 1},
    ], 0.5)
    assert render_prompts(schema, 0) == [("Di has her cat.\n\nAnn has ", "her hat."), ("Di has her cat.\n\nBob has ", "her hat.")]

    lm = TaskSpec("lm", "language_modeling", 1, " ", [
        {"context": "The opposite of hot is", "continuation": "cold"},
        {"context": "The opposite of up is", "continuation": "down"},
    ], 0.0)
    assert render_prompts(lm, 1) == [("The opposite of hot is cold\n\nThe opposite of up is ", "down")]


def test_fewshot_draws_differ_between_examples_but_not_between_calls():
    draws = [tuple(fewshot_indices(100, i, 5)) for i in range(100)]
    assert draws == [tuple(fewshot_indices(100, i, 5)) for i in range(100)]
    assert len(set(draws)) > 90
    assert all(i not in d for i, d in enumerate(draws))


# -----------------------------------------------------------------------------
# Tokenizing


@pytest.mark.parametrize("context, continuation", [
    ("The capital of France is ", "Paris"),
    ("Question: What does a cow say?\nAnswer: ", "moo"),
    ("far away over the hill\n\nthe cat sat on the ", "mat ran far."),
    ("seven\n", "twelve"),
])
def test_continuation_span_decodes_to_the_continuation(tiny_tokenizer, context, continuation):
    ids, start = tokenize_prompt(tiny_tokenizer, context, continuation)
    bos = tiny_tokenizer.get_bos_token_id()
    assert ids[0] == bos and bos not in ids[1:]
    assert tiny_tokenizer.decode(ids[1:]) == context + continuation
    moved = context[len(context.rstrip(" ")):]  # a trailing space belongs to the next word's token
    assert tiny_tokenizer.decode(ids[start:]) == moved + continuation
    assert tiny_tokenizer.decode(ids[1:start]) == context.rstrip(" ")
    assert ids == tiny_tokenizer.encode(context + continuation, prepend=bos)  # the natural tokenization


def test_merge_across_the_boundary_falls_back_to_separate_encoding(tiny_tokenizer):
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ba", "de", "fi", "gu"]
    merged = [(a, b) for a in syllables for b in syllables
              if tiny_tokenizer.encode(a + b)[: len(tiny_tokenizer.encode(a))] != tiny_tokenizer.encode(a)]
    assert merged, "the tiny tokenizer should merge some syllable pair across the boundary"
    context, continuation = merged[0]
    ids, start = tokenize_prompt(tiny_tokenizer, context, continuation)
    bos = tiny_tokenizer.get_bos_token_id()
    assert ids == [bos] + tiny_tokenizer.encode(context) + tiny_tokenizer.encode(continuation)
    assert tiny_tokenizer.decode(ids[start:]) == continuation


def test_truncation_and_padding():
    assert truncate_left(list(range(10)), 7, None) == (list(range(10)), 7)
    assert truncate_left(list(range(10)), 7, 5) == ([5, 6, 7, 8, 9], 2)
    assert truncate_left(list(range(10)), 3, 4) == ([6, 7, 8, 9], 1)  # continuation longer than the window
    tokens, spans = build_batch([([1, 2, 3], 2), ([1, 2, 3, 4, 5], 3)], pad_id=0, device="cpu")
    assert tokens.tolist() == [[1, 2, 3, 0, 0], [1, 2, 3, 4, 5]]
    assert spans == [(2, 3), (3, 5)]


# -----------------------------------------------------------------------------
# Scoring pieces


def test_continuation_losses_match_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g)
    tokens = torch.randint(0, 11, (2, 6), generator=g)
    spans = [(2, 4), (3, 6)]
    got = continuation_losses(logits, tokens, spans)
    for b, (s, e) in enumerate(spans):
        nll = [-F.log_softmax(logits[b, p - 1], dim=-1)[tokens[b, p]].item() for p in range(s, e)]
        assert got[b].item() == pytest.approx(sum(nll) / len(nll), rel=1e-6)


def test_lowest_loss_wins_and_ties_go_to_the_first_option():
    assert pick_option(torch.tensor([2.0, 1.0, 3.0])) == 1
    assert pick_option(torch.tensor([1.5, 1.5, 2.0])) == 0
    assert pick_option(torch.tensor([2.0, 1.0, 1.0 + 1e-9])) == 1  # float rounding of equal means is a tie
    assert pick_option(torch.tensor([2.0, 1.0 + 1e-9, 1.0], dtype=torch.float64)) == 1
    assert pick_option(torch.tensor([2.0, 1.01, 1.0])) == 2


def test_lm_correct_needs_every_token():
    tokens = torch.tensor([[5, 1, 2, 3]])
    logits = torch.zeros(1, 4, 6)
    logits[0, 1, 2] = logits[0, 2, 3] = 1.0
    assert lm_correct(logits, tokens, (2, 4))
    assert not lm_correct(logits, tokens, (1, 4))  # position 0 predicts token 0, not 1


def test_centered_accuracy():
    assert centered_accuracy(0.25, 0.25) == 0
    assert centered_accuracy(1.0, 0.5) == 1
    assert centered_accuracy(0.0, 0.25) == pytest.approx(-1 / 3)
    assert centered_accuracy(0.4, 0.0) == 0.4


# -----------------------------------------------------------------------------
# Whole tasks against references computed another way


def _reference_gold_sequences(tasks: list[TaskSpec], tokenizer) -> list[list[int]]:
    """BOS + tokens of each example's full gold prompt, rendered here from the rows and the documented rules."""
    def complete(task, row):
        d = task.delimiter
        if task.type == "multiple_choice":
            return row["query"] + d + row["choices"][row["gold"]]
        if task.type == "schema":
            return row["context_options"][row["gold"]] + d + row["continuation"]
        return row["context"] + d + row["continuation"]

    sequences = []
    for task in tasks:
        for i, row in enumerate(task.rows):
            others = [j for j in range(len(task.rows)) if j != i]
            shots = random.Random(1234 + i).sample(others, task.num_fewshot) if task.num_fewshot else []
            text = "".join(complete(task, task.rows[j]) + "\n\n" for j in shots) + complete(task, row)
            sequences.append(tokenizer.encode(text, prepend=tokenizer.get_bos_token_id()))
    return sequences


class ScriptedModel(torch.nn.Module):
    """Puts `boost` on the token that follows the input prefix in one of the given gold sequences."""

    def __init__(self, gold_sequences: list[list[int]], vocab_size: int, boost: float) -> None:
        super().__init__()
        self.vocab_size, self.boost = vocab_size, boost
        self.next_token: dict[int, int] = {}
        for seq in gold_sequences:
            h = 0
            for t in range(len(seq) - 1):
                h = hash((h, seq[t]))
                self.next_token[h] = seq[t + 1]

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
        B, T = idx.shape
        logits = torch.zeros(B, T, self.vocab_size)
        for b in range(B):
            h = 0
            for t, tok in enumerate(idx[b].tolist()):
                h = hash((h, tok))
                nxt = self.next_token.get(h)
                if nxt is None:
                    break  # off every gold path: uniform from here on
                logits[b, t, nxt] = self.boost
        return logits


def test_scripted_model_scores_perfectly(offline_tasks, tiny_tokenizer):
    model = ScriptedModel(_reference_gold_sequences(offline_tasks, tiny_tokenizer), tiny_tokenizer.get_vocab_size(), 20.0)
    result = evaluate_core(model, tiny_tokenizer, "cpu", tasks=offline_tasks)
    assert {label: r["accuracy"] for label, r in result["tasks"].items()} == {t.label: 1.0 for t in offline_tasks}
    assert all(r["centered"] == 1.0 for r in result["tasks"].values())
    assert result["core"] == 1.0


def test_anti_scripted_model_scores_zero(offline_tasks, tiny_tokenizer):
    model = ScriptedModel(_reference_gold_sequences(offline_tasks, tiny_tokenizer), tiny_tokenizer.get_vocab_size(), -20.0)
    result = evaluate_core(model, tiny_tokenizer, "cpu", tasks=offline_tasks)
    for task in offline_tasks:
        r = result["tasks"][task.label]
        assert r["accuracy"] == 0.0, task.label
        b = task.random_baseline
        assert r["centered"] == pytest.approx(-b / (1 - b)), task.label
    assert result["core"] == pytest.approx(sum(-t.random_baseline / (1 - t.random_baseline) for t in offline_tasks) / 6)


def test_uniform_model_ties_to_the_first_option(offline_dir, offline_tasks, tiny_tokenizer):
    class Uniform(torch.nn.Module):
        def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
            return torch.zeros(*idx.shape, tiny_tokenizer.get_vocab_size())

    for task in offline_tasks:
        accuracy = evaluate_task(Uniform(), tiny_tokenizer, task, "cpu")
        if task.type == "language_modeling":
            assert accuracy == 0.0
            continue
        # the fraction of golds at index 0, read straight from the JSONL files
        uri = {"synthetic_capitals": "world_knowledge", "synthetic_animal_sounds": "world_knowledge",
               "synthetic_animal_legs": "commonsense_reasoning", "synthetic_pronouns": "language_understanding"}
        lines = Path(offline_dir, "eval_data", uri[task.label], f"{task.label}.jsonl").read_text().splitlines()
        golds = [json.loads(line)["gold"] for line in lines]
        assert 0 < accuracy < 1
        assert accuracy == sum(g == 0 for g in golds) / len(golds), task.label


def test_ranks_split_the_examples(offline_tasks, tiny_tokenizer, monkeypatch):
    task = offline_tasks[0]
    model = ScriptedModel(_reference_gold_sequences([task], tiny_tokenizer), tiny_tokenizer.get_vocab_size(), 20.0)
    partial_accuracies = []
    for rank in range(3):  # no process group: each "rank" reports only its own share of the correct answers
        monkeypatch.setattr(core_eval, "get_dist_info", lambda rank=rank: (True, rank, rank, 3))
        partial_accuracies.append(evaluate_task(model, tiny_tokenizer, task, "cpu", max_examples=40))
    assert sum(partial_accuracies) == pytest.approx(1.0)
    assert all(0.3 <= a <= 0.35 for a in partial_accuracies)


def test_random_gpt_is_near_chance(offline_tasks, tiny_tokenizer):
    model = tiny_gpt(tiny_tokenizer.get_vocab_size(), n_head=2, n_kv_head=2)  # sequence_len 64: the long few-shot prompts get truncated
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.train()
    result = evaluate_core(model, tiny_tokenizer, "cpu", tasks=offline_tasks)
    assert model.training  # the caller's mode comes back
    assert set(result) == {"tasks", "core"}
    assert set(result["tasks"]) == {t.label for t in offline_tasks}
    for task in offline_tasks:
        r = result["tasks"][task.label]
        assert set(r) == {"accuracy", "centered"}
        # seeds 0-7 all land well inside these (chance: 0.25, 0.5, 0)
        lo, hi = {"multiple_choice": (0.05, 0.55), "schema": (0.2, 0.8), "language_modeling": (0.0, 0.05)}[task.type]
        assert lo <= r["accuracy"] <= hi, (task.label, r)
        assert r["centered"] == pytest.approx(centered_accuracy(r["accuracy"], task.random_baseline))
    assert math.isfinite(result["core"]) and -0.3 < result["core"] < 0.3


# -----------------------------------------------------------------------------
# scripts.base_eval


def _save_tiny_base_model(tokenizer, tag: str = "d1") -> None:
    save_stage_checkpoint(tiny_gpt(tokenizer.get_vocab_size(), n_head=2, n_kv_head=2), "base", 0, tag, tokenizer)


def test_base_eval_end_to_end(base_dir, monkeypatch, tiny_tokenizer, capsys):
    monkeypatch.setenv("NANOCHAT_DATASET", "synthetic")
    _save_tiny_base_model(tiny_tokenizer)
    results = base_eval.main(["--device_type=cpu", "--max_per_task=6"])
    assert len(results["tasks"]) == 6
    out = capsys.readouterr().out
    assert "synthetic_capitals" in out and "CORE" in out
    lines = (base_dir / "base_eval" / "d1_000000.csv").read_text().splitlines()
    assert lines[0] == "Task,Accuracy,Centered" and len(lines) == 8
    assert lines[-1] == f"CORE,,{results['core']:.6f}"
    report = (base_dir / "report" / "base-model-evaluation.md").read_text()
    assert "## Base model evaluation" in report and "CORE metric" in report and "synthetic_pronouns" in report


def _error_lines(stderr: str) -> list[str]:
    # (the nanochat logger's handler may point at an earlier test's closed capture and print noise)
    return [line for line in stderr.splitlines() if "error" in line and "base_eval" in line]


def test_base_eval_without_a_checkpoint_exits_with_one_line(base_dir, monkeypatch, capsys):
    monkeypatch.setenv("NANOCHAT_DATASET", "synthetic")
    with pytest.raises(SystemExit) as exc:
        base_eval.main(["--device_type=cpu"])
    assert exc.value.code == 1
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "base_train" in errors[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_base_eval_without_the_bundle_offline_exits_with_one_line(base_dir, tiny_tokenizer, monkeypatch, capsys):
    _save_tiny_base_model(tiny_tokenizer)
    url = f"http://127.0.0.1:{_free_port()}/eval_bundle.zip"  # nothing listens there
    monkeypatch.setattr(core_eval, "EVAL_BUNDLE_URL", url)
    with pytest.raises(SystemExit) as exc:
        base_eval.main(["--device_type=cpu"])
    assert exc.value.code == 1
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and url in errors[0] and "NANOCHAT_DATASET=synthetic" in errors[0]


# -----------------------------------------------------------------------------
# Downloading


@pytest.fixture
def server(offline_dir):
    """A local HTTP server: /eval_bundle.zip is the offline bundle zipped like the real one; /garbage.zip is not a zip."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for rel, data in _all_files(offline_dir).items():
            zf.writestr(f"eval_bundle/{rel}", data)
    payloads = {"/eval_bundle.zip": buf.getvalue(), "/garbage.zip": b"not a zip at all" * 100}
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = payloads.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()
    httpd.server_close()


def _leftovers(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if not n.endswith(".lock"))


def test_download_unzips_once(base_dir, server, offline_dir, monkeypatch):
    url, hits = server
    monkeypatch.setattr(core_eval, "EVAL_BUNDLE_URL", f"{url}/eval_bundle.zip")
    bundle = core_eval.get_eval_bundle_dir()  # NANOCHAT_DATASET unset: the real bundle
    assert bundle == str(base_dir / "eval_bundle")
    assert _all_files(bundle) == _all_files(offline_dir)
    assert len(load_tasks(bundle)) == 6
    assert hits == ["/eval_bundle.zip"]
    assert core_eval.download_eval_bundle(bundle) == bundle
    assert hits == ["/eval_bundle.zip"]  # no second download
    assert _leftovers(base_dir) == ["eval_bundle"]


@pytest.mark.parametrize("path", ["/missing.zip", "/garbage.zip"])
def test_failed_download_is_explained_and_leaves_nothing(base_dir, server, path):
    url, _ = server
    with pytest.raises(EvalBundleError) as exc:
        core_eval.download_eval_bundle(str(base_dir / "eval_bundle"), url=url + path)
    message = str(exc.value)
    assert url + path in message and "NANOCHAT_DATASET=synthetic" in message
    assert _leftovers(base_dir) == []
