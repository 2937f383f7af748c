"""Evaluation metrics: segmentation and cardiac function, agreement, classification, regression, survival, subgroups.

All physical quantities come from each image's own spacing (mm) or affine; see the module docstrings for the
conventions chosen where toolkits differ (empty masks, ties, censoring).
"""

from cinema.metrics.agreement import bland_altman, bland_altman_plot, coefficient_of_variation
from cinema.metrics.classification import (
    accuracy,
    classification_metrics,
    confusion_matrix,
    matthews_corrcoef,
    roc_auc_binary,
    roc_auc_multiclass,
    sensitivity_specificity,
)
from cinema.metrics.regression import (
    bias,
    landmark_distance_mm,
    mean_absolute_error,
    regression_metrics,
    root_mean_squared_error,
)
from cinema.metrics.segmentation import (
    ACDC_CLASSES,
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
from cinema.metrics.subgroups import by_subgroup, from_columns, subgroup_table, summarise, write_csv
from cinema.metrics.survival import concordance_index, cox_partial_likelihood_loss

__all__ = [
    "ACDC_CLASSES",
    "accuracy",
    "bias",
    "bland_altman",
    "bland_altman_plot",
    "by_subgroup",
    "cardiac_case_metrics",
    "class_volumes_ml",
    "classification_metrics",
    "coefficient_of_variation",
    "concordance_index",
    "confusion_matrix",
    "cox_partial_likelihood_loss",
    "dice_per_class",
    "ef_category",
    "ejection_fraction",
    "from_columns",
    "hausdorff95_mm",
    "hausdorff_mm",
    "landmark_distance_mm",
    "lv_mass_g",
    "matthews_corrcoef",
    "mean_absolute_error",
    "regression_metrics",
    "roc_auc_binary",
    "roc_auc_multiclass",
    "root_mean_squared_error",
    "sensitivity_specificity",
    "spacing_from",
    "subgroup_table",
    "summarise",
    "surface_distances_mm",
    "ventricular_function",
    "volume_curve",
    "write_csv",
]
