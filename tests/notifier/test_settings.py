"""The notifier's settings refuse combinations that would send a delivery twice."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.notifier.settings import NotifierSettings


def test_a_delivery_lease_must_outlive_one_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDDISPATCH_NOTIFIER__WEBHOOK_TIMEOUT_S", "15")
    monkeypatch.setenv("GRIDDISPATCH_NOTIFIER__DELIVERY_LEASE_S", "10")
    with pytest.raises(ValidationError, match="delivery_lease_s must be longer"):
        NotifierSettings()
    monkeypatch.setenv("GRIDDISPATCH_NOTIFIER__DELIVERY_LEASE_S", "20")
    assert NotifierSettings().delivery_lease_s == 20
