"""Compilation to HAProxy lines, checked against a small Python model of HAProxy.

The model reads the compiled lines as HAProxy would: words split at blanks outside single
quotes, `acl` lines evaluated by a tiny interpreter of the fetches we emit, `set-var` rules
run in order, and `if` conditions as juxtaposition (AND), `||` (OR, looser) and `!` (one
ACL). Random trees compiled as pure DNF, as one variable per node, and with the shipped
limits must all agree with the reference evaluator.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from ipaddress import ip_address

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from controller.conditions import (
    MAX_ATOMS,
    MAX_CONDITION_WORDS,
    And,
    Atom,
    CompiledCondition,
    ConditionError,
    Const,
    Expr,
    Kind,
    Not,
    Or,
    RequestFacts,
    compile_condition,
    evaluate,
    format_condition,
    parse_condition,
    raw_acls,
    requires_http,
)
from controller.conditions.evaluate import in_network
from controller.conditions.haproxy import DnfLimits, Mode, _compile
from controller.conditions.syntax import atoms, check_size
from tests.unit.test_conditions_parse import ATOMS, trees

HAPROXY_MAX_WORDS = 64

# -- a small model of HAProxy -----------------------------------------------------------------


def haproxy_words(line: str) -> list[str]:
    """Split like HAProxy's parser for what we emit: blanks separate, '...' quotes strongly."""
    words: list[str] = []
    word: list[str] | None = None
    quoted = False
    for char in line:
        if quoted:
            if char == "'":
                quoted = False
            else:
                word = (word or []) + [char]
        elif char == " ":
            if word is not None:
                words.append("".join(word))
            word = None
        elif char == "'":
            quoted, word = True, word or []
        else:
            assert char not in '"\\#', f"unexpected {char!r} outside quotes in {line!r}"
            word = (word or []) + [char]
    assert not quoted, line
    if word is not None:
        words.append("".join(word))
    assert "" not in words, line
    return words


RAW_TRUTH: dict[str, Callable[[RequestFacts], bool]] = {
    "path -m end .json": lambda r: r.path.endswith(".json"),
    "req.fhdr(x) -m found": lambda r: bool(r.header_values("x")),
    "src 10.0.0.0/8": lambda r: in_network(r.source, "10.0.0.0/8"),
    "hdr(x) -m reg '^a b$'": lambda r: "a b" in r.header_values("x"),
}

_FETCH = re.compile(r"(?P<fetch>[a-z_.]+)(?:\((?P<arg>[^)]*)\))?(?P<conv>,field\(1,:\))?")


def samples(fetch: str, request: RequestFacts) -> list[str]:
    """The values HAProxy iterates over for the fetches the compiler emits."""
    match = _FETCH.fullmatch(fetch)
    assert match, fetch
    name, arg = match["fetch"], match["arg"]
    values = {
        "req.fhdr": lambda: request.header_values(arg),
        "req.cook": lambda: [v for n, v in request.cookies if n == arg],
        "path": lambda: [request.path],
        "urlp": lambda: [v for n, v in request.params() if n == arg],
    }[name]()
    return [v.split(":", 1)[0] for v in values] if match["conv"] else values


def acl_holds(criterion: str, request: RequestFacts) -> bool:
    if criterion in RAW_TRUTH:
        return RAW_TRUTH[criterion](request)
    words = haproxy_words(criterion)
    fetch, rest = words[0], words[1:]
    if fetch == "src":
        return in_network(request.source, rest[0])
    if fetch.startswith("req.fhdr_cnt("):
        assert rest == ["gt", "0"]
        return bool(request.header_values(fetch[len("req.fhdr_cnt(") : -1]))
    assert rest[0] == "-m", words
    method, flags = rest[1], rest[2:]
    found = samples(fetch, request)
    if method == "found":
        assert flags == []
        return bool(found)
    ignore_case = flags[0] == "-i"
    flags = flags[1:] if ignore_case else flags
    assert flags[0] == "--" and len(flags) == 2, words
    pattern = flags[1]
    if ignore_case:
        pattern, found = pattern.lower(), [s.lower() for s in found]
    test = {"str": str.__eq__, "sub": str.__contains__, "beg": str.startswith}[method]
    return any(test(sample, pattern) for sample in found)


class Model:
    """HAProxy running one compiled condition's lines over one request."""

    def __init__(
        self,
        request: RequestFacts,
        max_words: int = HAPROXY_MAX_WORDS,
        max_test_words: int = MAX_CONDITION_WORDS,
    ) -> None:
        self.request = request
        self.max_words = max_words
        self.max_test_words = max_test_words
        self.acls: dict[str, bool] = {}
        self.declared: set[str] = set()
        self.true_vars: set[str] = set()

    def literal(self, words: list[str], i: int) -> tuple[bool, int]:
        word, negated = words[i], False
        while word.startswith("!"):
            word, negated = word[1:], not negated
        if word == "{":
            end = words.index("}", i)
            fetch = words[i + 1 : end]
            assert len(fetch) == 3 and fetch[1:] == ["-m", "bool"], fetch
            var = re.fullmatch(r"var\((txn\.[a-z0-9_]+)\)", fetch[0])
            assert var and var[1] in self.declared, f"variable used before it is set: {fetch}"
            return (var[1] in self.true_vars) != negated, end + 1
        value = {"TRUE": True, "FALSE": False}.get(word)
        if value is None:
            value = self.acls[word]  # KeyError: used before declared
        return value != negated, i + 1

    def condition(self, words: list[str]) -> bool:
        terms: list[list[bool]] = [[]]
        i = 0
        while i < len(words):
            if words[i] in ("||", "or"):
                assert terms[-1], "empty term"
                terms.append([])
                i += 1
                continue
            value, i = self.literal(words, i)
            terms[-1].append(value)
        assert terms[-1], "empty term"
        return any(all(term) for term in terms)

    def run(self, compiled: CompiledCondition, mode: Mode = "http") -> bool:
        rule = ["http-request"] if mode == "http" else ["tcp-request", "content"]
        for line in compiled.setup:
            words = haproxy_words(line)
            assert len(words) <= self.max_words, line
            if words[0] == "acl":
                assert words[1] not in self.acls, "HAProxy would OR two ACLs of one name"
                criterion = line.split(" ", 2)[2]
                self.acls[words[1]] = acl_holds(criterion, self.request)
                continue
            assert words[: len(rule)] == rule, line
            setter, one, keyword, *condition = words[len(rule) :]
            var = re.fullmatch(r"set-var\((txn\.[a-z0-9_]+)\)", setter)
            assert var and one == "bool(1)" and keyword == "if", line
            self.declared.add(var[1])
            if self.condition(condition):
                self.true_vars.add(var[1])
        test = haproxy_words(compiled.test)
        assert len(test) <= self.max_test_words, compiled.test
        return self.condition(test)


PURE_DNF = DnfLimits(max_terms=10**9, max_words=10**9)
ONE_VAR_PER_NODE = DnfLimits(max_terms=1, max_words=10)


def run(
    expr: Expr,
    request: RequestFacts,
    limits: DnfLimits | None = None,
    *,
    single_term: bool = False,
    mode: Mode = "http",
) -> bool:
    limits = limits or DnfLimits()
    compiled = _compile(expr, "wb_c3", mode, single_term=single_term, limits=limits)
    words = 10**9 if limits is PURE_DNF else HAPROXY_MAX_WORDS
    if single_term:
        assert "||" not in compiled.test
    return Model(request, words, limits.max_words).run(compiled, mode)


def truth(expr: Expr, request: RequestFacts) -> bool:
    return evaluate(expr, request, {t: RAW_TRUTH[t](request) for t in raw_acls(expr)})


# -- what the lines look like --------------------------------------------------------------

GOLDEN = [
    ("true", (), "TRUE"),
    ("not true", (), "FALSE"),
    ("false or true", (), "FALSE || TRUE"),
    (
        "user-agent == Firefox/",
        ("acl wb_c3_a1 req.fhdr(user-agent) -m sub -i -- 'Firefox/'",),
        "wb_c3_a1",
    ),
    (
        "user-agent != Firefox/",
        ("acl wb_c3_a1 req.fhdr(user-agent) -m sub -i -- 'Firefox/'",),
        "!wb_c3_a1",
    ),
    (
        "host == Shop.example.com",
        ("acl wb_c3_a1 req.fhdr(host),field(1,:) -m str -i -- 'Shop.example.com'",),
        "wb_c3_a1",
    ),
    ("misses cookie beta", ("acl wb_c3_a1 req.cook(beta) -m found",), "!wb_c3_a1"),
    ("cookie beta has 1", ("acl wb_c3_a1 req.cook(beta) -m sub -- '1'",), "wb_c3_a1"),
    ("has header X-A", ("acl wb_c3_a1 req.fhdr_cnt(X-A) gt 0",), "wb_c3_a1"),
    ("header X-A misses on", ("acl wb_c3_a1 req.fhdr(X-A) -m sub -i -- 'on'",), "!wb_c3_a1"),
    ("path != /x", ("acl wb_c3_a1 path -m str -- '/x'",), "!wb_c3_a1"),
    ("path has /x", ("acl wb_c3_a1 path -m sub -- '/x'",), "wb_c3_a1"),
    ("path begins /x", ("acl wb_c3_a1 path -m beg -- '/x'",), "wb_c3_a1"),
    ("has param p", ("acl wb_c3_a1 urlp(p) -m found",), "wb_c3_a1"),
    ("param p == -1", ("acl wb_c3_a1 urlp(p) -m str -- '-1'",), "wb_c3_a1"),
    ("source not in 10.0.0.0/8", ("acl wb_c3_a1 src 10.0.0.0/8",), "!wb_c3_a1"),
    (
        "< hdr_sub(user-agent) -i firefox >",
        ("acl wb_c3_a1 hdr_sub(user-agent) -i firefox",),
        "wb_c3_a1",
    ),
    (
        "has header a or has header b and not (has header c or has header d)",
        tuple(f"acl wb_c3_a{i} req.fhdr_cnt({n}) gt 0" for i, n in enumerate("abcd", 1)),
        "wb_c3_a1 || wb_c3_a2 !wb_c3_a3 !wb_c3_a4",
    ),
    (
        "has header a and not has header a or has header a",
        ("acl wb_c3_a1 req.fhdr_cnt(a) gt 0",),
        "wb_c3_a1 !wb_c3_a1 || wb_c3_a1",
    ),
    (
        "not Chrome",
        tuple(
            f"acl wb_c3_a{i} req.fhdr(user-agent) -m sub -i -- '{v}'"
            for i, v in enumerate(["Chrome/", "CriOS/", "Edg", "OPR/"], 1)
        ),
        "!wb_c3_a1 !wb_c3_a2 || wb_c3_a3 || wb_c3_a4",
    ),
]


@pytest.mark.parametrize(("text", "setup", "test"), GOLDEN, ids=[t for t, _, _ in GOLDEN])
def test_compiled_lines(text: str, setup: tuple[str, ...], test: str) -> None:
    assert compile_condition(parse_condition(text), "wb_c3") == CompiledCondition(setup, test)


def test_values_stay_one_single_quoted_word_whatever_they_hold() -> None:
    nasty = 'a b$c"d\\e#f;g}h{i || TRUE }'
    compiled = compile_condition(Atom(Kind.USER_AGENT, value=nasty), "wb_c3")
    (line,) = compiled.setup
    assert haproxy_words(line) == [
        "acl",
        "wb_c3_a1",
        "req.fhdr(user-agent)",
        "-m",
        "sub",
        "-i",
        "--",
        nasty,
    ]


def test_a_hostile_and_of_ors_uses_variables() -> None:
    text = " and ".join(f"(has header a{i} or has header b{i})" for i in range(12))
    compiled = compile_condition(parse_condition(text), "wb_c3")
    assert any("set-var(txn.wb_c3_v" in line for line in compiled.setup)
    assert "{ var(txn.wb_c3_v" in compiled.test
    assert len(haproxy_words(compiled.test)) <= MAX_CONDITION_WORDS
    for line in compiled.setup:
        assert len(haproxy_words(line)) <= HAPROXY_MAX_WORDS


def test_single_term_never_leaves_an_or_in_the_test() -> None:
    expr = parse_condition("has header a or has header b")
    assert compile_condition(expr, "p").test == "p_a1 || p_a2"
    compiled = compile_condition(expr, "p", single_term=True)
    assert compiled.test == "{ var(txn.p_v1) -m bool }"
    assert compiled.setup[-1] == "http-request set-var(txn.p_v1) bool(1) if p_a1 || p_a2"


def test_tcp_mode_allows_addresses_raw_acls_and_constants_only() -> None:
    expr = parse_condition("(src 10.0.0.0/8 or < req.ssl_sni -i a.b >) and not false")
    compiled = compile_condition(expr, "t", "tcp", single_term=True)
    assert compiled.setup == (
        "acl t_a1 src 10.0.0.0/8",
        "acl t_a2 req.ssl_sni -i a.b",
        "tcp-request content set-var(txn.t_v1) bool(1) if t_a1 TRUE || t_a2 TRUE",
    )
    with pytest.raises(ConditionError, match="short code 'has cookie a' needs an http gateway"):
        compile_condition(parse_condition("src ::1 or has cookie a"), "t", "tcp")
    with pytest.raises(ConditionError, match="'Firefox' needs an http gateway"):
        compile_condition(parse_condition("Firefox"), "t", "tcp")


REQUIRES_HTTP = [
    ("true", False),
    ("source in 10.0.0.0/8 and not src ::1", False),
    ("< req.ssl_sni -i a.b >", False),
    ("src ::1 or Firefox", True),
    ("not has param p", True),
]


@pytest.mark.parametrize(("text", "needs"), REQUIRES_HTTP)
def test_requires_http(text: str, needs: bool) -> None:
    assert requires_http(parse_condition(text)) is needs


def test_raw_acls_are_listed_once_in_order() -> None:
    expr = parse_condition("<b x> or (<a y> and not <b x>) or has header a")
    assert raw_acls(expr) == ("b x", "a y")


@pytest.mark.parametrize("prefix", ["", "WB", "wb-c", "wb.c", "a" * 33, "wb c"])
def test_variable_prefix_is_validated(prefix: str) -> None:
    with pytest.raises(ValueError, match="invalid variable prefix"):
        compile_condition(Const(True), prefix)


def test_trees_built_by_hand_are_bounded() -> None:
    with pytest.raises(ConditionError, match="more than 64 atoms"):
        compile_condition(Or(tuple(Const(True) for _ in range(MAX_ATOMS + 1))), "p")


def test_limits_must_hold_two_variables() -> None:
    with pytest.raises(ValueError, match="too small"):
        DnfLimits(max_terms=1, max_words=9)


# -- agreement with the reference evaluator ---------------------------------------------------

UAS = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.2 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; WOW64; Trident/7.0; rv:11.0) like Gecko",
    "curl/8.5.0",
]
SMALL = ["a", "b", "1", "on", "/x", "/x/y"]


@st.composite
def requests(draw: st.DrawFn) -> RequestFacts:
    headers = draw(st.lists(st.tuples(st.sampled_from(["a", "B", "x"]), st.sampled_from(SMALL))))
    if draw(st.booleans()):
        headers.append(("User-Agent", draw(st.sampled_from(UAS))))
    if draw(st.booleans()):
        headers.append(("Host", draw(st.sampled_from(["a.example", "A.example:81", "b"]))))
    pair = st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(SMALL))
    cookies = draw(st.lists(pair, max_size=3))
    query = "&".join(f"{n}={v}" for n, v in draw(st.lists(pair, max_size=3)))
    source = draw(st.sampled_from(["127.0.0.1", "10.1.2.3", "::1", "::ffff:10.0.0.1", "2001::1"]))
    path = draw(st.sampled_from(["/", "/x", "/x/y", "/y.json"]))
    return RequestFacts(tuple(headers), tuple(cookies), path, query, ip_address(source))


_small = st.sampled_from(SMALL)
_name = st.sampled_from(["a", "b", "x"])
_raw = st.sampled_from(sorted(RAW_TRUTH))
MATCHABLE: st.SearchStrategy[Expr] = st.one_of(
    st.builds(Const, st.booleans()),
    st.builds(
        lambda v, n: Atom(Kind.USER_AGENT, value=v, negated=n),
        st.sampled_from(["firefox/", "Edg", "Version/", "Trident"]),
        st.booleans(),
    ),
    st.builds(
        lambda v: Atom(Kind.BROWSER, value=v),
        st.sampled_from(["Chrome", "Firefox", "Safari", "Edge", "IE"]),
    ),
    st.builds(
        lambda v, n: Atom(Kind.HOST, value=v, negated=n),
        st.sampled_from(["a.example", "b"]),
        st.booleans(),
    ),
    *[
        st.builds(lambda k, m, n: Atom(k, name=m, negated=n), st.just(kind), _name, st.booleans())
        for kind in (Kind.COOKIE, Kind.HEADER, Kind.PARAM)
    ],
    *[
        st.builds(
            lambda k, m, v, n: Atom(k, name=m, value=v, negated=n),
            st.just(kind),
            _name,
            _small,
            st.booleans(),
        )
        for kind in (Kind.COOKIE_VALUE, Kind.HEADER_VALUE, Kind.PARAM_VALUE)
    ],
    *[
        st.builds(lambda k, v, n: Atom(k, value=v, negated=n), st.just(kind), _small, st.booleans())
        for kind in (Kind.PATH, Kind.PATH_CONTAINS)
    ],
    st.builds(lambda v: Atom(Kind.PATH_PREFIX, value=v), _small),
    st.builds(
        lambda v, n: Atom(Kind.SOURCE, value=v, negated=n),
        st.sampled_from(["127.0.0.0/8", "10.0.0.0/8", "::1", "0.0.0.0/8"]),
        st.booleans(),
    ),
    st.builds(lambda v: Atom(Kind.RAW, value=v), _raw),
)


TCP_MATCHABLE: st.SearchStrategy[Expr] = st.one_of(
    st.builds(Const, st.booleans()),
    st.builds(
        lambda v, n: Atom(Kind.SOURCE, value=v, negated=n),
        st.sampled_from(["127.0.0.0/8", "10.0.0.0/8", "::1", "0.0.0.0/8"]),
        st.booleans(),
    ),
    st.builds(lambda v: Atom(Kind.RAW, value=v), st.sampled_from(["src 10.0.0.0/8"])),
)


@settings(max_examples=500, deadline=None)
@given(trees(MATCHABLE, max_leaves=8), requests())
def test_dnf_and_variables_agree_with_the_evaluator(expr: Expr, request: RequestFacts) -> None:
    want = truth(expr, request)
    assert run(expr, request, PURE_DNF) is want
    assert run(expr, request, ONE_VAR_PER_NODE) is want
    assert run(expr, request) is want
    assert run(expr, request, single_term=True) is want
    assert run(expr, request, ONE_VAR_PER_NODE, single_term=True) is want


@settings(max_examples=200, deadline=None)
@given(trees(TCP_MATCHABLE, max_leaves=8), requests())
def test_tcp_mode_agrees_with_the_evaluator(expr: Expr, request: RequestFacts) -> None:
    want = truth(expr, request)
    assert run(expr, request, mode="tcp") is want
    assert run(expr, request, ONE_VAR_PER_NODE, mode="tcp") is want


def test_the_model_catches_a_wrong_compilation() -> None:
    compiled = compile_condition(parse_condition("has header a or has header b"), "p")
    wrong = CompiledCondition(compiled.setup, compiled.test.replace(" || ", " "))
    request = RequestFacts((("a", "1"),))
    assert Model(request).run(compiled) is True
    assert Model(request).run(wrong) is False


# -- size: linear in the input whatever its shape ----------------------------------------------


def compiled_size(text: str) -> tuple[int, int]:
    compiled = compile_condition(parse_condition(text), "wb_c99")
    lines = [*compiled.setup, compiled.test]
    for line in lines:
        assert len(haproxy_words(line)) <= HAPROXY_MAX_WORDS
    return len(lines), sum(len(line) for line in lines)


def alternating(depth: int) -> str:
    text = "has header z"
    for level in range(depth):
        op = "and" if level % 2 else "or"
        text = f"(has header x{level} {op} has header y{level}) {op} ({text})"
    return text


SHAPES: dict[str, Callable[[int], str]] = {
    "and of ors": lambda n: " and ".join(f"(has header a{i} or has header b{i})" for i in range(n)),
    "or of ands": lambda n: " or ".join(f"(has header a{i} and has header b{i})" for i in range(n)),
    "not of or of ands": lambda n: (
        "not ("
        + " or ".join(
            f"(has header a{i} and not has header b{i} and has header c{i})" for i in range(n)
        )
        + ")"
    ),
    "and of three-way ors": lambda n: " and ".join(
        f"(has header a{i} or has header b{i} or has header c{i})" for i in range(n)
    ),
    "alternating": lambda n: alternating(min(n, 7)),
    "browsers": lambda n: " and ".join(["(Chrome or Safari or not IE)"] * n),
}


BROWSER_ACLS = 600
"""The few dozen characters of ACL lines each distinct user-agent test costs, all five browsers."""


@pytest.mark.parametrize("shape", SHAPES)
def test_compiled_size_is_linear_for_hostile_shapes(shape: str) -> None:
    for n in (1, 2, 4, 8, 16, 21):
        text = SHAPES[shape](n)
        try:
            lines, chars = compiled_size(text)
        except ConditionError as exc:  # the shape outgrew MAX_ATOMS or MAX_TEXT_LENGTH
            assert n > 8, exc
            break
        leaves = len(re.findall(r"has header|Chrome|Safari|IE", text))
        assert lines <= 8 * leaves + 1
        assert chars <= 10 * len(text) + BROWSER_ACLS


@settings(max_examples=200, deadline=None)
@given(trees(ATOMS, max_leaves=MAX_ATOMS))
def test_compiled_size_is_linear_for_random_trees(expr: Expr) -> None:
    try:
        check_size(expr)
    except ConditionError:
        assume(False)
    text = format_condition(expr)
    assume(len(text) <= 2000)
    compiled = compile_condition(expr, "wb_c99")
    lines = [*compiled.setup, compiled.test]
    assert all(len(haproxy_words(line)) <= HAPROXY_MAX_WORDS for line in lines)
    nodes = len(re.findall(r"\b(and|or|not)\b|Chrome|Safari", text)) * 4 + len(atoms(expr))
    assert sum("set-var" in line for line in compiled.setup) <= 2 * nodes + 1
    assert sum(len(line) for line in lines) <= 10 * len(text) + BROWSER_ACLS


def test_the_largest_allowed_conditions_compile_quickly() -> None:
    widest = " and ".join(f"(has header a{i} or has header b{i})" for i in range(32))
    deepest = alternating(7)
    for text in (widest, deepest):
        expr = parse_condition(text)
        for request in (RequestFacts(), RequestFacts(tuple((f"a{i}", "") for i in range(32)))):
            assert run(expr, request) is truth(expr, request)


def test_negation_reaches_raw_acls_as_a_bang() -> None:
    compiled = compile_condition(Not(And((Atom(Kind.RAW, value="x y"), Const(True)))), "p")
    assert compiled.test == "!p_a1 || FALSE"
