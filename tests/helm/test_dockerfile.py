"""The Dockerfile: structure, non-root numeric user, entrypoint (CI's image stage, .ci/image.sh, builds and runs
it with podman; these checks need no engine), and the CI stage's translation of the chart's pod spec."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from types import ModuleType

import pytest
import yaml

from tests.helm.chart import CHART, ROOT, one, render, worker_container


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_multi_stage_slim_non_root_with_shardlease_entrypoint() -> None:
    steps = _instructions()
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) == 2 and " AS build" in froms[0]
    args = dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    # Both stages build on the build argument: CI passes a stand-in (no registry there), users get the default.
    assert [f.split()[0] for f in froms] == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    wheel = next(rest for word, rest in steps if word == "RUN" and "pip wheel" in rest)
    assert "--constraint constraints.txt" in wheel and "'.[embedded]'" in wheel, "the build installs from the lock"
    install = next(rest for word, rest in steps if word == "RUN" and "pip install" in rest)
    assert "--no-index" in install and "'shardlease[embedded]'" in install, "the runtime takes only the built wheels"
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM"):]
    user = [rest for word, rest in final if word == "USER"]
    assert user and re.fullmatch(r"\d+(:\d+)?", user[-1]), "USER must be numeric (runAsNonRoot can verify it)"
    assert json.loads(next(rest for word, rest in final if word == "ENTRYPOINT")) == ["shardlease"]
    assert json.loads(next(rest for word, rest in final if word == "CMD")) == ["run"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid = int(user[-1].split(":")[0])
    assert values["securityContext"]["runAsUser"] == uid == values["podSecurityContext"]["runAsUser"]
    assert str(values["metrics"]["port"]) in next(rest for word, rest in final if word == "EXPOSE")


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in lines
    copied = {rest.split()[0] for word, rest in _instructions() if word == "COPY" and not rest.startswith("--")}
    for path in ("pyproject.toml", "LICENSE", "constraints.txt", "leaser/", "worker/"):
        assert path in copied or any(path in rest for word, rest in _instructions() if word == "COPY")
        assert f"!{path}" in lines


def test_constraints_pin_every_runtime_dependency() -> None:
    """constraints.txt (the image's lock) pins each runtime dependency, with [embedded], to one version
    within the range pyproject.toml declares."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not pinned with ==: {line}"
            pins[canonicalize_name(name)] = version.strip()
    for spec in project["dependencies"] + project["optional-dependencies"]["embedded"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in constraints.txt"
        assert req.specifier.contains(pins[name]), f"constraints.txt pins {req.name}=={pins[name]}, outside {req}"


def _image_fleet() -> ModuleType:
    spec = importlib.util.spec_from_file_location("image_fleet", ROOT / ".ci" / "image_fleet.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("image_fleet", module)
    spec.loader.exec_module(module)
    return module


def test_ci_runs_the_image_under_exactly_the_charts_security_context(helm: str) -> None:
    """.ci/image_fleet.py's podman flags for the default render: every securityContext setting is applied, and
    the only writable mounts are the chart's emptyDirs."""
    fleet = _image_fleet()
    docs = render(helm)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = worker_container(docs)
    flags = fleet.security_args(pod, container) + fleet.mount_args(pod, container, {})
    assert flags == [
        "--user", "10001:10001", "--group-add", "10001", "--read-only", "--read-only-tmpfs=false",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--tmpfs", "/tmp:rw,exec,mode=1777,size=64m", "--tmpfs", "/var/lib/shardlease:rw,exec,mode=1777",
    ]
    # A setting the script cannot apply stops CI instead of running the container looser than the chart.
    loose = container | {"securityContext": container["securityContext"] | {"procMount": "Unmasked"}}
    with pytest.raises(fleet.StageFailed, match="procMount"):
        fleet.security_args(pod, loose)
