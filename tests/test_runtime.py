"""The one place that decides the device and each stage's precision."""
import pytest
import torch

from headbench import runtime
from headbench.errors import HeadbenchError
from headbench.runtime import Runtime, resolve_device, resolve_precision


@pytest.fixture
def avx2_only(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2", "fma"}))


@pytest.fixture
def avx512_bf16(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))


@pytest.fixture
def amx(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16"}))


def test_default_device_is_cuda_only_when_available():
    assert resolve_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_unknown_device_is_one_line_naming_the_parameter():
    with pytest.raises(HeadbenchError, match="unknown device 'gpu'") as e:
        resolve_device("gpu")
    assert e.value.param == "device"


def test_unknown_precision_names_the_choices():
    with pytest.raises(HeadbenchError, match="precision 'fp16'.*auto, bf16, fp32") as e:
        resolve_precision("fp16", "cpu")
    assert e.value.param == "precision"


def test_auto_extracts_in_fp32_without_native_bf16(avx2_only):
    assert resolve_precision("auto", "cpu", "extract") == "fp32"


def test_explicit_bf16_without_native_bf16_is_an_error(avx2_only):
    with pytest.raises(HeadbenchError, match="'bf16' is not supported.*use 'fp32' or 'auto'"):
        resolve_precision("bf16", "cpu", "finetune")


def test_auto_extracts_in_bf16_with_avx512_bf16(avx512_bf16):
    assert resolve_precision("auto", "cpu", "extract") == "bf16"


def test_auto_finetunes_in_fp32_on_a_cpu_without_amx(avx512_bf16):
    # the backward pass measured slower in bf16 there (bench/RESULTS.md (g))
    assert resolve_precision("auto", "cpu", "finetune") == "fp32"
    assert resolve_precision("bf16", "cpu", "finetune") == "bf16"  # asked for: obeyed


def test_auto_finetunes_in_bf16_with_amx(amx):
    assert resolve_precision("auto", "cpu", "finetune") == "bf16"


def test_heads_train_in_fp32_unless_bf16_is_asked_for(amx):
    assert Runtime.resolve("auto", "cpu").heads == "fp32"  # head_precision defaults to fp32
    assert Runtime.resolve("auto", "cpu", head_precision="auto").heads == "bf16"
    assert resolve_precision("bf16", "cpu", "heads") == "bf16"


def test_bf16_heads_without_native_bf16_is_an_error_naming_the_option(avx2_only):
    assert Runtime.resolve("auto", "cpu", head_precision="auto").heads == "fp32"
    with pytest.raises(HeadbenchError, match="'bf16' is not supported") as e:
        Runtime.resolve("fp32", "cpu", head_precision="bf16")
    assert e.value.param == "head_precision"  # the CLI names --head-precision


def test_runtime_resolves_every_stage_once(avx512_bf16):
    rt = Runtime.resolve("auto", "cpu")
    assert (rt.extract, rt.heads, rt.finetune) == ("bf16", "fp32", "fp32")
    assert rt.autocast_dtype("extract") is torch.bfloat16 and rt.autocast_dtype("heads") is None


def test_machine_records_the_cpu_flags_benchmarks_depend_on(amx):
    assert runtime.machine()["cpu_flags"] == ["amx_bf16", "avx512_bf16"]
