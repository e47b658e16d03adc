"""deploy/k8s (Kustomize) and deploy/compose.yaml: valid, and the same services.

Every resource Kustomize renders is validated against the Kubernetes schemas of one pinned
version (`kubernetes-validate`, strict: an unknown or misspelled field fails); the workloads
are then compared with the Compose file's services: the same images, commands, container
ports and environment (secrets by reference on both sides). No cluster and no engine needed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from hearth.stack.compose import COMPOSE_SECRETS, K8S_SECRET

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "deploy" / "compose.yaml"
KUBERNETES_VERSION = "1.33.0"  # the schemas the manifests are checked against
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole"}
WORKLOADS = {"Deployment", "StatefulSet"}
# Compose services run only in a profile: the GPU model is the k8s model (on a GPU node);
# the monolith is the alternative topology, not deployed on Kubernetes.
PROFILE_ONLY = {"model-gpu": "model", "monolith": None}


# -- Kustomize, the part these manifests use: resources, namespace, images ------------------
def _split_image(image: str) -> tuple[str, str | None]:
    name, sep, tag = image.rpartition(":")
    if sep and "/" not in tag:
        return name, tag
    return image, None


def _pod_containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    spec = resource.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def render(folder: Path) -> list[dict[str, Any]]:
    """What `kubectl kustomize folder` gives for a kustomization of plain resources."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - {"apiVersion", "kind", "namespace", "resources", "images"}
    assert not unknown, f"the test's renderer does not apply {sorted(unknown)}: extend it"
    images = {i["name"]: i for i in kustomization.get("images", [])}
    out = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((folder / name).read_text()):
            if not doc:
                continue
            if kustomization.get("namespace") and doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kustomization["namespace"]
            for container in _pod_containers(doc):
                repo, tag = _split_image(container["image"])
                if (change := images.get(repo)) is not None:
                    new_tag = change.get("newTag", tag)
                    container["image"] = change.get("newName", repo) + (
                        f":{new_tag}" if new_tag else ""
                    )
            out.append(doc)
    return out


@pytest.fixture(scope="module")
def resources() -> list[dict[str, Any]]:
    return render(K8S)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def _workloads(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Workload name → its one container."""
    out = {}
    for r in resources:
        if r["kind"] in WORKLOADS:
            (container,) = _pod_containers(r)
            out[r["metadata"]["name"]] = container
    return out


# -- the schemas ------------------------------------------------------------------------------
def test_every_resource_validates_against_the_kubernetes_schemas(
    resources: list[dict[str, Any]],
) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (dev extras)"
    )
    kinds = {r["kind"] for r in resources}
    assert {"Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler"} <= kinds
    for r in resources:
        where = f"{r['kind']}/{r['metadata']['name']}"
        try:
            kubernetes_validate.validate(r, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {exc.message} at {'.'.join(map(str, exc.path))}")


def test_the_renderer_agrees_with_kubectl_kustomize(resources: list[dict[str, Any]]) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: only this test's own Kustomize renderer ran")
    done = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"kubectl kustomize cannot run here: {done.stderr.strip()[-300:]}")

    def key(r: dict[str, Any]) -> str:
        return f"{r['kind']}/{r['metadata'].get('namespace')}/{r['metadata']['name']}"

    theirs = {key(r): r for r in yaml.safe_load_all(done.stdout) if r}
    assert theirs == {key(r): r for r in resources}


# -- what the manifests promise ---------------------------------------------------------------
def test_every_container_is_probed_and_sized(resources: list[dict[str, Any]]) -> None:
    for name, container in _workloads(resources).items():
        assert "readinessProbe" in container and "livenessProbe" in container, name
        assert container["resources"]["requests"], name
        assert "memory" in container["resources"]["limits"], name


def test_the_model_service_asks_for_a_gpu_node(resources: list[dict[str, Any]]) -> None:
    (model,) = [
        r for r in resources if r["kind"] == "Deployment" and r["metadata"]["name"] == "model"
    ]
    pod = model["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    (container,) = pod["containers"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    others = [c for n, c in _workloads(resources).items() if n != "model"]
    assert not any("nvidia.com/gpu" in c["resources"].get("limits", {}) for c in others)


def test_the_gateway_and_the_model_scale_on_their_own(resources: list[dict[str, Any]]) -> None:
    hpas = {r["spec"]["scaleTargetRef"]["name"]: r for r in resources
            if r["kind"] == "HorizontalPodAutoscaler"}  # fmt: skip
    assert set(hpas) == {"gateway", "model"}
    deployments = {r["metadata"]["name"]: r for r in resources if r["kind"] == "Deployment"}
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        # The autoscaler owns their replicas: a fixed count would fight it on every apply.
        assert "replicas" not in deployments[name]["spec"], name
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_secrets_are_referenced_never_written(resources: list[dict[str, Any]]) -> None:
    assert not [r for r in resources if r["kind"] in ("Secret", "ConfigMap")]
    referenced = set()
    for name, container in _workloads(resources).items():
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if env["name"] in COMPOSE_SECRETS:
                assert ref is not None, f"{name}: {env['name']} is a literal, not a reference"
            if ref is not None:
                assert ref["name"] == K8S_SECRET and ref["key"] in COMPOSE_SECRETS, (name, env)
                referenced.add(ref["key"])
        for source in container.get("envFrom", []):
            assert source.get("secretRef", {}).get("name", K8S_SECRET) == K8S_SECRET
    assert referenced == set(COMPOSE_SECRETS)


# -- the same services as Compose -------------------------------------------------------------
_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")
_REQUIRED = re.compile(r"^\$\{(\w+):\?[^}]*\}$")  # ${NAME:?message}: from the env file
_COMPOSE_VAR = re.compile(r"\$\{(\w+)(?::[?-][^}]*)?\}")
_K8S_VAR = re.compile(r"\$\((\w+)\)")


def _compose_value(value: object) -> object:
    """A Compose environment value in a form comparable with Kubernetes': a secret from the
    env file as ("secret", name), other variables as {NAME}."""
    text = str(value)
    if (m := _REQUIRED.match(text)) and m.group(1) in COMPOSE_SECRETS:
        return ("secret", m.group(1))
    return _COMPOSE_VAR.sub(r"{\1}", text)


def _k8s_value(env: dict[str, Any]) -> object:
    if (ref := env.get("valueFrom", {}).get("secretKeyRef")) is not None:
        return ("secret", ref["key"])
    return _K8S_VAR.sub(r"{\1}", str(env["value"]))


def _compose_ports(service: dict[str, Any]) -> set[int]:
    published = {int(str(p).rsplit(":", 1)[-1]) for p in service.get("ports", [])}
    return published | {int(p) for p in service.get("expose", [])}


def _compose_image(service: dict[str, Any]) -> str:
    """The image's repository, defaults of `${VAR:-default}` applied, without the tag."""
    return _split_image(_DEFAULT.sub(r"\2", service["image"]))[0]


def test_the_same_services_as_compose(
    resources: list[dict[str, Any]], compose: dict[str, Any]
) -> None:
    workloads = _workloads(resources)
    everywhere = {n for n in compose if n not in PROFILE_ONLY}
    assert set(workloads) == everywhere
    for name, twin in PROFILE_ONLY.items():
        assert name in compose, name
        if twin is not None:
            assert compose[name]["image"] == compose[twin]["image"]
            assert compose[name]["environment"] == compose[twin]["environment"]


@pytest.mark.parametrize(
    "service",
    ["postgres", "redis", "mlflow", "prefect-server", "prefect-worker", "features", "model",
     "gateway"],
)  # fmt: skip
def test_kubernetes_runs_what_compose_runs(
    service: str, resources: list[dict[str, Any]], compose: dict[str, Any]
) -> None:
    container, ours = _workloads(resources)[service], compose[service]
    assert _split_image(container["image"])[0] == _compose_image(ours)
    assert container.get("command") == ours.get("command")
    assert {p["containerPort"] for p in container["ports"]} == _compose_ports(ours)
    k8s_env = {e["name"]: _k8s_value(e) for e in container.get("env", [])}
    compose_env = {k: _compose_value(v) for k, v in ours.get("environment", {}).items()}
    assert k8s_env == compose_env


def test_compose_takes_every_image_from_the_env_file(compose: dict[str, Any]) -> None:
    """Each image is a variable of the env file `hearth up --containers` writes (the tags of
    `hearth containerize`), with the image's plain name as the default."""
    for name, service in compose.items():
        assert _DEFAULT.fullmatch(service["image"]), name
        assert "build" not in service, f"{name}: images come from the local engine only"


def test_compose_services_are_healthchecked_and_restarted(compose: dict[str, Any]) -> None:
    for name, service in compose.items():
        assert service["restart"] == "unless-stopped", name
        assert service["pull_policy"] == "never", name
        assert service["healthcheck"]["test"], name
    reservation = compose["model-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert reservation == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert compose["model-gpu"]["networks"]["default"]["aliases"] == ["model"]
