"""Run logs: CSV files that survive interruption and resume cleanly, and optional TensorBoard."""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path
from typing import Any

from cinema.io.atomic import write_text_atomic


class CsvLog:
    """Append rows to a CSV; columns are fixed by the first row written (later unknown keys are an error).

    On resume, `truncate_after(step)` drops the rows of an interrupted stretch so the log reads as one run.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.columns: list[str] | None = None
        if self.path.is_file():
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), None)
            self.columns = header or None

    def truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        kept = [row for row in rows if int(float(row["step"])) <= step]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self.columns or [])
        writer.writeheader()
        writer.writerows(kept)
        write_text_atomic(self.path, text.getvalue())

    def write(self, row: dict[str, Any]) -> None:
        if self.columns is None:
            self.columns = list(row)
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns).writeheader()
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"{self.path}: new log columns {sorted(unknown)} after the header was written")
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow({k: _format(v) for k, v in row.items()})


def _format(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)  # full precision, so a resumed run can be compared number for number
    return value


def read_csv_log(path: str | Path) -> list[dict[str, float | str]]:
    """Rows of a CSV log with numbers parsed (for tests and analysis)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    parsed = []
    for row in rows:
        out: dict[str, float | str] = {}
        for key, value in row.items():
            try:
                out[key] = float(value)
            except (TypeError, ValueError):
                out[key] = value
        parsed.append(out)
    return parsed


class TensorBoard:
    """Scalars to TensorBoard when the package is installed; a warning and a no-op otherwise."""

    def __init__(self, folder: Path, enabled: bool) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn("train.tensorboard is on but tensorboard is not installed; logging to CSV only", stacklevel=2)
            return
        self.writer = SummaryWriter(log_dir=str(folder))

    def scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, int | float) and key not in ("epoch", "step"):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
