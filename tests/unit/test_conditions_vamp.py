"""Vamp's condition forms at parse level: each reads as the documented meaning, and the
reference evaluator agrees with the table's requests (the same table goes through a real
HAProxy in tests/integration/test_vamp_conditions.py)."""

from __future__ import annotations

import pytest

from controller.conditions import (
    Atom,
    ConditionError,
    Expr,
    Kind,
    Not,
    evaluate,
    format_condition,
    parse_condition,
    raw_acls,
)
from controller.conditions.syntax import MAX_DEPTH
from tests.support.vamp_forms import (
    ACL_SPEC,
    BOOLEAN_SPEC,
    CONDITION_SPEC,
    DOCS,
    FLATTER_SPEC,
    RESOLVER_SPEC,
    VAMP_FORMS,
    VampForm,
    raw_truth,
)
from tests.support.wire import Req


def test_the_table_holds_every_source_and_no_text_twice() -> None:
    texts = [form.text for form in VAMP_FORMS]
    assert len(texts) == len(set(texts)) >= 40
    sources = {form.source for form in VAMP_FORMS}
    assert {CONDITION_SPEC, ACL_SPEC, RESOLVER_SPEC, BOOLEAN_SPEC, FLATTER_SPEC, DOCS} <= sources


ALL_REQUESTS = list(dict.fromkeys(request for form in VAMP_FORMS for request, _ in form.cases))


def holds(expr: Expr, request: Req) -> bool:
    facts = request.facts()
    return evaluate(expr, facts, {acl: raw_truth(acl, facts) for acl in raw_acls(expr)})


@pytest.mark.parametrize("form", VAMP_FORMS, ids=[repr(f.text) for f in VAMP_FORMS])
def test_vamp_form_reads_as_documented(form: VampForm) -> None:
    expr = parse_condition(form.text)
    assert format_condition(expr) == form.means
    assert parse_condition(form.means) == expr
    for request, matches in form.cases:
        assert holds(expr, request) is matches, request.describe()
    outcomes = {matches for _, matches in form.cases}
    if len(outcomes) == 1:  # only for tautologies and contradictions
        assert {holds(expr, request) for request in ALL_REQUESTS} == outcomes


def test_a_browser_after_user_agent_is_the_browser_in_any_spelling() -> None:
    firefox = Atom(Kind.BROWSER, value="Firefox")
    for text in ("user-agent == firefox", "USER.AGENT is 'FIREFOX'", 'useragent has "Firefox"'):
        assert parse_condition(text) == firefox
    for text in ("user-agent ! Firefox", "user-agent misses firefox", "user-agent is not Firefox"):
        assert parse_condition(text) == Not(firefox)
    # the substring stays available through the header short code
    assert parse_condition("header User-Agent has Firefox").kind is Kind.HEADER_VALUE
    with pytest.raises(ConditionError, match="is the browser Firefox"):
        Atom(Kind.USER_AGENT, value="firefox")


def test_user_agent_not_browser_counts_as_one_level_of_nesting() -> None:
    parse_condition("not " * (MAX_DEPTH - 1) + "user-agent != Firefox")
    with pytest.raises(ConditionError, match="nested deeper than 16 levels"):
        parse_condition("not " * MAX_DEPTH + "user-agent != Firefox")


STRAIGHT_ACLS = [
    "hdr_sub(user-agent) Android",
    "path_beg /api",
    "req.ssl_sni -i a.example",
    "hdr(host) -i a.example",
    "METH_GET",
]


@pytest.mark.parametrize("text", STRAIGHT_ACLS)
def test_a_straight_acl_is_one_raw_acl(text: str) -> None:
    assert parse_condition(f"  {text} ") == Atom(Kind.RAW, value=text)


NOT_STRAIGHT_ACLS = [
    ("usr-agent == x", "unknown short code 'usr-agent'", 0),  # no fetch-like first word
    ("user.agent ~ x", "expected ==", 11),  # a keyword, not a fetch
    ("Firefox(x)", "unexpected '('", 7),
    (" User-Agent == Fire fox ", "unexpected 'fox'", 20),  # Vamp passed this on to HAProxy
    ("<water ⇒ ice>", "a raw ACL may only hold printable ASCII", 0),
    ('hdr_sub(user-agent) "a b"', "a raw ACL may not contain '\"' (quote with ' instead)", 0),
]


@pytest.mark.parametrize(("text", "reason", "position"), NOT_STRAIGHT_ACLS)
def test_what_is_not_a_straight_acl_keeps_its_error(text: str, reason: str, position: int) -> None:
    with pytest.raises(ConditionError) as caught:
        parse_condition(text)
    assert caught.value.reason.startswith(reason)
    assert caught.value.position == position


def test_a_refused_straight_acl_says_how_it_was_read() -> None:
    with pytest.raises(ConditionError, match="read as a raw HAProxy ACL: it starts with 'hdr'"):
        parse_condition("hdr(x) # comment")
