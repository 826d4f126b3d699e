"""What HAProxy would report after applying a plan from scratch: for pure planner tests."""

from __future__ import annotations

from controller.model import Address
from controller.plan import Observed, Plan, SlotState

PARKED = Address(ip="127.0.0.1", port=1)


def observed_after(plan: Plan) -> Observed:
    """Every slot as the plan fills it (weights as rendered), every map as the plan writes it."""
    backends = {
        backend.name: [
            SlotState(
                name=slot,
                address=plan.assignment[backend.name].get(slot, PARKED),
                serving=slot in plan.assignment[backend.name],
                weight=backend.server_weight,
            )
            for slot in backend.slot_names()
        ]
        for gateway in plan.sections
        for backend in gateway.layout.backends
    }
    return Observed(running=plan.running, backends=backends, maps=dict(plan.maps))
