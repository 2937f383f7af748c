"""`cinema cohort`: thousands of exams in, one table out.

Exams are found under the inputs (`cinema.cohort.exams`), split between shards (`cinema.cohort.shards`), analysed by
workers that each load the model once (`cinema.cohort.run`), recorded one by one in an append-only manifest so that
a killed run resumes where it stopped (`cinema.cohort.state`), and summarised as ``cohort.csv`` (`cinema.cohort.table`)
and a self-contained ``cohort.html`` (`cinema.cohort.page`). `cinema.cohort.merge` joins the shards of a cohort.

Above `cinema.analysis` in the layering (beside `cinema.evaluate`); nothing uses it but the command line.
"""

from cinema.cohort.exams import Exam, find_exams, read_exam, safe_exam_id
from cinema.cohort.merge import MergeSummary, merge_cohorts
from cinema.cohort.run import CohortSettings, CohortSummary, run_cohort
from cinema.cohort.shards import Shard, parse_shard, resolve_device, select_shard

__all__ = [
    "CohortSettings",
    "CohortSummary",
    "Exam",
    "MergeSummary",
    "Shard",
    "find_exams",
    "merge_cohorts",
    "parse_shard",
    "read_exam",
    "resolve_device",
    "run_cohort",
    "safe_exam_id",
    "select_shard",
]
