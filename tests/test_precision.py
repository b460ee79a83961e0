"""The training stages' dtype and compile choice: CPU features, run length, flags, and the run's first line."""

from __future__ import annotations

import pytest
import torch

from nanochat import precision
from nanochat.precision import CPU_COMPILE_MIN_TOKENS, choose_precision, cpu_bf16_feature

X86_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f {extra}\nbugs\t\t: spectre_v1\n"
LONG, SHORT = 10 * CPU_COMPILE_MIN_TOKENS, CPU_COMPILE_MIN_TOKENS // 10


@pytest.mark.parametrize("cpuinfo, feature", [
    (X86_FLAGS.format(extra="avx512_bf16 amx_bf16 amx_tile"), "amx_bf16"),  # the better one is named
    (X86_FLAGS.format(extra="avx512_bf16"), "avx512_bf16"),
    (X86_FLAGS.format(extra="avx512_vnni"), None),  # AVX-512 alone emulates bf16
    ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", "bf16"),  # Arm
    ("", None),
])
def test_cpu_bf16_feature_reads_the_cpu_flags(cpuinfo, feature):
    assert cpu_bf16_feature(cpuinfo) == feature


def test_cpu_default_is_bf16_only_with_native_bf16():
    native = choose_precision("cpu", "auto", "auto", fixed_shapes=True, train_tokens=SHORT, cpu_feature="avx512_bf16")
    assert native.dtype == torch.bfloat16 and native.dtype_reason == "CPU has avx512_bf16"
    emulated = choose_precision("cpu", "auto", "auto", fixed_shapes=True, train_tokens=SHORT, cpu_feature="")
    assert emulated.dtype == torch.float32 and emulated.dtype_reason == "CPU has no native bf16"


def test_cpu_compiles_only_runs_long_enough_to_repay_it():
    def compiles(tokens: int | None, fixed_shapes: bool = True) -> bool:
        return choose_precision("cpu", "auto", "auto", fixed_shapes, tokens, cpu_feature="").compile

    assert compiles(LONG) and compiles(CPU_COMPILE_MIN_TOKENS) and not compiles(CPU_COMPILE_MIN_TOKENS - 1)
    assert compiles(None)  # a pass over a whole dataset
    assert not compiles(LONG, fixed_shapes=False)  # it would recompile for every new batch shape


def test_cuda_default_is_bf16_and_compiled_with_fixed_shapes():
    p = choose_precision("cuda", "auto", "auto", fixed_shapes=True, train_tokens=SHORT)
    assert p.dtype == torch.bfloat16 and p.compile
    assert not choose_precision("cuda", "auto", "auto", fixed_shapes=False, train_tokens=LONG).compile
    assert choose_precision("mps", "auto", "auto", fixed_shapes=True, train_tokens=LONG).dtype == torch.float32


def test_flags_override_the_default():
    p = choose_precision("cpu", "float32", "off", fixed_shapes=True, train_tokens=LONG, cpu_feature="amx_bf16")
    assert (p.dtype, p.compile) == (torch.float32, False)
    p = choose_precision("cpu", "bfloat16", "on", fixed_shapes=False, train_tokens=SHORT, cpu_feature="")
    assert (p.dtype, p.compile) == (torch.bfloat16, True)
    assert p.describe() == "precision: bf16 autocast (--dtype), compile on (--compile)"


def test_the_choice_reads_as_one_line():
    p = choose_precision("cpu", "auto", "auto", fixed_shapes=True, train_tokens=LONG, cpu_feature="avx512_bf16")
    assert p.describe() == (f"precision: bf16 autocast (CPU has avx512_bf16), compile on ({LONG:,} training tokens ≥ "
                            f"{CPU_COMPILE_MIN_TOKENS:,}, the least that repay compiling)")


@pytest.mark.parametrize("feature, line", [("avx512_bf16", "precision: bf16 autocast (CPU has avx512_bf16), compile off ("),
                                           (None, "precision: fp32 (CPU has no native bf16), compile off (")])
def test_base_train_names_its_choice_on_its_first_line(synthetic_setup, capsys, monkeypatch, feature, line):
    from scripts import base_train

    monkeypatch.setattr(precision, "cpu_bf16_feature", lambda: feature)
    with pytest.raises(SystemExit):
        base_train.main(["--depth=1", "--max_seq_len=32", "--device_batch_size=4", "--total_batch_size=256",
                         "--num_iterations=3", "--device_type=cpu", "--model_tag=first_line", "--dry_run"])
    assert capsys.readouterr().out.splitlines()[0].startswith(line)
