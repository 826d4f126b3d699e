"""What `controller.candidates` renders again and what it keeps (pure)."""

from __future__ import annotations

import pytest

from controller import candidates
from controller.candidates import Candidates
from controller.hostplan import plan_all
from controller.model import Gateway
from controller.render import RenderSettings, SectionCache

SETTINGS = RenderSettings(admin_socket="/x/admin.sock")


def gateway(port: int) -> Gateway:
    instances = [f"127.2.0.{i}:8080" for i in range(1, 4)]
    return Gateway.model_validate(
        {"bind": f"127.0.0.1:{port}", "routes": {"r0": {"instances": instances}}}
    )


def test_a_candidate_of_one_bind_keeps_the_other_gateways_rendered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reload checks the bind groups a change touches, then renders the whole file: the
    gateways it did not touch come from the cache, not from a render each (issue 11)."""
    desired = {"a": gateway(8001), "b": gateway(8002), "c": gateway(8003)}
    plans = plan_all(desired, {}, "/x/maps", SETTINGS, SectionCache(), None, {})
    cache = Candidates(SETTINGS)
    text, _, _ = cache.whole(plans)
    rendered: list[str] = []
    real = candidates.filled_backends

    def counted(*args: object) -> str:
        rendered.append("a render")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(candidates, "filled_backends", counted)
    [b] = [p for p in plans if p.name == "b"]
    assert b.section is not None
    assert len(cache.groups(plans, {b.section.layout.bind})) == 1
    assert cache.whole(plans)[0] == text and rendered == []
    cache.whole([p for p in plans if p.name != "c"])  # c is gone: forgotten
    assert set(cache._filled) == {"a", "b"}
