"""
The run report: each stage logs a section (its flags and metrics) as a small markdown file
under $NANOCHAT_BASE_DIR/report/; `generate` joins them, in pipeline order, into report.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
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
    "midtraining",
    "chat-evaluation-mid",
    "chat-sft",
    "chat-evaluation-sft",
    "chat-rl",
    "chat-evaluation-rl",
]


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


class Report:
    def __init__(self, report_dir: str) -> None:
        self.report_dir = report_dir
        os.makedirs(report_dir, exist_ok=True)

    def log(self, section: str, data: list[Any]) -> str:
        """Write one section: a title, a timestamp, then each item (a dict becomes a bullet list)."""
        path = os.path.join(self.report_dir, f"{slugify(section)}.md")
        timestamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        body = "\n\n".join(_format_item(item) for item in data if item)
        text = f"## {section}\ntimestamp: {timestamp}\n\n{body}\n\n"
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))
        return path

    def reset(self) -> None:
        """Start a new run: drop every section."""
        for name in os.listdir(self.report_dir):
            if name.endswith(".md"):
                os.remove(os.path.join(self.report_dir, name))

    def generate(self, copy_to: str | None = ".") -> str:
        """Join the sections in pipeline order into report.md (and copy it to copy_to)."""
        names = [n[:-3] for n in os.listdir(self.report_dir) if n.endswith(".md") and n != "report.md"]
        rank = {name: i for i, name in enumerate(SECTION_ORDER)}
        names.sort(key=lambda n: (rank.get(n, len(rank)), n))
        out = os.path.join(self.report_dir, "report.md")
        with open(out, "w", encoding="utf-8") as f:
            f.write("# nanochat training report\n\n")
            for name in names:
                with open(os.path.join(self.report_dir, f"{name}.md"), encoding="utf-8") as section:
                    f.write(section.read())
        if copy_to is not None:
            shutil.copy(out, os.path.join(copy_to, "report.md"))
        return out


class DummyReport:
    def log(self, *args: Any, **kwargs: Any) -> None:
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
        print(f"report reset in {report.report_dir}")
    else:
        print(f"report written to {report.generate()} and ./report.md")


if __name__ == "__main__":
    main()
