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


def test_readme_configuration_tables_show_groups_and_switches() -> None:
    from worker.config import GROUPS, RUN_SETTINGS

    readme = (ROOT / "README.md").read_text()
    config = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for _, title in GROUPS:
        assert f"**{title}**" in config
    for setting in RUN_SETTINGS:
        if setting.is_switch:
            assert f"`{setting.flags[0]}` / `{setting.no_flag}` (a switch)" in config
    assert "`True`" not in config and "`False`" not in config  # switches show on/off, not Python


def test_readme_exit_code_table_is_the_cli_one() -> None:
    from worker.cli import EXIT_CODES, markdown_exit_codes
    from worker.runtime import EXIT_ABANDONED

    assert markdown_exit_codes().strip() in (ROOT / "README.md").read_text()
    assert {code for code, _ in EXIT_CODES} >= {0, 1, 2, EXIT_ABANDONED, 75}


def test_readme_first_two_commands_are_unchanged() -> None:
    demo, tests = _readme_commands()[:2]
    assert demo == "python3 -m venv .venv && .venv/bin/pip install -q -e '.[embedded]' && .venv/bin/shardlease demo"
    assert tests == "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest -q"
