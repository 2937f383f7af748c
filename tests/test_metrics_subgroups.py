"""Metric breakdown by metadata columns and CSV output."""

from __future__ import annotations

import csv

import pytest

from cinema.metrics.agreement import bland_altman
from cinema.metrics.classification import accuracy
from cinema.metrics.subgroups import by_subgroup, from_columns, subgroup_table, write_csv

ROWS = [
    {"id": "a", "sex": "F", "vendor": "GE", "dice": 0.90, "ef_pred": 60.0, "ef_true": 58.0, "y_true": 1, "y_pred": 1},
    {
        "id": "b",
        "sex": "F",
        "vendor": "Siemens",
        "dice": 0.80,
        "ef_pred": 50.0,
        "ef_true": 55.0,
        "y_true": 0,
        "y_pred": 1,
    },
    {"id": "c", "sex": "M", "vendor": "GE", "dice": 0.70, "ef_pred": 40.0, "ef_true": 40.0, "y_true": 1, "y_pred": 1},
    {
        "id": "d",
        "sex": "M",
        "vendor": "GE",
        "dice": float("nan"),
        "ef_pred": 30.0,
        "ef_true": 35.0,
        "y_true": 0,
        "y_pred": 0,
    },
    {
        "id": "e",
        "sex": None,
        "vendor": "Siemens",
        "dice": 0.60,
        "ef_pred": 20.0,
        "ef_true": 22.0,
        "y_true": 1,
        "y_pred": 0,
    },
]
GROUP_METRICS = {
    "accuracy": from_columns(accuracy, "y_true", "y_pred"),
    "ef": from_columns(bland_altman, "ef_pred", "ef_true"),
}


def test_by_subgroup_hand_example():
    summary = by_subgroup(ROWS, "sex", per_case=["dice"], group_metrics=GROUP_METRICS)
    assert list(summary) == ["F", "M", "missing"]
    female, male = summary["F"], summary["M"]
    # F: dice 0.9, 0.8 -> mean 0.85, sample SD sqrt(0.005); predictions 1/1 and 1/0 -> accuracy 1/2;
    # EF errors +2, -5 -> MAE 3.5, bias -1.5.
    assert female["n"] == 2 and female["dice_n"] == 2
    assert female["dice_mean"] == pytest.approx(0.85) and female["dice_sd"] == pytest.approx(0.005**0.5)
    assert female["accuracy"] == pytest.approx(0.5)
    assert female["ef_mae"] == pytest.approx(3.5) and female["ef_bias"] == pytest.approx(-1.5)
    # M: the NaN Dice is left out of the mean but counted as missing through dice_n.
    assert male["n"] == 2 and male["dice_n"] == 1 and male["dice_mean"] == pytest.approx(0.70)
    assert male["accuracy"] == 1.0 and male["ef_mae"] == pytest.approx(2.5)
    assert summary["missing"]["n"] == 1 and summary["missing"]["accuracy"] == 0.0


def test_subgroup_table_and_csv(tmp_path):
    table = subgroup_table(ROWS, ["sex", "vendor"], per_case=["dice"], group_metrics=GROUP_METRICS)
    assert [(row["column"], row["group"]) for row in table] == [
        ("all", "all"),
        ("sex", "F"),
        ("sex", "M"),
        ("sex", "missing"),
        ("vendor", "GE"),
        ("vendor", "Siemens"),
    ]
    overall = table[0]
    assert overall["n"] == 5 and overall["accuracy"] == pytest.approx(3 / 5)  # a, c, d correct
    assert overall["ef_mae"] == pytest.approx((2 + 5 + 0 + 5 + 2) / 5)
    assert table[4]["n"] == 3 and table[4]["dice_mean"] == pytest.approx(0.8)  # GE: 0.9, 0.7 (d is NaN)

    path = write_csv(table, tmp_path / "fairness.csv")
    with path.open(newline="") as handle:
        read = list(csv.DictReader(handle))
    assert len(read) == 6 and read[5]["group"] == "Siemens"
    assert float(read[5]["ef_mae"]) == pytest.approx(3.5)  # b: 5, e: 2
    assert [p.name for p in tmp_path.iterdir()] == ["fairness.csv"]


def test_non_numeric_metric_column_is_reported():
    with pytest.raises(ValueError, match="'dice' of row 0"):
        by_subgroup([{"sex": "F", "dice": "high"}], "sex", per_case=["dice"])
