"""`cinema cohort` decides a NIfTI's view as `cinema analyze` does: from an explicit view or the file name, a stack of
several slices being SAX; a single-slice file with no view named, or a long-axis cine, is a failed row saying why,
never a short-axis row with volumes of zero."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cinema.cli import main
from cinema.cohort import find_exams, read_exam
from cinema.cohort.exams import Exam
from cinema.io.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def inputs(short_cine, tmp_path_factory) -> dict[str, Path]:
    """The short SAX cine under a name that says no view, and one of its slices over time, as a long-axis cine is
    stored (x, y, 1, t), once named ``..._lax_4c`` and once unnamed."""
    root = tmp_path_factory.mktemp("cohort-views")
    source = nib.load(str(short_cine))
    data = np.asarray(source.dataobj)
    paths = {"stack": root / "exam_a.nii.gz", "lax": root / "exam_b_lax_4c.nii.gz", "unnamed": root / "exam_c.nii.gz"}
    nib.save(nib.Nifti1Image(data, source.affine, source.header), str(paths["stack"]))
    one_slice = data[:, :, data.shape[2] // 2 : data.shape[2] // 2 + 1]
    for key in ("lax", "unnamed"):
        nib.save(nib.Nifti1Image(one_slice, source.affine, source.header), str(paths[key]))
    return paths


def _nifti_exam(path: Path) -> Exam:
    (exam,) = find_exams([path])
    assert exam.kind == "nifti"
    return exam


def test_read_exam_takes_the_view_from_the_name_or_the_caller(inputs):
    study, spatial_only = read_exam(_nifti_exam(inputs["stack"]))
    assert study.view_names == ["sax"] and study.sax.n_frames == 6 and not spatial_only

    with pytest.raises(InputError, match=r"no short-axis cine \(views: lax_4c\).*--lax-weights"):
        read_exam(_nifti_exam(inputs["lax"]))
    with pytest.raises(InputError, match="single-slice image and the file name does not say which view it is"):
        read_exam(_nifti_exam(inputs["unnamed"]))
    # an explicit view decides, for a one-slice short-axis stack as for a long-axis cine under a neutral name
    study, _ = read_exam(_nifti_exam(inputs["unnamed"]), view="sax")
    assert study.sax.spatial_shape[2] == 1
    with pytest.raises(InputError, match=r"no short-axis cine \(views: lax_4c\)"):
        read_exam(_nifti_exam(inputs["unnamed"]), view="4ch")


def test_cohort_rows_of_long_axis_and_unnamed_single_slice_niftis_fail_with_the_reason(inputs, tiny_weights, tmp_path):
    out = tmp_path / "cohort"
    args = ["cohort", *(str(p) for p in inputs.values()), "-o", str(out), "--weights", str(tiny_weights), "--quiet"]
    assert main(args) == 0
    records = {}
    for line in (out / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        records[record["exam_id"]] = record
    assert {i: r["status"] for i, r in records.items()} == {
        "exam_a": "done",
        "exam_b_lax_4c": "failed",
        "exam_c": "failed",
    }
    assert records["exam_a"]["metrics"]["lv_edv_ml"] is not None
    lax, unnamed = records["exam_b_lax_4c"]["error"], records["exam_c"]["error"]
    assert lax.startswith("exam_b_lax_4c: no short-axis cine (views: lax_4c)") and "cinema analyze" in lax
    assert unnamed.startswith("exam_c: single-slice image and the file name does not say which view it is")
    assert not records["exam_b_lax_4c"]["metrics"] and not records["exam_c"]["metrics"]
