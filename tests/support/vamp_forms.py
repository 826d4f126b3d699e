"""Every condition form of Vamp's parser tests and docs, what it means here, and requests
that it must (True) and must not (False) match.

Shared by the parse-level test (tests/unit/test_conditions_vamp.py: the text reads as
`means`, the reference evaluator agrees) and the traffic test
(tests/integration/test_vamp_conditions.py: a real HAProxy routes each request so).

Sources are paths in github.com/magneticio/vamp (Scala specs) and magneticio/vamp.io (docs).
Vamp's specs use generic operands `a`, `b`, `c` and an ACL `water ⇒ ice`: here they are the
headers `a`, `b`, `c` and the ACL `hdr_sub(user-agent) Android`, with the spec's exact
spacing, case and operators kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from controller.conditions import RequestFacts
from tests.support.wire import CHROME, CHROME_ANDROID, FIREFOX, SAFARI, UA, H, Req

PARSER = "model/src/test/scala/io/vamp/model/parser/"
CONDITION_SPEC = PARSER + "ConditionDefinitionParserSpec.scala"
FILTER_SPEC = PARSER + "FilterConditionParserSpec.scala"
RESOLVER_SPEC = PARSER + "FilterConditionResolverSpec.scala"
BOOLEAN_SPEC = PARSER + "BooleanParserSpec.scala"
FLATTER_SPEC = PARSER + "BooleanFlatterSpec.scala"
ACL_SPEC = "haproxy/src/test/scala/io/vamp/gateway_driver/haproxy/HaProxyAclResolverSpec.scala"
FILTER_RESOLVER_SPEC = (
    "gateway_driver/src/test/scala/io/vamp/gateway_driver/haproxy/HaProxyFilterResolverSpec.scala"
)
DOCS = "vamp.io: content/documentation/using-vamp (gateways, conditions) and tutorials"
FLATTER = "model/src/main/scala/io/vamp/model/parser/BooleanFlatter.scala (mis-routes these)"

ANDROID_ACL = "hdr_sub(user-agent) Android"
MAC_SAFARI_10 = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_10_5) AppleWebKit/602.2.14 "
    "(KHTML, like Gecko) Version/10.0.1 Safari/602.2.14"
)


def _ua_has(text: str) -> Callable[[RequestFacts], bool]:
    """`hdr_sub(user-agent) <text>`: a case-sensitive substring of a User-Agent value."""
    return lambda r: any(text in v for v in r.header_values("user-agent"))


RAW_TRUTH: dict[str, Callable[[RequestFacts], bool]] = {
    ANDROID_ACL: _ua_has("Android"),
    "hdr_sub(user-agent) Chrome": _ua_has("Chrome"),
}
"""What each raw ACL of the table means, keyed by its words joined by one space."""


def raw_truth(acl: str, request: RequestFacts) -> bool:
    return RAW_TRUTH[" ".join(acl.split())](request)


Case = tuple[Req, bool]


@dataclass(frozen=True)
class VampForm:
    text: str
    means: str
    """The canonical text of what `text` parses to here."""
    source: str
    cases: tuple[Case, ...]


def _forms(source: str, rows: list[tuple[str, str, list[Case]]]) -> list[VampForm]:
    return [VampForm(text, means, source, tuple(cases)) for text, means, cases in rows]


A, B, C = ("a", "1"), ("b", "1"), ("c", "1")
VAMP_COOKIE, VAMP_HEADER = Req(cookies=(("vamp", "1"),)), H(("vamp", "1"))
LOCALHOST = Req(host="localhost")
IS_FIREFOX = [(UA(FIREFOX), True), (UA(CHROME), False), (Req(), False)]
NOT_FIREFOX = [(UA(CHROME), True), (Req(), True), (UA(FIREFOX), False)]
IS_LOCALHOST = [(LOCALHOST, True), (Req(host="localhost:8080"), True), (Req(), False)]
NOT_LOCALHOST = [(Req(), True), (LOCALHOST, False)]
ANDROID = [(UA(CHROME_ANDROID), True), (UA(CHROME), False), (Req(), False)]
UA_A_NOT_B = [(UA("xa"), True), (UA("ab"), False), (UA("x"), False)]
ALWAYS = [(Req(), True), (H(A, B, C), True)]
NEVER = [(Req(), False), (H(A, B, C), False)]
ONLY_A = [(H(A), True), (Req(), False)]
A_AND_B = [(H(A, B), True), (H(A), False), (H(B), False)]
A_OR_B = [(H(A), True), (H(B), True), (Req(), False)]
A_OR_B_OR_C = [(H(C), True), (H(A), True), (Req(), False)]
A_AND_B_AND_C = [(H(A, B, C), True), (H(A, B), False), (H(B, C), False)]
VALUE = "12345"


def _presence(what: str, present: Req) -> list[tuple[str, str, list[Case]]]:
    has, misses = [(present, True), (Req(), False)], [(Req(), True), (present, False)]
    return [
        (f"has {what} vamp", f"has {what} vamp", has),
        (f"misses {what} vamp", f"misses {what} vamp", misses),
        (f"contains {what} vamp", f"has {what} vamp", has),
    ]


def _contains(what: str, carrying: Callable[[str], Req]) -> list[tuple[str, str, list[Case]]]:
    has = [(carrying("x12345y"), True), (carrying("1234"), False), (Req(), False)]
    misses = [(carrying("1234"), True), (Req(), True), (carrying("12345"), False)]
    return [
        (f"{what} vamp has {VALUE}", f"{what} vamp has {VALUE}", has),
        (f"{what} vamp misses {VALUE}", f"{what} vamp misses {VALUE}", misses),
        (f"{what} vamp contains {VALUE}", f"{what} vamp has {VALUE}", has),
    ]


def _cookie(value: str) -> Req:
    return Req(cookies=(("vamp", value),))


def _header(value: str) -> Req:
    return H(("vamp", value))


RAW = f"< {ANDROID_ACL} >"
NOT_ANDROID_NOR_CHROME = [(UA(FIREFOX), True), (UA(CHROME), False), (UA(CHROME_ANDROID), False)]

VAMP_FORMS: list[VampForm] = [
    *_forms(
        CONDITION_SPEC,
        [
            (
                "user-agent == a and user-agent != b",
                "user-agent == a and user-agent != b",
                UA_A_NOT_B,
            ),
            (
                "user-agent == a and not user-agent == b",
                "user-agent == a and not user-agent == b",
                UA_A_NOT_B,
            ),
            # "resolve direct value": the spec's spacing around < >
            (f"<{ANDROID_ACL}>", RAW, ANDROID),
            (f"< {ANDROID_ACL}>", RAW, ANDROID),
            (f"< {ANDROID_ACL} >", RAW, ANDROID),
            (f" <{ANDROID_ACL}>", RAW, ANDROID),
            (f"<{ANDROID_ACL}> ", RAW, ANDROID),
            (f" <{ANDROID_ACL}> ", RAW, ANDROID),
            ("  <  hdr_sub(user-agent)  Android  > ", "< hdr_sub(user-agent)  Android >", ANDROID),
            # "resolve user agent": a browser name after user-agent is that browser
            ("User-Agent==Firefox", "Firefox", IS_FIREFOX),
            ("User-Agent== Firefox ", "Firefox", IS_FIREFOX),
            ("User-Agent == Firefox ", "Firefox", IS_FIREFOX),
            (" User-Agent == Firefox ", "Firefox", IS_FIREFOX),
            (" User-Agent ! Firefox ", "not Firefox", NOT_FIREFOX),
            (" User-Agent != Firefox ", "not Firefox", NOT_FIREFOX),
            ("user.agent != Firefox", "not Firefox", NOT_FIREFOX),
            ("User-Agent is Firefox", "Firefox", IS_FIREFOX),
            ("User-Agent not Firefox", "not Firefox", NOT_FIREFOX),
            (" ( User-Agent == Firefox ) ", "Firefox", IS_FIREFOX),
            # "resolve host": has/contains compare like ==, as in Vamp
            ("host == localhost", "host == localhost", IS_LOCALHOST),
            ("host != localhost", "host != localhost", NOT_LOCALHOST),
            ("host is localhost", "host == localhost", IS_LOCALHOST),
            ("host not localhost", "host != localhost", NOT_LOCALHOST),
            ("host misses localhost", "host != localhost", NOT_LOCALHOST),
            ("host has localhost", "host == localhost", IS_LOCALHOST),
            ("host contains localhost", "host == localhost", IS_LOCALHOST),
            ("! host is localhost", "not host == localhost", NOT_LOCALHOST),
            ("not host is localhost", "not host == localhost", NOT_LOCALHOST),
            *_presence("cookie", VAMP_COOKIE),
            *_presence("header", VAMP_HEADER),
            *_contains("cookie", _cookie),
            *_contains("header", _header),
        ],
    ),
    *_forms(FILTER_SPEC, [("( User-Agent is Firefox ) ", "Firefox", IS_FIREFOX)]),
    *_forms(
        ACL_SPEC,
        [
            ("User-Agent is Safari", "Safari", [(UA(SAFARI), True), (UA(CHROME), False)]),
            (
                "header page contains 1",
                "header page has 1",
                [(H(("page", "21")), True), (H(("page", "2")), False), (Req(), False)],
            ),
            ("misses header page", "misses header page", [(Req(), True), (H(("page", "")), False)]),
            (ANDROID_ACL, RAW, ANDROID),  # a "straight" ACL, without < >
            (
                "<hdr_sub(user-agent) Android> or <hdr_sub(user-agent) Chrome>",
                "< hdr_sub(user-agent) Android > or < hdr_sub(user-agent) Chrome >",
                [(UA(CHROME_ANDROID), True), (UA(CHROME), True), (UA(FIREFOX), False)],
            ),
            (
                "not <hdr_sub(user-agent) Android> and User-Agent != Chrome",
                "not < hdr_sub(user-agent) Android > and not Chrome",
                NOT_ANDROID_NOR_CHROME,
            ),
            (
                "not <hdr_sub(user-agent) Android> or User-Agent != Chrome",
                "not < hdr_sub(user-agent) Android > or not Chrome",
                [(UA(FIREFOX), True), (UA(CHROME), True), (UA(CHROME_ANDROID), False)],
            ),
            (
                "(User-Agent = Chrome OR User-Agent = Firefox) AND has cookie vamp",
                "(Chrome or Firefox) and has cookie vamp",
                [
                    (UA(CHROME, cookies=(("vamp", "1"),)), True),
                    (UA(FIREFOX, cookies=(("vamp", "1"),)), True),
                    (UA(SAFARI, cookies=(("vamp", "1"),)), False),
                    (UA(CHROME), False),
                ],
            ),
            (
                'User-Agent == "Mozilla/5.0 Macintosh"',
                'user-agent == "Mozilla/5.0 Macintosh"',
                [(UA("Mozilla/5.0 Macintosh; x"), True), (UA(SAFARI), False)],
            ),
            (
                f"User-Agent = '{MAC_SAFARI_10}'",
                f'user-agent == "{MAC_SAFARI_10}"',
                [(UA(MAC_SAFARI_10), True), (UA(SAFARI), False)],
            ),
        ],
    ),
    *_forms(
        FILTER_RESOLVER_SPEC,
        [
            (
                "user-agent == Firefox or user-agent != Chrome",
                "Firefox or not Chrome",
                [(UA(FIREFOX), True), (UA(SAFARI), True), (UA(CHROME), False)],
            ),
        ],
    ),
    *_forms(
        RESOLVER_SPEC,
        [
            ("User-Agent != Firefox or 1", "not Firefox or true", [*ALWAYS, (UA(FIREFOX), True)]),
            ("User-Agent == Firefox and 1", "Firefox and true", IS_FIREFOX),
            (
                "User-Agent != Firefox or User-Agent = Firefox",
                "not Firefox or Firefox",
                [*ALWAYS, (UA(FIREFOX), True)],
            ),
            (
                "User-Agent != Firefox && User-Agent = Firefox",
                "not Firefox and Firefox",
                [*NEVER, (UA(FIREFOX), False)],
            ),
            (
                "user-agent == Firefox && has cookie vamp",
                "Firefox and has cookie vamp",
                [(UA(FIREFOX, cookies=(("vamp", "1"),)), True), (UA(FIREFOX), False)],
            ),
        ],
    ),
    *_forms(
        BOOLEAN_SPEC,
        [
            ("TRUE", "true", ALWAYS),
            ("t ", "true", ALWAYS),
            (" 1 ", "true", ALWAYS),
            ("False", "false", NEVER),
            (" F", "false", NEVER),
            (" 0 ", "false", NEVER),
            ("(false)", "false", NEVER),
            ("((1))", "true", ALWAYS),
            ("not has header a", "not has header a", [(Req(), True), (H(A), False)]),
            ("! has header a", "not has header a", [(Req(), True), (H(A), False)]),
            (" not has header a ", "not has header a", [(Req(), True), (H(A), False)]),
            ("has header a and has header b", "has header a and has header b", A_AND_B),
            ("has header a && has header b", "has header a and has header b", A_AND_B),
            ("has header a & has header b", "has header a and has header b", A_AND_B),
            (" has header a & has header b ", "has header a and has header b", A_AND_B),
            (
                "has header a AND has header b And has header c",
                "has header a and has header b and has header c",
                A_AND_B_AND_C,
            ),
            ("true and true", "true and true", ALWAYS),
            ("1 and 0", "true and false", NEVER),
            ("F && F", "false and false", NEVER),
            ("has header a and true", "has header a and true", ONLY_A),
            ("has header a & false", "has header a and false", [(H(A), False), (Req(), False)]),
            ("has header a or has header b", "has header a or has header b", A_OR_B),
            ("has header a || has header b", "has header a or has header b", A_OR_B),
            ("has header a | has header b", "has header a or has header b", A_OR_B),
            (" has header a or  has header b ", "has header a or has header b", A_OR_B),
            (
                "has header a Or has header b | has header c",
                "has header a or has header b or has header c",
                A_OR_B_OR_C,
            ),
            ("true or true", "true or true", ALWAYS),
            ("1 || 0", "true or false", ALWAYS),
            ("F | F", "false or false", NEVER),
            ("has header a or true", "has header a or true", ALWAYS),
            ("has header a or false", "has header a or false", ONLY_A),
            ("((has header a))", "has header a", ONLY_A),
            ("(has header a and has header b)", "has header a and has header b", A_AND_B),
            (
                "(has header a and has header b) and has header c",
                "(has header a and has header b) and has header c",
                A_AND_B_AND_C,
            ),
            (
                "has header a and (has header b and has header c)",
                "has header a and (has header b and has header c)",
                A_AND_B_AND_C,
            ),
            (
                "has header a and has header b or has header c",
                "has header a and has header b or has header c",
                [(H(C), True), (H(A, B), True), (H(A), False), (H(B), False)],
            ),
            (
                "has header a or has header b and has header c",
                "has header a or has header b and has header c",
                [(H(A), True), (H(B, C), True), (H(B), False), (H(C), False)],
            ),
            (
                "!(has header a and has header b) and has header c",
                "not (has header a and has header b) and has header c",
                [(H(C), True), (H(A, C), True), (H(A, B, C), False), (Req(), False)],
            ),
        ],
    ),
    *_forms(
        FLATTER_SPEC,
        [
            ("has header a or has header a", "has header a or has header a", ONLY_A),
            ("has header a or !has header a", "has header a or not has header a", ALWAYS),
            ("has header a and has header a", "has header a and has header a", ONLY_A),
            ("has header a and !has header a", "has header a and not has header a", NEVER),
            (
                "has header a or !has header b",
                "has header a or not has header b",
                [(H(A, B), True), (Req(), True), (H(B), False)],
            ),
            (
                "(has header a or has header b) and has header c",
                "(has header a or has header b) and has header c",
                [(H(A, C), True), (H(B, C), True), (H(C), False), (H(A, B), False)],
            ),
            (
                "(has header a or !has header b) and has header c",
                "(has header a or not has header b) and has header c",
                [(H(C), True), (H(A, B, C), True), (H(B, C), False), (Req(), False)],
            ),
            (
                "!has header a and has header b and !has header c",
                "not has header a and has header b and not has header c",
                [(H(B), True), (H(A, B), False), (H(B, C), False)],
            ),
            (
                "has header a or true and has header b",
                "has header a or true and has header b",
                A_OR_B,
            ),
            (
                "has header a or false and has header b",
                "has header a or false and has header b",
                ONLY_A,
            ),
            (
                "has header a and true or has header b",
                "has header a and true or has header b",
                A_OR_B,
            ),
            (
                "has header a and false or has header b",
                "has header a and false or has header b",
                [(H(B), True), (H(A), False)],
            ),
        ],
    ),
    *_forms(
        DOCS,
        [
            ("user-agent == Firefox", "Firefox", IS_FIREFOX),
            ("user-agent != Firefox", "not Firefox", NOT_FIREFOX),
            ("has header ETag", "has header ETag", [(H(("ETag", "x")), True), (Req(), False)]),
            (
                "misses header ETag",
                "misses header ETag",
                [(Req(), True), (H(("ETag", "x")), False)],
            ),
            (
                "User-Agent = IOS",
                "user-agent == IOS",
                [(UA("Vamp-IOS-app"), True), (UA(CHROME), False)],
            ),
            ("user-agent=Android", "user-agent == Android", ANDROID),
            ("User-Agent=Android", "user-agent == Android", ANDROID),
            ("user-agent = Android", "user-agent == Android", ANDROID),
            (
                "< hdr_sub(user-agent) Chrome >",
                "< hdr_sub(user-agent) Chrome >",
                [(UA(CHROME), True), (UA(FIREFOX), False)],
            ),
            (
                "User-Agent = Chrome AND Has Header X-VAMP-MY-COOL-HEADER",
                "Chrome and has header X-VAMP-MY-COOL-HEADER",
                [
                    (UA(CHROME), False),
                    (H(("User-Agent", CHROME), ("X-VAMP-MY-COOL-HEADER", "stuff")), True),
                    (H(("User-Agent", FIREFOX), ("X-VAMP-MY-COOL-HEADER", "stuff")), False),
                ],
            ),
            (
                "User-Agent = Chrome AND Has Header X-VAMP-TUTORIAL",
                "Chrome and has header X-VAMP-TUTORIAL",
                [
                    (H(("User-Agent", CHROME), ("X-VAMP-TUTORIAL", "2")), True),
                    (UA(CHROME), False),
                ],
            ),
        ],
    ),
    # Vamp's simplifier (BooleanFlatter) drops a minterm with no neighbour: Vamp routed only
    # the first half of each of these; the exact meaning is kept here.
    *_forms(
        FLATTER,
        [
            (
                "has cookie vamp and has header vamp or misses cookie vamp and misses header vamp",
                "has cookie vamp and has header vamp or misses cookie vamp and misses header vamp",
                [
                    (Req(cookies=(("vamp", "1"),), headers=(("vamp", "1"),)), True),
                    (Req(), True),
                    (VAMP_COOKIE, False),
                    (VAMP_HEADER, False),
                ],
            ),
            (
                "has cookie vamp and misses header vamp or misses cookie vamp and has header vamp",
                "has cookie vamp and misses header vamp or misses cookie vamp and has header vamp",
                [
                    (VAMP_COOKIE, True),
                    (VAMP_HEADER, True),
                    (Req(cookies=(("vamp", "1"),), headers=(("vamp", "1"),)), False),
                    (Req(), False),
                ],
            ),
        ],
    ),
]
