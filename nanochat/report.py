"""
The run report. `python -m nanochat.report reset` starts a run: it drops the previous sections
and writes a header (date, git commit, hardware, Python/torch versions, dataset). Each stage then
logs a section (its flags and metrics) as a small markdown file under $NANOCHAT_BASE_DIR/report/,
with the same data as JSON beside it (plus the stage's curves). `python -m nanochat.report generate`
joins the sections, in pipeline order, into report.md, ends it with a summary (a table of every
task's accuracy per stage with chance beside it, a line per stage saying what it changed, wall
time, an estimated GPU cost), draws the curves as PNG files (accuracies with their chance
level) next to report.md, and copies report.md to the current folder.

Numbers measured on the offline twins (NANOCHAT_DATASET=synthetic) are labelled as such: they
show what each stage does, and are not comparable with the real benchmarks' published scores.

A stage run again after its section was logged (a later `chat_eval -i sft -a ARC-Easy`, say)
never replaces the pipeline's section silently: an evaluation gets a section of its own beside
it, kept out of the summary; a training stage replaces its section (its new model replaced the
old one) and the section says so. Wall time is the time spent in stages, from each stage's
start to its section, so idle time between runs does not count.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from typing import Any

from nanochat.common import NanochatError, atomic_write, found_elsewhere, get_base_dir, get_dist_info, run_main
from nanochat.stages import STAGES

# when this process started its stage, near enough: every script imports this module at its top
PROCESS_STARTED = time.time()



def slugify(text: str) -> str:
    return "-".join(text.lower().replace("_", " ").split())


# each stage's sections, from the registry: a stage's column in the summary table is shown once
# it (or a later stage) has logged any of them
STAGE_SECTIONS = {name: [slugify(title) for title in stage.sections] for name, stage in STAGES.items()}
# what DPO (and RL with --reward_model) read, made after SFT: the on-policy pairs (chat_pref_data)
# and the reward model (chat_rm); not stages of their own, as neither is a model to chat with
PREFERENCE_SECTIONS = ["preference-data", "reward-model"]
# pipeline order; sections not listed here come after, alphabetically
SECTION_ORDER = ["header", "tokenizer-training", "tokenizer-evaluation",
                 *(s for name, slugs in STAGE_SECTIONS.items()
                   for s in ([*PREFERENCE_SECTIONS, *slugs] if name == "dpo" else slugs))]
CHATCORE_TASKS = ["ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee"]  # as tasks.EVAL_TASK_NAMES
CHAT_METRICS = [*CHATCORE_TASKS, "ChatCORE"]
SUMMARY_METRICS = ["CORE", *CHAT_METRICS]
# what guessing scores: four-way multiple choice a quarter; generated answers nothing; CORE and
# ChatCORE are centered on chance already (the same baselines as ChatCORE's, nanochat.task_eval)
CHANCE = {"CORE": 0.0, "ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "GSM8K": 0.0, "HumanEval": 0.0,
          "SpellingBee": 0.0, "ChatCORE": 0.0}
# CORE of the base model, found in the base stage's sections: base_eval's result, else the last one base_train measured
CORE_KEYS = ["CORE metric", "core_metric"]
# a change smaller than this between two stages is reported as no change
NOTABLE_CHANGE = 0.02
# a stage whose section is logged again replaces it (its model replaced the earlier one); any
# other section logged again (an evaluation run by hand) gets a section of its own
TRAINING_SECTIONS = {"tokenizer-training", *PREFERENCE_SECTIONS, *(slugify(stage.section) for stage in STAGES.values())}
AGAIN = "-again-"  # slug of an extra run's section: <slug>-again-<n>
OFFLINE_DATASET = "synthetic"
RL_LOSS_NOTE = (
    "RL's train loss is the policy-gradient surrogate −Σ (reward − group mean reward) · log p(token) over the "
    "sampled tokens, per token. Its advantages sum to zero within each group of answers, so it is no distance "
    "to drive to zero: it is negative whenever the better-than-average answers are already the likelier (or "
    "shorter) ones, which is where RL pushes. Judge RL by the mean reward and pass@k, not by this number."
)

DEFAULT_GPU_HOUR_USD = 3.0
REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _format_item(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        return "\n".join(f"- {k}: {_format_value(v)}" for k, v in item.items())
    return str(item)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _write_json(path: str, obj: Any) -> None:
    # default=str: a stray non-JSON value (a path, a tensor) is kept as its text rather than failing the stage
    _write_text(path, json.dumps(obj, indent=1, default=str) + "\n")


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def format_duration(seconds: float) -> str:
    """hh:mm:ss (hours keep counting past 24)."""
    total = max(0, round(seconds))
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# ---------------------------------------------------------------- the header's facts

def git_info(repo_dir: str = REPO_DIR, timeout: float = 5.0) -> dict[str, Any]:
    """{"commit": short hash or "unknown", "dirty": bool or None} of the checkout holding the package."""
    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", repo_dir, *args], capture_output=True, text=True, timeout=timeout, check=True)
        return out.stdout.strip()

    try:
        # only this repository's own checkout counts, not one the folder happens to sit in (an installed copy)
        top = git("rev-parse", "--show-toplevel")
        if os.path.realpath(top) != os.path.realpath(repo_dir):
            return {"commit": "unknown", "dirty": None}
        commit = git("rev-parse", "--short", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": commit or "unknown", "dirty": dirty}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "processor\t: ")) and ":" in line:
                    name = line.split(":", 1)[1].strip()
                    if name and not name.isdigit():
                        return name
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5, check=False)
            if out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def hardware_info() -> dict[str, Any]:
    """CPU, RAM and GPUs, without the host's name."""
    import torch

    gpus: list[dict[str, Any]] = []
    try:
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                gpus.append({"name": props.name, "memory_bytes": props.total_memory})
    except RuntimeError:  # a broken driver must not stop the run from starting
        gpus = []
    return {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "ram_bytes": _ram_bytes(),
            "gpu_count": len(gpus), "gpus": gpus}


def dataset_info(name: str | None = None) -> dict[str, Any]:
    """A pretraining dataset (default: the one in use) and its shards on disk."""
    from nanochat.dataset import get_data_dir, get_dataset_name

    try:
        name = name or get_dataset_name()
        data_dir = get_data_dir(name)
    except ValueError as e:
        return {"name": "unknown", "error": str(e)}
    shards = sorted(n for n in os.listdir(data_dir) if n.endswith(".parquet") and not n.startswith(".")) \
        if os.path.isdir(data_dir) else []
    size = 0
    for n in shards:
        try:
            size += os.path.getsize(os.path.join(data_dir, n))
        except OSError:
            pass
    return {"name": name, "folder": os.path.relpath(data_dir, get_base_dir()), "num_shards": len(shards),
            "size_bytes": size, "folder_exists": os.path.isdir(data_dir)}


def _summarize_gpus(gpus: list[dict[str, Any]]) -> str:
    if not gpus:
        return "none"
    counts: dict[str, list[int]] = {}
    for g in gpus:
        counts.setdefault(g["name"], []).append(g.get("memory_bytes") or 0)
    return ", ".join(f"{len(mems)} × {name} ({_format_bytes(max(mems))})" for name, mems in counts.items())


def _header_markdown(h: dict[str, Any]) -> str:
    git, hw, ds = h["git"], h["hardware"], h["dataset"]
    commit = git["commit"] + ("" if git["dirty"] is None else " (dirty)" if git["dirty"] else " (clean)")
    ram = _format_bytes(hw["ram_bytes"]) if hw.get("ram_bytes") else "unknown"
    if "error" in ds:
        data = f"unknown ({ds['error']})"
    else:
        data = f"{ds['name']}: {ds['num_shards']} shard(s), {_format_bytes(ds['size_bytes'])} in $NANOCHAT_BASE_DIR/{ds['folder']}"
        if not ds.get("folder_exists", True):
            data += " (folder absent)"
    lines = [
        f"- Run started: {h['started']}",
        f"- Git commit: {commit}",
        f"- CPU: {hw['cpu']} ({hw['cpu_count']} logical cores)",
        f"- RAM: {ram}",
        f"- GPUs: {_summarize_gpus(hw['gpus'])}",
        f"- Python: {h['python']}",
        f"- torch: {h['torch']}",
        f"- Dataset: {data}",
    ]
    return "## Environment\n\n" + "\n".join(lines) + "\n\n"


# ---------------------------------------------------------------- plots

def _curve_group(name: str) -> str:
    """Metrics that share units share an axis: losses, accuracies, pass@k, rewards."""
    if name.endswith("loss"):
        return "loss"
    if name.endswith("_acc"):
        return "accuracy"
    if "pass@" in name:  # also chat_rl's per task: GSM8K/pass@8, GSM8K/greedy_pass@1
        return "pass@k"
    if name.split("/")[0] == "reward":  # chat_rl's mean reward and each task's
        return "reward"
    return name


def _clean_curve(points: Any) -> list[tuple[float, float]]:
    out = []
    for p in points if isinstance(points, list) else []:
        if isinstance(p, (list, tuple)) and len(p) == 2 and _is_number(p[0]) and _is_number(p[1]):
            out.append((float(p[0]), float(p[1])))
    return out


def curve_chance(name: str) -> float | None:
    """What guessing scores on a curve's metric: X_acc is task X's accuracy, pass@k is GSM8K's, CORE is centered."""
    if name.endswith("_acc"):
        return CHANCE.get(name[: -len("_acc")])
    if "pass@" in name or name == "core_metric":
        return 0.0
    return None


def curves_figure(title: str, curves: dict[str, Any]) -> Any:
    """
    A matplotlib Figure, one panel per group of metrics, with a dashed chance line on every
    panel of accuracies; None when there is nothing to draw.
    """
    groups: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for name, points in curves.items():
        clean = _clean_curve(points)
        if clean:
            groups.setdefault(_curve_group(str(name)), {})[str(name)] = clean
    if not groups:
        return None
    # the object API (no pyplot) renders PNGs with Agg and touches no global backend
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    n = len(groups)
    cols = 1 if n == 1 else 2
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(6 * cols, 3.6 * rows), dpi=100, layout="constrained")
    fig.suptitle(title)
    for i, (group, series) in enumerate(groups.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        for name, points in series.items():
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(points) <= 20 else None, markersize=3, label=name)
        chances: dict[float, list[str]] = {}
        for name in series:
            if (chance := curve_chance(name)) is not None:
                chances.setdefault(chance, []).append(name)
        for chance, names in chances.items():
            ax.axhline(chance, color="gray", linestyle="--", linewidth=1,
                       label=f"chance {chance:g}" + (f" ({', '.join(names)})" if len(chances) > 1 else ""))
        ax.set_xlabel("step")
        ax.set_ylabel(group if len(series) > 1 else next(iter(series)))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(series) > 1 or chances:
            ax.legend()
    return fig


def plot_curves(title: str, curves: dict[str, Any], path: str) -> bool:
    """Draw curves_figure off-screen into a PNG at path. False when there is nothing to draw."""
    fig = curves_figure(title, curves)
    if fig is None:
        return False
    tmp = f"{path}.tmp-{os.getpid()}.png"
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return True


# ---------------------------------------------------------------- the report

class ReportNotFoundError(NanochatError):
    """No report folder where one was asked for."""


def _dataset_name() -> str:
    from nanochat.dataset import get_dataset_name

    try:
        return get_dataset_name()
    except ValueError:
        return "unknown"


class Report:
    def __init__(self, report_dir: str) -> None:
        self.report_dir = report_dir  # created by the first write, never by reading

    def _path(self, slug: str, ext: str) -> str:
        return os.path.join(self.report_dir, f"{slug}.{ext}")

    def _next_again_slug(self, slug: str) -> str:
        n = 1
        while os.path.exists(self._path(f"{slug}{AGAIN}{n}", "md")):
            n += 1
        return f"{slug}{AGAIN}{n}"

    def log(self, section: str, data: list[Any], curves: dict[str, list] | None = None) -> str:
        """
        Write one section: a title, a timestamp, then each item (a dict becomes a bullet list).
        Beside the markdown, <slug>.json keeps the dict items merged under "data", the strings
        under "notes", `curves` (metric name -> [[step, value], ...]) for the plots, when the
        stage started, and the dataset it ran on. A section already logged in this run is not
        silently replaced: see the module docstring.
        """
        os.makedirs(self.report_dir, exist_ok=True)
        slug, title = slugify(section), section
        now = datetime.datetime.now()
        preface = ""
        earlier = _read_json(self._path(slug, "json")) if os.path.exists(self._path(slug, "md")) else None
        if os.path.exists(self._path(slug, "md")):
            when = (earlier or {}).get("timestamp", "earlier").replace("T", " ")
            if slug in TRAINING_SECTIONS:
                preface = (f"**This section replaces the one logged at {when}**: the stage ran again and its model "
                           "replaced that run's; sections logged before now describe the earlier model.\n\n")
            else:
                slug, title = self._next_again_slug(slug), f"{section} (again, {now.strftime('%Y-%m-%d %H:%M')})"
                preface = (f"A run outside the pipeline: it has a section of its own, and the summary keeps the "
                           f"section \"{section}\" logged at {when}.\n\n")
        merged: dict[str, Any] = {}
        notes: list[str] = []
        for item in data:
            if isinstance(item, dict):
                merged.update({str(k): v for k, v in item.items()})
            elif item:
                notes.append(item if isinstance(item, str) else str(item))
        record = {"section": title, "timestamp": now.isoformat(timespec="seconds"), "time": now.timestamp(),
                  "started": min(PROCESS_STARTED, now.timestamp()), "dataset": _dataset_name(),
                  "adhoc": AGAIN in slug, "data": merged, "notes": notes, "curves": curves or {}}
        _write_json(self._path(slug, "json"), record)
        body = "\n\n".join(_format_item(item) for item in data if item)
        text = f"## {title}\ntimestamp: {now.strftime('%Y-%m-%d %H:%M:%S')}\n\n{preface}{body}\n\n"
        path = self._path(slug, "md")
        _write_text(path, text)
        return path

    def reset(self) -> str:
        """Start a new run: drop every section, its data and plots, and write the header."""
        os.makedirs(self.report_dir, exist_ok=True)
        for name in os.listdir(self.report_dir):
            if name.endswith((".md", ".json", ".png")):
                os.remove(os.path.join(self.report_dir, name))
        import torch

        now = datetime.datetime.now()
        header = {
            "section": "Environment",
            "started": now.strftime("%Y-%m-%d %H:%M:%S"),
            "start_time": now.timestamp(),
            "git": git_info(),
            "hardware": hardware_info(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "dataset": dataset_info(),
        }
        _write_json(self._path("header", "json"), header)
        path = self._path("header", "md")
        _write_text(path, _header_markdown(header))
        return path

    def _sections(self) -> list[str]:
        """Section slugs in pipeline order, each extra run's section right after the one it repeats."""
        names = [n[:-3] for n in os.listdir(self.report_dir) if n.endswith(".md") and n != "report.md"]
        rank = {name: i for i, name in enumerate(SECTION_ORDER)}

        def order(name: str) -> tuple:
            base, _, again = name.partition(AGAIN)
            return rank.get(base, len(rank)), base, int(again) if again.isdigit() else 0

        return sorted(names, key=order)

    def _summary_table(self, records: dict[str, dict]) -> str:
        present = [stage for stage, slugs in STAGE_SECTIONS.items() if any(s in records for s in slugs)]
        if not present:
            return "No stage has logged results yet.\n"
        # every column up to the last stage that ran, so a skipped stage shows as a column of "-"
        columns = list(STAGES)[: list(STAGES).index(present[-1]) + 1]
        values = _stage_values(records)

        def cell(value: Any) -> str:
            return f"{value:.4f}" if _is_number(value) else "-"

        twins = _twin_values(records)
        lines = ["| Metric | Chance | " + " | ".join(c.upper() for c in columns) + " |", "| --- |" + " --- |" * (len(columns) + 1)]
        for m in SUMMARY_METRICS:
            shown = [c for c in columns if _is_number(values[c].get(m))]
            on_twin = [c for c in shown if (c, m) in twins]
            label = m
            if on_twin:  # the whole row, or the cells marked †, come from the offline twins
                label += " (offline twin bundle)" if m == "CORE" else " (offline twins)" if m == "ChatCORE" else " (offline twin)"
            marks = {c: "†" if on_twin and len(on_twin) < len(shown) and c in on_twin else "" for c in columns}
            lines.append(f"| {label} | {cell(CHANCE[m])} | " + " | ".join(cell(values[c].get(m)) + marks[c] for c in columns) + " |")
        sentences = _stage_sentences(records, values, columns, twins)
        notes = []
        if twins:
            notes.append("Numbers marked offline twin were measured on the offline twins (NANOCHAT_DATASET=synthetic): "
                         "templated stand-ins for the benchmarks, with the same format and chance level, that a tiny "
                         "model can learn. They show what each stage changes; they are not comparable with the real "
                         "benchmarks' published scores (GPT-2's CORE, say)" +
                         (" († marks the twin cells of a mixed row)." if any("†" in line for line in lines) else "."))
        return ("\n".join(lines) + "\n\n" + "".join(f"- {sentence}\n" for sentence in sentences)
                + "".join(f"\n{note}\n" for note in notes))

    def generate(self, copy_to: str | None = ".") -> str:
        """
        Join the sections in pipeline order into report.md, with a plot per stage that logged
        curves and a closing summary, and copy it to copy_to (its image links adjusted to point
        back at the PNGs here). Returns the path of report.md.
        """
        if not os.path.isdir(self.report_dir):
            raise ReportNotFoundError(f"no report in {self.report_dir}: the stages write it as they finish "
                                      f"(`python -m nanochat.report reset` starts one){found_elsewhere('report')}")
        names = self._sections()
        records: dict[str, dict] = {}
        for name in names:
            record = _read_json(self._path(name, "json"))
            if record is not None:
                records[name] = record
        header = records.get("header") or {}
        pipeline = {name: r for name, r in records.items() if AGAIN not in name}  # the summary's sections
        plots: list[str] = []
        plot_error = None
        parts = ["# nanochat training report\n\n",
                 f"Generated: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M:%S')}\n\n"]
        for name in names:
            if name == "header" and header:
                # the data appears after `reset` wrote the header: describe it as the stages found it
                text = _header_markdown({**header, "dataset": dataset_info(_stages_dataset(pipeline))})
            else:
                with open(self._path(name, "md"), encoding="utf-8") as f:
                    text = f.read()
            parts.append(text if text.endswith("\n\n") else text.rstrip("\n") + "\n\n")
            curves = (records.get(name) or {}).get("curves") if name != "header" else None
            if curves and isinstance(curves, dict) and plot_error is None:
                png = self._path(name, "png")
                try:
                    drawn = plot_curves(records[name].get("section", name), curves, png)
                except ImportError as e:
                    plot_error, drawn = f"no plots: matplotlib is not available ({e})", False
                if drawn:
                    plots.append(png)
                    parts.append(f"![{records[name].get('section', name)} curves]({os.path.basename(png)})\n\n")
            if name == slugify(STAGES["rl"].section) and _goes_negative((records.get(name) or {}).get("curves"), "train_loss"):
                parts.append(RL_LOSS_NOTE + "\n\n")

        # ---- summary: every task's accuracy per stage beside chance, and what each stage changed ----
        parts.append("## Summary\n\n")
        parts.append(self._summary_table(pipeline) + "\n")
        adhoc = [r.get("section", n) for n, r in records.items() if AGAIN in n]
        if adhoc:
            parts.append(f"- Runs outside the pipeline, in sections of their own and not in the table: {', '.join(adhoc)}\n")
        stage_seconds, timed = _stage_time(pipeline)
        start = header.get("start_time")
        ends = [r["time"] for n, r in pipeline.items() if n != "header" and _is_number(r.get("time"))]
        hours = None
        if timed:
            hours = stage_seconds / 3600
            parts.append(f"- Total wall time: {format_duration(stage_seconds)} (the time spent in {timed} logged "
                         "stage(s), each from its start to its section; idle time between them is not counted)\n")
        elif _is_number(start):  # sections from before stages recorded their start
            hours = max(0.0, (max(ends) if ends else time.time()) - start) / 3600
            parts.append(f"- Total wall time: {format_duration(hours * 3600)} (from `reset` to the last logged section)\n")
        if hours is not None:
            num_gpus = (header.get("hardware") or {}).get("gpu_count") or 0
            if num_gpus:
                price, note = DEFAULT_GPU_HOUR_USD, ""
                raw = os.environ.get("NANOCHAT_GPU_HOUR_USD")
                if raw:
                    try:
                        price = float(raw)
                    except ValueError:
                        note = f"; NANOCHAT_GPU_HOUR_USD={raw!r} is not a number, so the default is used"
                parts.append(f"- Estimated cost: ${hours * num_gpus * price:,.2f} ({hours:.2f} h × {num_gpus} GPU(s) × "
                             f"${price:.2f} per GPU-hour; the price is an assumption, set NANOCHAT_GPU_HOUR_USD{note})\n")
            else:
                parts.append("- Estimated cost: n/a (no GPU)\n")
        else:
            parts.append("- Total wall time: unknown (no header; `python -m nanochat.report reset` records the start)\n")
        if plots:
            parts.append(f"- Plots: {', '.join(os.path.basename(p) for p in plots)} in {os.path.abspath(self.report_dir)}\n")
        elif plot_error:
            parts.append(f"- Plots: {plot_error}\n")
        text = "".join(parts)

        out = self._path("report", "md")
        _write_text(out, text)
        if copy_to is not None and os.path.abspath(copy_to) != os.path.abspath(self.report_dir):
            copy = text
            for png in plots:  # relative links that still find the PNGs from the copy's folder
                base = os.path.basename(png)
                try:
                    target = os.path.relpath(os.path.abspath(png), os.path.abspath(copy_to))
                except ValueError:  # another drive on Windows
                    target = os.path.abspath(png)
                copy = copy.replace(f"]({base})", f"]({target.replace(os.sep, '/')})")
            _write_text(os.path.join(copy_to, "report.md"), copy)
        return out


def _stages_dataset(records: dict[str, dict]) -> str | None:
    """The dataset the pipeline's stages ran on (the last one logged), or None before any stage."""
    logged = sorted((r["time"], r["dataset"]) for n, r in records.items()
                    if n != "header" and _is_number(r.get("time")) and r.get("dataset") not in (None, "unknown"))
    return logged[-1][1] if logged else None


def _goes_negative(curves: Any, name: str) -> bool:
    return isinstance(curves, dict) and any(v < 0 for _, v in _clean_curve(curves.get(name)))


def _stage_time(records: dict[str, dict]) -> tuple[float, int]:
    """
    (seconds, stages): the length of the union of the stages' [start, section logged] intervals,
    so time between stages, and time two sections of one process share, count once or not at all.
    """
    spans = sorted((r["started"], r["time"]) for n, r in records.items()
                   if n != "header" and _is_number(r.get("started")) and _is_number(r.get("time")))
    total, reach = 0.0, -math.inf
    for start, end in spans:
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total, len(spans)


def _is_twin(record: dict | None) -> bool:
    """Whether a section's numbers came from the offline twins (its dataset, or the twin CORE bundle)."""
    if not record:
        return False
    from nanochat.core_eval import OFFLINE_BUNDLE_DIR_NAME

    bundle = str((record.get("data") or {}).get("bundle", ""))
    return record.get("dataset") == OFFLINE_DATASET or os.path.basename(bundle.rstrip("/\\")) == OFFLINE_BUNDLE_DIR_NAME


def _twin_values(records: dict[str, dict]) -> set[tuple[str, str]]:
    """The (stage, metric) cells of the summary whose numbers were measured on the offline twins."""
    twins = set()
    core = _core_section(records)
    if core is not None and _is_twin(records[core[0]]):
        twins.add(("base", "CORE"))
    for name, stage in STAGES.items():
        slug = slugify(stage.eval_section)
        if _is_twin(records.get(slug)):
            twins.update((name, m) for m in CHAT_METRICS if _is_number(_data(records, slug).get(m)))
    return twins


def _data(records: dict[str, dict], slug: str) -> dict:
    return (records.get(slug) or {}).get("data") or {}


def _core_section(records: dict[str, dict]) -> tuple[str, str] | None:
    """(slug, key) of the base stage's section that holds its CORE, in CORE_KEYS' order of preference."""
    return next(((slug, key) for key in CORE_KEYS for slug in STAGE_SECTIONS["base"]
                 if _is_number(_data(records, slug).get(key))), None)


def _stage_values(records: dict[str, dict]) -> dict[str, dict[str, float]]:
    """{stage: {metric: value}}: CORE for base, each stage's chat evaluation for the chat metrics."""
    values: dict[str, dict[str, float]] = {name: {} for name in STAGES}
    if (core := _core_section(records)) is not None:
        values["base"]["CORE"] = _data(records, core[0])[core[1]]
    for name, stage in STAGES.items():
        chat = _data(records, slugify(stage.eval_section))
        values[name].update({m: chat[m] for m in CHAT_METRICS if _is_number(chat.get(m))})
        if not all(t in values[name] for t in CHATCORE_TASKS):  # a ChatCORE over some tasks (logged by older runs)
            values[name].pop("ChatCORE", None)
    return values


# a row of base_eval's table: label, accuracy, centered accuracy (above 0 means above chance)
_CORE_ROW = re.compile(r"^(\S+)\s+(-?\d+\.\d+)\s+(-?\d+\.\d+)$", re.MULTILINE)


def _core_tasks(records: dict[str, dict]) -> dict[str, tuple[float, float]]:
    """{label: (accuracy, centered)} from the table base_eval logs beside the CORE it reports, if there is one."""
    core = _core_section(records)
    notes = (records[core[0]].get("notes") or []) if core is not None else []
    return {m[1]: (float(m[2]), float(m[3])) for note in notes for m in _CORE_ROW.finditer(str(note))}


def _changes(before: dict[str, float], after: dict[str, float]) -> str:
    """'GSM8K +0.12 (0.40 → 0.52), ...' for the metrics that moved, largest first, ChatCORE last."""
    moved = [(m, after[m] - before[m]) for m in CHAT_METRICS if m in before and m in after and m != "ChatCORE"
             and abs(after[m] - before[m]) >= NOTABLE_CHANGE]
    moved.sort(key=lambda item: -abs(item[1]))
    parts = [f"{m} {delta:+.2f} ({before[m]:.2f} → {after[m]:.2f})" for m, delta in moved]
    if "ChatCORE" in before and "ChatCORE" in after:  # each a mean over every task (_stage_values)
        parts.append(f"ChatCORE {before['ChatCORE']:.2f} → {after['ChatCORE']:.2f}")
    return ", ".join(parts) if parts else f"no task moved by {NOTABLE_CHANGE} or more"


def _stage_sentences(records: dict[str, dict], values: dict[str, dict[str, float]], columns: list[str],
                     twins: set[tuple[str, str]] = frozenset()) -> list[str]:
    """
    One line per stage in the table: what it reached (the first chat stage) or changed (the later
    ones) against the stage it trained from (its --source, as its training section logged it), or
    else against the stage before it in the table (RL after DPO still starts from SFT).
    """
    sentences = []
    previous: tuple[str, dict[str, float]] | None = None
    evaluated: dict[str, tuple[str, dict[str, float]]] = {}  # stage: (label, chat metrics), for the sources
    for stage in columns:
        here, label = values[stage], stage.upper()
        if stage == "base":
            if "CORE" not in here:
                sentences.append("BASE: no CORE evaluation.")
                continue
            tasks = _core_tasks(records)
            above = [f"{task} {acc:.2f}" for task, (acc, centered) in tasks.items() if centered > 0]
            detail = f"; {len(above)} of {len(tasks)} CORE tasks above chance ({', '.join(above)})" if tasks else ""
            where = " on the offline twin bundle" if ("base", "CORE") in twins else ""
            sentences.append(f"BASE: pretraining gives CORE {here['CORE']:.4f}{where} (0 is chance){detail}.")
            continue
        chat = {m: v for m, v in here.items() if m in CHAT_METRICS}
        if not chat:
            sentences.append(f"{label}: not evaluated.")
        elif previous is None:
            reached = [f"{m} {v:.2f} (chance {CHANCE[m]:.2f})" for m, v in chat.items() if m != "ChatCORE"]
            where = " on the offline twins" if any((stage, m) in twins for m in chat) else ""
            sentences.append(f"{label}: the first chat model scores{where} {', '.join(reached)}.")
        else:
            source = _data(records, slugify(STAGES[stage].section)).get("source")
            against = evaluated.get(source, previous)
            sentences.append(f"{label}: against {against[0]}, {_changes(against[1], chat)}.")
        if chat:
            previous = evaluated[stage] = (label, chat)
    return sentences


class DummyReport:
    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    def reset(self, *args: Any, **kwargs: Any) -> None:
        pass

    def generate(self, *args: Any, **kwargs: Any) -> None:
        pass


def get_report() -> Report | DummyReport:
    """The real report on rank 0; a no-op elsewhere so ranks do not write the same files."""
    if get_dist_info()[1] != 0:
        return DummyReport()
    return Report(os.path.join(get_base_dir(), "report"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Reset or generate the training report.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("command", choices=["reset", "generate"],
                        help="reset: start a new run's report (drops the sections); generate: write report.md")
    args = parser.parse_args(argv)
    report = Report(os.path.join(get_base_dir(), "report"))
    if args.command == "reset":
        report.reset()
        print(f"report reset in {report.report_dir} (header written)")
    else:
        out = report.generate()
        pngs = sorted(n for n in os.listdir(report.report_dir) if n.endswith(".png"))
        print(f"report written to {out} and {os.path.abspath('report.md')}")
        if pngs:
            print(f"plots ({', '.join(pngs)}) are in {report.report_dir}")


if __name__ == "__main__":
    run_main(main)
