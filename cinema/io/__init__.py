"""Reading and writing cine cardiac MRI exams.

`Study` / `CineView` model one exam; readers cover DICOM folders, NIfTI files, ACDC and M&Ms folders, CSV
manifests and folders written by `cinema convert`; writers are atomic.
"""

from cinema.io.datasets import (
    read_acdc_info,
    read_acdc_patient,
    read_manifest,
    read_manifest_row,
    read_mnms_subject,
    read_mnms_table,
)
from cinema.io.dicom import PHI_KEYWORDS, read_dicom_study
from cinema.io.nifti import (
    load_nifti,
    read_label_nifti,
    read_nifti_cine,
    write_cine_nifti,
    write_label_nifti,
    write_nifti,
)
from cinema.io.read import detect_input_kind, read_study
from cinema.io.study import LAX_VIEWS, SAX, VIEW_NAMES, CineView, Study, view_name_for
from cinema.io.study_folder import read_study_folder, write_study
from cinema.io.sunnybrook import read_sunnybrook_contours

__all__ = [
    "LAX_VIEWS",
    "PHI_KEYWORDS",
    "SAX",
    "VIEW_NAMES",
    "CineView",
    "Study",
    "detect_input_kind",
    "load_nifti",
    "read_acdc_info",
    "read_acdc_patient",
    "read_dicom_study",
    "read_label_nifti",
    "read_manifest",
    "read_manifest_row",
    "read_mnms_subject",
    "read_mnms_table",
    "read_nifti_cine",
    "read_study",
    "read_study_folder",
    "read_sunnybrook_contours",
    "view_name_for",
    "write_cine_nifti",
    "write_label_nifti",
    "write_nifti",
    "write_study",
]
