import os

import pytest


def _run_slow() -> bool:
    return os.environ.get("GRPO_SLOW") == "1" or os.environ.get("CI") == "true"


def pytest_collection_modifyitems(config, items):
    if _run_slow():
        return
    skip = pytest.mark.skip(reason="slow: set GRPO_SLOW=1 (CI=true runs it)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
