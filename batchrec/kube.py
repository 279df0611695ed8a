"""`batchrec rayjob`: the nightly CronJob's command. It creates the date's KubeRay RayJob, whose
driver runs the whole `batchrec run` on a Ray cluster, and follows it to a terminal state.

    batchrec rayjob --template /etc/batchrec/driver/rayjob.yaml --date 2026-11-24

One date, one RayJob, named `{template name}-{date}`, which is also the run id every pod logs
(set as BATCHREC_RUN_ID in the Ray job's runtime environment) and `batchrec run` writes into the
run manifest. A retry of this command (the CronJob Job's next pod) finds the RayJob and follows
it rather than starting over; a RayJob that failed for a transient reason is deleted and
created again, and its stages skip what the first attempt published.

Terminal states and exit codes, for whoever is on call:
- Complete / SUCCEEDED → 0.
- the driver (`batchrec run`) exited 2 (bad job file or input) or 3 (quality gate) → the same
  code, which the CronJob's podFailurePolicy does not retry;
- ValidationFailed (KubeRay refused the manifest) → 2: a config error, not retried;
- any other failure → 1, retried by the Job's backoffLimit; the RayJob's message, the
  driver's last log lines and the object's events are printed first;
- no terminal state within `deadline_s`, or the API unreadable `max_api_errors` times in a
  row → the RayJob is deleted (so no GPU cluster outlives the run) and 75: retry.
The RayJob is owned by this CronJob run's Job (`owner`): deleting the run deletes the RayJob,
and with it KubeRay's Ray cluster. Talks to the API server only through `kubectl`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import yaml

from batchrec import log, schema
from batchrec.errors import RetryableError, UserError

_log = log.get("rayjob")
SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
_EXIT = re.compile(r"failed with exit code (\d+)")
PASSED_THROUGH = (2, 3)  # the driver's codes that mean "do not retry"


class RayJobFailed(Exception):
    """The RayJob ended badly; `code` is this command's exit code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


@dataclass
class RayJobConfig:
    template: str = "/etc/batchrec/driver/rayjob.yaml"  # the RayJob manifest; its name is the prefix
    date: str | None = None  # YYYY-MM-DD; default: today (UTC)
    namespace: str | None = None  # default: this pod's namespace, else kubectl's
    image: str | None = None  # image of the containers that request GPUs; default: the template's
    cpu_image: str | None = None  # image of the other containers (head, submitter); default: the template's
    # "NAME/UID" of the Job that owns the RayJob (this CronJob run); deleting it deletes the RayJob
    owner_job: str | None = None
    deadline_s: float = 36000.0  # longest wait for a terminal state, then delete and exit 75
    poll_s: float = 30.0  # seconds between reads of the RayJob's status
    max_api_errors: int = 10  # failed reads in a row before giving up (exit 75)
    log_lines: int = 40  # the driver's last log lines printed on a failure
    kubectl: str = "kubectl"  # the kubectl binary

    def validate(self) -> list[str]:
        errs = schema.check_date("date", self.date)
        if self.owner_job is not None and self.owner_job.count("/") != 1:
            errs.append(f"owner_job: {self.owner_job!r} must be NAME/UID")
        if self.deadline_s <= 0 or self.poll_s <= 0 or self.max_api_errors < 1:
            errs.append("deadline_s and poll_s must be > 0, max_api_errors ≥ 1")
        return errs


def run(cfg: RayJobConfig) -> str:
    """Create or resume the date's RayJob and follow it to success; returns its name."""
    log.set_stage("rayjob")
    kube = Kubectl(cfg)
    manifest = rayjob_manifest(cfg)
    name = manifest["metadata"]["name"]
    log.set_run_id(name)
    existing = read(kube, name, cfg)
    if existing is not None:
        deployment, job = _states(existing)
        _log.info("RayJob %s exists (%s/%s): following it", name, deployment or "New", job or "-")
        if deployment in ("Failed", "ValidationFailed"):
            code = _driver_exit(existing)
            if deployment == "ValidationFailed" or code in PASSED_THROUGH:
                return follow(kube, name, cfg)  # reports it again: retrying cannot help
            _log.info("the earlier attempt failed (%s): deleting it and starting again", _message(existing))
            kube.delete(name)
            existing = None
    if existing is None:
        kube.create(manifest)
        _log.info("created RayJob %s (run id %s)", name, name)
    return follow(kube, name, cfg)


def rayjob_manifest(cfg: RayJobConfig) -> dict[str, Any]:
    """The template, made this date's: name, labels, images, run id and date, owner."""
    try:
        with open(cfg.template) as f:
            m = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"cannot read the RayJob template: {e}", where=cfg.template) from e
    if not isinstance(m, dict) or m.get("kind") != "RayJob" or not (m.get("metadata") or {}).get("name"):
        raise UserError(
            "the template is not a RayJob manifest with a metadata.name",
            where=cfg.template,
            fix="pass k8s/workloads/rayjob-nightly.yaml or a RayJob like it",
        )
    date = cfg.date or dt.datetime.now(dt.timezone.utc).date().isoformat()
    meta = m["metadata"]
    name = f"{meta['name']}-{date}"
    meta["name"] = name
    meta.setdefault("labels", {}).update({"batchrec.io/date": date, "batchrec.io/run-id": name})
    if cfg.namespace:
        meta["namespace"] = cfg.namespace
    if cfg.owner_job:
        job, uid = cfg.owner_job.split("/")
        meta["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": uid}]
    spec = m["spec"]
    env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
    # the Ray job's environment reaches its driver and every Ray worker it starts
    env.setdefault("env_vars", {}).update({"BATCHREC_DATE": date, "BATCHREC_RUN_ID": name})
    spec["runtimeEnvYAML"] = yaml.safe_dump(env, sort_keys=True)
    for container in _containers(m):
        gpu = "nvidia.com/gpu" in (container.get("resources", {}).get("limits") or {})
        container["image"] = (cfg.image if gpu else cfg.cpu_image) or container["image"]
    return m


def follow(kube: Kubectl, name: str, cfg: RayJobConfig) -> str:
    """Poll the RayJob until it is terminal; success returns, anything else raises."""
    deadline = time.monotonic() + cfg.deadline_s
    last = None
    while True:
        obj = read(kube, name, cfg, strict=True)
        deployment, job = _states(obj)
        if (deployment, job) != last:
            _log.info("RayJob %s: %s / %s", name, deployment or "New", job or "-")
            last = (deployment, job)
        if deployment == "Complete" and job == "SUCCEEDED":
            return name
        if deployment in ("Complete", "Failed", "ValidationFailed"):
            raise failure(kube, name, obj, cfg)
        if time.monotonic() > deadline:
            kube.delete(name)
            raise RetryableError(
                f"RayJob {name} did not finish within {cfg.deadline_s:.0f} s; deleted it and its Ray cluster"
            )
        time.sleep(cfg.poll_s)


def read(kube: Kubectl, name: str, cfg: RayJobConfig, strict: bool = False) -> dict[str, Any] | None:
    """The RayJob (None when absent and not `strict`), through up to `max_api_errors` failed reads."""
    errors = 0
    while True:
        try:
            return kube.get(name, strict=strict)
        except RetryableError as e:
            errors += 1
            _log.warning("reading RayJob %s failed (%d in a row): %s", name, errors, e)
            if errors >= cfg.max_api_errors:
                raise RetryableError(f"the API server did not answer {errors} times in a row: {e}") from e
            time.sleep(cfg.poll_s)


def failure(kube: Kubectl, name: str, obj: dict[str, Any], cfg: RayJobConfig) -> RayJobFailed:
    """Print what the on-call person needs, and the exit code the CronJob should see."""
    deployment, job = _states(obj)
    message = _message(obj)
    for line in kube.driver_logs(name, cfg.log_lines):
        _log.error("driver | %s", line)
    for line in kube.events(name):
        _log.error("event | %s", line)
    if deployment == "ValidationFailed":
        return RayJobFailed(f"KubeRay refused RayJob {name}: {message} — fix the manifest", 2)
    code = _driver_exit(obj)
    if code in PASSED_THROUGH:
        what = "bad job file or input" if code == 2 else "the quality gate refused to publish"
        return RayJobFailed(f"RayJob {name}: batchrec run exited {code} ({what}) — not retried", code)
    return RayJobFailed(f"RayJob {name} failed ({deployment}/{job or '-'}): {message}", 1)


def _states(obj: dict[str, Any]) -> tuple[str, str]:
    status = obj.get("status") or {}
    return status.get("jobDeploymentStatus", ""), status.get("jobStatus", "")


def _message(obj: dict[str, Any]) -> str:
    status = obj.get("status") or {}
    text = " ".join(filter(None, (status.get("reason"), status.get("message"))))
    return text.splitlines()[0][:500] if text else "no message"


def _driver_exit(obj: dict[str, Any]) -> int | None:
    """The driver's exit code, which Ray's job manager writes into the job's message."""
    m = _EXIT.search((obj.get("status") or {}).get("message", ""))
    return int(m.group(1)) if m else None


def _containers(m: dict[str, Any]) -> list[dict[str, Any]]:
    spec = m["spec"]
    cluster = spec.get("rayClusterSpec") or {}
    templates = [
        cluster.get("headGroupSpec", {}).get("template"),
        *(g.get("template") for g in cluster.get("workerGroupSpecs", [])),
        spec.get("submitterPodTemplate"),
    ]
    return [c for t in templates if t for c in t["spec"].get("containers", [])]


class Kubectl:
    """The few API calls the follower makes, each bounded by a timeout."""

    TIMEOUT_S = 60

    def __init__(self, cfg: RayJobConfig):
        self.base = [cfg.kubectl]
        namespace = cfg.namespace or _own_namespace()
        if namespace:
            self.base += ["--namespace", namespace]

    def _run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                [*self.base, *args], input=stdin, capture_output=True, text=True, timeout=self.TIMEOUT_S
            )
        except subprocess.TimeoutExpired as e:
            raise RetryableError(f"kubectl {' '.join(args)} took over {self.TIMEOUT_S} s") from e

    def get(self, name: str, strict: bool = False) -> dict[str, Any] | None:
        """The RayJob, or None when it does not exist (an error when `strict`: it vanished)."""
        res = self._run("get", "rayjob", name, "-o", "json")
        if res.returncode == 0:
            return json.loads(res.stdout)
        if "NotFound" in res.stderr:
            if strict:
                raise RayJobFailed(f"RayJob {name} was deleted while being followed", 1)
            return None
        raise RetryableError(res.stderr.strip() or f"kubectl exited {res.returncode}")

    def create(self, manifest: dict[str, Any]) -> None:
        res = self._run("create", "-f", "-", "-o", "name", stdin=json.dumps(manifest))
        if res.returncode != 0:
            err = res.stderr.strip()
            if "Invalid" in err or "BadRequest" in err or "forbidden" in err.lower():
                raise UserError(f"the API server refused the RayJob: {err}", fix="fix the template or RBAC")
            raise RetryableError(f"creating the RayJob failed: {err}")

    def delete(self, name: str) -> None:
        res = self._run("delete", "rayjob", name, "--ignore-not-found", "--wait=true")
        if res.returncode != 0:
            _log.warning("deleting RayJob %s failed: %s", name, res.stderr.strip())

    def driver_logs(self, name: str, lines: int) -> list[str]:
        """The last lines of the submitter pod, which streams the Ray job's (the driver's) log."""
        res = self._run("logs", f"job/{name}", f"--tail={lines}")
        return res.stdout.splitlines() if res.returncode == 0 else [f"(no logs: {res.stderr.strip()})"]

    def events(self, name: str) -> list[str]:
        res = self._run("get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json")
        if res.returncode != 0:
            return []
        items = json.loads(res.stdout).get("items", [])
        return [f"{e.get('type', '')} {e.get('reason', '')}: {e.get('message', '')}" for e in items[-10:]]


def _own_namespace() -> str | None:
    try:
        with open(SA_NAMESPACE) as f:
            return f.read().strip() or None
    except OSError:
        return None
