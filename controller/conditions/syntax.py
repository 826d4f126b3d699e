"""The condition language's syntax tree, its size limits, and what names and values may hold.

Every `Atom` validates itself on construction, so a tree is safe to compile into HAProxy's
configuration however it was built (by the parser, by hand, or by a property test).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum

MAX_TEXT_LENGTH = 2000
"""Characters in a condition's text."""

MAX_ATOMS = 64
"""Short codes, browser names, raw ACLs and `true`/`false` in one condition."""

MAX_DEPTH = 16
"""Levels of `and`/`or`/`not` in the tree, and of parentheses/`not` while parsing."""

MAX_VALUE_LENGTH = 256
MAX_NAME_LENGTH = 64
MAX_RAW_LENGTH = 512
MAX_RAW_WORDS = 48
"""HAProxy reads at most 64 words per line; `acl <name>` takes two of them."""

BROWSERS = ("Chrome", "Firefox", "Safari", "Edge", "IE")
BROWSER_NAMES = {name.lower(): name for name in BROWSERS}
"""Browsers by their name in lower case: the grammar reads them ignoring case."""

_NAME = re.compile(r"[A-Za-z0-9!%&*+.^_`|~-]{1," + str(MAX_NAME_LENGTH) + "}")
"""HTTP token characters minus `'` `$` `#`: safe bare inside `req.hdr(...)` on a config line."""

_HOST = re.compile(r"[A-Za-z0-9._-]{1,253}")


class ConditionError(ValueError):
    """A condition that cannot be parsed, is too large, or cannot be compiled as asked.

    `position` is a 0-based offset into `text` when the error comes from the parser.
    """

    def __init__(self, reason: str, position: int | None = None, text: str | None = None):
        super().__init__(reason if position is None else f"{reason} at {position}")
        self.reason = reason
        self.position = position
        self.text = text

    def pointer(self, width: int = 72) -> str:
        """The text (or the part of it around the error) and a caret under the position."""
        if self.text is None or self.position is None:
            return str(self)
        shown = "".join(c if " " <= c <= "~" else " " for c in self.text)
        start = max(0, min(self.position - width // 2, len(shown) - width))
        end = start + width
        window = shown[start:end]
        caret = self.position - start
        if start > 0:
            window, caret = "…" + window, caret + 1
        if end < len(shown):
            window += "…"
        return f"{window}\n{' ' * caret}^"


class Kind(StrEnum):
    USER_AGENT = "user-agent"  # value: User-Agent contains it (ignoring case)
    BROWSER = "browser"  # value: one of BROWSERS
    HOST = "host"  # value: Host equals it (ignoring case and port)
    COOKIE = "cookie"  # name: the cookie is present
    COOKIE_VALUE = "cookie-value"  # name, value: the cookie's value contains it (exact case)
    HEADER = "header"  # name: the header is present
    HEADER_VALUE = "header-value"  # name, value: the header's value contains it (ignoring case)
    PATH = "path"  # value: the path equals it
    PATH_CONTAINS = "path-contains"  # value: the path contains it
    PATH_PREFIX = "path-prefix"  # value: the path begins with it
    PARAM = "param"  # name: the query parameter is present
    PARAM_VALUE = "param-value"  # name, value: the query parameter equals it
    SOURCE = "source"  # value: the client address is in this network
    SNI = "sni"  # value: the TLS server name equals it (ignoring case)
    RAW = "raw"  # value: an HAProxy ACL, passed through


_NAMED = {Kind.COOKIE, Kind.COOKIE_VALUE, Kind.HEADER, Kind.HEADER_VALUE}
_NAMED |= {Kind.PARAM, Kind.PARAM_VALUE}
_TEXT_VALUED = {Kind.USER_AGENT, Kind.COOKIE_VALUE, Kind.HEADER_VALUE, Kind.PARAM_VALUE}
_TEXT_VALUED |= {Kind.PATH, Kind.PATH_CONTAINS, Kind.PATH_PREFIX}
NOT_NEGATABLE = frozenset({Kind.BROWSER, Kind.PATH_PREFIX, Kind.RAW})
"""Kinds without a negative spelling: negate them with `not`."""


def check_name(name: str, *, query: bool = False) -> str:
    """A header, cookie or (`query`) query parameter name."""
    if not _NAME.fullmatch(name):
        raise ConditionError(
            f"invalid name {name!r}: 1 to {MAX_NAME_LENGTH} of A-Z a-z 0-9 ! % & * + . ^ _ ` | ~ -"
        )
    if query and "&" in name:
        raise ConditionError("a query parameter name may not contain '&'")
    return name


def check_text(value: str) -> str:
    """Printable ASCII without `'`, so it can stand in HAProxy's single quotes as is."""
    if not 1 <= len(value) <= MAX_VALUE_LENGTH:
        raise ConditionError(f"a value must have 1 to {MAX_VALUE_LENGTH} characters")
    for char in value:
        if char == "'":
            raise ConditionError("a value may not contain a single quote (')")
        if not " " <= char <= "~":
            raise ConditionError(f"a value may only hold printable ASCII, not {char!r}")
    return value


def check_host(value: str) -> str:
    if not _HOST.fullmatch(value):
        raise ConditionError(f"invalid host {value!r}: letters, digits, '.', '_' and '-' only")
    return value


def check_network(value: str) -> str:
    """The canonical form of an IPv4/IPv6 address or CIDR network (host bits must be zero)."""
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        raise ConditionError(f"invalid address or network {value!r}: {exc}") from None


def check_raw(text: str) -> str:
    """An HAProxy ACL that cannot leave its line or change how the rest of the line reads.

    On top of the forbidden characters (line breaks, NUL, `#`, `{`, `}`, `<`, `>`), only
    single quotes may quote, and they must pair up: HAProxy's double quotes expand
    environment variables and its backslashes escape outside single quotes. An empty word
    (`''`) is refused because HAProxy stops reading the line there.
    """
    text = text.strip(" ")
    if not text:
        raise ConditionError("empty raw ACL")
    if len(text) > MAX_RAW_LENGTH:
        raise ConditionError(f"a raw ACL may have at most {MAX_RAW_LENGTH} characters")
    words: list[str] = []
    word: list[str] | None = None
    quoted = False
    for char in text:
        if not " " <= char <= "~":
            raise ConditionError(f"a raw ACL may only hold printable ASCII, not {char!r}")
        if char in "#{}<>":
            raise ConditionError(f"a raw ACL may not contain {char!r}")
        if quoted:
            if char == "'":
                quoted = False
            else:
                assert word is not None
                word.append(char)
        elif char == " ":
            if word is not None:
                words.append("".join(word))
                word = None
        elif char in '"\\':
            raise ConditionError(f"a raw ACL may not contain {char!r} (quote with ' instead)")
        else:
            word = word if word is not None else []
            if char == "'":
                quoted = True
            else:
                word.append(char)
    if quoted:
        raise ConditionError("unterminated ' in raw ACL")
    if word is not None:
        words.append("".join(word))
    if "" in words:
        raise ConditionError("a raw ACL may not contain an empty word ('')")
    if len(words) > MAX_RAW_WORDS:
        raise ConditionError(f"a raw ACL may have at most {MAX_RAW_WORDS} words")
    return text


@dataclass(frozen=True)
class Const:
    value: bool


@dataclass(frozen=True)
class Atom:
    """One short code. `negated` is its negative spelling (`!=`, `misses`, `not in`)."""

    kind: Kind
    name: str = ""
    value: str = ""
    negated: bool = False

    def __post_init__(self) -> None:
        kind = Kind(self.kind)
        object.__setattr__(self, "kind", kind)
        if kind in _NAMED:
            check_name(self.name, query=kind in (Kind.PARAM, Kind.PARAM_VALUE))
        elif self.name:
            raise ConditionError(f"short code {kind.value} takes no name")
        if self.negated and kind in NOT_NEGATABLE:
            raise ConditionError(f"short code {kind.value} has no negative form: use not")
        if kind in _TEXT_VALUED:
            check_text(self.value)
            if kind is Kind.USER_AGENT and self.value.lower() in BROWSER_NAMES:
                # the grammar reads `user-agent == Chrome` as the browser: no text says this
                browser = BROWSER_NAMES[self.value.lower()]
                raise ConditionError(
                    f"user-agent {self.value!r} is the browser {browser}: use the browser, or "
                    f"header User-Agent has {self.value} for the substring"
                )
        elif kind in (Kind.HOST, Kind.SNI):
            check_host(self.value)
        elif kind is Kind.SOURCE:
            object.__setattr__(self, "value", check_network(self.value))
        elif kind is Kind.BROWSER:
            if self.value not in BROWSERS:
                raise ConditionError(f"unknown browser {self.value!r}")
        elif kind is Kind.RAW:
            if self.value != check_raw(self.value):
                raise ConditionError("a raw ACL is stored without surrounding spaces")
        elif self.value:
            raise ConditionError(f"short code {kind.value} takes no value")


@dataclass(frozen=True)
class Not:
    operand: Expr


@dataclass(frozen=True)
class And:
    operands: tuple[Expr, ...]

    def __post_init__(self) -> None:
        if len(self.operands) < 2:
            raise ConditionError("'and' needs at least two operands")


@dataclass(frozen=True)
class Or:
    operands: tuple[Expr, ...]

    def __post_init__(self) -> None:
        if len(self.operands) < 2:
            raise ConditionError("'or' needs at least two operands")


Expr = Const | Atom | Not | And | Or


def _ua(value: str, negated: bool = False) -> Atom:
    return Atom(Kind.USER_AGENT, value=value, negated=negated)


BROWSER_DEFINITIONS: dict[str, Expr] = {
    # Chromium browsers that brand themselves (Edge, Opera) are not Chrome; those that do not
    # (Brave, Vivaldi, Samsung Internet, headless Chrome) are. CriOS is Chrome on iOS.
    "Chrome": And((Or((_ua("Chrome/"), _ua("CriOS/"))), _ua("Edg", True), _ua("OPR/", True))),
    "Firefox": Or((_ua("Firefox/"), _ua("FxiOS/"))),
    # Chrome and Android WebViews say "Safari/" too; only Safari says "Version/" without them.
    "Safari": And((_ua("Safari/"), _ua("Version/"), _ua("Chrome/", True), _ua("Edg", True))),
    # Edg/ (Chromium Edge), Edge/ (EdgeHTML), EdgA/ (Android), EdgiOS/ (iOS).
    "Edge": _ua("Edg"),
    "IE": Or((_ua("MSIE"), _ua("Trident/"))),
}
"""What each browser name means, as `user-agent` substring tests (case-insensitive)."""


def atoms(expr: Expr) -> list[Atom]:
    """The atoms of `expr` left to right (iterative: safe on any depth)."""
    found: list[Atom] = []
    stack: list[Expr] = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, Atom):
            found.append(node)
        elif isinstance(node, Not):
            stack.append(node.operand)
        elif isinstance(node, And | Or):
            stack.extend(reversed(node.operands))
    return found


def check_size(expr: Expr) -> None:
    """Refuse trees beyond MAX_ATOMS leaves or MAX_DEPTH operator levels."""
    leaves = 0
    stack: list[tuple[Expr, int]] = [(expr, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ConditionError(f"condition nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, Not):
            stack.append((node.operand, depth + 1))
        elif isinstance(node, And | Or):
            stack.extend((operand, depth + 1) for operand in node.operands)
        else:
            leaves += 1
            if leaves > MAX_ATOMS:
                raise ConditionError(f"condition has more than {MAX_ATOMS} atoms")
