"""Edits as typed values: what the API and the rollouts ask of the engine, with errors that
name the field (no HTTP inside the engine)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from controller.desired import Record
from controller.edits import (
    DeleteGateway,
    EditRoute,
    IfMatch,
    PutGateway,
    SetInstances,
    SetWeights,
    edited,
)
from controller.errors import InvalidInput, NotFound, PreconditionFailed
from controller.model import Address, Gateway

SHOP = Gateway.model_validate(
    {
        "bind": "127.0.0.1:8080",
        "routes": {
            "stable": {"weight": "90%", "instances": ["127.0.0.1:9001"]},
            "canary": {"weight": "10%", "instances": ["127.0.0.1:9101"]},
        },
    }
)
RECORD = Record(SHOP, 4)


def test_set_weights_is_a_whole_split() -> None:
    after = edited(SetWeights("shop", {"canary": 10000}), RECORD)
    assert after is not None and after.effective_weights() == {"stable": 0, "canary": 10000}


def test_unknown_gateway_and_routes_are_not_found_by_name() -> None:
    with pytest.raises(NotFound):
        edited(SetWeights("shop", {"stable": 10000}), None)
    with pytest.raises(NotFound) as unknown:
        edited(SetWeights("shop", {"blue": 5000, "stable": 5000}), RECORD)
    assert unknown.value.problems == [{"field": "weights.blue", "message": "unknown route"}]
    with pytest.raises(NotFound) as route:
        edited(EditRoute("shop", "blue", {"weight": "5%"}), RECORD)
    assert route.value.problems[0]["field"] == "route"
    with pytest.raises(NotFound):
        edited(DeleteGateway("shop"), None)


def test_invalid_results_name_the_field() -> None:
    with pytest.raises(InvalidInput) as split:
        edited(SetWeights("shop", {"stable": 5000}), RECORD)
    assert split.value.problems[0]["field"] == "weights"
    with pytest.raises(InvalidInput) as instance:
        edited(SetInstances("shop", "canary", ("127.0.0.1:9101", "nowhere")), RECORD)
    assert instance.value.problems[0]["field"] == "routes.canary.instances.1"
    with pytest.raises(InvalidInput) as strength:
        edited(EditRoute("shop", "canary", {"condition_strength": "20%"}), RECORD)
    assert strength.value.problems[0]["field"] == "routes.canary"


def test_an_instance_listed_twice_is_refused_by_every_edit_that_sets_instances() -> None:
    """Distinct instances are the field's rule, not the route's: a weight change, which gives
    pydantic the routes as they are, does not check them again (and need not)."""
    twice = ("127.0.0.1:9101", "127.0.0.1:9101")
    for edit in (
        SetInstances("shop", "canary", twice),
        EditRoute("shop", "canary", {"instances": list(twice)}),
    ):
        with pytest.raises(InvalidInput) as refused:
            edited(edit, RECORD)
        message = "instance 127.0.0.1:9101 is listed twice"
        assert refused.value.problems == [{"field": "routes.canary.instances", "message": message}]
    with pytest.raises(ValidationError, match=r"routes\.canary\.instances\n.*listed twice"):
        Gateway.model_validate({**SHOP.as_json(), "routes": {"canary": {"instances": list(twice)}}})
    reweighed = edited(SetWeights("shop", {"stable": 5000, "canary": 5000}), RECORD)
    assert reweighed is not None
    assert reweighed.routes["canary"].instances == SHOP.routes["canary"].instances


def test_edit_route_keeps_the_other_routes_and_the_text_of_percentages() -> None:
    after = edited(EditRoute("shop", "canary", {"condition": "has cookie beta"}), RECORD)
    assert after is not None
    assert after.routes["stable"] is SHOP.routes["stable"]
    assert after.routes["canary"].weight == 1000 and after.routes["canary"].strength == 10000
    instances = edited(SetInstances("shop", "stable", ("127.0.0.1:9002",)), RECORD)
    assert instances is not None
    assert instances.routes["stable"].instances == (Address("127.0.0.1", 9002),)


def test_if_match_is_checked_against_the_records_revision() -> None:
    assert edited(PutGateway("shop", SHOP, IfMatch(frozenset({3, 4}))), RECORD) == SHOP
    with pytest.raises(PreconditionFailed):
        edited(SetWeights("shop", {"stable": 10000}, IfMatch(frozenset({3}))), RECORD)
    assert edited(DeleteGateway("shop", IfMatch(exists=True)), RECORD) is None
    with pytest.raises(PreconditionFailed):
        edited(PutGateway("shop", SHOP, IfMatch(exists=True)), None)
