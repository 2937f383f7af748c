"""`read_study`: one entry point that recognises what kind of input a path is."""

from __future__ import annotations

import os
from pathlib import Path

from cinema.io.datasets import (
    is_acdc_folder,
    is_cinema_preprocessed_folder,
    is_mnms_folder,
    read_acdc_patient,
    read_cinema_preprocessed,
    read_mnms_subject,
)
from cinema.io.dicom import read_dicom_study
from cinema.io.errors import InputError
from cinema.io.nifti import is_nifti_path, read_nifti_cine
from cinema.io.study import Study
from cinema.io.study_folder import is_study_folder, read_study_folder


def detect_input_kind(path: str | os.PathLike) -> str:
    """One of "nifti", "study_folder", "acdc", "mnms", "cinema_preprocessed", "dicom" (checked in that order), or
    ValueError."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_file():
        if is_nifti_path(path):
            return "nifti"
        if path.suffix.lower() == ".csv":
            raise InputError(f"{path}: a CSV manifest holds many studies; read it with cinema.io.read_manifest")
        return "dicom"  # a single DICOM file cannot hold a cine stack; read_dicom_study reports that clearly
    if is_study_folder(path):
        return "study_folder"
    if is_acdc_folder(path):
        return "acdc"
    if is_mnms_folder(path):
        return "mnms"
    if is_cinema_preprocessed_folder(path):
        return "cinema_preprocessed"
    return "dicom"


def read_study(
    path: str | os.PathLike, view: str | None = None, keep_phi: bool = False, study: str | None = None
) -> Study:
    """Read a study from a NIfTI file, a `cinema convert` folder, an ACDC/M&Ms folder, a subject folder of CineMA's
    preprocessed layout (``<pid>/<pid>_sax_ed.nii.gz`` ...) or a DICOM folder.

    `view` names the view of a NIfTI file when its name does not; `keep_phi` keeps patient fields of DICOM input;
    `study` picks one study (its pseudonym or UID) of a DICOM folder holding several, which is otherwise refused.
    """
    path = Path(path)
    kind = detect_input_kind(path)
    if kind == "nifti":
        cine = read_nifti_cine(path, view=view)
        return Study(views={cine.name: cine}, metadata={"source_format": "nifti"}, source=str(path))
    if kind == "study_folder":
        return read_study_folder(path)
    if kind == "acdc":
        return read_acdc_patient(path)
    if kind == "mnms":
        return read_mnms_subject(path)
    if kind == "cinema_preprocessed":
        return read_cinema_preprocessed(path)
    if path.is_file():
        raise InputError(f"{path}: a single file is not a cine study; pass the folder holding the exam's DICOM files")
    return read_dicom_study(path, keep_phi=keep_phi, study=study)
