"""docker/'s Kubernetes manifests (kustomization.yaml and docker/kubernetes/): every object is valid
against the Kubernetes API schema, what one object names another has, and they agree with the image
and the heddle config they run. No cluster here: kustomize's generators are expanded by hand."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is a test extra")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is a test extra")

try:  # tomllib is new in 3.11; on 3.10 the tomli package is the same parser
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib

DOCKER = Path(__file__).resolve().parents[2] / "docker"
K8S_VERSION = "1.30"  # oldest release still in wide use with GA gRPC probes (1.27+)


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "kustomization.yaml").read_text())


def _objects() -> list[dict[str, Any]]:
    """The resources, plus a ConfigMap per configMapGenerator entry (name without kustomize's hash)."""
    kust = _kustomization()
    objects = [doc for res in kust["resources"] for doc in yaml.safe_load_all((DOCKER / res).read_text()) if doc]
    for gen in kust["configMapGenerator"]:
        data = {}
        for entry in gen["files"]:
            key, _, path = entry.rpartition("=") if "=" in entry else (Path(entry).name, "", entry)
            data[key] = (DOCKER / path).read_text()
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    return objects


def _by(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in _objects() if o["kind"] == kind}


def _pod_specs() -> dict[str, dict[str, Any]]:
    return {name: d["spec"]["template"]["spec"] for name, d in _by("Deployment").items()}


def test_every_object_is_valid_against_the_kubernetes_schema() -> None:
    """Strict validation (unknown fields refused) of each object, generated ConfigMaps included."""
    objects = _objects()
    assert {o["kind"] for o in objects} == {"Deployment", "Service", "ConfigMap"}
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_a_misspelled_field_is_caught() -> None:
    """The check above can fail: a typo in a container field is a validation error."""
    deployment = _by("Deployment")["heddle"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 8001}}
    with pytest.raises(kubernetes_validate.utils.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_names_resolve_selectors_match_and_ports_exist() -> None:
    """Every ConfigMap a pod mounts is generated; each Service selects a Deployment's pods and targets
    a named port its container declares; the Secret is the documented heddle-admin/token."""
    config_maps, services, pods = _by("ConfigMap"), _by("Service"), _pod_specs()
    deployments = _by("Deployment")
    for name, spec in pods.items():
        for volume in spec["volumes"]:
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, (name, volume)
    for name, service in services.items():
        target = next(d for d in deployments.values()
                      if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items())
        declared = {p["name"] for c in target["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= declared, name
    env = {e["name"]: e for e in pods["heddle"]["containers"][0]["env"]}
    assert env["HEDDLE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "heddle-admin", "key": "token"}
    howto = (DOCKER / "kustomization.yaml").read_text()
    assert "kubectl create secret generic heddle-admin --from-literal=token=" in howto


def test_heddle_pod_runs_the_image_as_the_dockerfile_says() -> None:
    """Ports, user and probes agree with docker/Dockerfile.cpu; it binds 0.0.0.0 (a token is set)."""
    dockerfile = (DOCKER / "Dockerfile.cpu").read_text()
    spec = _pod_specs()["heddle"]
    container = spec["containers"][0]
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", dockerfile, re.M).group(1).split()}
    assert {p["containerPort"] for p in container["ports"]} == exposed
    uid, gid = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.M).groups()
    assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]) == (int(uid), int(gid))
    assert container["args"][:3] == ["serve", "--config", "/etc/heddle/heddle.toml"]
    assert "0.0.0.0" in container["args"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == 8001


def test_the_mounted_config_is_composes_and_its_triton_device_is_the_triton_service() -> None:
    """The ConfigMap carries compose's heddle config (which tests/triton/test_docker_compose.py loads and
    runs against a real Triton), and its triton device's URL is the triton Service's name and gRPC port."""
    text = _by("ConfigMap")["heddle-config"]["data"]["heddle.toml"]
    assert text == (DOCKER / "heddle-compose.toml").read_text()
    urls = [d["url"] for d in tomllib.loads(text)["devices"] if d["backend"] == "triton"]
    service = _by("Service")["triton"]
    grpc_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert urls == [f"{service['metadata']['name']}:{grpc_port}"]
