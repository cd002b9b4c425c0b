"""The service sets how often the GIL changes hands (the compute thread needs it between operations)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.config import Settings
from app.main import create_app


def test_the_service_hands_the_gil_over_as_often_as_set_and_gives_the_interval_back(
    tiny_model_store: Path,
) -> None:
    before = sys.getswitchinterval()
    settings = Settings(model_store=tiny_model_store, dtype="float32", reload_interval=0, gil_switch_ms=0.7)
    try:
        with TestClient(create_app(settings)):
            assert sys.getswitchinterval() == pytest.approx(0.0007)
        assert sys.getswitchinterval() == before
    finally:
        sys.setswitchinterval(before)


@pytest.mark.parametrize("value", [0, 0.001, -1, 1000])
def test_a_switch_interval_out_of_range_is_refused(value: float) -> None:
    with pytest.raises(ValidationError, match="gil_switch_ms"):
        Settings(gil_switch_ms=value)
