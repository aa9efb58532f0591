"""Shared test fixtures: where the reference golden fixtures live, and how to find them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def fixtures_root() -> Path:
    """`PPCHAT_FIXTURES`, else `../shared/fixtures` beside the repository."""
    env = os.environ.get("PPCHAT_FIXTURES")
    return Path(env) if env else (REPO.parent / "shared" / "fixtures")


def fixture_dirs(kind: str) -> list[Path]:
    """Every checkpoint directory under the fixtures root whose config.json has this `kind`."""
    root = fixtures_root()
    found = []
    if root.is_dir():
        for cfg in sorted(root.rglob("config.json")):
            try:
                if json.loads(cfg.read_text()).get("kind") == kind:
                    found.append(cfg.parent)
            except (OSError, ValueError):
                continue
    return found


def fixture_params(kind: str):
    dirs = fixture_dirs(kind)
    if not dirs:
        # A missing fixtures tree must be loud, not a silent pass.
        return [pytest.param(None, marks=pytest.mark.xfail(reason=f"no '{kind}' fixtures under {fixtures_root()}", strict=True))]
    return [pytest.param(d, id=d.name) for d in dirs]


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    root = fixtures_root()
    if not root.is_dir():
        pytest.fail(f"fixtures root {root} not found (set PPCHAT_FIXTURES)")
    return root
