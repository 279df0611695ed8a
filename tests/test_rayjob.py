"""`batchrec rayjob`, the CronJob's follower: one RayJob per date, followed to every terminal state
with the exit code the CronJob's podFailurePolicy expects.

No API server can run here, so kubectl is tests/bin/kubectl, a stand-in that keeps RayJobs as
files and walks each new one through a scripted list of KubeRay statuses (one per `get`).
The command itself is the real CLI in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "k8s" / "workloads" / "rayjob-nightly.yaml"
FAKE = REPO / "tests" / "bin" / "kubectl"
NAME = "batchrec-nightly-2026-11-24"
RUNNING = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
SUCCEEDED = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}


def failed(code: int) -> dict:
    return {
        "jobDeploymentStatus": "Failed",
        "jobStatus": "FAILED",
        "reason": "AppFailed",
        "message": f"Job entrypoint command failed with exit code {code}, last available logs (truncated "
        "to 20,000 chars):\nerror: something",
    }


def follow(state: Path, timeline: list[dict], *extra: str, existing: dict | None = None):
    """Run the follower against the stand-in; returns (result, calls, created RayJob or None)."""
    state.mkdir(exist_ok=True)
    (state / "timeline.json").write_text(json.dumps(timeline))
    (state / "logs.txt").write_text("12:00 [train] epoch 1\nerror: the input has no item column\n")
    (state / "events.json").write_text(
        json.dumps({"items": [{"type": "Warning", "reason": "Failed", "message": "the job failed"}]})
    )
    if existing is not None:
        (state / "rayjobs").mkdir(exist_ok=True)
        (state / "rayjobs" / f"{NAME}.json").write_text(json.dumps(existing))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHREC_")}
    env.update(FAKE_KUBE_DIR=str(state), BATCHREC_DATE="2026-11-24")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "batchrec",
            "rayjob",
            "--template",
            str(TEMPLATE),
            "--kubectl",
            str(FAKE),
            "--namespace",
            "batchrec",
            "--poll-s",
            "0.01",
            "--image",
            "reg/batchrec:1.2",
            "--cpu-image",
            "reg/batchrec-cpu:1.2",
            "--owner-job",
            "batchrec-nightly-29000000/uid-1",
            *extra,
        ],  # fmt: skip
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]
    created = [c for c in calls if "create" in c]
    return res, calls, created


def test_a_new_date_creates_its_rayjob_and_follows_it_to_success(tmp_path):
    res, calls, created = follow(tmp_path, [{}, {"jobDeploymentStatus": "Initializing"}, RUNNING, SUCCEEDED])
    assert res.returncode == 0, res.stderr
    assert len(created) == 1 and all(c[:2] == ["--namespace", "batchrec"] for c in calls)
    job = json.loads((tmp_path / "rayjobs" / f"{NAME}.json").read_text())
    assert job["metadata"]["name"] == NAME
    assert job["metadata"]["labels"]["batchrec.io/run-id"] == NAME
    assert job["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "batchrec-nightly-29000000", "uid": "uid-1"}
    ]
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env == {"BATCHREC_DATE": "2026-11-24", "BATCHREC_RUN_ID": NAME}
    cluster = job["spec"]["rayClusterSpec"]
    gpu = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    submitter = job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    assert gpu["image"] == "reg/batchrec:1.2"
    assert head["image"] == submitter["image"] == "reg/batchrec-cpu:1.2"
    for state in ("Initializing", "Running / RUNNING", "Complete / SUCCEEDED"):
        assert f"RayJob {NAME}: {state}" in res.stderr
    assert NAME in res.stdout


@pytest.mark.parametrize("code", [2, 3])
def test_the_drivers_exit_codes_2_and_3_reach_the_cronjob_unchanged(tmp_path, code):
    res, _, _ = follow(tmp_path, [RUNNING, failed(code)])
    assert res.returncode == code
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: RayJob {NAME}: batchrec run exited {code}") and "not retried" in last
    # the on-call person sees the driver's last lines and the events
    assert (
        "error: the input has no item column" in res.stderr and "Warning Failed: the job failed" in res.stderr
    )


def test_validation_failed_is_a_terminal_state_and_exits_2(tmp_path):
    status = {"jobDeploymentStatus": "ValidationFailed", "reason": "ValidationFailed", "message": "bad spec"}
    res, _, _ = follow(tmp_path, [status])
    assert res.returncode == 2
    assert "KubeRay refused RayJob" in res.stderr and "bad spec" in res.stderr


def test_any_other_failure_exits_1_to_be_retried(tmp_path):
    res, _, _ = follow(tmp_path, [RUNNING, failed(137)])
    assert res.returncode == 1
    assert "failed (Failed/FAILED)" in res.stderr.strip().splitlines()[-1]


def test_a_retry_follows_the_running_rayjob_instead_of_recreating_it(tmp_path):
    existing = {"metadata": {"name": NAME}, "status": RUNNING, "_step": 0}
    res, calls, created = follow(tmp_path, [RUNNING, RUNNING, SUCCEEDED], existing=existing)
    assert res.returncode == 0, res.stderr
    assert not created and not [c for c in calls if "delete" in c]
    assert "exists (Running/RUNNING): following it" in res.stderr


def test_a_retry_recreates_a_rayjob_that_failed_for_a_transient_reason(tmp_path):
    existing = {"metadata": {"name": NAME}, "status": failed(1)}
    res, calls, created = follow(tmp_path, [RUNNING, SUCCEEDED], existing=existing)
    assert res.returncode == 0, res.stderr
    assert [c for c in calls if "delete" in c] and len(created) == 1


def test_a_retry_does_not_rerun_a_date_the_gate_refused(tmp_path):
    existing = {"metadata": {"name": NAME}, "status": failed(3)}
    res, _, created = follow(tmp_path, [RUNNING], existing=existing)
    assert res.returncode == 3 and not created


def test_api_errors_are_retried_then_bounded(tmp_path):
    for state, failures, code in ((tmp_path / "a", 2, 0), (tmp_path / "b", 3, 75)):
        state.mkdir()
        (state / "fail_gets").write_text(str(failures))  # the coming `get`s fail: server unreachable
        res, _, _ = follow(state, [RUNNING, SUCCEEDED], "--max-api-errors", "3")
        assert res.returncode == code, res.stderr
    assert "did not answer 3 times in a row" in res.stderr and "connection to the server" in res.stderr


def test_a_rayjob_past_the_deadline_is_deleted_and_the_run_exits_75(tmp_path):
    res, calls, _ = follow(tmp_path, [RUNNING], "--deadline-s", "0.3")
    assert res.returncode == 75
    assert ["--namespace", "batchrec", "delete", "rayjob", NAME, "--ignore-not-found", "--wait=true"] in calls
    assert not (tmp_path / "rayjobs" / f"{NAME}.json").exists()
    assert "did not finish within" in res.stderr


def test_a_missing_or_wrong_template_is_one_error_line_and_nothing_is_created(tmp_path):
    (tmp_path / "pod.yaml").write_text("kind: Pod\nmetadata: {name: x}\n")
    for template in (tmp_path / "absent.yaml", tmp_path / "pod.yaml"):
        state = tmp_path / template.stem
        state.mkdir()
        res = subprocess.run(
            [sys.executable, "-m", "batchrec", "rayjob", "--template", str(template), "--kubectl", str(FAKE)],
            env={**os.environ, "FAKE_KUBE_DIR": str(state)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 2, res.stderr
        (line,) = res.stderr.strip().splitlines()
        assert line.startswith("error: ") and str(template) in line
        assert not (state / "calls.jsonl").exists()  # the API server was never asked
