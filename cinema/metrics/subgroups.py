"""Break metrics down by metadata columns (fairness across group, sex, vendor, site, ...).

Input is a per-case table: a list of dicts, one per case, holding metadata (``"sex": "F"``) and per-case values
(``"dice_ed_lv": 0.93``, ``"lv_ef_pred": 61.2``, ``"y_true": 1``). Two kinds of metric are summarised per group:

- per-case columns: n valid values, mean and sample SD (``<col>_mean``, ``<col>_sd``, ``<col>_n``); NaN values
  (e.g. HD95 of an empty mask) are left out of the mean but visible through ``<col>_n``;
- group metrics: functions of the group's rows, such as accuracy or EF MAE, built with :func:`from_columns`. A metric
  returning a dict (e.g. :func:`cinema.metrics.agreement.bland_altman`) contributes ``<name>_<key>`` entries.

Example::

    table = subgroup_table(rows, ["group", "sex"], per_case=["dice_ed_lv"],
                           group_metrics={"lv_ef": from_columns(bland_altman, "lv_ef_pred", "lv_ef_true"),
                                          "accuracy": from_columns(accuracy, "y_true", "y_pred")})
    write_csv(table, "fairness.csv")
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cinema.io.atomic import write_text_atomic

Row = Mapping[str, Any]
GroupMetric = Callable[[Sequence[Row]], "float | Mapping[str, float]"]

MISSING_GROUP = "missing"
OVERALL = "all"


def _is_missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def column_values(rows: Sequence[Row], column: str) -> np.ndarray:
    """The numeric values of ``column`` over ``rows`` as float64 (missing or None -> NaN)."""
    values = []
    for index, row in enumerate(rows):
        value = row.get(column)
        if _is_missing(value):
            values.append(np.nan)
            continue
        try:
            values.append(float(value))
        except (TypeError, ValueError):
            raise ValueError(f"column {column!r} of row {index} is not numeric: {value!r}") from None
    return np.asarray(values, dtype=np.float64)


def from_columns(metric: Callable[..., Any], *columns: str) -> GroupMetric:
    """A group metric calling ``metric(values_of_columns[0], values_of_columns[1], ...)`` on a group's rows.

    Column order is the metric's argument order, e.g. ``from_columns(accuracy, "y_true", "y_pred")`` or
    ``from_columns(bland_altman, "lv_ef_pred", "lv_ef_true")``.
    """
    if not columns:
        raise ValueError("from_columns needs at least one column")

    def group_metric(rows: Sequence[Row]) -> Any:
        return metric(*(column_values(rows, column) for column in columns))

    group_metric.__name__ = f"{getattr(metric, '__name__', 'metric')}({', '.join(columns)})"
    return group_metric


def summarise(
    rows: Sequence[Row], per_case: Sequence[str] = (), group_metrics: Mapping[str, GroupMetric] | None = None
) -> dict[str, float]:
    """Summary of one group of rows: n, mean/SD/count of each per-case column, and each group metric."""
    summary: dict[str, float] = {"n": len(rows)}
    for column in per_case:
        values = column_values(rows, column)
        valid = values[np.isfinite(values)]
        summary[f"{column}_mean"] = float(valid.mean()) if valid.size else float("nan")
        summary[f"{column}_sd"] = float(valid.std(ddof=1)) if valid.size > 1 else float("nan")
        summary[f"{column}_n"] = int(valid.size)
    for name, metric in (group_metrics or {}).items():
        value = metric(rows)
        if isinstance(value, Mapping):
            summary.update({f"{name}_{key}": item for key, item in value.items()})
        else:
            summary[name] = float(value)
    return summary


def by_subgroup(
    rows: Sequence[Row],
    column: str,
    per_case: Sequence[str] = (),
    group_metrics: Mapping[str, GroupMetric] | None = None,
) -> dict[str, dict[str, float]]:
    """Summaries per value of ``column`` (as text; rows without a value form the ``"missing"`` group), sorted."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        value = row.get(column)
        groups.setdefault(MISSING_GROUP if _is_missing(value) else str(value), []).append(row)
    return {key: summarise(groups[key], per_case, group_metrics) for key in sorted(groups)}


def subgroup_table(
    rows: Sequence[Row],
    columns: Sequence[str],
    per_case: Sequence[str] = (),
    group_metrics: Mapping[str, GroupMetric] | None = None,
    include_overall: bool = True,
) -> list[dict[str, Any]]:
    """Flat table (one dict per group) over several metadata columns, first row the whole cohort if requested."""
    table: list[dict[str, Any]] = []
    if include_overall:
        table.append({"column": OVERALL, "group": OVERALL, **summarise(rows, per_case, group_metrics)})
    for column in columns:
        for group, summary in by_subgroup(rows, column, per_case, group_metrics).items():
            table.append({"column": column, "group": group, **summary})
    return table


def write_csv(table: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write a list of dicts as CSV (columns: union of keys in first-seen order), atomically; returns the path."""
    fieldnames: list[str] = []
    for row in table:
        fieldnames.extend(key for key in row if key not in fieldnames)
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(table)
    return write_text_atomic(path, buffer.getvalue())
