"""Counting what the engine computes: the gateways a function was called for."""

from __future__ import annotations

from typing import Any

import pytest


def gateways_passed(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[str]:
    """Replace `owner.<name>` (a function whose first argument is a gateway's name) by one that
    records that name, then calls it; the list fills from now on."""
    called: list[str] = []
    original = getattr(owner, name)

    def recording(gateway: str, *args: Any, **kwargs: Any) -> Any:
        called.append(gateway)
        return original(gateway, *args, **kwargs)

    monkeypatch.setattr(owner, name, recording)
    return called
