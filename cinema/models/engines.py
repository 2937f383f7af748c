"""Which engine runs a segmentation network at inference: PyTorch eager, ONNX Runtime or OpenVINO where installed.

Chosen by measurement (`benchmarks/engines.py`, docs/model-card.md "Precision and engines"): for the shipped 2-D U-Net
ensemble on a CPU, OpenVINO and ONNX Runtime ran the same fp32 arithmetic faster than PyTorch eager (OpenVINO the
fastest) with probabilities equal to ~1e-5, while ``torch.compile`` costs most of a minute of compilation per
process and channels-last was slower. Both are optional dependencies (``pip install 'cinema[onnx]'`` or
``'cinema[openvino]'``): without them everything runs in PyTorch. ``auto`` picks ONNX Runtime for fp32 CPU inference;
OpenVINO runs only when named, because a long test session that compiled OpenVINO models next to PyTorch in one
process once ended in a segmentation fault that we could not trace. Both run the same exported ONNX file.

The network is exported once per set of weights (and PyTorch version) into the user's cache folder
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

__all__ = [
    "ENGINES",
    "EXPORTED_ENGINES",
    "OnnxRuntimeNetwork",
    "OpenVinoNetwork",
    "cache_dir",
    "engine_available",
    "exported_network",
    "resolve_engine",
    "runner_for",
]

logger = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnxruntime", "openvino")
EXPORTED_ENGINES = ("onnxruntime", "openvino")  # run the exported ONNX file, in fp32
# what ``auto`` may pick, in order: OpenVINO only when named (see the module notes)
AUTO_ORDER = ("onnxruntime",)
_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
ONNX_OPSET = 17

Network = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def engine_available(engine: str) -> bool:
    """Whether `engine` can be imported here (``torch`` always; the others also need ``onnx`` to export)."""
    if engine == "torch":
        return True
    return importlib.util.find_spec(_MODULES[engine]) is not None and importlib.util.find_spec("onnx") is not None


def resolve_engine(engine: str, device: torch.device | str, amp: bool) -> str:
    """``torch``, ``openvino`` or ``onnxruntime`` for `engine` on `device` at the given precision.

    ``auto`` is ONNX Runtime for fp32 on a CPU where it is installed, else PyTorch; asking for an engine that cannot
    run (not installed, a GPU, bf16) is an error rather than a silent change of engine.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    on_cpu = torch.device(device).type == "cpu"
    if engine == "auto":
        if not on_cpu or amp:
            return "torch"
        return next((e for e in AUTO_ORDER if engine_available(e)), "torch")
    if engine != "torch":
        if not engine_available(engine):
            raise ValueError(
                f"engine {engine} needs `pip install {_MODULES[engine]} onnx` (or the cinema[{_extra(engine)}] extra)"
            )
        if not on_cpu or amp:
            raise ValueError(f"engine {engine} runs fp32 on the CPU only; use --engine torch for a GPU or bf16")
    return engine


def _extra(engine: str) -> str:
    return "onnx" if engine == "onnxruntime" else engine


def cache_dir() -> Path:
    """Where exported networks are kept between runs."""
    explicit = os.environ.get("CINEMA_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "cinema"


def _weights_key(network: nn.Module, view: str, in_chans: int, size: tuple[int, int]) -> str:
    """The exported file's name: the weights, the input layout and the exporter (PyTorch) version."""
    digest = hashlib.sha256(f"{view}|{in_chans}|{size}|{torch.__version__}|opset{ONNX_OPSET}".encode())
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
    """The ONNX bytes of `network` for (N, in_chans, X, Y) input, the batch dynamic: inference always feeds windows
    of the model's patch size, and static in-plane sizes keep transformer graphs convertible."""
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
            dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
            opset_version=ONNX_OPSET,
            dynamo=False,  # the TorchScript exporter: no onnxscript dependency
        )
        return path.read_bytes()


def exported_network(network: nn.Module, view: str, in_chans: int, size: tuple[int, int]) -> Path:
    """The ONNX file of `network` in the cache, exported now if it is not there yet."""
    key = _weights_key(network, view, in_chans, size)
    path = cache_dir() / "onnx" / f"{key}.onnx"
    if path.exists():
        return path
    data = _export(network, view, in_chans, size)
    try:
        write_bytes_atomic(path, data)
    except OSError as err:  # a read-only home: export for this process only
        logger.info("cannot cache the exported network in %s (%s); using a temporary copy", path.parent, err)
        path = Path(tempfile.mkdtemp(prefix="cinema-onnx-")) / f"{key}.onnx"
        path.write_bytes(data)
    return path


class OnnxRuntimeNetwork:
    """A 2-D segmentation network run by ONNX Runtime, called like the module: ``{view: x} -> {view: logits}``."""

    def __init__(self, network: nn.Module, view: str, in_chans: int, size: tuple[int, int]) -> None:
        import onnxruntime

        self.view = view
        self.path = exported_network(network, view, in_chans, size)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3  # errors only: its graph-optimisation notes would reach the user's terminal
        self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def __call__(self, views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = np.ascontiguousarray(views[self.view].detach().cpu().numpy(), dtype=np.float32)
        (logits,) = self.session.run(None, {"x": x})
        return {self.view: torch.from_numpy(logits)}


class OpenVinoNetwork:
    """The same exported network compiled by OpenVINO for the CPU, in fp32 (no bf16 or int8 of its own choosing)."""

    def __init__(self, network: nn.Module, view: str, in_chans: int, size: tuple[int, int]) -> None:
        import openvino

        self.view = view
        self.path = exported_network(network, view, in_chans, size)
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        self.compiled = openvino.Core().compile_model(str(self.path), "CPU", config)

    def __call__(self, views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = np.ascontiguousarray(views[self.view].detach().cpu().numpy(), dtype=np.float32)
        logits = self.compiled(x)[0]
        return {self.view: torch.from_numpy(np.array(logits, dtype=np.float32))}


def runner_for(network: nn.Module, engine: str, view: str, in_chans: int, size: tuple[int, int]) -> Network:
    """What inference calls for `network` under a resolved `engine` (``torch``: the module itself)."""
    if engine == "torch":
        return network
    if engine == "openvino":
        return OpenVinoNetwork(network, view, in_chans, size)
    return OnnxRuntimeNetwork(network, view, in_chans, size)
