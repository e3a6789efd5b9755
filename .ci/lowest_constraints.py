"""Print a pip constraints file pinning each runtime dependency to its lowest declared version.

Reads pyproject.toml's [project] dependencies and the `embedded` extra; every one must have a `>=`
lower bound (the versions we claim to support).  .ci/run installs with it and runs the unit tests.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
for spec in project["dependencies"] + project["optional-dependencies"]["embedded"]:
    match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)\s*", spec)
    if match is None:
        sys.exit(f"{spec!r}: every runtime dependency needs a '>=' lower bound and nothing else")
    print(f"{match.group(1)}=={match.group(2)}")
    if match.group(1) == "boto3":  # botocore (imported too) moves in step with boto3: its lowest is boto3's
        print(f"botocore=={match.group(2)}")
