"""Fine-tuning tasks: loss, augmentation targets and validation metrics for each kind of output.

`make_task(config)` returns the `Task` for ``config.task``; the trainer in `cinema.train` drives any of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cinema.io.errors import InputError
from cinema.tasks.base import Task

if TYPE_CHECKING:
    from cinema.config import FinetuneConfig

__all__ = ["Task", "make_task"]


def make_task(config: FinetuneConfig) -> Task:
    """The task object for ``config.task`` (segmentation, classification, regression, landmark_*, survival)."""
    from cinema.tasks.classification import ClassificationTask, RegressionTask
    from cinema.tasks.landmark import LandmarkCoordinateTask, LandmarkHeatmapTask
    from cinema.tasks.segmentation import SegmentationTask
    from cinema.tasks.survival import SurvivalTask

    tasks = {
        cls.name: cls
        for cls in (
            SegmentationTask,
            ClassificationTask,
            RegressionTask,
            LandmarkHeatmapTask,
            LandmarkCoordinateTask,
            SurvivalTask,
        )
    }
    if config.task not in tasks:
        raise InputError(f"unknown task {config.task!r}; expected one of {', '.join(tasks)}")
    return tasks[config.task](config)
