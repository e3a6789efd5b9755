"""The Dockerfile (no engine to build it here): structure, non-root numeric user, entrypoint."""

from __future__ import annotations

import json
import re

import yaml

from tests.helm.chart import CHART, ROOT


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
