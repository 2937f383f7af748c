"""Inference engines for the shipped SAX ensemble, measured side by side in one process on this machine.

One case is one forward pass of the shipped three-member ensemble (`cinema/weights/sax_segmentation_unet2d`) on a
batch of model-space slices, as `cinema analyze` runs it (2.5-D: each slice with its two neighbours, 128 x 128 at
1.5 mm), from real ACDC frames. Engines, each where it is installed:

- ``eager fp32``: PyTorch as shipped (the baseline every ratio is against);
- ``channels_last``: the same modules with NHWC memory format;
- ``bf16 autocast``: only where the CPU computes bf16 natively (AMX or AVX-512 BF16);
- ``torch.compile``: inductor, compile time reported separately (a one-shot command pays it every run);
- ``onnxruntime`` / ``openvino``: what ``--engine`` runs (`cinema.models.engines`): the ensemble exported to ONNX
  once (its time printed apart), then run by ONNX Runtime's CPU provider or compiled by OpenVINO for the CPU.

Repeats are interleaved across engines (engine A, B, C, A, B, C, ...) so a busy machine slows all alike; the table
gives the median seconds per batch, the ratio to eager fp32 and max |Δ probability| against eager fp32.

    .venv/bin/python benchmarks/engines.py [--batch 30] [--repeats 7] [--threads 2] [--engines ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from machine import bf16_flags, describe
from torch import nn

ENGINES = ("eager fp32", "channels_last", "bf16 autocast", "torch.compile", "onnxruntime", "openvino")


class EnsembleProbabilities(nn.Module):
    """The shipped ensemble as a tensor -> tensor function: (N, 3, X, Y) slices -> (N, C, X, Y) mean softmax."""

    def __init__(self, network: nn.Module, view: str) -> None:
        super().__init__()
        self.network, self.view = network, view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.network({self.view: x})[self.view])


def real_slices(shared: Path, n: int) -> np.ndarray:
    """``n`` model-space 2.5-D samples (n, 3, 128, 128) from ACDC ED/ES frames, as the predictor builds them."""
    from cinema.analysis.segment import _model_space, load_segmentation_model
    from cinema.io import read_study
    from cinema.preprocess import locate_study_heart
    from cinema.preprocess.slices import neighbour_slices

    model = load_segmentation_model(None)
    samples = []
    for patient in sorted((shared / "data" / "acdc").glob("patient*")):
        study = read_study(patient)
        view = study.view("sax")
        center = np.asarray(locate_study_heart(study, "sax").center_mm)
        images, _ = _model_space(view, list(range(view.n_frames)), model, center)
        stacked = neighbour_slices(images.transpose(3, 0, 1, 2), model.context_slices)  # (F, X, Y, Z, 3)
        samples.append(stacked.transpose(0, 3, 4, 1, 2).reshape(-1, stacked.shape[-1], *stacked.shape[1:3]))
        if sum(len(s) for s in samples) >= n:
            break
    return np.ascontiguousarray(np.concatenate(samples)[:n], dtype=np.float32)


def build_engines(
    module: nn.Module, example: torch.Tensor, wanted: list[str], tmp: Path
) -> dict[str, tuple[Callable[[torch.Tensor], np.ndarray], float]]:
    """engine name -> (run function, set-up seconds) for the engines that are installed and wanted."""
    engines: dict[str, tuple[Callable[[torch.Tensor], np.ndarray], float]] = {}

    def timed(build: Callable[[], Callable[[torch.Tensor], np.ndarray]]) -> tuple[Callable, float]:
        started = time.perf_counter()
        run = build()
        run(example)  # first call: compilation, allocation
        return run, time.perf_counter() - started

    @torch.no_grad()
    def eager(x: torch.Tensor) -> np.ndarray:
        return module(x).numpy()

    if "eager fp32" in wanted:
        engines["eager fp32"] = timed(lambda: eager)
    if "channels_last" in wanted:
        nhwc = EnsembleProbabilities(module.network, module.view)
        import copy

        nhwc = copy.deepcopy(nhwc).to(memory_format=torch.channels_last)

        @torch.no_grad()
        def channels_last(x: torch.Tensor) -> np.ndarray:
            return nhwc(x.contiguous(memory_format=torch.channels_last)).contiguous().numpy()

        engines["channels_last"] = timed(lambda: channels_last)
    if "bf16 autocast" in wanted and bf16_flags():

        @torch.no_grad()
        def bf16(x: torch.Tensor) -> np.ndarray:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return module(x).float().numpy()

        engines["bf16 autocast"] = timed(lambda: bf16)
    if "torch.compile" in wanted:
        try:
            compiled = torch.compile(module)

            @torch.no_grad()
            def run_compiled(x: torch.Tensor) -> np.ndarray:
                return compiled(x).numpy()

            engines["torch.compile"] = timed(lambda: run_compiled)
        except Exception as err:  # noqa: BLE001  (a missing compiler is a row, not a crash)
            print(f"torch.compile: not available ({type(err).__name__}: {str(err)[:120]})")
    exported = [engine for engine in ("onnxruntime", "openvino") if engine in wanted]
    if exported:
        # the shipped path (cinema.models.engines): the export cached once, each engine building its runner from it
        from cinema.models.engines import engine_available, exported_network, runner_for

        os.environ["CINEMA_CACHE_DIR"] = str(tmp)
        view, in_chans, size = module.view, example.shape[1], tuple(example.shape[2:])
        started = time.perf_counter()
        exported_network(module.network, view, in_chans, size)
        print(f"ONNX export (once per set of weights, then cached): {time.perf_counter() - started:.1f} s")
        for engine in exported:
            if not engine_available(engine):
                print(f"{engine}: not installed (pip install {engine} onnx)")
                continue

            def build(engine: str = engine) -> Callable[[torch.Tensor], np.ndarray]:
                runner = runner_for(module.network, engine, view, in_chans, size)
                return lambda x: torch.exp(runner({view: x})[view]).numpy()

            engines[engine] = timed(build)
    return engines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared-dir", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared")
    parser.add_argument("--batch", type=int, default=30, help="slices per forward (the predictor's default batch)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from cinema.analysis.segment import load_segmentation_model

    print(describe(), f"| torch {torch.__version__}, {args.threads} threads, batch {args.batch} slices")
    model = load_segmentation_model(None)
    module = EnsembleProbabilities(model.network, model.view).eval()
    example = torch.from_numpy(real_slices(args.shared_dir, args.batch))
    with tempfile.TemporaryDirectory() as tmp:
        engines = build_engines(module, example, args.engines, Path(tmp))
        reference = engines["eager fp32"][0](example) if "eager fp32" in engines else module(example).detach().numpy()
        times: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(args.repeats):
            for name, (run, _) in engines.items():
                started = time.perf_counter()
                run(example)
                times[name].append(time.perf_counter() - started)
        outputs = {name: run(example) for name, (run, _) in engines.items()}
    base = statistics.median(times["eager fp32"]) if "eager fp32" in times else float("nan")
    print("\n| engine | set-up s | s per batch (median) | vs eager fp32 | max abs diff prob |")
    print("|---|---|---|---|---|")
    for name, (_, setup) in engines.items():
        median = statistics.median(times[name])
        diff = float(np.abs(outputs[name].astype(np.float64) - reference).max())
        print(f"| {name} | {setup:.1f} | {median:.3f} | {base / median:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
