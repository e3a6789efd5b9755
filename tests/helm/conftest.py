from __future__ import annotations

import pytest

from tests.helm.chart import find_helm


@pytest.fixture(scope="session")
def helm() -> str:
    """Path of a helm binary (see tests/helm/chart.py: skips loudly, or fails in CI, without one)."""
    return find_helm()
