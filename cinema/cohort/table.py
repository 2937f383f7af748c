"""The cohort table: one row per exam from the manifest records, as ``cohort.csv`` (and ``cohort.parquet`` when
pyarrow is installed).

Columns: ``exam_id``, ``status`` (done | failed), ``error`` (one line), ``seconds``, ``model``, ``cinema_version``,
then every scalar of the exam's metrics.json (volumes, EF, mass, ED/ES, model confidence, ...; the disease group
probabilities as ``disease_p_<group>``; of the nested ``regional`` object only its ``summary`` scalars, as
``regional_<name>``), ``n_qc_warnings`` and ``qc_warnings`` (joined by "; "). Rows are sorted by
exam id, so the table of a resumed or merged cohort equals that of one uninterrupted run (but for ``seconds``).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cinema.io.atomic import write_stream_atomic, write_text_atomic

__all__ = ["LEADING_COLUMNS", "metric_scalars", "record_row", "table_columns", "write_table_files"]

LEADING_COLUMNS = ("exam_id", "status", "error", "seconds", "model", "cinema_version")
# metrics.json scalars in reading order; any other scalar follows, sorted by name
METRIC_COLUMNS = (
    "lv_edv_ml",
    "lv_esv_ml",
    "lv_sv_ml",
    "lv_ef_pct",
    "rv_edv_ml",
    "rv_esv_ml",
    "rv_sv_ml",
    "rv_ef_pct",
    "lv_mass_g",
    "lv_myo_ed_ml",
    "ed_frame",
    "es_frame",
    "ed_time_ms",
    "es_time_ms",
    "ed_acquisition_frame",
    "es_acquisition_frame",
    "n_frames",
    "ed_es_source",
    "model_confidence",
    "disease_prediction",
    "mapse_mm",
)
TRAILING_COLUMNS = ("n_qc_warnings", "qc_warnings")
DISEASE_PREFIX = "disease_p_"
# the regional object holds 16 segments x 2 phases; a table row takes only its handful of summary scalars
REGIONAL_PREFIX = "regional_"
# metrics.json keys that are not per-exam measurements of the table (the model has its own column)
_LEFT_OUT = {"model", "qc_warnings"}


def metric_scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The scalar entries of a metrics.json (numbers, strings, booleans, nulls), disease probabilities flattened."""
    row: dict[str, Any] = {}
    for key, value in metrics.items():
        if key in _LEFT_OUT:
            continue
        if key == "disease_probabilities":
            for group, p in sorted((value or {}).items()):
                row[f"{DISEASE_PREFIX}{group}"] = p
        elif key == "regional":
            for name, number in ((value or {}).get("summary") or {}).items():
                row[f"{REGIONAL_PREFIX}{name}"] = number
        elif value is None or isinstance(value, str | int | float | bool):
            row[key] = value
    return row


def record_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One table row from one manifest record."""
    warnings = [str(w) for w in record.get("qc_warnings") or []]
    row = {
        "exam_id": record["exam_id"],
        "status": record["status"],
        "error": record.get("error") or "",
        "seconds": record.get("seconds"),
        "model": record.get("model"),
        "cinema_version": record.get("cinema_version"),
    }
    row.update(record.get("metrics") or {})
    row["n_qc_warnings"] = len(warnings) if record["status"] == "done" else None
    row["qc_warnings"] = "; ".join(" ".join(w.split()) for w in warnings)
    return row


def table_columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The columns of these rows in a fixed order: leading, known metrics, other metrics (sorted), trailing."""
    keys: set[str] = set()
    for row in rows:
        keys |= set(row)
    fixed = set(LEADING_COLUMNS) | set(TRAILING_COLUMNS)
    known = [c for c in METRIC_COLUMNS if c in keys]
    diseases = sorted(k for k in keys if k.startswith(DISEASE_PREFIX))
    others = sorted(keys - fixed - set(known) - set(diseases))
    return [*LEADING_COLUMNS, *known, *diseases, *others, *TRAILING_COLUMNS]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(value)
    return " ".join(str(value).split())  # one line per cell


def csv_text(rows: list[Mapping[str, Any]]) -> str:
    columns = table_columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return buffer.getvalue()


def _write_parquet(path: Path, rows: list[Mapping[str, Any]]) -> bool:
    """``cohort.parquet`` when pyarrow is importable (True); otherwise nothing, and a stale one is removed."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path.unlink(missing_ok=True)  # a table from an earlier run with pyarrow would disagree with cohort.csv
        return False
    columns = table_columns(rows)
    data = {}
    for column in columns:
        values = [row.get(column) for row in rows]
        if column == "error" or column == "qc_warnings":
            values = [v or "" for v in values]
        numbers = [v for v in values if v is not None]
        if numbers and all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers):
            kind = pa.int64() if all(isinstance(v, int) for v in numbers) else pa.float64()
            data[column] = pa.array([None if v is None else v for v in values], type=kind)
        else:
            data[column] = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    table = pa.table(data)
    write_stream_atomic(path, lambda f: pq.write_table(table, f))
    return True


def write_table_files(folder: str | os.PathLike, rows: list[Mapping[str, Any]]) -> list[Path]:
    """``cohort.csv`` (and ``cohort.parquet`` when pyarrow is installed) in `folder`, each written atomically."""
    folder = Path(folder)
    rows = sorted(rows, key=lambda r: r["exam_id"])
    written = [write_text_atomic(folder / "cohort.csv", csv_text(rows))]
    if _write_parquet(folder / "cohort.parquet", rows):
        written.append(folder / "cohort.parquet")
    return written
