"""The numeric precision of inference: ``auto`` by default, bf16 only on CPUs that compute it natively."""

from __future__ import annotations

import pytest

from cinema.analysis.segment import InferenceOptions, SegmentationPredictor, load_segmentation_model
from cinema.cli import build_parser
from cinema.cli.options import amp_of
from cinema.models import precision

FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 {extra}\n"


@pytest.mark.parametrize(
    ("extra", "native"), [("", False), ("avx512_bf16", True), ("amx_bf16 amx_tile", True), ("avx512f", False)]
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, extra, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(FLAGS.format(extra=extra))
    assert precision.cpu_has_native_bf16(cpuinfo) is native
    assert precision.cpu_has_native_bf16(tmp_path / "missing") is False  # not Linux: never the slow choice


@pytest.mark.parametrize(
    ("flags", "auto"),
    [((), "fp32"), (("avx2", "avx512f"), "fp32"), (("avx512_bf16",), "bf16"), (("amx_bf16",), "bf16")],
)
def test_auto_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, flags, auto):
    # emulated bf16 is several times slower than fp32: never chosen on a CPU without the instructions
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    assert precision.resolve_precision("auto", "cpu") == auto
    assert precision.resolve_precision("auto", "cuda") == "fp32"
    assert precision.resolve_precision("fp32", "cpu") == "fp32" and precision.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.resolve_precision("fp16", "cpu")


@pytest.mark.parametrize("native", [False, True])
def test_predictor_resolves_auto_by_default(monkeypatch, tiny_weights, native):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"} if native else set()))
    model = load_segmentation_model(tiny_weights)
    auto = SegmentationPredictor(model)
    assert auto.options.amp is native and auto.precision == ("bf16" if native else "fp32")
    assert SegmentationPredictor(model, InferenceOptions(amp=False)).precision == "fp32"
    assert SegmentationPredictor(model, InferenceOptions(amp=True)).precision == "bf16"


@pytest.mark.parametrize("command", ["segment", "analyze", "cohort", "serve"])
def test_precision_option(command):
    parser = build_parser()
    required = {"segment": ["in.nii.gz", "out.nii.gz"], "analyze": [], "cohort": ["x", "-o", "o"], "serve": []}
    parse = lambda *extra: parser.parse_args([command, *required[command], *extra])  # noqa: E731
    assert amp_of(parse()) is None  # auto
    assert amp_of(parse("--precision", "fp32")) is False
    assert amp_of(parse("--precision", "bf16")) is True and amp_of(parse("--amp")) is True
