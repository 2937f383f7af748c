"""Options several sub-commands share, defined once so that they read and behave alike."""

from __future__ import annotations

import argparse


def add_study_option(parser: argparse.ArgumentParser, verb: str) -> None:
    """``--study ID``: which study to `verb` when a DICOM folder holds several (refused otherwise)."""
    parser.add_argument(
        "--study",
        dest="study_id",
        default=None,
        metavar="ID",
        help=f"the study to {verb} when a DICOM folder holds several (its pseudonym as listed in the error)",
    )


def add_force_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--force``: replace `what` only when it is cinema's own earlier output (`cinema.io.atomic`)."""
    parser.add_argument(
        "--force", action="store_true", help=f"replace {what} if it is an earlier cinema output (never anything else)"
    )


def add_precision_option(parser: argparse.ArgumentParser) -> None:
    """``--precision auto|fp32|bf16`` (``--amp`` = bf16): the segmentation network's numeric precision."""
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto (default): bf16 autocast on CPUs that compute bf16 natively (AMX or AVX-512 BF16; measured "
        "1.7-2x faster, Dice unchanged), fp32 elsewhere; fp32: the same numbers on every machine; bf16: always",
    )
    parser.add_argument(
        "--amp", dest="precision", action="store_const", const="bf16", help="the same as --precision bf16"
    )


# cinema.models.engines.ENGINES and cinema.analysis.segment.DEFAULT_ENGINE, written out: importing them would load
# PyTorch for `cinema --help` (tests/test_engines.py checks they agree)
ENGINE_CHOICES = ("auto", "torch", "onnxruntime", "openvino")
DEFAULT_ENGINE = "auto"


def add_engine_option(parser: argparse.ArgumentParser) -> None:
    """``--engine auto|torch|onnxruntime|openvino``: what runs the segmentation network (`cinema.models.engines`)."""
    parser.add_argument(
        "--engine",
        choices=ENGINE_CHOICES,
        default=DEFAULT_ENGINE,
        help=f"what runs the network (default {DEFAULT_ENGINE}): torch; openvino or onnxruntime (fp32 on a CPU, 2-D "
        "models, need `pip install 'cinema[openvino]'` or `'cinema[onnx]'`; the network is exported once into "
        "~/.cache/cinema); auto: onnxruntime where it can run, else torch",
    )


def amp_of(args: argparse.Namespace) -> bool | None:
    """`InferenceOptions.amp` for the parsed ``--precision``: None (auto), False (fp32) or True (bf16)."""
    return {"auto": None, "fp32": False, "bf16": True}[args.precision]
