"""The README's commands are the ones CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```sh", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_ci_runs_the_readme_test_command() -> None:
    demo, tests = _readme_commands()[:2]
    assert "pytest" in tests and "[test]" in tests
    assert "shardlease demo" in demo
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines()


def test_readme_configuration_table_is_the_settings_table() -> None:
    from worker.config import markdown_table

    assert markdown_table().strip() in (ROOT / "README.md").read_text()
