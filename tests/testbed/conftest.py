"""The micro testbed, built once per test session (a second build of the same directory is a
cache hit, so the root conftest's fixture of the same name shares this build)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def micro_testbed(tmp_path_factory):
    from taskexpert.testbed import build_testbed

    return build_testbed(
        tmp_path_factory.getbasetemp() / "micro_testbed", "micro", 0, progress=False
    )
