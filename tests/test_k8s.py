"""k8s/: kustomize renders (the CronJob stack and the RayCronJob alternative); built-in kinds
validate offline; KubeRay objects validate against KubeRay 1.7's CRD schemas, including the RayJob
as the follower fills it in; pods are non-root, read-only, resourced and meet the restricted Pod
Security Standard; the job ConfigMap matches jobs/; checkov passes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
K8S_VERSION = "1.32.0"

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")


def render(path: Path) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def stack() -> list[dict]:
    return render(K8S)


@pytest.fixture(scope="module")
def workloads(stack) -> dict[str, dict]:
    """The RayJob template as the CronJob's follower reads it from its ConfigMap, and the same
    RayJob as the follower fills it in for one date."""
    from batchrec import kube

    cm = one(stack, "ConfigMap", "batchrec-driver")
    template = yaml.safe_load(cm["data"]["rayjob.yaml"])
    assert [template] == render(K8S / "workloads"), "k8s/workloads renders the object the follower creates"
    filled = kube.rayjob_manifest(
        kube.RayJobConfig(
            template=str(K8S / "workloads" / "rayjob-nightly.yaml"),
            date="2026-11-24",
            image="ghcr.io/example/batchrec:0.1.0",
            cpu_image="ghcr.io/example/batchrec-cpu:0.1.0",
            owner_job="batchrec-nightly-29000000/0b6f5c8e-0000-4000-8000-000000000000",
        )
    )
    return {"RayJob": template, "filled RayJob": filled}


@pytest.fixture(scope="module")
def raycron() -> list[dict]:
    return render(K8S / "raycronjob")


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(doc: dict) -> list[dict]:
    kind, spec = doc["kind"], doc["spec"]
    if kind == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    if kind == "RayCronJob":
        return pod_specs({"kind": "RayJob", "spec": spec["jobTemplate"]})
    if kind == "RayJob":
        cluster = spec["rayClusterSpec"]
        return [
            spec["submitterPodTemplate"]["spec"],
            cluster["headGroupSpec"]["template"]["spec"],
            *(g["template"]["spec"] for g in cluster["workerGroupSpecs"]),
        ]
    return []


def test_the_stack_renders_with_every_piece(stack):
    kinds = {(d["kind"], d["metadata"]["name"]) for d in stack}
    assert {
        ("Namespace", "batchrec"),
        ("ServiceAccount", "batchrec-driver"),
        ("ServiceAccount", "batchrec-workload"),
        ("Role", "batchrec-driver"),
        ("RoleBinding", "batchrec-driver"),
        ("CronJob", "batchrec-nightly"),
        ("ConfigMap", "batchrec-job"),
        ("ConfigMap", "batchrec-env"),
        ("ConfigMap", "batchrec-driver"),
    } <= kinds
    assert all(d["metadata"].get("namespace") == "batchrec" for d in stack if d["kind"] != "Namespace")


def test_built_in_kinds_validate_against_the_kubernetes_schemas(stack, workloads, raycron):
    import kubernetes_validate

    for doc in [*stack, *[d for d in raycron if not d["apiVersion"].startswith("ray.io/")]]:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    # The CRDs' pod templates are core PodSpecs: validate each as a Pod.
    for doc in [*workloads.values(), one(raycron, "RayCronJob")]:
        for spec in pod_specs(doc):
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "t"}, "spec": spec}
            kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_cronjob_schedule_and_retry_policy(stack):
    cj = one(stack, "CronJob")["spec"]
    assert cj["schedule"] and cj["timeZone"] and cj["concurrencyPolicy"] == "Forbid"
    assert cj["startingDeadlineSeconds"] > 0
    assert cj["successfulJobsHistoryLimit"] >= 1 and cj["failedJobsHistoryLimit"] >= 1
    job = cj["jobTemplate"]["spec"]
    assert job["backoffLimit"] >= 1 and job["activeDeadlineSeconds"] > 0
    fail_job = [r for r in job["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert fail_job[0]["onExitCodes"]["values"] == [2, 3], "bad config and gate failures must not be retried"
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    (c,) = job["template"]["spec"]["containers"]
    assert "command" not in c, "args only: the image's entrypoint, tini, stays PID 1"
    assert c["args"][0] == "batchrec" and "rayjob" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["BATCHREC_CPU_IMAGE"]["value"] == c["image"]
    assert env["BATCHREC_IMAGE"]["value"].rsplit(":", 1)[1] == c["image"].rsplit(":", 1)[1], "one release tag"
    assert env["BATCHREC_OWNER_JOB"]["value"] == "$(JOB_NAME)/$(JOB_UID)"
    assert env["JOB_UID"]["valueFrom"]["fieldRef"]["fieldPath"].endswith(
        "['batch.kubernetes.io/controller-uid']"
    )
    # the follower's own deadline (it then deletes the RayJob) ends before the Job's
    from batchrec.kube import RayJobConfig

    assert RayJobConfig().deadline_s < job["activeDeadlineSeconds"]


def test_the_rayjob_runs_the_whole_night_on_a_cpu_head_and_gpu_workers(workloads):
    rj = workloads["RayJob"]
    assert rj["apiVersion"] == "ray.io/v1"
    spec = rj["spec"]
    assert spec["entrypoint"] == "batchrec run /etc/batchrec/job/job.yaml", "every stage, in one job"
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    from batchrec.kube import RayJobConfig

    assert 0 < spec["activeDeadlineSeconds"] < RayJobConfig().deadline_s
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0" and cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in head["ports"]} >= {6379, 8265}
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    (gpu,) = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert {"replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(gpu)
    pod = gpu["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    job = yaml.safe_load((REPO / "jobs" / "nightly-sasrec.yaml").read_text())
    assert job["train"]["workers"] == "${BATCHREC_TRAIN_WORKERS:-2}" and gpu["replicas"] == 2, (
        "one Ray Train worker per GPU of the gpu group"
    )


def test_only_labels_every_gpu_cluster_has_and_no_kubeflow(stack, workloads, raycron):
    text = yaml.safe_dump_all([*stack, *workloads.values(), *raycron])
    assert "nvidia.com/gpu.present" not in text and "feature.node.kubernetes.io" not in text
    assert "kubeflow.org" not in text


def test_the_follower_fills_the_template_for_one_date(workloads):
    filled = workloads["filled RayJob"]
    meta = filled["metadata"]
    assert meta["name"] == "batchrec-nightly-2026-11-24" == meta["labels"]["batchrec.io/run-id"]
    assert meta["ownerReferences"][0]["kind"] == "Job"
    env = yaml.safe_load(filled["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env == {"BATCHREC_DATE": "2026-11-24", "BATCHREC_RUN_ID": "batchrec-nightly-2026-11-24"}


def test_the_raycronjob_runs_the_same_rayjob(raycron, workloads):
    cron = one(raycron, "RayCronJob")
    assert cron["apiVersion"] == "ray.io/v1" and cron["spec"]["schedule"]
    template = dict(workloads["RayJob"]["spec"])
    rendered = dict(cron["spec"]["jobTemplate"])
    images = [c["image"] for spec in pod_specs(cron) for c in spec["containers"]]
    assert all(i.startswith("ghcr.io/example/") for i in images), "kustomize set every image"
    for spec in (template, rendered):
        for c in [c for s in pod_specs({"kind": "RayJob", "spec": spec}) for c in s["containers"]]:
            c["image"] = "-"
    assert rendered == template, "k8s/raycronjob/raycronjob.yaml's jobTemplate drifted from the RayJob"
    kinds = {(d["kind"], d["metadata"]["name"]) for d in raycron}
    assert {("ConfigMap", "batchrec-job"), ("ConfigMap", "batchrec-env"), ("Namespace", "batchrec")} <= kinds


def test_every_pod_is_non_root_read_only_and_resourced(stack, workloads, raycron):
    for doc in [one(stack, "CronJob"), *workloads.values(), one(raycron, "RayCronJob")]:
        for spec in pod_specs(doc):
            assert spec["securityContext"]["runAsNonRoot"] is True, doc["kind"]
            assert spec["serviceAccountName"], doc["kind"]
            scratch = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
            for c in spec["containers"]:
                sc = c["securityContext"]
                assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
                assert sc["capabilities"]["drop"] == ["ALL"]
                assert {"cpu", "memory"} <= set(c["resources"]["requests"]) & set(c["resources"]["limits"])
                tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
                assert tmp and tmp[0]["name"] in scratch, (
                    f"{c['name']}: /tmp (and Ray's temp dir) needs an emptyDir"
                )


def test_credentials_are_secret_references_only(stack, workloads):
    assert not [d for d in stack if d["kind"] == "Secret"], "secrets are created out of band, never committed"
    for doc in [one(stack, "CronJob"), *workloads.values()]:
        for spec in pod_specs(doc):
            secrets = [v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v]
            assert secrets in ([], ["batchrec-object-store"])


def test_driver_rbac_is_least_privilege(stack):
    role = one(stack, "Role", "batchrec-driver")
    assert not [d for d in stack if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == {
        ("ray.io", "rayjobs"),
        ("", "pods"),
        ("", "pods/log"),
        ("batch", "jobs"),
        ("", "events"),
        ("events.k8s.io", "events"),
    }
    assert not any("*" in rule["verbs"] for rule in role["rules"])
    for rule in role["rules"]:
        if rule["apiGroups"] != ["ray.io"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, "everything but RayJobs is read-only"
    sa = one(stack, "ServiceAccount", "batchrec-workload")
    assert sa["automountServiceAccountToken"] is False


def test_job_configmap_is_the_shipped_nightly_job(stack):
    data = one(stack, "ConfigMap", "batchrec-job")["data"]["job.yaml"]
    assert data == (REPO / "jobs" / "nightly-sasrec.yaml").read_text(), (
        "k8s/base/config/nightly-sasrec.yaml drifted: cp jobs/nightly-sasrec.yaml k8s/base/config/"
    )


@pytest.mark.skipif(shutil.which("checkov") is None, reason="checkov not installed (pip install checkov)")
def test_checkov_policy_scan_passes():
    r = subprocess.run(
        [
            "checkov",
            "-d",
            str(K8S),
            "--framework",
            "kubernetes,kustomize",
            "--compact",
            "--quiet",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-4000:]
    r = subprocess.run(
        [
            "checkov",
            "-f",
            str(REPO / "Dockerfile"),
            "--framework",
            "dockerfile",
            "--compact",
            "--quiet",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-4000:]


CRDS = REPO.parent / "shared" / "k8s-crds"


def _strict(schema: dict) -> dict:
    """A CRD's structural schema with unknown fields made errors: the API server prunes a field
    the schema does not name (silently dropping a misplaced one), so offline it must fail."""
    out = {k: v for k, v in schema.items() if k not in ("properties", "items", "additionalProperties")}
    if "properties" in schema:
        out["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(schema["additionalProperties"])
    if "items" in schema:
        out["items"] = _strict(schema["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [_strict(s) for s in schema[key]]
    return out


def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) → the strict openAPIV3Schema of every KubeRay CRD in ../shared/k8s-crds."""
    if not CRDS.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRDS} (see ../shared/k8s-crds/README.md)")
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            api = f"{crd['spec']['group']}/{version['name']}"
            out[(api, crd["spec"]["names"]["kind"])] = _strict(version["schema"]["openAPIV3Schema"])
    return out


def test_the_crd_check_catches_a_misplaced_field():
    import jsonschema

    schemas = crd_schemas()
    rayjob = schemas[("ray.io/v1", "RayJob")]
    good = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {}, "spec": {"entrypoint": "x"}}
    jsonschema.validate(good, rayjob)
    with pytest.raises(jsonschema.ValidationError, match="shutdownAfterJobFinish"):
        jsonschema.validate({**good, "spec": {"entrypoint": "x", "shutdownAfterJobFinish": True}}, rayjob)


def test_kuberay_objects_validate_against_the_real_crd_schemas(stack, workloads, raycron):
    import jsonschema

    schemas = crd_schemas()
    docs = [d for d in [*stack, *workloads.values(), *raycron] if d["apiVersion"].startswith("ray.io/")]
    assert {d["kind"] for d in docs} == {"RayJob", "RayCronJob"}
    assert docs, "the stack has KubeRay objects"
    for doc in docs:
        schema = schemas[(doc["apiVersion"], doc["kind"])]
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, "\n".join(
            f"{doc['kind']} {'.'.join(map(str, e.path))}: {e.message}" for e in errors
        )


def restricted_violations(spec: dict) -> list[str]:
    """What the `restricted` Pod Security Standard (Kubernetes 1.32) refuses in a pod spec."""
    bad = []
    pod_sc = spec.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            bad.append(f"{key} is set")
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}  # fmt: skip
    for v in spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= allowed_volumes:
            bad.append(f"volume {v['name']}: {sorted(kinds - allowed_volumes)} not allowed")
    for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        sc, name = c.get("securityContext", {}), c["name"]
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation must be false")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            bad.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            bad.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            bad.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: adds capabilities {caps['add']}")
        if c.get("ports") and any(p.get("hostPort") for p in c["ports"]):
            bad.append(f"{name}: hostPort")
    return bad


def test_the_restricted_check_refuses_what_the_standard_refuses():
    ok = {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "c",
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }
        ],
    }
    assert restricted_violations(ok) == []
    # e.g. an init container injected by an operator without a security context
    bare = {**ok, "initContainers": [{"name": "init"}], "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}
    assert restricted_violations(bare) == [
        "volume h: ['hostPath'] not allowed",
        "init: allowPrivilegeEscalation must be false",
        "init: capabilities must drop ALL",
    ]


def test_every_pod_template_meets_the_restricted_pod_security_standard(stack, workloads, raycron):
    namespace = one(stack, "Namespace")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in [one(stack, "CronJob"), *workloads.values(), one(raycron, "RayCronJob")]:
        for spec in pod_specs(doc):
            assert restricted_violations(spec) == [], doc["kind"]
