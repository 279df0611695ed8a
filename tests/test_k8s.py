"""k8s/: kustomize renders; built-in kinds validate offline; CRDs carry their operators' fields;
pods are non-root, read-only, resourced; the job ConfigMap matches jobs/; checkov passes."""

from __future__ import annotations

import re
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
    """The RayJob and PyTorchJob templates, as the CronJob's driver reads them from its ConfigMap."""
    cm = one(stack, "ConfigMap", "batchrec-driver")
    docs = [yaml.safe_load(cm["data"][k]) for k in ("pytorchjob-train.yaml", "rayjob-score.yaml")]
    assert docs == render(K8S / "workloads"), "k8s/workloads renders the same objects the driver creates"
    return {d["kind"]: d for d in docs}


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(doc: dict) -> list[dict]:
    kind, spec = doc["kind"], doc["spec"]
    if kind == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    if kind == "PyTorchJob":
        return [r["template"]["spec"] for r in spec["pytorchReplicaSpecs"].values()]
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


def test_built_in_kinds_validate_against_the_kubernetes_schemas(stack, workloads):
    import kubernetes_validate

    for doc in stack:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    # The CRDs' pod templates are core PodSpecs: validate each as a Pod.
    for doc in workloads.values():
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
    env = {e["name"]: e["value"] for e in job["template"]["spec"]["containers"][0]["env"]}
    assert env["BATCHREC_IMAGE"] == job["template"]["spec"]["containers"][0]["image"]


def test_rayjob_carries_what_kuberay_needs(workloads):
    rj = workloads["RayJob"]
    assert rj["apiVersion"] == "ray.io/v1"
    spec = rj["spec"]
    assert (
        spec["entrypoint"].startswith("batchrec run ") and "stages=evaluate,score,index" in spec["entrypoint"]
    )
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] and "rayStartParams" in cluster["headGroupSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in head["ports"]} >= {6379, 8265}
    (gpu,) = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert {"replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(gpu)
    pod = gpu["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]) and pod["nodeSelector"]


def test_pytorchjob_carries_what_the_training_operator_needs(workloads):
    pj = workloads["PyTorchJob"]
    assert pj["apiVersion"] == "kubeflow.org/v1"
    spec = pj["spec"]
    assert set(spec["pytorchReplicaSpecs"]) == {"Master", "Worker"}
    assert spec["pytorchReplicaSpecs"]["Master"]["replicas"] == 1
    for replica in spec["pytorchReplicaSpecs"].values():
        assert replica["restartPolicy"] in ("Never", "OnFailure", "Always", "ExitCode")
        (c,) = replica["template"]["spec"]["containers"]
        assert c["name"] == "pytorch", "the operator finds the training container by name"
        assert c["command"][:3] == ["torchrun", "-m", "batchrec"] and "stages=train" in c["command"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert {"cleanPodPolicy", "backoffLimit", "ttlSecondsAfterFinished"} <= set(spec["runPolicy"])


def test_every_pod_is_non_root_read_only_and_resourced(stack, workloads):
    for doc in [one(stack, "CronJob"), *workloads.values()]:
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
    assert granted == {("ray.io", "rayjobs"), ("kubeflow.org", "pytorchjobs")}
    assert not any("*" in rule["verbs"] for rule in role["rules"])
    sa = one(stack, "ServiceAccount", "batchrec-workload")
    assert sa["automountServiceAccountToken"] is False


def test_job_configmap_is_the_shipped_nightly_job(stack):
    data = one(stack, "ConfigMap", "batchrec-job")["data"]["job.yaml"]
    assert data == (REPO / "jobs" / "nightly-sasrec.yaml").read_text(), (
        "k8s/config/nightly-sasrec.yaml drifted: cp jobs/nightly-sasrec.yaml k8s/config/"
    )


def test_driver_script_parses_and_its_templates_fit_its_edits(stack):
    script = one(stack, "ConfigMap", "batchrec-driver")["data"]["nightly.sh"]
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)
    for name in ("pytorchjob-train.yaml", "rayjob-score.yaml"):
        text = (K8S / "workloads" / name).read_text()
        # nightly.sh renames `  name: batchrec-…` and fills `${BATCHREC_DATE}` and `image: batchrec:…`.
        assert "\n  name: batchrec-" in text and "${BATCHREC_DATE}" in text and "image: batchrec:" in text


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


def test_dockerfile_is_cuda_runtime_non_root_pinned_with_batchrec_entrypoint():
    text = (REPO / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert any(f.startswith("nvidia/cuda:") and "runtime" in f for f in froms), froms
    assert all(":" in f and not f.endswith(":latest") for f in froms)
    (user,) = re.findall(r"^USER (\S+)", text, re.M)
    assert not user.startswith(("root", "0"))
    assert '"batchrec"]' in re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1)
    installs = re.findall(r"pip install ([^&]+?)(?:&&|\n\n|$)", text, re.S)
    reqs = [t.strip('"\\') for chunk in installs for t in chunk.split() if not t.startswith(("-", "\\", "."))]
    reqs = [r for r in reqs if not r.startswith(("$", "http"))]
    assert reqs and all("==" in r for r in reqs), reqs


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


def test_kuberay_objects_validate_against_the_real_crd_schemas(stack, workloads):
    import jsonschema

    schemas = crd_schemas()
    docs = [d for d in [*stack, *workloads.values()] if d["apiVersion"].startswith("ray.io/")]
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


def test_every_pod_template_meets_the_restricted_pod_security_standard(stack, workloads):
    namespace = one(stack, "Namespace")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in [one(stack, "CronJob"), *workloads.values()]:
        for spec in pod_specs(doc):
            assert restricted_violations(spec) == [], doc["kind"]
