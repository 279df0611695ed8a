"""`batchrec report RUN`: ReportConfig's fields are its flags → batchrec.report.run; prints the file's URL."""

from __future__ import annotations

from batchrec import flags
from batchrec import report as stage
from batchrec.report import ReportConfig

report = flags.command(
    ReportConfig,
    lambda cfg: stage.run(cfg),
    doc="Write a run's self-contained HTML report (training curves, metrics at k=1..50, lists, stability).",
    arguments=("run",),
)
