"""Which engine runs a segmentation network at inference: PyTorch eager, or ONNX Runtime where it is installed.

Chosen by measurement (`benchmarks/engines.py`, docs/model-card.md "Inference engines"): for the shipped 2-D U-Net
ensemble on a CPU, ONNX Runtime's CPU provider ran the same fp32 arithmetic faster than PyTorch eager with
probabilities equal to ~1e-6, while ``torch.compile`` costs minutes of compilation per process and channels-last
was slower. ONNX Runtime is an optional dependency (``pip install 'cinema[onnx]'``): without it everything runs in
PyTorch, with it ``auto`` picks it for fp32 CPU inference.

The network is exported once per set of weights (and PyTorch / ONNX Runtime version) into the user's cache folder
(``$CINEMA_CACHE_DIR``, else ``$XDG_CACHE_HOME/cinema``, else ``~/.cache/cinema``), written atomically, and reused by
later processes; an unwritable cache falls back to a private temporary folder for the process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cinema.io.atomic import write_bytes_atomic

__all__ = ["ENGINES", "OnnxRuntimeNetwork", "cache_dir", "onnxruntime_available", "resolve_engine", "runner_for"]

logger = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnxruntime")
ONNX_OPSET = 17

Network = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def resolve_engine(engine: str, device: torch.device | str, amp: bool) -> str:
    """``torch`` or ``onnxruntime`` for `engine` (auto, torch, onnxruntime) on `device` at the given precision.

    ``auto`` is ONNX Runtime for fp32 on a CPU when it is installed, else PyTorch; asking for ``onnxruntime`` where it
    cannot run (not installed, a GPU, bf16) is an error rather than a silent change of engine.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    on_cpu = torch.device(device).type == "cpu"
    if engine == "auto":
        return "onnxruntime" if on_cpu and not amp and onnxruntime_available() else "torch"
    if engine == "onnxruntime":
        if not onnxruntime_available():
            raise ValueError("engine onnxruntime needs `pip install onnxruntime onnx` (or the cinema[onnx] extra)")
        if not on_cpu or amp:
            raise ValueError("engine onnxruntime runs fp32 on the CPU only; use --engine torch for a GPU or bf16")
    return engine


def cache_dir() -> Path:
    """Where exported networks are kept between runs."""
    explicit = os.environ.get("CINEMA_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "cinema"


def _weights_key(network: nn.Module, view: str, in_chans: int) -> str:
    import onnxruntime

    digest = hashlib.sha256(f"{view}|{in_chans}|{torch.__version__}|{onnxruntime.__version__}".encode())
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


class _TensorInterface(nn.Module):
    """``x -> logits`` for one view: the exported graph has one input and one output."""

    def __init__(self, network: nn.Module, view: str) -> None:
        super().__init__()
        self.network, self.view = network, view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network({self.view: x})[self.view]


def _export(network: nn.Module, view: str, in_chans: int, size: tuple[int, int]) -> bytes:
    """The ONNX bytes of `network` for (N, in_chans, X, Y) input, batch and in-plane size dynamic."""
    example = torch.zeros(1, in_chans, *size)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes are not the user's concern
        path = Path(tmp) / "network.onnx"
        torch.onnx.export(
            _TensorInterface(network, view).eval(),
            (example,),
            str(path),
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "n", 2: "x", 3: "y"}, "logits": {0: "n", 2: "x", 3: "y"}},
            opset_version=ONNX_OPSET,
            dynamo=False,  # the TorchScript exporter: no onnxscript dependency, and dynamic in-plane sizes
        )
        return path.read_bytes()


class OnnxRuntimeNetwork:
    """A 2-D segmentation network run by ONNX Runtime, called like the module: ``{view: x} -> {view: logits}``."""

    def __init__(self, network: nn.Module, view: str, in_chans: int, size: tuple[int, int]) -> None:
        import onnxruntime

        self.view = view
        key = _weights_key(network, view, in_chans)
        path = cache_dir() / "onnx" / f"{key}.onnx"
        if not path.exists():
            data = _export(network, view, in_chans, size)
            try:
                write_bytes_atomic(path, data)
            except OSError as err:  # a read-only home: export for this process only
                logger.info("cannot cache the exported network in %s (%s); using a temporary copy", path.parent, err)
                private = Path(tempfile.mkdtemp(prefix="cinema-onnx-"))
                path = private / f"{key}.onnx"
                path.write_bytes(data)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3  # errors only: its graph-optimisation notes would reach the user's terminal
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path

    def __call__(self, views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = np.ascontiguousarray(views[self.view].detach().cpu().numpy(), dtype=np.float32)
        (logits,) = self.session.run(None, {"x": x})
        return {self.view: torch.from_numpy(logits)}


def runner_for(network: nn.Module, engine: str, view: str, in_chans: int, size: tuple[int, int]) -> Network:
    """What inference calls for `network` under a resolved `engine` (``torch``: the module itself)."""
    if engine == "torch":
        return network
    return OnnxRuntimeNetwork(network, view, in_chans, size)
