"""Fixtures of the sharding tests: a small selection of three partners' clips in the store under test."""

from __future__ import annotations

import pytest

from tests.sharding.helpers import Selection, make_selection


@pytest.fixture
def selection(store, tmp_path) -> Selection:
    return make_selection(store, tmp_path / "media")
