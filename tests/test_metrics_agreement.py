"""Bland-Altman statistics and plot, scan-rescan coefficient of variation."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from cinema.metrics.agreement import bland_altman, bland_altman_plot, coefficient_of_variation


def test_bland_altman_hand_example():
    pred = [10.0, 12.0, 15.0, 20.0]
    ref = [11.0, 10.0, 15.0, 17.0]
    # differences -1, 2, 0, 3: bias 1, MAE 6/4 = 1.5, RMSE sqrt(14/4);
    # deviations from the bias -2, 1, -1, 2 -> sample variance 10/3.
    stats = bland_altman(pred, ref)
    sd = math.sqrt(10 / 3)
    assert stats["bias"] == pytest.approx(1.0)
    assert stats["mae"] == pytest.approx(1.5)
    assert stats["rmse"] == pytest.approx(math.sqrt(3.5))
    assert stats["sd"] == pytest.approx(sd)
    assert stats["loa_low"] == pytest.approx(1.0 - 1.96 * sd)
    assert stats["loa_high"] == pytest.approx(1.0 + 1.96 * sd)
    assert stats["n"] == 4 and stats["n_dropped"] == 0


def test_bland_altman_drops_and_counts_nonfinite_pairs():
    stats = bland_altman([10.0, 12.0, np.nan, 15.0, 20.0], [11.0, 10.0, 50.0, 15.0, 17.0])
    assert stats["n"] == 4 and stats["n_dropped"] == 1
    assert stats["bias"] == pytest.approx(1.0)
    single = bland_altman([3.0], [1.0])
    assert single["bias"] == 2.0 and math.isnan(single["sd"]) and math.isnan(single["loa_high"])
    with pytest.raises(ValueError, match="length"):
        bland_altman([1.0, 2.0], [1.0])


def _png_size(path):
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_bland_altman_plot_writes_png_atomically(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    ref = rng.uniform(30, 70, 40)
    pred = ref + rng.normal(1.0, 3.0, 40)
    out = bland_altman_plot(pred, ref, tmp_path / "lvef.png", title="LVEF", unit="%")
    assert out == tmp_path / "lvef.png"
    assert _png_size(out) == (720, 540)  # 6 x 4.5 inches at 120 dpi
    assert [p.name for p in tmp_path.iterdir()] == ["lvef.png"]

    # A failure while rendering leaves the previous file intact and no temporary file behind.
    before = out.read_bytes()
    from matplotlib.figure import Figure

    def broken_savefig(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        bland_altman_plot(pred, ref, out)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["lvef.png"]


def test_bland_altman_plot_output_folder_and_empty_input(tmp_path):
    nested = bland_altman_plot([1.0, 2.0], [1.0, 2.5], tmp_path / "new" / "ba.png")  # folder created
    assert _png_size(nested) == (720, 540)
    with pytest.raises(ValueError, match="no finite pairs"):
        bland_altman_plot([np.nan], [1.0], tmp_path / "ba.png")


def test_coefficient_of_variation_hand_example():
    # pair 1: within-variance (100 - 110)^2 / 2 = 50, mean 105 -> 50 / 105^2; pair 2 identical -> 0.
    # CV = sqrt((50 / 105^2 + 0) / 2) = sqrt(25 / 105^2) = 5 / 105.
    assert coefficient_of_variation([100.0, 50.0], [110.0, 50.0]) == pytest.approx(5 / 105)
    assert coefficient_of_variation([80.0, 120.0], [80.0, 120.0]) == 0.0
    # Symmetric in the two scans and scale-free.
    a, b = np.array([60.0, 75.0, 90.0]), np.array([66.0, 70.0, 95.0])
    assert coefficient_of_variation(a, b) == pytest.approx(coefficient_of_variation(b, a))
    assert coefficient_of_variation(10 * a, 10 * b) == pytest.approx(coefficient_of_variation(a, b))
    with pytest.raises(ValueError, match="zero"):
        coefficient_of_variation([1.0, -1.0], [-1.0, 1.0])
