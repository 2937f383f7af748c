"""`cinema cohort`: many real exams (ACDC) plus damaged ones through the tiny model; one row each; a SIGKILLed run
resumed, two shards merged and a sharded run each giving the table of one uninterrupted run; the merge's checks; the
output-safety rule; shards from SLURM / torchrun variables; the page in headless chromium.

One reference run (module fixture) is shared; every other run compares its cohort.csv, minus the ``seconds`` column,
with it.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
from browser import launch, sync_playwright_or_skip

from cinema.analysis.analyze import OUTPUT_FILES
from cinema.cli import main
from cinema.cohort import CohortSettings, find_exams, merge_cohorts, run_cohort, safe_exam_id, select_shard
from cinema.cohort.shards import Shard, parse_shard, resolve_device, shard_items
from cinema.cohort.state import COHORT_MARKER, read_records
from cinema.io.atomic import OUTPUT_MARKER

REPO_ROOT = Path(__file__).resolve().parents[1]
PATIENTS = ("patient001", "patient002", "patient003")
DAMAGED = "patient004_damaged"
EXAM_IDS = [f"exams__{p}" for p in PATIENTS] + [f"exams__{DAMAGED}", "nothing_here"]
KILL_WAIT_S = 120  # guards against a hung run, not performance requirements


# -------------------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# -------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cohort_inputs(tmp_path_factory, acdc_dir) -> list[Path]:
    """A folder of exams (three real ACDC patients, linked; one with a truncated image) and an empty folder."""
    root = tmp_path_factory.mktemp("cohort-data")
    exams = root / "exams"
    exams.mkdir()
    for patient in PATIENTS:
        (exams / patient).symlink_to(acdc_dir / patient, target_is_directory=True)
    damaged = exams / DAMAGED
    damaged.mkdir()
    for source in (acdc_dir / "patient004").iterdir():
        if source.name == "Info.cfg" or "_gt" not in source.name:
            shutil.copy(source, damaged / source.name)
    image = sorted(damaged.glob("*frame01.nii.gz"))[0]
    image.write_bytes(image.read_bytes()[:20000])  # a download cut short
    empty = root / "nothing_here"
    empty.mkdir()
    return [exams, empty]


def _args(inputs, out, weights, *more) -> list[str]:
    return ["cohort", *map(str, inputs), "-o", str(out), "--weights", str(weights), "--quiet", *more]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cohort_inputs, tiny_weights) -> Path:
    """One uninterrupted run of the whole cohort in this process (one worker)."""
    out = tmp_path_factory.mktemp("cohort-runs") / "reference"
    assert main(_args(cohort_inputs, out, tiny_weights)) == 0
    return out


def _table(path: Path, drop: tuple[str, ...] = ("seconds",)) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


def _manifest_lines(folder: Path) -> int:
    try:
        return sum(1 for line in (folder / "manifest.jsonl").read_bytes().splitlines() if line.strip())
    except FileNotFoundError:
        return 0


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -------------------------------------------------------------------------------------------------------------------
# One run
# -------------------------------------------------------------------------------------------------------------------


def test_one_row_per_exam_with_its_status(reference):
    rows = _table(reference / "cohort.csv", drop=())
    assert [r["exam_id"] for r in rows] == sorted(EXAM_IDS)
    status = {r["exam_id"]: r["status"] for r in rows}
    assert status == {**{i: "done" for i in EXAM_IDS[:3]}, EXAM_IDS[3]: "failed", "nothing_here": "failed"}
    columns = list(rows[0])
    assert columns[:6] == ["exam_id", "status", "error", "seconds", "model", "cinema_version"]
    assert columns[-2:] == ["n_qc_warnings", "qc_warnings"]
    for needed in ("lv_edv_ml", "lv_ef_pct", "rv_ef_pct", "lv_mass_g", "ed_frame", "es_frame", "model_confidence"):
        assert needed in columns
    assert {"disease_p_DCM", "disease_p_NOR", "disease_p_RV"} <= set(columns)
    by_id = {r["exam_id"]: r for r in rows}
    for exam_id in EXAM_IDS[:3]:
        row = by_id[exam_id]
        metrics = json.loads((reference / "exams" / exam_id / "metrics.json").read_text())
        assert float(row["lv_ef_pct"]) == metrics["lv_ef_pct"] and row["model"] == metrics["model"] == "tiny"
        assert row["error"] == "" and int(row["n_qc_warnings"]) == len(metrics["qc_warnings"])
        assert row["qc_warnings"] == "; ".join(metrics["qc_warnings"])
        assert all((reference / "exams" / exam_id / name).is_file() for name in (*OUTPUT_FILES, OUTPUT_MARKER))
    damaged = by_id[EXAM_IDS[3]]["error"]
    assert "truncated" in damaged and "\n" not in damaged
    assert damaged.startswith(f"{EXAM_IDS[3]}/")  # the exam's own path is replaced by its id
    assert "no exam found" in by_id["nothing_here"]["error"]
    assert all(r["model"] == "tiny" and r["cinema_version"] for r in rows)
    assert _manifest_lines(reference) == len(EXAM_IDS)
    parquet = reference / "cohort.parquet"
    try:
        import pyarrow.parquet as pq
    except ImportError:
        assert not parquet.exists()
    else:
        assert pq.read_table(parquet).column("exam_id").to_pylist() == sorted(EXAM_IDS)


def test_outputs_name_no_input_path(reference, cohort_inputs):
    """Ids come from the user's paths; no absolute path of the data reaches the table, the manifest or the page."""
    root = str(cohort_inputs[0].parent)
    for name in ("cohort.csv", "cohort.html", "manifest.jsonl"):
        assert root not in (reference / name).read_text(encoding="utf-8"), name


def test_rerun_skips_finished_exams_and_retry_failed_runs_the_failed(reference, cohort_inputs, tiny_weights, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(reference, out, symlinks=True)
    settings = CohortSettings(weights=str(tiny_weights))
    again = run_cohort(cohort_inputs, out, settings=settings)
    assert (again.ran, again.skipped, again.done, again.failed, again.resumed) == (0, 5, 3, 2, True)
    retried = run_cohort(cohort_inputs, out, settings=settings, retry_failed=True)
    assert (retried.ran, retried.skipped) == (2, 3)
    assert _manifest_lines(out) == len(EXAM_IDS) + 2  # appended, never rewritten
    assert _table(out / "cohort.csv") == _table(reference / "cohort.csv")


# -------------------------------------------------------------------------------------------------------------------
# Killed and resumed
# -------------------------------------------------------------------------------------------------------------------


def test_run_killed_with_sigkill_resumes_to_the_same_table(reference, cohort_inputs, tiny_weights, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "cinema", *_args(cohort_inputs, out, tiny_weights, "--workers", "2")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + KILL_WAIT_S
    try:
        while _manifest_lines(out) == 0:
            assert process.poll() is None, process.communicate()[1].decode()
            assert time.monotonic() < deadline, "no exam finished in time"
            time.sleep(0.02)
        workers = _children(process.pid)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    finished = _manifest_lines(out)
    assert 1 <= finished < len(EXAM_IDS), "the run ended before it could be killed mid-cohort"
    assert len(workers) >= 1
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:  # orphans notice and stop
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), "worker processes outlived the killed command"

    resumed = run_cohort(cohort_inputs, out, settings=CohortSettings(weights=str(tiny_weights)))
    assert resumed.resumed and resumed.ran == len(EXAM_IDS) - finished and resumed.skipped == finished
    assert _table(out / "cohort.csv") == _table(reference / "cohort.csv")
    assert not [p.name for p in (out / "exams").iterdir() if p.name.startswith(".")], "temporaries left behind"


# -------------------------------------------------------------------------------------------------------------------
# Shards
# -------------------------------------------------------------------------------------------------------------------


def test_shard_selection_from_arguments_and_environment():
    assert select_shard("1/3", {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}) == Shard(1, 3)
    slurm = select_shard(None, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4", "RANK": "0"})
    assert (slurm.index, slurm.count, slurm.source) == (3, 4, "SLURM array")
    one_based = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "1"}
    assert select_shard(None, one_based) == Shard(0, 8)
    stepped = {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_STEP": "2"}
    assert select_shard(None, stepped) == Shard(2, 3)
    torchrun = select_shard(None, {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"})
    assert (torchrun.index, torchrun.count, torchrun.source) == (2, 4, "torchrun")
    assert select_shard(None, {}) == Shard(0, 1)
    for bad in ("3/3", "1", "-1/2", "a/b"):
        with pytest.raises(ValueError):
            parse_shard(bad)
    with pytest.raises(ValueError, match="contiguous"):
        select_shard(None, {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4"})
    assert resolve_device("cuda", {"LOCAL_RANK": "3"}) == "cuda:3"
    assert resolve_device("cuda:0", {"LOCAL_RANK": "3"}) == "cuda:0"
    assert resolve_device("cpu", {"LOCAL_RANK": "3"}) == "cpu"
    assert resolve_device("cuda", {}) == "cuda"
    ids = ["e", "a", "d", "b", "c"]
    assert shard_items(ids, Shard(0, 2)) == ["a", "c", "e"] and shard_items(ids, Shard(1, 2)) == ["b", "d"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, cohort_inputs, tiny_weights) -> Path:
    """The cohort as 2 shards in one OUT, shard 0 picked by torchrun's variables and shard 1 by a SLURM array's."""
    out = tmp_path_factory.mktemp("cohort-shards") / "sharded"
    settings = CohortSettings(weights=str(tiny_weights))
    torchrun = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    slurm = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"}
    for environ in (torchrun, slurm):
        summary = run_cohort(cohort_inputs, out, settings=settings, environ=environ)
        assert summary.folder == out / f"shard-{summary.shard.index}-of-2"
    return out


def test_environment_picks_each_shard_its_exams(shards):
    for index in (0, 1):
        folder = shards / f"shard-{index}-of-2"
        marker = json.loads((folder / COHORT_MARKER).read_text())
        assert marker["shard"] == [index, 2] and marker["exams"] == sorted(EXAM_IDS)[index::2]
        assert sorted(read_records(folder / "manifest.jsonl")) == sorted(EXAM_IDS)[index::2]
    assert json.loads((shards / COHORT_MARKER).read_text())["shards"] == 2


def test_two_shards_merged_equal_one_run(shards, reference, tmp_path):
    merged = tmp_path / "merged"
    assert main(["cohort", "--merge", str(shards), "-o", str(merged)]) == 0
    assert _table(merged / "cohort.csv") == _table(reference / "cohort.csv")
    for exam_id in EXAM_IDS[:3]:
        assert (merged / "exams" / exam_id / "report.html").is_file()
    assert not (merged / "exams" / "nothing_here").exists()
    # the shard folders named one by one give the same merge; a merged folder beside them is allowed
    beside = shards / "merged"
    merge_cohorts(sorted(shards.glob("shard-*-of-2")), beside)
    assert _table(beside / "cohort.csv") == _table(reference / "cohort.csv")
    assert (beside / "exams" / EXAM_IDS[0] / "metrics.json").is_file()


def test_merge_names_missing_and_duplicated_exams(shards, tmp_path, capsys):
    shard0, shard1 = shards / "shard-0-of-2", shards / "shard-1-of-2"
    assert main(["cohort", "--merge", str(shard0), "-o", str(tmp_path / "m1")]) == 2
    assert "missing shard(s) 1/2" in capsys.readouterr().err

    unfinished = tmp_path / "unfinished" / shard1.name
    shutil.copytree(shard1, unfinished, symlinks=True)
    lines = (unfinished / "manifest.jsonl").read_text().splitlines(keepends=True)
    dropped = json.loads(lines[-1])["exam_id"]
    (unfinished / "manifest.jsonl").write_text("".join(lines[:-1]))
    assert main(["cohort", "--merge", str(shard0), str(unfinished), "-o", str(tmp_path / "m2")]) == 2
    err = capsys.readouterr().err
    assert f"missing exam(s) {dropped}" in err and "\n" not in err.strip()

    copy = tmp_path / "copy" / shard0.name
    shutil.copytree(shard0, copy, symlinks=True)
    assert main(["cohort", "--merge", str(shard0), str(shard1), str(copy), "-o", str(tmp_path / "m3")]) == 2
    err = capsys.readouterr().err
    assert "duplicated exam(s) " + ", ".join(sorted(EXAM_IDS)[0::2]) in err
    assert not any((tmp_path / m).exists() for m in ("m1", "m2", "m3"))


# -------------------------------------------------------------------------------------------------------------------
# Exam ids and the output-safety rule
# -------------------------------------------------------------------------------------------------------------------


def test_exam_ids_are_safe_unique_and_stable(tmp_path, acdc_dir):
    assert safe_exam_id("acdc/patient 001") == "acdc__patient_001"
    assert safe_exam_id("../.hidden/x:y") == "hidden__x_y"
    assert len(safe_exam_id("a" * 500)) <= 120
    for name in ("a", "b"):  # two exams of the same name (copies: a link to the same exam is the same exam)
        (tmp_path / name / "patient001").mkdir(parents=True)
        for source in (acdc_dir / "patient001").iterdir():
            if "_gt" not in source.name:
                shutil.copy(source, tmp_path / name / "patient001" / source.name)
    inputs = [tmp_path / "a" / "patient001", tmp_path / "b" / "patient001"]
    ids = [e.id for e in find_exams(inputs)]
    assert len(set(ids)) == 2 and all(i.startswith("patient001-") for i in ids)
    assert [e.id for e in find_exams(inputs[::-1])] == ids  # not the order of the inputs
    # the same exam reached twice is one exam
    assert [e.id for e in find_exams([tmp_path / "a", tmp_path / "a" / "patient001"])] == ["a__patient001"]


def test_out_follows_the_output_safety_rule(cohort_inputs, tiny_weights, reference, tmp_path, capsys):
    inside = cohort_inputs[0] / "results"
    assert main(_args(cohort_inputs, inside, tiny_weights)) == 2
    assert "inside the input folder" in capsys.readouterr().err and not inside.exists()

    holds = cohort_inputs[0].parent
    assert main(_args(cohort_inputs, holds, tiny_weights)) == 2
    assert "holds the input" in capsys.readouterr().err

    mine = tmp_path / "my_folder"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(_args(cohort_inputs, mine, tiny_weights)) == 2
    assert "not a cohort folder" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]

    before = sorted(p.name for p in reference.iterdir())
    assert main(_args(cohort_inputs[:1], reference, tiny_weights)) == 2  # another command's cohort: other inputs
    assert "cohort folder of another command" in capsys.readouterr().err
    assert main(_args(cohort_inputs, reference, tiny_weights, "--shard", "0/2")) == 2
    assert "cohort folder of another command" in capsys.readouterr().err
    assert sorted(p.name for p in reference.iterdir()) == before

    assert main(_args(cohort_inputs, tmp_path / "new", tiny_weights, "--force")) == 2
    assert "--force is only for --merge" in capsys.readouterr().err

    # weights that do not load: one line, and no half-made cohort folder that would refuse the corrected command
    broken = tmp_path / "broken_weights"
    broken.mkdir()
    assert main(_args(cohort_inputs, tmp_path / "new", broken)) == 2
    assert "no config.yaml" in capsys.readouterr().err and not (tmp_path / "new").exists()


# -------------------------------------------------------------------------------------------------------------------
# The page in a real browser
# -------------------------------------------------------------------------------------------------------------------


def _column(page, index: int) -> list[str]:
    return page.eval_on_selector_all(
        f"#exams tbody tr td:nth-child({index})", "cells => cells.map(c => c.getAttribute('data-v'))"
    )


def test_cohort_page_in_headless_chromium(reference):
    sync_playwright = sync_playwright_or_skip()
    page_path = reference / "cohort.html"
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            # a CSP violation or a script error is a console error: the page must run cleanly under its own policy
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda err: problems.append(str(err)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri())
            headers = page.eval_on_selector_all("#exams thead th", "hs => hs.map(h => h.textContent)")
            initial = _column(page, 1)
            statuses = _column(page, 2)
            links = page.eval_on_selector_all("#exams tbody a", "as => as.map(a => a.getAttribute('href'))")
            n_histograms = page.locator(".hists svg").count()
            n_thumbnails = page.locator(".thumbs img").count()
            lvef = headers.index("LVEF %") + 1
            page.click(f"#exams thead th:nth-child({lvef})")
            ascending = _column(page, lvef)
            page.click(f"#exams thead th:nth-child({lvef})")
            descending = _column(page, lvef)
            sort_state = page.get_attribute(f"#exams thead th:nth-child({lvef})", "aria-sort")
            page.click("#exams thead th:nth-child(1)")
            by_id = _column(page, 1)
        finally:
            browser.close()
    assert problems == []
    assert all(url.startswith(("file://", "data:")) for url in requests), requests
    assert statuses[:2] == ["failed", "failed"]  # failed exams first
    assert sorted(initial) == sorted(EXAM_IDS)
    assert len(links) == 3 and all(link.endswith("/report.html") for link in links)
    for link in links:
        assert (page_path.parent / unquote(link)).is_file(), link
    assert n_histograms == 6 and n_thumbnails == 3
    values = [float(v) for v in ascending if v]
    assert values == sorted(values) and len(values) == 3 and ascending[3:] == ["", ""]  # blanks last
    assert [float(v) for v in descending if v] == sorted(values, reverse=True) and sort_state == "descending"
    assert by_id == sorted(EXAM_IDS)
