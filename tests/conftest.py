"""Shared test settings: `slow` tests (real model, many steps) run only on request."""

from __future__ import annotations

import os

import pytest

from tests.threads import one_torch_thread


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow") or os.environ.get("TANDEM_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or TANDEM_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """`pytestmark = pytest.mark.usefixtures("one_thread")`: see tests/threads.py."""
    with one_torch_thread():
        yield
