"""Condition text ⇄ syntax tree.

Grammar (keywords ignore case; AND binds tighter than OR)::

    condition := term (("or" | "||" | "|") term)*
    term      := factor (("and" | "&&" | "&") factor)*
    factor    := ("not" | "!") factor | "(" condition ")" | constant | atom
    constant  := "true" | "t" | "1" | "false" | "f" | "0"
    atom      := browser | "<" raw-acl ">"
               | user-agent ("==" | "=" | "is" | "has" | "contains") value
               | user-agent ("!=" | "!" | "is not" | "not" | "misses") value
               | "host" ("==" | "=" | "is" | "has" | "contains") value
               | "host" ("!=" | "!" | "is not" | "not" | "misses") value
               | ("has" | "contains" | "misses") ("cookie" | "header" | "param") name
               | ("cookie" | "header") name ("has" | "contains" | "misses") value
               | "path" ("==" | "=" | "is" | "!=" | "is not") value
               | "path" ("has" | "contains" | "misses" | "begins") value
               | "param" name ("==" | "=" | "is" | "!=" | "is not") value
               | ("source" | "src") ["in" | "not in"] network
               | "sni" ("==" | "=" | "is" | "!=" | "is not") value
    user-agent:= "user-agent" | "user.agent" | "useragent"
    browser   := "Chrome" | "Firefox" | "Safari" | "Edge" | "IE"

After `user-agent`, a browser name (quoted or not) means that browser, not the substring:
`user-agent == Firefox` is `Firefox`, `user-agent != Firefox` is `not Firefox`, as in Vamp.
`host has X` compares the host like `host == X` (Vamp's meaning too).

A value is one token up to whitespace or a parenthesis (so `path == /a&&b` is the path
`/a&&b`), a name also ends at `&` or `|` (`has cookie a&&has cookie b` is two atoms); either
may instead be a quoted string ('...' or "...", a backslash escapes a quote or a backslash).

Vamp's "straight ACL": a whole condition outside this grammar whose first word is an HAProxy
fetch (`hdr_sub(user-agent) Android`, `path_beg /api`) is taken as one raw ACL, as if
written between `<` and `>`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from controller.conditions.syntax import (
    BROWSER_NAMES,
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
    check_name,
)

__all__ = ["format_condition", "parse_condition"]

_T = TypeVar("_T")

_WHITESPACE = " \t\r\n\f"
_WORD_END = _WHITESPACE + "()<>\"'&|!="
_VALUE_END = _WHITESPACE + "()"
_NAME_END = _VALUE_END + "&|"

_POSITIVE = ("==", "=", "is")
_NEGATIVE = ("!=", "is not")
_CONTAINS = ("has", "contains")
_VAMP_NEGATIVE = ("!", "not", "misses")
"""Vamp's other spellings of "differs" after `user-agent` and `host`."""
_USER_AGENT = ("user-agent", "user.agent", "useragent")
_CONSTANTS = {"true": True, "t": True, "1": True, "false": False, "f": False, "0": False}

# (kind, negated) for each operator after `user-agent`, `host`, `path`, `cookie` …
_OPERATORS: dict[str, dict[str, tuple[Kind, bool]]] = {
    "user-agent": {
        **{op: (Kind.USER_AGENT, False) for op in (*_POSITIVE, *_CONTAINS)},
        **{op: (Kind.USER_AGENT, True) for op in (*_NEGATIVE, *_VAMP_NEGATIVE)},
    },
    "host": {
        **{op: (Kind.HOST, False) for op in (*_POSITIVE, *_CONTAINS)},
        **{op: (Kind.HOST, True) for op in (*_NEGATIVE, *_VAMP_NEGATIVE)},
    },
    "sni": {
        **{op: (Kind.SNI, False) for op in _POSITIVE},
        **{op: (Kind.SNI, True) for op in _NEGATIVE},
    },
    "path": {
        **{op: (Kind.PATH, False) for op in _POSITIVE},
        **{op: (Kind.PATH, True) for op in _NEGATIVE},
        **{op: (Kind.PATH_CONTAINS, False) for op in _CONTAINS},
        "misses": (Kind.PATH_CONTAINS, True),
        "begins": (Kind.PATH_PREFIX, False),
    },
    "cookie": {
        **{op: (Kind.COOKIE_VALUE, False) for op in _CONTAINS},
        "misses": (Kind.COOKIE_VALUE, True),
    },
    "header": {
        **{op: (Kind.HEADER_VALUE, False) for op in _CONTAINS},
        "misses": (Kind.HEADER_VALUE, True),
    },
    "param": {
        **{op: (Kind.PARAM_VALUE, False) for op in _POSITIVE},
        **{op: (Kind.PARAM_VALUE, True) for op in _NEGATIVE},
    },
}
_PRESENCE = {"cookie": Kind.COOKIE, "header": Kind.HEADER, "param": Kind.PARAM}
_KEYWORDS = frozenset((*_OPERATORS, *_USER_AGENT, *_CONSTANTS, *BROWSER_NAMES, "has", "misses"))
_KEYWORDS |= {"contains", "not", "source", "src"}
_FETCH = re.compile(r"[a-z][a-z0-9_.]*(\()?", re.IGNORECASE)
"""The first word of a straight ACL: `hdr_sub(`, `path_beg`, `req.ssl_sni` (not a keyword)."""


def parse_condition(text: str) -> Expr:
    """The syntax tree of `text`; raises ConditionError with the offending position."""
    if len(text) > MAX_TEXT_LENGTH:
        raise ConditionError(
            f"condition longer than {MAX_TEXT_LENGTH} characters", MAX_TEXT_LENGTH, text
        )
    try:
        return _Parser(text).parse()
    except ConditionError:
        straight = _straight_acl(text)
        if straight is None:
            raise
        return straight


def _straight_acl(text: str) -> Atom | None:
    """Vamp's fallback: a condition outside the grammar that starts like an HAProxy ACL."""
    stripped = text.strip(" ")
    match = _FETCH.match(stripped)
    if match is None:
        return None
    word = stripped[: match.end()]
    follows = stripped[match.end() : match.end() + 1]
    fetch = word.endswith("(") or (any(c in word for c in "_.") and follows in ("", " "))
    if not fetch or word.rstrip("(").lower() in _KEYWORDS:
        return None
    try:
        return Atom(Kind.RAW, value=stripped)
    except ConditionError as exc:
        shown = word.rstrip("(")
        reason = f"{exc.reason} (read as a raw HAProxy ACL: it starts with {shown!r})"
        raise ConditionError(reason, 0, text) from None


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.nesting = 0
        self.atoms = 0

    def fail(self, reason: str, position: int | None = None) -> ConditionError:
        return ConditionError(reason, self.pos if position is None else position, self.text)

    # -- tokens ---------------------------------------------------------------------------

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _WHITESPACE:
            self.pos += 1

    def at_end(self) -> bool:
        self.skip_space()
        return self.pos >= len(self.text)

    def word_end(self) -> int:
        self.skip_space()
        end = self.pos
        while end < len(self.text) and self.text[end] not in _WORD_END:
            end += 1
        return end

    def peek_word(self) -> str:
        """The keyword-like word at the cursor, in lower case, without consuming it."""
        end = self.word_end()
        return self.text[self.pos : end].lower()

    def take_word(self) -> str:
        end = self.word_end()
        word = self.text[self.pos : end].lower()
        self.pos = end
        return word

    def peek_token(self) -> str:
        """What to show in an 'unexpected' message: the word there, or the symbol."""
        end = self.word_end()
        if end > self.pos:
            return self.text[self.pos : end]
        pair = self.text[self.pos : self.pos + 2]
        return pair if pair in ("&&", "||", "==", "!=") else pair[:1]

    def take_symbol(self, *symbols: str) -> str | None:
        self.skip_space()
        for symbol in symbols:
            if self.text.startswith(symbol, self.pos):
                self.pos += len(symbol)
                return symbol
        return None

    def take_value(self, what: str, end_chars: str = _VALUE_END) -> tuple[str, int]:
        """A quoted string or a bare token; returns it with its start position."""
        self.skip_space()
        start = self.pos
        if start >= len(self.text):
            raise self.fail(f"missing {what}")
        quote = self.text[start]
        if quote not in "\"'":
            end = start
            while end < len(self.text) and self.text[end] not in end_chars:
                end += 1
            if end == start:
                raise self.fail(f"missing {what}")
            self.pos = end
            return self.text[start:end], start
        chars: list[str] = []
        i = start + 1
        while True:
            if i >= len(self.text):
                raise self.fail("unterminated quote opened", start)
            char = self.text[i]
            if char == "\\" and self.text[i + 1 : i + 2] in ("\\", '"', "'"):
                chars.append(self.text[i + 1])
                i += 2
            elif char == quote:
                self.pos = i + 1
                return "".join(chars), start
            else:
                chars.append(char)
                i += 1

    # -- grammar --------------------------------------------------------------------------

    def parse(self) -> Expr:
        if self.at_end():
            raise self.fail("empty condition")
        expr, _ = self.disjunction()
        if not self.at_end():
            raise self.fail(f"unexpected {self.peek_token()!r}")
        return expr

    def binary(
        self,
        operand: Callable[[], tuple[Expr, int]],
        symbols: tuple[str, str],
        word: str,
        node: type[And] | type[Or],
    ) -> tuple[Expr, int]:
        self.skip_space()
        start = self.pos
        first, depth = operand()
        operands = [first]
        while self.take_symbol(*symbols) or (self.peek_word() == word and self.take_word()):
            item, item_depth = operand()
            operands.append(item)
            depth = max(depth, item_depth)
        if len(operands) == 1:
            return first, depth
        return self.checked(node(tuple(operands)), depth + 1, start)

    def disjunction(self) -> tuple[Expr, int]:
        return self.binary(self.conjunction, ("||", "|"), "or", Or)

    def conjunction(self) -> tuple[Expr, int]:
        return self.binary(self.factor, ("&&", "&"), "and", And)

    def checked(self, expr: Expr, depth: int, start: int) -> tuple[Expr, int]:
        if depth > MAX_DEPTH:
            raise self.fail(f"condition nested deeper than {MAX_DEPTH} levels", start)
        return expr, depth

    def nest(self, start: int) -> None:
        self.nesting += 1
        if self.nesting > MAX_DEPTH:
            raise self.fail(f"condition nested deeper than {MAX_DEPTH} levels", start)

    def factor(self) -> tuple[Expr, int]:
        self.skip_space()
        start = self.pos
        if start >= len(self.text):
            raise self.fail("unexpected end of condition")
        char = self.text[start]
        if char == "(":
            self.nest(start)
            self.pos += 1
            expr, depth = self.disjunction()
            if self.at_end():
                raise self.fail("unbalanced parenthesis opened", start)
            if not self.take_symbol(")"):
                raise self.fail(f"unexpected {self.peek_token()!r}")
            self.nesting -= 1
            return expr, depth
        if (char == "!" and not self.text.startswith("!=", start)) or self.peek_word() == "not":
            self.nest(start)
            if char == "!":
                self.pos += 1
            else:
                self.take_word()
            operand, depth = self.factor()
            self.nesting -= 1
            return self.checked(Not(operand), depth + 1, start)
        if char in ")&|=!":
            raise self.fail(f"unexpected {self.peek_token()!r}")
        self.atoms += 1
        if self.atoms > MAX_ATOMS:
            raise self.fail(f"condition has more than {MAX_ATOMS} atoms")
        expr = self.atom(start)
        return expr, 1 if isinstance(expr, Not) else 0  # `user-agent != Firefox`

    def atom(self, start: int) -> Expr:
        if self.text[start] == "<":
            return self.raw(start)
        word = self.take_word()
        if word in _CONSTANTS:
            return Const(_CONSTANTS[word])
        if word in BROWSER_NAMES:
            return Atom(Kind.BROWSER, value=BROWSER_NAMES[word])
        if word in ("has", "contains", "misses"):
            self.skip_space()
            at = self.pos
            what = self.take_word()
            if what not in _PRESENCE:
                raise self.fail(f"expected cookie, header or param after {word!r}", at)
            name, at = self.name(what)
            return self.make(at, _PRESENCE[what], name=name, negated=word == "misses")
        if word in ("source", "src"):
            return self.source()
        if word in _USER_AGENT:
            word = "user-agent"
        if word in _OPERATORS:
            name = self.name(word)[0] if word in _PRESENCE else ""
            kind, negated = self.operator(word)
            value, at = self.take_value("value")
            if kind is Kind.USER_AGENT and value.lower() in BROWSER_NAMES:
                browser = Atom(Kind.BROWSER, value=BROWSER_NAMES[value.lower()])
                return Not(browser) if negated else browser
            return self.make(at, kind, name=name, value=value, negated=negated)
        shown = self.text[start : self.pos] or self.text[start]
        raise self.fail(f"unknown short code {shown!r}", start)

    def operator(self, code: str) -> tuple[Kind, bool]:
        self.skip_space()
        at = self.pos
        op = self.take_symbol("==", "!=", "=", "!") or self.take_word()
        if op == "is" and self.peek_word() == "not":
            self.take_word()
            op = "is not"
        choices = _OPERATORS[code]
        if op not in choices:
            raise self.fail(f"expected {', '.join(choices)} after {code!r}", at)
        return choices[op]

    def name(self, code: str) -> tuple[str, int]:
        name, at = self.take_value("name", _NAME_END)
        return self.check(at, lambda: check_name(name, query=code == "param")), at

    def source(self) -> Expr:
        negated = False
        if self.peek_word() == "not":
            self.take_word()
            if self.peek_word() != "in":
                raise self.fail("expected 'in' after 'not'")
            self.take_word()
            negated = True
        elif self.peek_word() == "in":
            self.take_word()
        value, at = self.take_value("address or network")
        return self.make(at, Kind.SOURCE, value=value, negated=negated)

    def raw(self, start: int) -> Expr:
        end = self.text.find(">", start + 1)
        opener = self.text.find("<", start + 1)
        if end < 0:
            raise self.fail("unterminated raw ACL opened", start)
        if 0 <= opener < end:
            raise self.fail("a raw ACL may not contain '<'", opener)
        self.pos = end + 1
        return self.make(start, Kind.RAW, value=self.text[start + 1 : end].strip(" "))

    def make(
        self, at: int, kind: Kind, name: str = "", value: str = "", negated: bool = False
    ) -> Atom:
        return self.check(at, lambda: Atom(kind, name=name, value=value, negated=negated))

    def check(self, at: int, build: Callable[[], _T]) -> _T:
        """Run a validation; report its error at `at` in the text."""
        try:
            return build()
        except ConditionError as exc:
            raise self.fail(exc.reason, at) from None


# -- formatting ---------------------------------------------------------------------------

_BARE = re.compile(r"[A-Za-z0-9_./:@%+,;~*-]+")


def _quote(value: str) -> str:
    if _BARE.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _format_atom(atom: Atom) -> str:
    name = f'"{atom.name}"' if "&" in atom.name or "|" in atom.name else atom.name
    kind, value, negated = atom.kind, _quote(atom.value), atom.negated
    eq = "!=" if negated else "=="
    has = "misses" if negated else "has"
    match kind:
        case Kind.BROWSER:
            return atom.value
        case Kind.RAW:
            return f"< {atom.value} >"
        case Kind.USER_AGENT | Kind.HOST | Kind.PATH | Kind.SNI:
            return f"{kind.value} {eq} {value}"
        case Kind.PATH_CONTAINS:
            return f"path {has} {value}"
        case Kind.PATH_PREFIX:
            return f"path begins {value}"
        case Kind.COOKIE | Kind.HEADER | Kind.PARAM:
            return f"{has} {kind.value} {name}"
        case Kind.COOKIE_VALUE:
            return f"cookie {name} {has} {value}"
        case Kind.HEADER_VALUE:
            return f"header {name} {has} {value}"
        case Kind.PARAM_VALUE:
            return f"param {name} {eq} {value}"
        case Kind.SOURCE:
            return f"source {'not in' if negated else 'in'} {atom.value}"


def format_condition(expr: Expr) -> str:
    """Canonical text: lower-case keywords, minimal parentheses; parses back to `expr`."""
    if isinstance(expr, Const):
        return "true" if expr.value else "false"
    if isinstance(expr, Atom):
        return _format_atom(expr)
    if isinstance(expr, Not):
        inner = format_condition(expr.operand)
        return f"not ({inner})" if isinstance(expr.operand, And | Or) else f"not {inner}"
    if isinstance(expr, And):
        return " and ".join(
            f"({format_condition(e)})" if isinstance(e, And | Or) else format_condition(e)
            for e in expr.operands
        )
    return " or ".join(
        f"({format_condition(e)})" if isinstance(e, Or) else format_condition(e)
        for e in expr.operands
    )
