"""`batchrec report`: the run's HTML page, written by `batchrec run` beside run.json, checked for its
content without a browser (the closing note of issue 15 has screenshots from headless Chromium)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from batchrec import storage
from batchrec.report import bar_chart, line_chart

JOB = """
name: reported
workspace: {ws}
date: "2026-11-24"
stages: [synth, prepare, train, evaluate, score, index]
synth: {{users: 300, items: 120, avg_len: 20, seed: 0}}
train: {{epochs: 4, max_len: 20, device: cpu, patience: 2}}
evaluate: {{device: cpu}}
score: {{k: 10, batch_size: 300}}
index: {{}}
"""


def test_charts_are_inline_svg_with_every_point_and_the_mark():
    svg = line_chart(
        {"a": ([1, 2, 3], [0.1, 0.3, 0.2]), "b": ([1, 2, 3], [0.0, 0.1, 0.2])}, "epoch", "x", mark_x=2
    )
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and 'class="mark"' in svg
    assert len(re.search(r'points="([^"]+)"', svg).group(1).split()) == 3
    bars = bar_chart(["a", "b"], [0.25, 0.75], "x", "share")
    assert bars.count("<rect") == 2 and "b: 0.75" in bars


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)  # a job, a scoring run and the report, each bounded below
def test_the_run_writes_a_self_contained_report_with_every_section(tmp_path):
    ws = tmp_path / "ws"
    job = tmp_path / "job.yaml"
    job.write_text(JOB.format(ws=ws))
    from batchrec.score import ScoreConfig
    from batchrec.score import run as score

    res = subprocess.run(
        [sys.executable, "-m", "batchrec", "run", str(job)], capture_output=True, text=True, timeout=280
    )
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = ws / "runs" / "reported" / "dt=2026-11-24"
    # an earlier date of the same tables, to compare the lists with
    score(ScoreConfig(checkpoint=str(run_dir / "checkpoint"), data=str(run_dir / "prepared"), date="2026-11-23",
                      out=str(ws / "outputs" / "sasrec"), k=10))  # fmt: skip
    res = subprocess.run(
        [sys.executable, "-m", "batchrec", "report", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == str(run_dir / "report.html")
    page = storage.read_bytes(res.stdout.strip()).decode()
    for heading in ("The run", "Training", "Test metrics, model and popularity", "The published lists (2026-11-24)",
                    "Stability against the previous date", "FAISS index"):  # fmt: skip
        assert f"<h2>{heading}</h2>" in page, heading
    assert "quality gate: <b>passed</b>" in page
    assert page.count("<svg") >= 6 and 'class="mark"' in page  # the early-stopping point
    assert "users in both" in page and "changed completely" in page
    assert "recommendations to the most popular 1 % of items" in page
    # self-contained: no script, stylesheet, image or font fetched from anywhere
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<script" not in page
    # the evaluation holds the curves the page draws: k = 1…50 for the model and popularity
    evaluation = storage.read_json(str(run_dir / "evaluation" / "evaluation.json"))
    assert evaluation["curves"]["k"] == list(range(1, 51))
    assert len(evaluation["curves"]["pop"]["NDCG"]) == 50
    assert evaluation["curves"]["model"]["HR"][9] == pytest.approx(evaluation["metrics"]["HR@10"])
