"""
The run report. `python -m nanochat.report reset` starts a run: it drops the previous sections
and writes a header (date, git commit, hardware, Python/torch versions, dataset). Each stage then
logs a section (its flags and metrics) as a small markdown file under $NANOCHAT_BASE_DIR/report/,
with the same data as JSON beside it (plus the stage's curves). `python -m nanochat.report generate`
joins the sections, in pipeline order, into report.md, ends it with a summary (a table of every
task's accuracy per stage with chance beside it, a line per stage saying what it changed, wall
time, an estimated GPU cost), draws the curves as PNG files
next to report.md, and copies report.md to the current folder.
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

from nanochat.common import atomic_write, get_base_dir, get_dist_info

# pipeline order; sections not listed here come after, alphabetically
SECTION_ORDER = [
    "header",
    "tokenizer-training",
    "tokenizer-evaluation",
    "base-model-training",
    "base-model-loss",
    "base-model-evaluation",
    "chat-evaluation-base",
    "midtraining",
    "chat-evaluation-mid",
    "chat-sft",
    "chat-evaluation-sft",
    "chat-rl",
    "chat-evaluation-rl",
]

# the summary table: which sections belong to which stage (a column is shown once its stage, or a
# later one, has logged anything), and where each metric comes from
STAGES = {
    "BASE": ["base-model-training", "base-model-loss", "base-model-evaluation", "chat-evaluation-base"],
    "MID": ["midtraining", "chat-evaluation-mid"],
    "SFT": ["chat-sft", "chat-evaluation-sft"],
    "RL": ["chat-rl", "chat-evaluation-rl"],
}
CHAT_METRICS = ["ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee", "ChatCORE"]
SUMMARY_METRICS = ["CORE", *CHAT_METRICS]
# what guessing scores: four-way multiple choice a quarter; generated answers nothing; CORE and
# ChatCORE are centered on chance already (the same baselines as ChatCORE's, nanochat.task_eval)
CHANCE = {"CORE": 0.0, "ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "GSM8K": 0.0, "HumanEval": 0.0,
          "SpellingBee": 0.0, "ChatCORE": 0.0}
# CORE of the base model: base_eval's result, else the last one base_train measured
CORE_SOURCES = [("base-model-evaluation", "CORE metric"), ("base-model-training", "core_metric")]
# a change smaller than this between two stages is reported as no change
NOTABLE_CHANGE = 0.02

DEFAULT_GPU_HOUR_USD = 3.0
REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def slugify(text: str) -> str:
    return "-".join(text.lower().replace("_", " ").split())


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


def dataset_info() -> dict[str, Any]:
    """The pretraining dataset in use and its shards on disk."""
    from nanochat.dataset import get_data_dir, get_dataset_name

    try:
        name = get_dataset_name()
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
    """Metrics that share units share an axis: losses, accuracies, pass@k."""
    if name.endswith("loss"):
        return "loss"
    if name.endswith("_acc"):
        return "accuracy"
    if name.startswith("pass@"):
        return "pass@k"
    return name


def _clean_curve(points: Any) -> list[tuple[float, float]]:
    out = []
    for p in points if isinstance(points, list) else []:
        if isinstance(p, (list, tuple)) and len(p) == 2 and _is_number(p[0]) and _is_number(p[1]):
            out.append((float(p[0]), float(p[1])))
    return out


def plot_curves(title: str, curves: dict[str, Any], path: str) -> bool:
    """One figure, one panel per group of metrics, drawn off-screen. False when there is nothing to draw."""
    groups: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for name, points in curves.items():
        clean = _clean_curve(points)
        if clean:
            groups.setdefault(_curve_group(str(name)), {})[str(name)] = clean
    if not groups:
        return False
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
        ax.set_xlabel("step")
        ax.set_ylabel(group if len(series) > 1 else next(iter(series)))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return True


# ---------------------------------------------------------------- the report

class Report:
    def __init__(self, report_dir: str) -> None:
        self.report_dir = report_dir
        os.makedirs(report_dir, exist_ok=True)

    def _path(self, slug: str, ext: str) -> str:
        return os.path.join(self.report_dir, f"{slug}.{ext}")

    def log(self, section: str, data: list[Any], curves: dict[str, list] | None = None) -> str:
        """
        Write one section: a title, a timestamp, then each item (a dict becomes a bullet list).
        Beside the markdown, <slug>.json keeps the dict items merged under "data", the strings
        under "notes", and `curves` (metric name -> [[step, value], ...]) for the plots.
        """
        slug = slugify(section)
        now = datetime.datetime.now()
        merged: dict[str, Any] = {}
        notes: list[str] = []
        for item in data:
            if isinstance(item, dict):
                merged.update({str(k): v for k, v in item.items()})
            elif item:
                notes.append(item if isinstance(item, str) else str(item))
        record = {"section": section, "timestamp": now.isoformat(timespec="seconds"), "time": now.timestamp(),
                  "data": merged, "notes": notes, "curves": curves or {}}
        _write_json(self._path(slug, "json"), record)
        body = "\n\n".join(_format_item(item) for item in data if item)
        text = f"## {section}\ntimestamp: {now.strftime('%Y-%m-%d %H:%M:%S')}\n\n{body}\n\n"
        path = self._path(slug, "md")
        _write_text(path, text)
        return path

    def reset(self) -> str:
        """Start a new run: drop every section, its data and plots, and write the header."""
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
        names = [n[:-3] for n in os.listdir(self.report_dir) if n.endswith(".md") and n != "report.md"]
        rank = {name: i for i, name in enumerate(SECTION_ORDER)}
        names.sort(key=lambda n: (rank.get(n, len(rank)), n))
        return names

    def _summary_table(self, records: dict[str, dict]) -> str:
        present = [stage for stage, slugs in STAGES.items() if any(s in records for s in slugs)]
        if not present:
            return "No stage has logged results yet.\n"
        # every column up to the last stage that ran, so a skipped stage shows as a column of "-"
        columns = list(STAGES)[: list(STAGES).index(present[-1]) + 1]
        values = _stage_values(records)

        def cell(value: Any) -> str:
            return f"{value:.4f}" if _is_number(value) else "-"

        lines = ["| Metric | Chance | " + " | ".join(columns) + " |", "| --- |" + " --- |" * (len(columns) + 1)]
        lines += [f"| {m} | {cell(CHANCE[m])} | " + " | ".join(cell(values[c].get(m)) for c in columns) + " |"
                  for m in SUMMARY_METRICS]
        sentences = _stage_sentences(records, values, columns)
        return "\n".join(lines) + "\n\n" + "".join(f"- {sentence}\n" for sentence in sentences)

    def generate(self, copy_to: str | None = ".") -> str:
        """
        Join the sections in pipeline order into report.md, with a plot per stage that logged
        curves and a closing summary, and copy it to copy_to (its image links adjusted to point
        back at the PNGs here). Returns the path of report.md.
        """
        names = self._sections()
        records: dict[str, dict] = {}
        for name in names:
            record = _read_json(self._path(name, "json"))
            if record is not None:
                records[name] = record
        header = records.get("header") or {}
        plots: list[str] = []
        plot_error = None
        parts = ["# nanochat training report\n\n",
                 f"Generated: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M:%S')}\n\n"]
        for name in names:
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

        # ---- summary: every task's accuracy per stage beside chance, and what each stage changed ----
        parts.append("## Summary\n\n")
        parts.append(self._summary_table(records) + "\n")
        start = header.get("start_time")
        ends = [r["time"] for n, r in records.items() if n != "header" and _is_number(r.get("time"))]
        if _is_number(start):
            end = max(ends) if ends else time.time()
            hours = max(0.0, end - start) / 3600
            parts.append(f"- Total wall time: {format_duration(hours * 3600)} (from `reset` to the last logged section)\n")
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


def _data(records: dict[str, dict], slug: str) -> dict:
    return (records.get(slug) or {}).get("data") or {}


def _stage_values(records: dict[str, dict]) -> dict[str, dict[str, float]]:
    """{stage: {metric: value}}: CORE for BASE, each stage's chat evaluation for the chat metrics."""
    values: dict[str, dict[str, float]] = {stage: {} for stage in STAGES}
    core = next((_data(records, s)[k] for s, k in CORE_SOURCES if _is_number(_data(records, s).get(k))), None)
    if core is not None:
        values["BASE"]["CORE"] = core
    for stage in STAGES:
        chat = _data(records, f"chat-evaluation-{stage.lower()}")
        values[stage].update({m: chat[m] for m in CHAT_METRICS if _is_number(chat.get(m))})
    return values


# a row of base_eval's table: label, accuracy, centered accuracy (above 0 means above chance)
_CORE_ROW = re.compile(r"^(\S+)\s+(-?\d+\.\d+)\s+(-?\d+\.\d+)$", re.MULTILINE)


def _core_tasks(records: dict[str, dict]) -> dict[str, tuple[float, float]]:
    """{label: (accuracy, centered)} from the table base_eval logs with its section, if there is one."""
    notes = (records.get("base-model-evaluation") or {}).get("notes") or []
    return {m[1]: (float(m[2]), float(m[3])) for note in notes for m in _CORE_ROW.finditer(str(note))}


def _changes(before: dict[str, float], after: dict[str, float]) -> str:
    """'GSM8K +0.12 (0.40 → 0.52), ...' for the metrics that moved, largest first, ChatCORE last."""
    moved = [(m, after[m] - before[m]) for m in CHAT_METRICS if m in before and m in after and m != "ChatCORE"
             and abs(after[m] - before[m]) >= NOTABLE_CHANGE]
    moved.sort(key=lambda item: -abs(item[1]))
    parts = [f"{m} {delta:+.2f} ({before[m]:.2f} → {after[m]:.2f})" for m, delta in moved]
    tasks_before, tasks_after = (set(d) - {"ChatCORE"} for d in (before, after))
    if "ChatCORE" in before and "ChatCORE" in after and tasks_before == tasks_after:  # a mean over the same tasks
        parts.append(f"ChatCORE {before['ChatCORE']:.2f} → {after['ChatCORE']:.2f}")
    return ", ".join(parts) if parts else f"no task moved by {NOTABLE_CHANGE} or more"


def _stage_sentences(records: dict[str, dict], values: dict[str, dict[str, float]], columns: list[str]) -> list[str]:
    """One line per stage in the table: what it reached (the first chat stage) or changed (the later ones)."""
    sentences = []
    previous: tuple[str, dict[str, float]] | None = None
    for stage in columns:
        here = values[stage]
        if stage == "BASE":
            if "CORE" not in here:
                sentences.append("BASE: no CORE evaluation.")
                continue
            tasks = _core_tasks(records)
            above = [f"{label} {acc:.2f}" for label, (acc, centered) in tasks.items() if centered > 0]
            detail = f"; {len(above)} of {len(tasks)} CORE tasks above chance ({', '.join(above)})" if tasks else ""
            sentences.append(f"BASE: pretraining gives CORE {here['CORE']:.4f} (0 is chance){detail}.")
            continue
        chat = {m: v for m, v in here.items() if m in CHAT_METRICS}
        if not chat:
            sentences.append(f"{stage}: not evaluated.")
        elif previous is None:
            reached = [f"{m} {v:.2f} (chance {CHANCE[m]:.2f})" for m, v in chat.items() if m != "ChatCORE"]
            sentences.append(f"{stage}: the first chat model scores {', '.join(reached)}.")
        else:
            sentences.append(f"{stage}: against {previous[0]}, {_changes(previous[1], chat)}.")
        if chat:
            previous = (stage, chat)
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


def main() -> None:
    parser = argparse.ArgumentParser(description="Reset or generate the training report.")
    parser.add_argument("command", choices=["reset", "generate"])
    args = parser.parse_args()
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
    main()
