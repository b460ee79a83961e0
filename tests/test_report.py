"""The run report: header, sections in pipeline order, the summary table, wall time, plots, copies."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanochat import report as report_mod
from nanochat.report import Report, get_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[1]


def parse_table(markdown: str) -> dict[str, dict[str, str]]:
    """The summary table as {metric: {column: cell}}."""
    summary = markdown.split("## Summary", 1)[1]
    rows = [line for line in summary.splitlines() if line.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    table = {}
    for line in rows[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        table[cells[0]] = dict(zip(header[1:], cells[1:]))
    return table


SFT_ACC = {"ARC-Easy": 0.41234, "ARC-Challenge": 0.30001, "MMLU": 0.27777, "GSM8K": 0.05, "HumanEval": 0.0625,
           "SpellingBee": 0.9, "ChatCORE": 0.123456}
RL_ACC = {"GSM8K": 0.0875}


def log_pipeline(report: Report) -> None:
    """Sections in a scrambled order, as concurrent or re-run stages could leave them."""
    # a ChatCORE over GSM8K alone, as chat_eval -a GSM8K once logged: the summary must not show it
    report.log("Chat evaluation rl", [{"source": "rl", "max_problems": 8}, {**RL_ACC, "ChatCORE": 0.2}])
    report.log("Chat RL", [{"num_iterations": 3}, {"pass@1": 0.1}],
               curves={"train_loss": [[0, 0.5], [1, 0.4], [2, 0.3]], "reward": [[0, 0.1], [1, 0.2], [2, 0.25]],
                       "pass@1": [[0, 0.05], [3, 0.1]], "pass@2": [[0, 0.08], [3, 0.15]]})
    report.log("Chat evaluation sft", [{"source": "sft"}, dict(SFT_ACC)])
    report.log("Base model evaluation", [{"model_tag": "d2", "CORE metric": 0.21875}, "```\ntable\n```"])
    report.log("Tokenizer training", [{"vocab_size": 512}])
    report.log("Base model training", [{"depth": 2}, {"final_val_bpb": 1.5}, "Samples:\n\n- 'x'"],
               curves={"val_bpb": [[0, 3.0], [5, 2.0], [10, 1.5]], "train_loss": [[i, 5 - 0.1 * i] for i in range(10)]})
    report.log("Chat SFT", [{"num_iterations": 4}], curves={"val_loss": [[0, 2.0], [4, 1.5]], "MMLU_acc": [[4, 0.25]]})
    report.log("My extra stage", ["a note"])


def test_header_has_versions_git_and_dataset(base_dir):
    report = Report(str(base_dir / "report"))
    (base_dir / "report").mkdir()  # a folder an earlier run left
    (base_dir / "report" / "stale.md").write_text("## Stale\n")
    (base_dir / "report" / "stale.png").write_bytes(b"x")
    shard_dir = base_dir / "base_data"
    shard_dir.mkdir()
    for i in range(3):
        (shard_dir / f"shard_{i:05d}.parquet").write_bytes(b"0" * 1000)
    report.reset()
    names = sorted(os.listdir(base_dir / "report"))
    assert names == ["header.json", "header.md"]
    text = (base_dir / "report" / "header.md").read_text()
    assert f"torch: {torch.__version__}" in text
    expected = report_mod.git_info()["commit"]
    assert expected == "unknown" or re.fullmatch(r"[0-9a-f]{4,40}", expected)
    assert f"Git commit: {expected}" in text
    assert "fineweb: 3 shard(s), 2.9 KiB" in text
    assert "GPUs: " in text and "CPU: " in text
    header = json.loads((base_dir / "report" / "header.json").read_text())
    assert header["start_time"] > 0 and header["dataset"]["num_shards"] == 3


def test_header_describes_the_data_the_stages_found(base_dir, tmp_path, monkeypatch):
    # reset runs before any data exists; the header said "0 shard(s) ... (folder absent)" for good
    report = Report(str(base_dir / "report"))
    report.reset()
    assert "(folder absent)" in (base_dir / "report" / "header.md").read_text()
    monkeypatch.setenv("NANOCHAT_DATASET", "synthetic")
    shard_dir = base_dir / "base_data_synthetic"
    shard_dir.mkdir()
    for i in range(2):
        (shard_dir / f"shard_{i:05d}.parquet").write_bytes(b"0" * 1024)
    report.log("Base model training", [{"depth": 1}])
    monkeypatch.delenv("NANOCHAT_DATASET")  # generated later from a shell without the variable
    text = Path(report.generate(copy_to=str(tmp_path))).read_text()
    assert "- Dataset: synthetic: 2 shard(s), 2.0 KiB in $NANOCHAT_BASE_DIR/base_data_synthetic\n" in text


def test_git_info_outside_a_checkout_is_unknown(tmp_path):
    assert report_mod.git_info(str(tmp_path)) == {"commit": "unknown", "dirty": None}


def test_generate_orders_sections_fills_table_and_draws_plots(base_dir, tmp_path):
    report = Report(str(base_dir / "report"))
    report.reset()
    log_pipeline(report)
    out_dir = tmp_path / "cwd"
    out_dir.mkdir()
    path = report.generate(copy_to=str(out_dir))
    assert path == str(base_dir / "report" / "report.md")
    text = Path(path).read_text()

    titles = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    assert titles == ["Environment", "Tokenizer training", "Base model training", "Base model evaluation",
                      "Chat SFT", "Chat evaluation sft", "Chat RL", "Chat evaluation rl", "My extra stage", "Summary"]

    table = parse_table(text)
    assert list(table) == ["CORE", "ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee", "ChatCORE"]
    # MID and DPO never ran, but a later stage did: their columns are there, all "-"
    assert all(list(row) == ["Chance", "BASE", "MID", "SFT", "DPO", "RL"] for row in table.values())
    assert table["CORE"] == {"Chance": "0.0000", "BASE": "0.2188", "MID": "-", "SFT": "-", "DPO": "-", "RL": "-"}
    # chance beside every task: a quarter for four-way multiple choice, nothing for generated answers
    assert {m: row["Chance"] for m, row in table.items()} == {
        "CORE": "0.0000", "ARC-Easy": "0.2500", "ARC-Challenge": "0.2500", "MMLU": "0.2500", "GSM8K": "0.0000",
        "HumanEval": "0.0000", "SpellingBee": "0.0000", "ChatCORE": "0.0000"}
    for metric, value in SFT_ACC.items():
        assert table[metric]["SFT"] == f"{value:.4f}"
        assert table[metric]["BASE"] == table[metric]["MID"] == table[metric]["DPO"] == "-"
        assert table[metric]["RL"] == (f"{RL_ACC[metric]:.4f}" if metric in RL_ACC else "-")

    assert re.search(r"Total wall time: \d\d:\d\d:\d\d", text)
    if torch.cuda.is_available():
        assert "Estimated cost: $" in text and "assumption" in text
    else:
        assert "Estimated cost: n/a (no GPU)" in text

    for slug in ("base-model-training", "chat-sft", "chat-rl"):
        png = base_dir / "report" / f"{slug}.png"
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        assert f"]({slug}.png)" in text
    assert not (base_dir / "report" / "chat-evaluation-sft.png").exists()
    # the plot sits at the end of its own section
    assert text.index("](base-model-training.png)") < text.index("## Base model evaluation")

    copy = (out_dir / "report.md").read_text()
    assert parse_table(copy) == table
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", copy)
    assert len(links) == 3 and all((out_dir / link).resolve().read_bytes()[:8] == PNG_SIGNATURE for link in links)


def test_log_keeps_structured_data_and_stays_compatible(base_dir):
    report = Report(str(base_dir / "report"))
    path = report.log("Chat SFT", [{"a": 1}, "note one", {"b": 2.5, "a": 3}, None, ""])  # no curves: the old call
    assert path.endswith("chat-sft.md") and "- b: 2.5" in Path(path).read_text()
    record = json.loads((base_dir / "report" / "chat-sft.json").read_text())
    assert record["data"] == {"a": 3, "b": 2.5} and record["notes"] == ["note one"] and record["curves"] == {}


def test_table_drops_stages_after_the_last_one_that_ran(base_dir, tmp_path):
    report = Report(str(base_dir / "report"))
    report.log("Base model evaluation", [{"CORE metric": 0.5}])
    text = Path(report.generate(copy_to=str(tmp_path))).read_text()
    table = parse_table(text)
    assert table["CORE"] == {"Chance": "0.0000", "BASE": "0.5000"} and table["ChatCORE"] == {"Chance": "0.0000", "BASE": "-"}
    assert "Total wall time: 00:" in text and "1 logged stage(s)" in text  # never reset: the stage's own time counts


def stage_lines(markdown: str) -> dict[str, str]:
    """The summary's line per stage, as {stage: text}."""
    summary = markdown.split("## Summary", 1)[1]
    return dict(re.findall(r"^- (BASE|MID|SFT|DPO|RL): (.*)$", summary, flags=re.MULTILINE))


def test_a_line_per_stage_says_what_it_changed(base_dir, tmp_path):
    from scripts.base_eval import format_table

    core = {"tasks": {"synthetic_capitals": {"accuracy": 0.98, "centered": 0.9733},
                      "synthetic_pronouns": {"accuracy": 0.38, "centered": -0.24},
                      "synthetic_relations": {"accuracy": 0.36, "centered": 0.36}}, "core": 0.3644}
    report = Report(str(base_dir / "report"))
    report.log("Base model evaluation", [{"CORE metric": 0.3644}, "```\n" + format_table(core) + "\n```"])
    mid = {"ARC-Easy": 0.60, "ARC-Challenge": 0.30, "MMLU": 0.50, "GSM8K": 0.30, "SpellingBee": 0.31, "HumanEval": 0.05,
           "ChatCORE": 0.2}  # every ChatCORE task: the summary shows a ChatCORE only over all of them
    sft = {**mid, "GSM8K": 0.40, "SpellingBee": 0.76, "MMLU": 0.51, "ChatCORE": 0.31}
    report.log("Chat evaluation mid", [{"source": "mid"}, mid])
    report.log("Chat evaluation sft", [{"source": "sft"}, sft])
    report.log("Chat evaluation rl", [{"source": "rl"}, {"GSM8K": 0.52, "ChatCORE": 0.52}])
    lines = stage_lines(Path(report.generate(copy_to=str(tmp_path))).read_text())
    assert list(lines) == ["BASE", "MID", "SFT", "DPO", "RL"] and lines["DPO"] == "not evaluated."
    assert lines["BASE"] == ("pretraining gives CORE 0.3644 (0 is chance); 2 of 3 CORE tasks above chance "
                             "(synthetic_capitals 0.98, synthetic_relations 0.36).")
    assert lines["MID"].startswith("the first chat model scores ARC-Easy 0.60 (chance 0.25), ARC-Challenge 0.30 "
                                   "(chance 0.25), MMLU 0.50 (chance 0.25)")
    # the largest changes first; a change under 0.02 (MMLU) is not one; ChatCORE compares like with like
    assert lines["SFT"] == ("against MID, SpellingBee +0.45 (0.31 → 0.76), GSM8K +0.10 (0.30 → 0.40), "
                            "ChatCORE 0.20 → 0.31.")
    assert lines["RL"] == "against SFT, GSM8K +0.12 (0.40 → 0.52)."  # RL's ChatCORE is over GSM8K alone
    # with DPO evaluated between them, RL (trained from SFT, as its section says) is still told against SFT
    report.log("Chat DPO", [{"source": "sft"}, {"steps": 3}])
    report.log("Chat evaluation dpo", [{"source": "dpo"}, {**sft, "GSM8K": 0.20}])
    report.log("Chat RL", [{"source": "sft"}, {"steps": 3}])
    lines = stage_lines(Path(report.generate(copy_to=str(tmp_path))).read_text())
    assert lines["DPO"].startswith("against SFT, GSM8K -0.20 (0.40 → 0.20)")
    assert lines["RL"] == "against SFT, GSM8K +0.12 (0.40 → 0.52)."


def test_estimated_cost_on_gpus(base_dir, tmp_path, monkeypatch):
    report = Report(str(base_dir / "report"))
    report.reset()
    header_path = base_dir / "report" / "header.json"
    header = json.loads(header_path.read_text())
    header["hardware"]["gpu_count"] = 8
    header["start_time"] -= 5 * 3600  # reset five hours ago, three of them idle
    header_path.write_text(json.dumps(header))
    report.log("Chat RL", [{"steps": 1}])
    record_path = base_dir / "report" / "chat-rl.json"
    record = json.loads(record_path.read_text())
    record["started"] = record["time"] - 2 * 3600  # the stage itself ran for two hours
    record_path.write_text(json.dumps(record))
    monkeypatch.setenv("NANOCHAT_GPU_HOUR_USD", "2.5")
    text = Path(report.generate(copy_to=str(tmp_path))).read_text()
    assert re.search(r"Total wall time: 02:00:0\d", text)
    assert "Estimated cost: $40.0" in text and "$2.50 per GPU-hour" in text and "assumption" in text


def test_get_report_on_other_ranks_writes_nothing(base_dir, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = get_report()
    r.reset()
    r.log("Chat SFT", [{"a": 1}], curves={"val_loss": [[0, 1.0]]})
    r.generate(copy_to=str(base_dir))
    assert not (base_dir / "report").exists() and not (base_dir / "report.md").exists()


def test_cli_reset_and_generate(base_dir, tmp_path):
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base_dir),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for command in ("reset", "generate"):
        if command == "generate":
            log_pipeline(Report(str(base_dir / "report")))
        result = subprocess.run([sys.executable, "-m", "nanochat.report", command], cwd=cwd, env=env,
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
    assert "plots" in result.stdout
    text = (cwd / "report.md").read_text()
    assert "## Environment" in text and "## Summary" in text
    assert parse_table(text)["GSM8K"]["RL"] == "0.0875" and parse_table(text)["ChatCORE"]["RL"] == "-"
    assert (base_dir / "report" / "chat-rl.png").read_bytes()[:8] == PNG_SIGNATURE


def test_steplog_tracks_the_smoothed_loss_curve():
    from nanochat.training import StepLog

    log = StepLog(tokens_per_step=10)
    for step, loss in enumerate([4.0, 3.0, 2.0]):
        log.step(step, 3, loss, dt=0.1, lrm=1.0)
    curve = log.history("train_loss")
    assert [s for s, _ in curve] == [0, 1, 2] and curve[0][1] == pytest.approx(4.0)
    assert curve[-1][1] == pytest.approx(log.smooth_loss)


# ---- twins labelled, chance lines, RL's loss explained, runs outside the pipeline, stage time ----


def test_numbers_from_the_offline_twins_are_labelled_as_twins(base_dir, tmp_path, monkeypatch):
    report = Report(str(base_dir / "report"))
    report.log("Base model evaluation", [{"bundle": str(base_dir / "eval_bundle"), "CORE metric": 0.21}])  # real
    monkeypatch.setenv("NANOCHAT_DATASET", "synthetic")
    report.log("Chat evaluation sft", [{"source": "sft"}, dict(SFT_ACC)])
    text = Path(report.generate(copy_to=str(tmp_path))).read_text()
    table = parse_table(text)
    assert "CORE" in table  # measured on the real bundle: no label
    assert table["GSM8K (offline twin)"]["SFT"] == "0.0500" and table["ChatCORE (offline twins)"]["SFT"] == "0.1235"
    assert "not comparable with the real benchmarks' published scores" in text
    assert stage_lines(text)["SFT"].startswith("the first chat model scores on the offline twins ARC-Easy 0.41")
    # CORE from the twin bundle, even with the real dataset set, is labelled too
    monkeypatch.delenv("NANOCHAT_DATASET")
    report = Report(str(base_dir / "another-run"))
    report.log("Base model evaluation", [{"bundle": str(base_dir / "eval_bundle_synthetic"), "CORE metric": 0.35}])
    text = Path(report.generate(copy_to=str(tmp_path))).read_text()
    assert parse_table(text)["CORE (offline twin bundle)"]["BASE"] == "0.3500"
    assert stage_lines(text)["BASE"] == "pretraining gives CORE 0.3500 on the offline twin bundle (0 is chance)."


def test_a_mixed_row_marks_its_twin_cells(base_dir, tmp_path, monkeypatch):
    report = Report(str(base_dir / "report"))
    report.log("Chat evaluation mid", [{"source": "mid"}, {"GSM8K": 0.1, "ChatCORE": 0.1}])  # real rows
    monkeypatch.setenv("NANOCHAT_DATASET", "synthetic")
    report.log("Chat evaluation sft", [{"source": "sft"}, {"GSM8K": 0.3, "ChatCORE": 0.3}])
    text = Path(report.generate(copy_to=str(tmp_path))).read_text()
    assert parse_table(text)["GSM8K (offline twin)"] == {"Chance": "0.0000", "BASE": "-", "MID": "0.1000", "SFT": "0.3000†"}
    assert "† marks the twin cells" in text


def horizontal_lines(fig) -> dict[str, set[float]]:
    """{panel's y label: y of every horizontal line drawn on it}."""
    out = {}
    for ax in fig.axes:
        ys = {line.get_ydata()[0] for line in ax.get_lines() if len(set(line.get_ydata())) == 1
              and list(line.get_xdata()) == [0, 1]}  # axhline spans the axes: x from 0 to 1
        out[ax.get_ylabel()] = ys
    return out


def test_accuracy_plots_carry_a_chance_line():
    fig = report_mod.curves_figure("Chat SFT", {"val_loss": [[0, 2.0], [4, 1.5]], "MMLU_acc": [[0, 0.3], [4, 0.4]],
                                                "ARC-Easy_acc": [[0, 0.3], [4, 0.5]]})
    assert horizontal_lines(fig) == {"val_loss": set(), "accuracy": {0.25}}  # one line: both tasks are four-way
    fig = report_mod.curves_figure("Chat RL", {"pass@1": [[0, 0.1], [3, 0.2]], "pass@8": [[0, 0.3], [3, 0.4]]})
    assert horizontal_lines(fig) == {"pass@k": {0.0}}
    fig = report_mod.curves_figure("Base", {"val_bpb": [[0, 3.0], [5, 2.0]], "core_metric": [[5, 0.1]]})
    assert horizontal_lines(fig) == {"val_bpb": set(), "core_metric": {0.0}}


def test_a_negative_rl_loss_is_explained_in_the_report(base_dir, tmp_path):
    report = Report(str(base_dir / "report"))
    report.log("Chat RL", [{"steps": 3}], curves={"train_loss": [[0, 0.02], [1, -0.01], [2, -0.03]]})
    report.log("Chat evaluation rl", [{"source": "rl"}, dict(RL_ACC)])
    text = Path(report.generate(copy_to=str(tmp_path))).read_text()
    rl_section = text.split("## Chat RL", 1)[1].split("## Chat evaluation rl", 1)[0]
    assert report_mod.RL_LOSS_NOTE in rl_section
    report.log("Chat RL", [{"steps": 3}], curves={"train_loss": [[0, 0.5], [1, 0.4]]})  # never negative: no note
    assert report_mod.RL_LOSS_NOTE not in Path(report.generate(copy_to=str(tmp_path))).read_text()


def test_an_ad_hoc_evaluation_gets_its_own_section_and_leaves_the_summary_alone(base_dir, tmp_path):
    report = Report(str(base_dir / "report"))
    report.reset()
    log_pipeline(report)
    before = Path(report.generate(copy_to=str(tmp_path))).read_text()
    pipeline_section = (base_dir / "report" / "chat-evaluation-sft.md").read_text()
    # later, by hand: chat_eval -i sft -a ARC-Easy --max_problems=20
    path = report.log("Chat evaluation sft", [{"source": "sft", "max_problems": 20}, {"ARC-Easy": 0.9, "ChatCORE": 0.87}])
    assert path.endswith("chat-evaluation-sft-again-1.md")
    assert (base_dir / "report" / "chat-evaluation-sft.md").read_text() == pipeline_section
    text = Path(report.generate(copy_to=str(tmp_path))).read_text()
    assert parse_table(text) == parse_table(before)  # the SFT column and its ChatCORE are the pipeline's
    titles = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    i = titles.index("Chat evaluation sft")
    assert titles[i + 1].startswith("Chat evaluation sft (again, ")  # right after the section it repeats
    assert "a section of its own, and the summary keeps the section \"Chat evaluation sft\"" in text
    assert "Runs outside the pipeline, in sections of their own and not in the table: Chat evaluation sft (again" in text
    assert report.log("Chat evaluation sft", [{"ARC-Easy": 0.8}]).endswith("chat-evaluation-sft-again-2.md")


def test_a_training_stage_run_again_replaces_its_section_and_says_so(base_dir, tmp_path):
    report = Report(str(base_dir / "report"))
    report.log("Chat SFT", [{"num_iterations": 4}])
    path = report.log("Chat SFT", [{"num_iterations": 8}])
    assert path.endswith("chat-sft.md") and sorted(os.listdir(base_dir / "report")) == ["chat-sft.json", "chat-sft.md"]
    text = Path(path).read_text()
    assert "**This section replaces the one logged at " in text and "num_iterations: 8" in text


def test_wall_time_counts_the_stages_not_the_idle_time_between(base_dir, tmp_path):
    report = Report(str(base_dir / "report"))
    report.reset()
    for section in ("Base model training", "Chat SFT", "Chat evaluation sft"):
        report.log(section, [{"x": 1}])
    spans = {"base-model-training": (0, 3600), "chat-sft": (3600 + 7200, 3600 + 7200 + 1800),  # 2 h idle before
             "chat-evaluation-sft": (3600 + 7200 + 1700, 3600 + 7200 + 1900)}  # overlaps SFT's end by 100 s
    for slug, (start, end) in spans.items():
        path = base_dir / "report" / f"{slug}.json"
        record = json.loads(path.read_text())
        record["started"], record["time"] = 1e9 + start, 1e9 + end
        path.write_text(json.dumps(record))
    report.log("Chat evaluation sft", [{"x": 2}])  # an ad-hoc run much later: not the pipeline's time
    text = Path(report.generate(copy_to=str(tmp_path))).read_text()
    assert "Total wall time: 01:31:40 (the time spent in 3 logged stage(s)" in text  # 3600 + 1800 + the 100 s past SFT


def test_generating_a_missing_report_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(report_mod.ReportNotFoundError, match="no report in"):
        get_report().generate(copy_to=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "nanochat.report", "generate"], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "NANOCHAT_BASE_DIR": str(tmp_path / "nowhere")})
    assert result.returncode == 1 and result.stderr.startswith("error: no report in") and "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == []
