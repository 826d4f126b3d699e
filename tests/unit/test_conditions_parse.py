"""Condition text ⇄ tree: grammar, canonical printing, error positions, limits, refusals."""

from __future__ import annotations

import string

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from controller.conditions import (
    BROWSERS,
    MAX_ATOMS,
    MAX_DEPTH,
    MAX_TEXT_LENGTH,
    And,
    Atom,
    ConditionError,
    Const,
    Expr,
    Kind,
    Not,
    Or,
    format_condition,
    parse_condition,
)
from controller.conditions.syntax import BROWSER_NAMES, NOT_NEGATABLE, check_size


def h(name: str) -> Atom:
    return Atom(Kind.HEADER, name=name)


A, B, C, D = h("a"), h("b"), h("c"), h("d")
PRECEDENCE = Or((A, And((B, Not(Or((C, D)))))))


def ua(value: str, negated: bool = False) -> Atom:
    return Atom(Kind.USER_AGENT, value=value, negated=negated)


PARSES: list[tuple[str, Expr]] = [
    # precedence, symbols and words, case
    ("has header a or has header b and not (has header c or has header d)", PRECEDENCE),
    ("has header a || has header b && ! (has header c | has header d)", PRECEDENCE),
    ("has header a|has header b&!(has header c||has header d)", PRECEDENCE),
    ("HAS HEADER a OR has header b AND NOT(has header c Or has header d)", PRECEDENCE),
    ("(has header a or has header b) and has header c", And((Or((A, B)), C))),
    ("has header a and has header b and has header c", And((A, B, C))),
    ("(has header a and has header b) and has header c", And((And((A, B)), C))),
    ("has header a or (has header b or has header c)", Or((A, Or((B, C))))),
    ("not has header a and has header b", And((Not(A), B))),
    ("not not has header a", Not(Not(A))),
    ("!!has header a", Not(Not(A))),
    ("((has header a))", A),
    (" \n\thas header a\r\n ", A),
    ("true", Const(True)),
    ("FALSE", Const(False)),
    ("True and not false", And((Const(True), Not(Const(False))))),
    # user-agent and its operators
    ("user-agent == Mobile", ua("Mobile")),
    ("User-Agent = Mobile", ua("Mobile")),
    ("user-agent==Mobile", ua("Mobile")),
    ("user-agent is Mobile", ua("Mobile")),
    ("user-agent has Mobile", ua("Mobile")),
    ("user-agent CONTAINS Mobile", ua("Mobile")),
    ("user-agent != Mobile", ua("Mobile", True)),
    ("user-agent!=Mobile", ua("Mobile", True)),
    ("user-agent not Mobile", ua("Mobile", True)),
    ("user-agent is not Mobile", ua("Mobile", True)),
    ("user-agent misses Mobile", ua("Mobile", True)),
    ("user-agent is 'not'", ua("not")),
    ("(user-agent == Mobile)", ua("Mobile")),
    # Vamp's spellings (its ConditionDefinitionParserSpec, BooleanParserSpec)
    ("User-Agent ! Mobile", ua("Mobile", True)),
    ("user-agent !Mobile", ua("Mobile", True)),
    ("user.agent != Mobile", ua("Mobile", True)),
    ("UserAgent == Mobile", ua("Mobile")),
    ("user-agent == Firefox", Atom(Kind.BROWSER, value="Firefox")),
    ("User-Agent is safari", Atom(Kind.BROWSER, value="Safari")),
    ("user-agent has 'IE'", Atom(Kind.BROWSER, value="IE")),
    ("User-Agent ! Firefox", Not(Atom(Kind.BROWSER, value="Firefox"))),
    ("user-agent misses Edge", Not(Atom(Kind.BROWSER, value="Edge"))),
    ("host has localhost", Atom(Kind.HOST, value="localhost")),
    ("host contains localhost", Atom(Kind.HOST, value="localhost")),
    ("host not localhost", Atom(Kind.HOST, value="localhost", negated=True)),
    ("host misses localhost", Atom(Kind.HOST, value="localhost", negated=True)),
    ("host ! localhost", Atom(Kind.HOST, value="localhost", negated=True)),
    ("! host is localhost", Not(Atom(Kind.HOST, value="localhost"))),
    ("contains cookie vamp", Atom(Kind.COOKIE, name="vamp")),
    ("contains header vamp", Atom(Kind.HEADER, name="vamp")),
    ("contains param vamp", Atom(Kind.PARAM, name="vamp")),
    ("t", Const(True)),
    (" 1 ", Const(True)),
    (" F", Const(False)),
    ("((0))", Const(False)),
    ("\fhas header a\f", A),
    ("hdr_sub(user-agent) Android", Atom(Kind.RAW, value="hdr_sub(user-agent) Android")),
    (" path_beg /api ", Atom(Kind.RAW, value="path_beg /api")),
    ("req.ssl_sni -i a.example", Atom(Kind.RAW, value="req.ssl_sni -i a.example")),
    ("METH_GET", Atom(Kind.RAW, value="METH_GET")),
    # quoting and escapes
    ('user-agent == "Mozilla/5.0 (X11)"', ua("Mozilla/5.0 (X11)")),
    ("user-agent == 'say \"hi\"'", ua('say "hi"')),
    ('user-agent == "say \\"hi\\""', ua('say "hi"')),
    ('user-agent == "a\\\\b"', ua("a\\b")),
    ('user-agent == "C:\\path"', ua("C:\\path")),
    ('user-agent == "and"', ua("and")),
    ("user-agent == a&b|c", ua("a&b|c")),
    ("user-agent == ==", ua("==")),
    # browsers
    *[(name.lower(), Atom(Kind.BROWSER, value=name)) for name in BROWSERS],
    *[(name.upper(), Atom(Kind.BROWSER, value=name)) for name in BROWSERS],
    (
        "Firefox and not Chrome",
        And((Atom(Kind.BROWSER, value="Firefox"), Not(Atom(Kind.BROWSER, value="Chrome")))),
    ),
    # host, cookies, headers
    ("host == Shop.Example.com", Atom(Kind.HOST, value="Shop.Example.com")),
    ("host is not a.b", Atom(Kind.HOST, value="a.b", negated=True)),
    ("host != a.b", Atom(Kind.HOST, value="a.b", negated=True)),
    ("has cookie beta", Atom(Kind.COOKIE, name="beta")),
    ("misses cookie beta", Atom(Kind.COOKIE, name="beta", negated=True)),
    ("cookie beta has yes", Atom(Kind.COOKIE_VALUE, name="beta", value="yes")),
    ("cookie beta contains yes", Atom(Kind.COOKIE_VALUE, name="beta", value="yes")),
    ("cookie beta misses yes", Atom(Kind.COOKIE_VALUE, name="beta", value="yes", negated=True)),
    ("has header X-Canary", Atom(Kind.HEADER, name="X-Canary")),
    ('has header "X-Canary"', Atom(Kind.HEADER, name="X-Canary")),
    ("misses header X-Canary", Atom(Kind.HEADER, name="X-Canary", negated=True)),
    ("header X-Canary has on", Atom(Kind.HEADER_VALUE, name="X-Canary", value="on")),
    (
        "HEADER X-Canary MISSES on",
        Atom(Kind.HEADER_VALUE, name="X-Canary", value="on", negated=True),
    ),
    ('has header "x.a_b-c~d|e!f*g+h^i`j%k&l"', h("x.a_b-c~d|e!f*g+h^i`j%k&l")),
    ("has header x.a_b-c~d!f*g+h^i`j%k", h("x.a_b-c~d!f*g+h^i`j%k")),
    ("has cookie a&&has cookie b", And((Atom(Kind.COOKIE, name="a"), Atom(Kind.COOKIE, name="b")))),
    # path and parameters
    ("path == /x", Atom(Kind.PATH, value="/x")),
    ("path = /x", Atom(Kind.PATH, value="/x")),
    ("path is /x", Atom(Kind.PATH, value="/x")),
    ("path != /x", Atom(Kind.PATH, value="/x", negated=True)),
    ("path is not /x", Atom(Kind.PATH, value="/x", negated=True)),
    ("path has /api/", Atom(Kind.PATH_CONTAINS, value="/api/")),
    ("path contains /api/", Atom(Kind.PATH_CONTAINS, value="/api/")),
    ("path misses /api/", Atom(Kind.PATH_CONTAINS, value="/api/", negated=True)),
    ("path begins /api", Atom(Kind.PATH_PREFIX, value="/api")),
    ("param ab == b", Atom(Kind.PARAM_VALUE, name="ab", value="b")),
    ("param ab = b", Atom(Kind.PARAM_VALUE, name="ab", value="b")),
    ("param ab != b", Atom(Kind.PARAM_VALUE, name="ab", value="b", negated=True)),
    ("has param ab", Atom(Kind.PARAM, name="ab")),
    ("misses param ab", Atom(Kind.PARAM, name="ab", negated=True)),
    # source addresses (stored canonical)
    ("source in 10.0.0.0/8", Atom(Kind.SOURCE, value="10.0.0.0/8")),
    ("src 10.0.0.0/8", Atom(Kind.SOURCE, value="10.0.0.0/8")),
    ("src in 10.1.2.3", Atom(Kind.SOURCE, value="10.1.2.3/32")),
    ("SOURCE NOT IN 10.0.0.0/8", Atom(Kind.SOURCE, value="10.0.0.0/8", negated=True)),
    ("source 2001:DB8::/32", Atom(Kind.SOURCE, value="2001:db8::/32")),
    ("src ::1", Atom(Kind.SOURCE, value="::1/128")),
    # raw ACLs
    ("< hdr_sub(user-agent) -i firefox >", Atom(Kind.RAW, value="hdr_sub(user-agent) -i firefox")),
    ("<path -m end .json>", Atom(Kind.RAW, value="path -m end .json")),
    ("< req.hdr(x) -m reg '^a\\.b c$' >", Atom(Kind.RAW, value="req.hdr(x) -m reg '^a\\.b c$'")),
    (
        "<src 10.0.0.0/8> or Edge",
        Or((Atom(Kind.RAW, value="src 10.0.0.0/8"), Atom(Kind.BROWSER, value="Edge"))),
    ),
]


@pytest.mark.parametrize(("text", "tree"), PARSES, ids=[t for t, _ in PARSES])
def test_parses(text: str, tree: Expr) -> None:
    assert parse_condition(text) == tree
    assert parse_condition(format_condition(tree)) == tree


FORMATS = [
    (
        "HAS HEADER a OR has header b AND NOT(has header c Or has header d)",
        "has header a or has header b and not (has header c or has header d)",
    ),
    ("user-agent IS NOT Mobile", "user-agent != Mobile"),
    ("user-agent IS NOT Firefox", "not Firefox"),
    ("User-Agent ! 'chrome'", "not Chrome"),
    ("host contains a.b", "host == a.b"),
    ("contains header x", "has header x"),
    ("1 and not F", "true and not false"),
    ("hdr_sub(user-agent) Android", "< hdr_sub(user-agent) Android >"),
    ("user-agent contains 'Mozilla/5.0 (X11)'", 'user-agent == "Mozilla/5.0 (X11)"'),
    ("user-agent == 'a\"b\\\\c'", 'user-agent == "a\\"b\\\\c"'),
    ("!(!has header a)", "not not has header a"),
    (
        "(has header a and has header b) and has header c",
        "(has header a and has header b) and has header c",
    ),
    (
        "has header a || (has header b || has header c)",
        "has header a or (has header b or has header c)",
    ),
    ("src 10.1.2.3", "source in 10.1.2.3/32"),
    ("cookie b contains x", "cookie b has x"),
    ("firefox", "Firefox"),
    ("<  path -m end .json  >", "< path -m end .json >"),
]


@pytest.mark.parametrize(("text", "canonical"), FORMATS)
def test_canonical_text(text: str, canonical: str) -> None:
    assert format_condition(parse_condition(text)) == canonical


ERRORS = [
    ("", "empty condition", 0),
    ("   ", "empty condition", 3),
    ("usr-agent == x", "unknown short code 'usr-agent'", 0),
    ("has header a and Mobile", "unknown short code 'Mobile'", 17),
    ("has header a or )", "unexpected ')'", 16),
    ("has header a)", "unexpected ')'", 12),
    ("()", "unexpected ')'", 1),
    ("(has header a", "unbalanced parenthesis opened", 0),
    ("has header a and (has header b or (has header c)", "unbalanced parenthesis opened", 17),
    ("has header a and", "unexpected end of condition", 16),
    ("not", "unexpected end of condition", 3),
    ("has header a has header b", "unexpected 'has'", 13),
    ("Firefox Chrome", "unexpected 'Chrome'", 8),
    ("has header a && || has header b", "unexpected '||'", 16),
    ("== x", "unexpected '=='", 0),
    ("user-agent = 'abc", "unterminated quote opened", 13),
    (
        "user-agent ~ x",
        "expected ==, =, is, has, contains, !=, is not, !, not, misses after 'user-agent'",
        11,
    ),
    (
        "host begins x",
        "expected ==, =, is, has, contains, !=, is not, !, not, misses after 'host'",
        5,
    ),
    ("cookie a == b", "expected has, contains, misses after 'cookie'", 9),
    ("path begins", "missing value", 11),
    ("path begins )", "missing value", 12),
    ("has cake a", "expected cookie, header or param after 'has'", 4),
    ("has header", "missing name", 10),
    ("has header (", "missing name", 11),
    (
        "source in 10.0.0.1/8",
        "invalid address or network '10.0.0.1/8': 10.0.0.1/8 has host bits set",
        10,
    ),
    ("source banana", "invalid address or network 'banana'", 7),
    ("source not 10.0.0.0/8", "expected 'in' after 'not'", 11),
    ("host == a.b:80", "invalid host 'a.b:80'", 8),
    ("host == a b", "unexpected 'b'", 10),
    ("< hdr(x)", "unterminated raw ACL opened", 0),
    ("< hdr(x) < y >", "a raw ACL may not contain '<'", 9),
    ("path == /a&&has header b", "unexpected 'header'", 16),
    ('has param "a&b"', "a query parameter name may not contain '&'", 10),
    ("param 'a&b' == 1", "a query parameter name may not contain '&'", 6),
    ("has header a and path == it's", "a value may not contain a single quote", 25),
]


@pytest.mark.parametrize(("text", "reason", "position"), ERRORS, ids=[t for t, _, _ in ERRORS])
def test_errors_say_what_and_where(text: str, reason: str, position: int) -> None:
    with pytest.raises(ConditionError) as caught:
        parse_condition(text)
    assert caught.value.reason.startswith(reason)
    assert caught.value.position == position
    assert str(caught.value).endswith(f" at {position}")
    assert isinstance(caught.value, ValueError)


def test_pointer_shows_a_caret_under_the_position() -> None:
    with pytest.raises(ConditionError) as caught:
        parse_condition("has header a and\n(has header b")
    assert str(caught.value) == "unbalanced parenthesis opened at 17"
    assert caught.value.pointer() == "has header a and (has header b\n                 ^"


def test_pointer_windows_a_long_text() -> None:
    text = " or ".join(["has header a"] * 40) + " or has header)"
    with pytest.raises(ConditionError) as caught:
        parse_condition(text)
    line, caret = caught.value.pointer().split("\n")
    assert len(line) <= 74 and line.startswith("…")
    assert line[caret.index("^")] == ")"


def test_pointer_without_text_is_the_message() -> None:
    assert ConditionError("nope").pointer() == "nope"


# -- size limits ----------------------------------------------------------------------------


def test_text_length_is_bounded() -> None:
    text = "has header a or " * 200
    assert len(text) > MAX_TEXT_LENGTH
    with pytest.raises(ConditionError, match="longer than 2000 characters at 2000"):
        parse_condition(text)


def test_atom_count_is_bounded() -> None:
    parse_condition(" or ".join(["true"] * MAX_ATOMS))
    text = " or ".join(["true"] * (MAX_ATOMS + 1))
    with pytest.raises(ConditionError, match="more than 64 atoms") as caught:
        parse_condition(text)
    assert caught.value.position == text.rindex("true")


def test_not_nesting_is_bounded() -> None:
    parse_condition("not " * MAX_DEPTH + "true")
    with pytest.raises(ConditionError, match="nested deeper than 16 levels") as caught:
        parse_condition("not " * (MAX_DEPTH + 1) + "true")
    assert caught.value.position == 4 * MAX_DEPTH


def test_parenthesis_nesting_is_bounded_before_recursing() -> None:
    parse_condition("(" * MAX_DEPTH + "true" + ")" * MAX_DEPTH)
    with pytest.raises(ConditionError, match="nested deeper") as caught:
        parse_condition("(" * 990 + "true" + ")" * 990)
    assert caught.value.position == MAX_DEPTH


def test_tree_depth_is_bounded() -> None:
    def alternating(levels: int) -> str:
        text = "true"
        for level in range(levels):
            text = f"true {'and' if level % 2 else 'or'} ({text})"
        return text

    check_size(parse_condition(alternating(MAX_DEPTH)))
    with pytest.raises(ConditionError, match="nested deeper than 16 levels"):
        parse_condition(alternating(MAX_DEPTH + 1))


def test_trees_built_by_hand_are_bounded_too() -> None:
    with pytest.raises(ConditionError, match="more than 64 atoms"):
        check_size(Or(tuple(Const(True) for _ in range(MAX_ATOMS + 1))))
    deep: Expr = Const(True)
    for _ in range(10_000):  # deeper than Python's recursion limit
        deep = Not(deep)
    with pytest.raises(ConditionError, match="nested deeper"):
        check_size(deep)


# -- refusals: nothing may leave its quotes, its braces or its line ---------------------------

REFUSED = [
    ("user-agent == \"x' || TRUE || '\"", "a value may not contain a single quote"),
    ('user-agent == "a\nb"', "a value may only hold printable ASCII"),
    ('user-agent == "a\rb"', "a value may only hold printable ASCII"),
    ('user-agent == "a\x00b"', "a value may only hold printable ASCII"),
    ('user-agent == "a\tb"', "a value may only hold printable ASCII"),
    ('user-agent == "caf\u00e9"', "a value may only hold printable ASCII"),
    ("user-agent == ''", "a value must have 1 to 256 characters"),
    ("user-agent == " + "x" * 257, "a value must have 1 to 256 characters"),
    ('has header "a)b"', "invalid name"),
    ('has header "a,b"', "invalid name"),
    ("has header 'a b'", "invalid name"),
    ('has header "a$b"', "invalid name"),
    ('has header "a#b"', "invalid name"),
    ('has header "a\'b"', "invalid name"),
    ('has cookie "a=b"', "invalid name"),
    ('has cookie "a;b"', "invalid name"),
    ('has param "a&b"', "a query parameter name may not contain '&'"),
    ("has header " + "x" * 65, "invalid name"),
    ("host == 'a b'", "invalid host"),
    ("host == a/b", "invalid host"),
    ("< hdr(x) -m str 'a\nb' >", "a raw ACL may only hold printable ASCII"),
    ("< hdr(x) \r>", "a raw ACL may only hold printable ASCII"),
    ("< hdr(x) \x00>", "a raw ACL may only hold printable ASCII"),
    ("< hdr(x) # comment >", "a raw ACL may not contain '#'"),
    ("< hdr(x) '#' >", "a raw ACL may not contain '#'"),
    ("< hdr(x) } || TRUE || { >", "a raw ACL may not contain '}'"),
    ("< hdr(x) { >", "a raw ACL may not contain '{'"),
    ('< hdr(x) "${SECRET}" >', "a raw ACL may not contain '\"'"),
    ("< hdr(x) a\\ b >", "a raw ACL may not contain '\\\\'"),
    ("< hdr(x) 'a >", "unterminated ' in raw ACL"),
    ("< hdr(x) '' >", "a raw ACL may not contain an empty word"),
    ("< >", "empty raw ACL"),
    ("< " + "a " * 49 + ">", "a raw ACL may have at most 48 words"),
]


@pytest.mark.parametrize(("text", "reason"), REFUSED, ids=[repr(t)[:50] for t, _ in REFUSED])
def test_injection_attempts_are_refused(text: str, reason: str) -> None:
    with pytest.raises(ConditionError) as caught:
        parse_condition(text)
    assert caught.value.reason.startswith(reason)


def test_atoms_built_by_hand_are_validated() -> None:
    with pytest.raises(ConditionError, match="single quote"):
        Atom(Kind.USER_AGENT, value="it's")
    with pytest.raises(ConditionError, match="invalid name"):
        Atom(Kind.HEADER, name="a b")
    with pytest.raises(ConditionError, match="no negative form"):
        Atom(Kind.BROWSER, value="Chrome", negated=True)
    with pytest.raises(ConditionError, match="unknown browser"):
        Atom(Kind.BROWSER, value="chrome")
    with pytest.raises(ConditionError, match="takes no name"):
        Atom(Kind.PATH, name="x", value="/")
    with pytest.raises(ConditionError, match="takes no value"):
        Atom(Kind.HEADER, name="x", value="y")
    with pytest.raises(ConditionError, match="without surrounding spaces"):
        Atom(Kind.RAW, value=" src 10.0.0.0/8")
    with pytest.raises(ConditionError, match="at least two"):
        And((Const(True),))
    assert Atom(Kind.SOURCE, value="10.1.2.3") == Atom(Kind.SOURCE, value="10.1.2.3/32")


# -- random trees: printing round-trips -----------------------------------------------------

TOKEN = "!%*+.^_`|~-" + string.ascii_letters + string.digits
PRINTABLE = "".join(c for c in map(chr, range(0x20, 0x7F)) if c != "'")

names = st.text(TOKEN + "&|", min_size=1, max_size=8)
values = st.text(PRINTABLE, min_size=1, max_size=12)
hosts = st.text(string.ascii_letters + string.digits + "._-", min_size=1, max_size=12)
networks = st.sampled_from(["10.0.0.0/8", "127.0.0.1/32", "::1/128", "2001:db8::/32", "0.0.0.0/0"])
raws = st.sampled_from(
    ["path -m end .json", "req.fhdr(x) -m found", "src 10.0.0.0/8", "hdr(x) -m reg '^a b$'"]
)


def _atom(kind: Kind, strategy: st.SearchStrategy[dict[str, str]]) -> st.SearchStrategy[Atom]:
    negations = st.just(False) if kind in NOT_NEGATABLE else st.booleans()
    return st.builds(lambda f, n: Atom(kind, negated=n, **f), strategy, negations)


ATOMS: st.SearchStrategy[Expr] = st.one_of(
    st.builds(Const, st.booleans()),
    _atom(  # after user-agent, a browser name is the browser (Vamp's meaning)
        Kind.USER_AGENT,
        st.fixed_dictionaries({"value": values.filter(lambda v: v.lower() not in BROWSER_NAMES)}),
    ),
    _atom(Kind.BROWSER, st.fixed_dictionaries({"value": st.sampled_from(BROWSERS)})),
    _atom(Kind.HOST, st.fixed_dictionaries({"value": hosts})),
    *[
        _atom(kind, st.fixed_dictionaries({"name": names.filter(lambda n: "&" not in n)}))
        for kind in (Kind.COOKIE, Kind.HEADER, Kind.PARAM)
    ],
    *[
        _atom(
            kind,
            st.fixed_dictionaries({"name": names.filter(lambda n: "&" not in n), "value": values}),
        )
        for kind in (Kind.COOKIE_VALUE, Kind.HEADER_VALUE, Kind.PARAM_VALUE)
    ],
    *[
        _atom(kind, st.fixed_dictionaries({"value": values}))
        for kind in (Kind.PATH, Kind.PATH_CONTAINS, Kind.PATH_PREFIX)
    ],
    _atom(Kind.SOURCE, st.fixed_dictionaries({"value": networks})),
    _atom(Kind.RAW, st.fixed_dictionaries({"value": raws})),
)


def trees(leaves: st.SearchStrategy[Expr], max_leaves: int = 12) -> st.SearchStrategy[Expr]:
    def extend(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
        several = st.lists(children, min_size=2, max_size=4).map(tuple)
        return st.one_of(st.builds(Not, children), several.map(And), several.map(Or))

    return st.recursive(leaves, extend, max_leaves=max_leaves)


@settings(max_examples=400)
@given(trees(ATOMS))
def test_format_round_trips(tree: Expr) -> None:
    try:
        check_size(tree)
    except ConditionError:
        assume(False)
    text = format_condition(tree)
    assume(len(text) <= MAX_TEXT_LENGTH)
    assert parse_condition(text) == tree
    assert format_condition(parse_condition(text)) == text


@given(st.text(string.printable, max_size=60))
def test_any_text_parses_or_raises_a_condition_error(text: str) -> None:
    try:
        parse_condition(text)
    except ConditionError as exc:
        assert exc.position is not None and 0 <= exc.position <= len(text)
