"""The Kubernetes manifests, checked offline (no cluster runs here): `kubectl kustomize` renders them; every
object is valid, strictly (no unknown field), against the API schemas of the oldest and the newest Kubernetes
that kubernetes-validate knows; and what they say fits the image and the program: the settings load, the
clients join the server under addresses of their own however many there are, probes ask /health on each
mode's port, the volumes hold DATA_PATH and DB_PATH, the pods run as the image's unprivileged user, and only the
server may call the clients."""

import base64
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from orch.config import load
from tests.deploy.support import ROOT

MANIFESTS = ROOT / "kubernetes"
VERSIONS = ("1.25.0", kubernetes_validate.latest_version())  # the oldest and the newest schemas it ships
TOKEN = "k8s-test-token"
PORTS = {"server": 5000, "client": 9000}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> list[dict]:
    """What `kubectl apply -k kubernetes/` would send, with the token.env a user writes first."""
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is needed to render the manifests (kubectl kustomize)", pytrace=False)
    folder = tmp_path_factory.mktemp("kubernetes") / "kubernetes"
    shutil.copytree(MANIFESTS, folder)
    (folder / "token.env").write_text(f"ORCH_TOKEN={TOKEN}\n")
    done = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(objects: list[dict], kind: str, name: str) -> dict:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def image_settings() -> dict[str, str]:
    """The ENV, USER and EXPOSE of the Containerfile's final stage."""
    text = (ROOT / "Containerfile").read_text().replace("\\\n", " ")
    settings = dict(re.findall(r"(\w+)=(\S+)", re.search(r"^ENV (.*)$", text, re.M)[1]))
    settings["USER"] = re.search(r"^USER (\S+)$", text, re.M)[1]
    return settings


def test_every_object_is_valid_against_the_kubernetes_api_schemas(rendered):
    generated = re.compile(r"-[a-z0-9]{10}$")  # kustomize's suffix of a generated ConfigMap or Secret
    kinds = sorted(f"{o['kind']}/{generated.sub('', o['metadata']['name'])}" for o in rendered)
    assert kinds == [
        "ConfigMap/client-settings", "ConfigMap/server-settings", "Deployment/server", "Namespace/job-orchestrator",
        "NetworkPolicy/client", "PersistentVolumeClaim/server-data", "Secret/orchestrator-token",
        "Service/client", "Service/server", "StatefulSet/client",
    ]  # fmt: skip
    load_balancer = yaml.safe_load((MANIFESTS / "server-load-balancer.yaml").read_text())
    for version in VERSIONS:
        for manifest in [*rendered, load_balancer]:
            kubernetes_validate.validate(manifest, version, strict=True)  # raises, naming the field
    for manifest in rendered:
        assert manifest["kind"] == "Namespace" or manifest["metadata"]["namespace"] == "job-orchestrator"


def test_an_unknown_field_is_caught():
    """The check above is strict: a misspelt field fails it."""
    deployment = next(yaml.safe_load_all((MANIFESTS / "server.yaml").read_text()))
    deployment["spec"]["replica"] = 1
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


@pytest.mark.parametrize("mode, kind", [("server", "Deployment"), ("client", "StatefulSet")])
def test_each_mode_runs_the_image_hardened_with_probes_limits_settings_and_volumes(rendered, mode, kind):
    workload = find(rendered, kind, mode)
    pod = workload["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    image = image_settings()

    assert container["image"] == "localhost/job-orchestrator:latest" and container["args"] == [mode]
    assert workload["spec"]["replicas"] == 1  # one process per database and data folder (see the comments)
    assert (
        workload["spec"]["selector"]["matchLabels"].items()
        <= workload["spec"]["template"]["metadata"]["labels"].items()
    )
    # The image's user, without privileges, on a read-only root; no credentials of the cluster in the pod.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}" == image["USER"]
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]  # the volumes are its own
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    # Probes ask /health on the mode's port.
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": PORTS[mode]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    for bound in ("requests", "limits"):
        assert set(container["resources"][bound]) == {"cpu", "memory"}
    # The database and the job folders (the image's DB_PATH and DATA_PATH) on a persistent volume; /tmp writable.
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    claims = {claim["metadata"]["name"] for claim in workload["spec"].get("volumeClaimTemplates", [])}
    for path in (image["DB_PATH"], image["DATA_PATH"]):
        assert Path(path).parent == Path("/data")
    assert mounts["/data"] in claims or "persistentVolumeClaim" in volumes[mounts["/data"]]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # The settings it gets load as the program loads them.
    env = settings(rendered, workload) | {"HOST": image["HOST"]}
    config = load(mode, env)
    assert config.orch_token == TOKEN and config.port == PORTS[mode]


def settings(rendered: list[dict], workload: dict, replica: int = 0) -> dict[str, str]:
    """The variables the container of a workload's pod number `replica` gets: from its ConfigMaps and Secrets
    (as rendered: generated names), then its own, with the pod's name and $(VAR) references as the kubelet
    puts them."""
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    env = {}
    for source in container["envFrom"]:
        if "configMapRef" in source:
            env |= find(rendered, "ConfigMap", source["configMapRef"]["name"])["data"]
        else:
            data = find(rendered, "Secret", source["secretRef"]["name"])["data"]
            env |= {key: base64.b64decode(value).decode() for key, value in data.items()}
    for variable in container.get("env", []):
        if "valueFrom" in variable:
            assert variable["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
            env[variable["name"]] = f"{workload['metadata']['name']}-{replica}"
        else:
            env[variable["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], variable["value"])
    return env


def test_clients_join_the_server_by_their_own_stable_addresses_and_portals_reach_the_server(rendered):
    server = find(rendered, "Deployment", "server")
    server_service = find(rendered, "Service", "server")
    clients = find(rendered, "StatefulSet", "client")
    client_service = find(rendered, "Service", clients["spec"]["serviceName"])
    assert server_service["spec"]["selector"] == server["spec"]["template"]["metadata"]["labels"]
    assert client_service["spec"]["selector"] == clients["spec"]["template"]["metadata"]["labels"]
    assert client_service["spec"]["clusterIP"] == "None"  # one address per client, never "any client"
    assert client_service["spec"]["publishNotReadyAddresses"] is True  # found as soon as it announces itself
    server_config = load("server", settings(rendered, server))
    assert [service.clients for service in server_config.services.values()] == [()]  # none listed: they join
    limits = clients["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    for replica in (0, 1, 2):  # as many as it is scaled to, each with its own address
        config = load("client", settings(rendered, clients, replica) | {"HOST": image_settings()["HOST"]})
        assert set(config.services) == set(server_config.services)
        joins, advertised = urlsplit(config.server_url), urlsplit(config.advertise_url)
        assert (joins.hostname, joins.port) == (server_service["metadata"]["name"], PORTS["server"])
        assert server_service["spec"]["ports"][0]["port"] == PORTS["server"]
        assert advertised.hostname == f"{clients['metadata']['name']}-{replica}.{client_service['metadata']['name']}"
        assert advertised.port == client_service["spec"]["ports"][0]["port"] == PORTS["client"]
        assert config.slots == int(limits["cpu"])  # the CPUs it may use, not the node's


def test_only_the_server_may_call_the_clients_and_they_call_only_the_server_and_dns(rendered):
    policy = find(rendered, "NetworkPolicy", "client")["spec"]
    client_labels = find(rendered, "StatefulSet", "client")["spec"]["template"]["metadata"]["labels"]
    server_labels = find(rendered, "Deployment", "server")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"] == client_labels
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    (rule,) = policy["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": server_labels}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": PORTS["client"]}]
    to_server, dns = policy["egress"]
    assert to_server == {
        "to": [{"podSelector": {"matchLabels": server_labels}}],
        "ports": [{"protocol": "TCP", "port": PORTS["server"]}],
    }
    assert dns == {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
