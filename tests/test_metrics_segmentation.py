"""Segmentation and cardiac-function metrics: hand-made examples and real ACDC labels."""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cinema.metrics.segmentation import (
    cardiac_case_metrics,
    class_volumes_ml,
    dice_per_class,
    ef_category,
    ejection_fraction,
    hausdorff95_mm,
    hausdorff_mm,
    lv_mass_g,
    spacing_from,
    surface_distances_mm,
    ventricular_function,
    volume_curve,
)

ACDC_PATIENTS = ("patient001", "patient021", "patient041")  # DCM, HCM, MINF: different sizes and shapes


def _load_acdc(acdc_dir: Path, patient: str) -> dict:
    info = dict(line.split(": ") for line in (acdc_dir / patient / "Info.cfg").read_text().splitlines() if line)
    frames = {}
    for phase in ("ED", "ES"):
        image = nib.load(acdc_dir / patient / f"{patient}_frame{int(info[phase]):02d}_gt.nii.gz")
        frames[phase] = (np.asarray(image.dataobj).astype(np.int64), image.affine, image.header.get_zooms()[:3])
    return frames


def test_dice_hand_example():
    pred = np.array([[1, 1, 0, 3], [2, 2, 0, 0]])
    gt = np.array([[1, 0, 0, 0], [2, 2, 2, 0]])
    # RV (1): |P|=2, |G|=1, overlap 1 -> 2*1/3. MYO (2): |P|=2, |G|=3, overlap 2 -> 4/5.
    # LV (3): |P|=1, |G|=0 -> 0.
    scores = dice_per_class(pred, gt)
    assert scores == pytest.approx({1: 2 / 3, 2: 0.8, 3: 0.0})


def test_dice_empty_vs_empty_is_one():
    empty = np.zeros((4, 4), dtype=np.uint8)
    assert dice_per_class(empty, empty) == {1: 1.0, 2: 1.0, 3: 1.0}
    one_voxel = empty.copy()
    one_voxel[0, 0] = 3
    assert dice_per_class(one_voxel, empty)[3] == 0.0


def test_dice_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        dice_per_class(np.zeros((3, 3)), np.zeros((3, 4)))


def test_spacing_from_rotated_affine():
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.25, 0.8, 8.0])
    assert spacing_from(affine, 3) == pytest.approx([1.25, 0.8, 8.0])
    assert spacing_from(affine, 2) == pytest.approx([1.25, 0.8])
    with pytest.raises(ValueError, match="positive"):
        spacing_from((1.0, 0.0, 1.0), 3)
    with pytest.raises(ValueError, match="dimensions"):
        spacing_from((1.0, 1.0), 3)


@pytest.mark.parametrize(("axis", "shift"), list(itertools.product(range(3), (1, 2, 3))))
def test_hd95_of_shifted_box_is_shift_times_spacing(axis, shift):
    spacing = (1.5, 0.7, 10.0)
    gt = np.zeros((30, 30, 12), dtype=bool)
    gt[5:13, 5:13, 4:6] = True  # 8x8x2 box: every voxel is on the surface (it touches a top or bottom face)
    pred = np.roll(gt, shift, axis=axis)
    # The shifted box has 128 surface voxels; those still inside the old box are at distance 0, the j-th new slab
    # (j = 1..shift) is j*spacing[axis] from the old surface. The last slab alone holds 16 (or 32 for the thin z axis
    # of 64) voxels, >= 12.5 % of the surface, so the 95th percentile in both directions is exactly shift*spacing.
    expected = shift * spacing[axis]
    assert hausdorff95_mm(pred.astype(np.uint8) * 3, gt.astype(np.uint8) * 3, spacing)[3] == pytest.approx(expected)
    assert hausdorff_mm(pred, gt, spacing, percentile=100) == pytest.approx(expected)


def test_surface_distances_match_brute_force():
    rng = np.random.default_rng(3)
    pred = np.zeros((14, 11), dtype=bool)
    gt = np.zeros((14, 11), dtype=bool)
    pred[2:9, 1:7] = True
    gt[4:13, 3:11] = True  # touches the array border: border voxels must count as surface
    pred &= rng.random(pred.shape) > 0.15
    spacing = (0.9, 2.3)

    def surface_points(mask):
        # Independent surface definition: a voxel with a 4-neighbour outside the mask or outside the array.
        padded = np.pad(mask, 1)
        inner = padded[1:-1, 1:-1]
        all_neighbours_in = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        return np.argwhere(inner & ~all_neighbours_in) * np.asarray(spacing)

    p, g = surface_points(pred), surface_points(gt)
    pairwise = np.linalg.norm(p[:, None, :] - g[None, :, :], axis=-1)
    pred_to_gt, gt_to_pred = surface_distances_mm(pred, gt, spacing)
    np.testing.assert_allclose(np.sort(pred_to_gt), np.sort(pairwise.min(axis=1)), atol=1e-9)
    np.testing.assert_allclose(np.sort(gt_to_pred), np.sort(pairwise.min(axis=0)), atol=1e-9)
    expected_hd95 = max(np.percentile(pairwise.min(axis=1), 95), np.percentile(pairwise.min(axis=0), 95))
    assert hausdorff_mm(pred, gt, spacing) == pytest.approx(expected_hd95)
    assert hausdorff_mm(gt, pred, spacing) == pytest.approx(expected_hd95)  # symmetric


def test_hd95_empty_is_nan():
    mask = np.zeros((5, 5, 5), dtype=np.uint8)
    other = mask.copy()
    other[2, 2, 2] = 1
    assert np.isnan(hausdorff95_mm(mask, mask, (1, 1, 1))[1])
    assert np.isnan(hausdorff95_mm(other, mask, (1, 1, 1))[1])
    assert np.isnan(hausdorff95_mm(mask, other, (1, 1, 1))[1])


def test_ejection_fraction_mass_and_category():
    assert ejection_fraction(150.0, 60.0) == pytest.approx(60.0)  # (150 - 60) / 150 * 100
    np.testing.assert_allclose(ejection_fraction(np.array([200.0, 0.0]), np.array([150.0, 10.0])), [25.0, np.nan])
    assert ejection_fraction(100.0, 120.0) == pytest.approx(-20.0)  # kept, not clipped: a visible failure
    assert lv_mass_g(100.0) == pytest.approx(105.0)  # 100 ml x 1.05 g/ml
    np.testing.assert_array_equal(ef_category(np.array([12.0, 40.0, 40.5, 55.0, 55.5])), [0, 0, 1, 1, 2])
    assert ef_category(62.0) == 2


def test_volume_curve_hand_example():
    labels = np.zeros((2, 3, 1, 2), dtype=np.uint8)  # (x, y, z, t)
    labels[0, :, 0, 0] = 3  # frame 0: 3 LV voxels
    labels[1, 0, 0, 0] = 1  # frame 0: 1 RV voxel
    labels[:, :2, 0, 1] = 2  # frame 1: 4 MYO voxels
    # voxel = 2 x 1 x 5 mm = 10 mm^3 = 0.01 ml
    np.testing.assert_allclose(volume_curve(labels, (2.0, 1.0, 5.0)), [[0.01, 0.0, 0.03], [0.0, 0.04, 0.0]])
    # Time axis first gives the same curve.
    np.testing.assert_allclose(
        volume_curve(np.moveaxis(labels, -1, 0), (2.0, 1.0, 5.0), time_axis=0), volume_curve(labels, (2, 1, 5))
    )


@pytest.mark.parametrize("patient", ACDC_PATIENTS)
def test_acdc_dice_hd95_and_volumes(acdc_dir, patient):
    frames = _load_acdc(acdc_dir, patient)
    ed, affine, zooms = frames["ED"]
    es = frames["ES"][0]
    assert dice_per_class(ed, ed) == {1: 1.0, 2: 1.0, 3: 1.0}
    assert hausdorff95_mm(ed, ed, affine) == {1: 0.0, 2: 0.0, 3: 0.0}
    # ED vs ES labels of the same heart overlap partly: Dice strictly between 0 and 1, HD95 positive.
    for score in dice_per_class(es, ed).values():
        assert 0.0 < score < 1.0
    for distance in hausdorff95_mm(es, ed, affine).values():
        assert distance > 0.0

    voxel_ml = float(np.prod(zooms)) / 1000.0  # from the NIfTI header, independent of the affine path
    volumes = class_volumes_ml(ed, affine)
    for label in (1, 2, 3):
        assert volumes[label] == pytest.approx(np.count_nonzero(ed == label) * voxel_ml, rel=1e-6)
    curve = volume_curve(np.stack([ed, es], axis=-1), affine)
    assert curve[0] == pytest.approx([volumes[1], volumes[2], volumes[3]])
    es_volumes = class_volumes_ml(es, zooms)
    assert curve[1] == pytest.approx([es_volumes[1], es_volumes[2], es_volumes[3]])

    function = ventricular_function(ed, es, affine)
    assert function["lv_ef"] == pytest.approx((volumes[3] - es_volumes[3]) / volumes[3] * 100)
    assert function["lv_mass"] == pytest.approx(volumes[2] * 1.05)
    assert 0.0 < function["lv_ef"] < 80.0 and 0.0 < function["rv_ef"] < 80.0


def test_acdc_shifted_labels_bounded_by_shift(acdc_dir):
    ed, affine, zooms = _load_acdc(acdc_dir, "patient001")["ED"]
    shifted = np.roll(ed, 2, axis=0)  # 2 voxels along x; the heart is far from the border, so nothing wraps
    assert not shifted[:2].any()
    hd95 = hausdorff95_mm(shifted, ed, affine)
    full = {label: hausdorff_mm(shifted == label, ed == label, affine, 100) for label in (1, 2, 3)}
    for label in (1, 2, 3):
        # Every shifted surface voxel sits 2*dx from its original, itself a surface voxel: no distance can exceed it.
        assert 0.0 < hd95[label] <= full[label] <= 2 * zooms[0] + 1e-6
    # Dice of a 2-voxel shift on ~1.5 mm pixels stays high for the LV blood pool but drops for the thin myocardium.
    dice = dice_per_class(shifted, ed)
    assert 0.8 < dice[3] < 1.0 and dice[2] < dice[3]


def test_cardiac_case_metrics_on_acdc(acdc_dir):
    frames = _load_acdc(acdc_dir, "patient001")
    ed, affine, _ = frames["ED"]
    es, es_affine, _ = frames["ES"]
    row = cardiac_case_metrics(ed, ed, es, es, affine, es_affine)
    assert all(row[f"dice_{p}_{c}"] == 1.0 for p in ("ed", "es") for c in ("rv", "myo", "lv"))
    assert all(row[f"hd95_{p}_{c}"] == 0.0 for p in ("ed", "es") for c in ("rv", "myo", "lv"))
    for key in ("lv_edv", "lv_esv", "lv_ef", "rv_edv", "rv_esv", "rv_ef", "lv_mass"):
        assert row[f"{key}_pred"] == row[f"{key}_true"]
    # patient001 is a dilated cardiomyopathy case: large LV (12104 voxels x 1.5625^2 x 10 mm^3 = 295.5 ml), low EF.
    assert row["lv_edv_true"] == pytest.approx(12104 * 1.5625**2 * 10 / 1000)
    assert row["lv_ef_true"] < 40.0
    # Swapping in a wrong ES prediction (ED labels) gives EF 0 and a lower ES Dice.
    wrong = cardiac_case_metrics(ed, ed, ed, es, affine, es_affine)
    assert wrong["lv_ef_pred"] == 0.0 and wrong["dice_es_lv"] < 1.0
