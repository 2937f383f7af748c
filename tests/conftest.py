"""Shared test fixtures: where the project's real data lives.

The data in ../shared is not part of the package; a user's clone without it skips those tests with a clear reason,
and CI (where it is always there) fails them instead.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("CINEMA_SHARED_DIR", REPO_ROOT.parent / "shared"))

# The per-installation pseudonym secret (cinema.io.privacy) of the test run lives in a throw-away folder, not in the
# user's ~/.config; subprocesses inherit it.
os.environ.setdefault("CINEMA_CONFIG_DIR", tempfile.mkdtemp(prefix="cinema-test-config-"))
# networks exported for ONNX Runtime / OpenVINO go to a folder of the session, never into the user's cache
os.environ["CINEMA_CACHE_DIR"] = tempfile.mkdtemp(prefix="cinema-test-cache-")

# Two cores in CI: keep torch from oversubscribing when tests run in parallel processes.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _require(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"shared data not found at {path}: CI always has it (set CINEMA_SHARED_DIR)")
        pytest.skip(f"shared data not found at {path} (set CINEMA_SHARED_DIR)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _require(SHARED_DIR)


@pytest.fixture(scope="session")
def acdc_dir() -> Path:
    return _require(SHARED_DIR / "data" / "acdc")


@pytest.fixture(scope="session")
def sunnybrook_dir() -> Path:
    return _require(SHARED_DIR / "data" / "sunnybrook")


@pytest.fixture(scope="session")
def preprocessed_dir() -> Path:
    return _require(SHARED_DIR / "data" / "preprocessed_examples")


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return _require(Path(os.environ.get("CINEMA_GOLDEN_DIR", SHARED_DIR / "golden")))


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """A small random 2-D slice U-Net in the shipped model's format: fast, and its labels are arbitrary."""
    from cinema.models.checkpoint import save_model
    from cinema.models.unet import UNet, unet_config

    torch.manual_seed(0)
    config = unet_config(view="sax", n_dims=2, chans=(4, 8), patch_size=(2, 2), scale_factor=(2, 2), dropout=0.0)
    config["task"] = "segmentation"
    config["data"]["sax"] = {"spacing": [1.5, 1.5], "patch_size": [32, 32], "in_chans": 1}
    folder = tmp_path_factory.mktemp("weights") / "tiny"
    save_model(UNet.from_config(config), folder)
    return folder


@pytest.fixture(scope="session")
def short_cine(tmp_path_factory):
    """The first 6 frames of the bundled exam as a 4-D SAX NIfTI: real anatomy, quick to analyse."""
    from cinema.analysis.analyze import example_study_path
    from cinema.io import CineView, read_study, write_cine_nifti

    sax = read_study(example_study_path()).sax
    view = CineView(image=sax.image[..., :6], affine=sax.affine, frame_times_ms=sax.frame_times_ms[:6], name="sax")
    path = tmp_path_factory.mktemp("cine") / "sax.nii.gz"
    write_cine_nifti(view, path)
    return path


@pytest.fixture
def one_thread():
    """One torch thread: tiny models gain nothing from threads, and on a shared 2-core machine OpenMP spinning costs
    a lot. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
