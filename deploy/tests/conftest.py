"""Shared helpers for the deploy/ tests: where the manifests are and how to load them."""

from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent


def load_docs(path: Path) -> list:
    """Every non-empty YAML document in a file."""
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def manifest_files() -> list:
    """All YAML files of deploy/ except the tests' own."""
    return sorted(
        p for p in DEPLOY.rglob("*.yaml") if "tests" not in p.relative_to(DEPLOY).parts
    )


def find(kind: str) -> dict:
    """The single object of `kind` among deploy/'s manifests."""
    found = [
        d
        for p in manifest_files()
        for d in load_docs(p)
        if isinstance(d, dict) and d.get("kind") == kind
    ]
    assert len(found) == 1, f"expected exactly one {kind} in deploy/, found {len(found)}"
    return found[0]


@pytest.fixture(scope="session")
def deploy_dir() -> Path:
    return DEPLOY
