"""deploy/kubernetes: the central part's manifests, checked as far as this machine allows
(no cluster here): every object against the Kubernetes API schema, every setting and
FEDHUB_* variable against the component that reads it, NATS's configuration by the real
nats-server, and the NATS users `fedhub nats-auth` and `fedhub site add --nats-auth` write
by a real nats-server enforcing them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from fedhub.coordinator import sitecli
from fedhub.coordinator.cli import main as fedhub_cli
from fedhub.coordinator.natsauth import AuthFile
from fedhub.coordinator.settings import CoordinatorSettings
from fedhub.events.errors import StoreUnavailable
from fedhub.events.jetstream import JetStreamStore
from fedhub.schemas.bundle import Bundle
from tests.support.deploy import is_setting, load_whole, without_fedhub_env
from tests.support.ports import free_port
from tests.support.services import nats_server_with_auth

pytestmark = pytest.mark.integration
K8S = Path(__file__).parents[2] / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
COMPONENTS = ["coordinator", "edge-proxy"]  # the central part: their config maps


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def of_kind(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name)


def test_every_object_is_valid_for_the_kubernetes_api() -> None:
    kinds = set()
    for doc in documents():
        if doc["kind"] == "Kustomization":
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        kinds.add(doc["kind"])
    assert {"StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget"} <= kinds
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_component_reads_its_configuration_and_variables(
        component: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file_name = f"{component}.toml"
    config = tmp_path / file_name
    config.write_text(of_kind("ConfigMap", component)["data"][file_name])
    container = of_kind("StatefulSet", component)["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == [component, "--config", f"/etc/fedhub/{file_name}"]
    without_fedhub_env(monkeypatch)
    for var in container["env"]:
        if var["name"].startswith("FEDHUB_"):  # a misspelt one would be ignored silently
            assert is_setting(component, var["name"]), var["name"]
            value = var.get("value", "").replace("$(POD_NAME)", f"{component}-0")
            monkeypatch.setenv(var["name"], value or f"{component}-0")
    secret = f"fedhub-{component}"  # as README.md creates it
    assert container["envFrom"] == [{"secretRef": {"name": secret}}]
    made = secret_variables(secret)
    assert made and all(is_setting(component, var) for var in made), made
    monkeypatch.setenv("FEDHUB_DATA_DIR", str(tmp_path / "data"))
    settings, _ = load_whole(component, config)
    assert settings.port == container["ports"][0]["containerPort"]
    if isinstance(settings, CoordinatorSettings):
        assert settings.stream_replicas == of_kind("StatefulSet", "nats")["spec"]["replicas"]
    fedhub = [sys.executable, "-m", "fedhub.coordinator.cli"]
    assert subprocess.run([*fedhub, component, "--help"], capture_output=True).returncode == 0


def secret_variables(secret: str) -> set[str]:
    """The FEDHUB_* variables README.md's ``kubectl create secret generic <secret>`` sets."""
    commands = (K8S / "README.md").read_text().replace("\\\n", " ").splitlines()
    return {var for line in commands if f"secret generic {secret} " in line
            for var in re.findall(r"--from-literal=(FEDHUB_\w+)=", line)}


@pytest.fixture
def users(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """NATS users as an operator makes them: the hub's, then site hpc's (bundle hpc.json)."""
    made = tmp_path / "nats-users"
    assert fedhub_cli(["nats-auth", str(made)]) == 0
    assert "hub-password" in capsys.readouterr().out
    sitecli.add(lambda *_: {"name": "hpc"}, tmp_path, name="hpc", backend="slurm", weight=1,
                description="", nats_url="nats://nats:4222", bundle_path=tmp_path / "hpc.json",
                tunnel=True, nats_auth=made)
    return made


def test_nats_accepts_the_manifests_configuration(tmp_path: Path, users: Path) -> None:
    # Laid out as the pod mounts them: the config map and the nats-auth secret side by side.
    nats = of_kind("StatefulSet", "nats")["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in nats["volumeMounts"]}
    assert (mounts["conf"], mounts["auth"]) == ("/etc/nats/conf", "/etc/nats/auth")
    assert nats["command"] == ["nats-server", "-c", "/etc/nats/conf/nats.conf"]
    for mount, source in (("conf", None), ("auth", users / "auth.conf")):
        (tmp_path / "etc" / mount).mkdir(parents=True)
        if source is not None:
            (tmp_path / "etc" / mount / "auth.conf").write_text(source.read_text())
    conf = tmp_path / "etc" / "conf" / "nats.conf"
    conf.write_text(of_kind("ConfigMap", "nats")["data"]["nats.conf"])
    checked = subprocess.run([shutil.which("nats-server") or "nats-server", "-t", "-c",
                              str(conf)], env={**os.environ, "POD_NAME": "nats-0"},
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


async def test_the_nats_users_fedhub_writes_are_enforced(tmp_path: Path, users: Path) -> None:
    with nats_server_with_auth(users, users / "auth.conf") as (address, _):
        password = (users / "hub-password").read_text().strip()
        # Credentials written into the first server's URL serve the others too (a
        # cluster's: the first one is down here).
        down = f"127.0.0.1:{free_port()}"
        hub = await JetStreamStore.connect(f"nats://hub:{password}@{down},nats://{address}")
        await hub.close()
        bundle = Bundle.read(tmp_path / "hpc.json")
        assert bundle.nats_user == "site-hpc" and bundle.inbox_prefix
        site = await JetStreamStore.connect(
            bundle.nats_url_with_credentials().replace("nats:4222", address),
            create_streams=False, inbox_prefix=bundle.inbox_prefix)
        await site.close()
        with pytest.raises(StoreUnavailable):
            await JetStreamStore.connect(f"nats://site-hpc:wrong@{address}",
                                         create_streams=False)
    assert AuthFile(users).remove_site("hpc")
