"""Every script's flags: help text and a shown default on each, dashed aliases, and --extend on resume."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

import pytest

from scripts import base_train
from scripts.flags import ArgumentParser, HelpFormatter

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "scripts").glob("*.py") if p.stem not in ("__init__", "flags"))


def parser_of(module_name: str, monkeypatch, capsys) -> ArgumentParser:
    """The parser a script builds, caught when its main() asks it to parse --help (which must exit 0)."""
    caught = []
    original = ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        caught.append(self)
        return original(self, args, namespace)

    monkeypatch.setattr(ArgumentParser, "parse_args", parse_args)
    module = importlib.import_module(f"scripts.{module_name}")
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out
    assert caught, f"scripts.{module_name} does not build its parser with scripts.flags.ArgumentParser"
    return caught[0]


def all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and its subcommands' parsers (bench train, bench decode, ...)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [parser] + [p for action in subs for p in action.choices.values()]


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_flag_has_help_a_shown_default_and_a_dashed_alias(name, monkeypatch, capsys):
    for parser in all_parsers(parser_of(name, monkeypatch, capsys)):
        formatter = HelpFormatter(parser.prog)
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            flag = action.option_strings[-1] if action.option_strings else action.dest
            assert action.help and action.help.strip(), f"{parser.prog} {flag} has no help text"
            shown = formatter._get_help_string(action)
            assert "default" in shown or "(required)" in shown, f"{parser.prog} {flag}: {shown!r} shows no default"
            for option in action.option_strings:
                if option.startswith("--") and "_" in option:
                    assert option.replace("_", "-") in action.option_strings, f"{parser.prog}: no dashed {option}"
        # the rendered help really carries them (the formatter is the parser's)
        text = parser.format_help()
        assert "(default:" in text or "(required)" in text


def test_dashed_spellings_parse_to_the_same_values():
    underscored = base_train.parse_args(["--device_batch_size=8", "--max_seq_len", "64", "--num_iterations=3"])
    dashed = base_train.parse_args(["--device-batch-size=8", "--max-seq-len", "64", "--num-iterations=3"])
    assert vars(dashed) == vars(underscored)
    assert dashed.device_batch_size == 8 and dashed.max_seq_len == 64 and dashed.num_iterations == 3
    assert base_train.parse_args([]).device_batch_size == 32  # the default differs, so the flag did the work


def test_help_shows_the_default_value_and_the_task_names(monkeypatch, capsys):
    text = parser_of("base_train", monkeypatch, capsys).format_help()
    assert "--device_batch_size, --device-batch-size DEVICE_BATCH_SIZE" in text
    assert "(default: 32)" in text and "(default: 524288)" in text
    capsys.readouterr()
    task_flag = next(a for a in parser_of("chat_eval", monkeypatch, capsys)._actions if "-a" in a.option_strings)
    from tasks import EVAL_TASK_NAMES

    for name in EVAL_TASK_NAMES:
        assert name in task_flag.help


# ---- --resume --extend ----

TINY = ["--depth=1", "--max_seq_len=32", "--device_batch_size=4", "--total_batch_size=256", "--eval_tokens=512",
        "--sample_every=-1", "--core_metric_every=-1", "--device_type=cpu", "--eval_every=-1", "--model_tag=x",
        "--warmdown_ratio=0.5"]


def step_lines(text: str) -> dict[int, str]:
    return {int(line.split()[1].split("/")[0]): line for line in text.splitlines() if line.startswith("step ") and "lrm" in line}


def test_extend_lengthens_a_finished_run_with_the_schedule_of_the_new_length(synthetic_setup, capsys):
    base_train.main(TINY + ["--num_iterations=4"])
    ckpt = synthetic_setup / "base_checkpoints" / "x"
    run_id = json.loads((ckpt / "meta_000004.json").read_text())["run_id"]
    first = step_lines(capsys.readouterr().out)
    assert "lrm: 0.50" in first[3]  # the 4-step run warmed down over its last 2 steps

    with pytest.raises(SystemExit, match="--extend"):  # a longer run without saying so is refused, with the way
        base_train.main(TINY + ["--num_iterations=8", "--resume"])
    with pytest.raises(SystemExit, match="only lengthens"):
        base_train.main(TINY + ["--num_iterations=3", "--resume", "--extend"])
    with pytest.raises(SystemExit, match="add --resume"):
        base_train.main(TINY + ["--num_iterations=8", "--extend"])
    with pytest.raises(SystemExit, match="matrix_lr"):  # --extend frees the length only
        base_train.main(TINY + ["--num_iterations=8", "--resume", "--extend", "--matrix_lr=0.03"])
    capsys.readouterr()

    results = base_train.main(TINY + ["--num_iterations=8", "--resume", "--extend"])
    lines = step_lines(capsys.readouterr().out)
    assert sorted(lines) == [4, 5, 6, 7]  # it continued from step 4, not from scratch
    # the schedule of an 8-step run with warmdown over the last 4: back to 1.0 at step 4, then down
    for step, lrm in {4: "1.00", 5: "0.75", 6: "0.50", 7: "0.25"}.items():
        assert f"lrm: {lrm}" in lines[step], lines[step]
    meta = json.loads((ckpt / "meta_000008.json").read_text())
    assert meta["num_iterations"] == 8 and results["num_iterations"] == 8
    assert meta["run_id"] == run_id  # the same run, lengthened
