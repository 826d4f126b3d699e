"""Conditions → HAProxy configuration lines (pure).

HAProxy's `if` has no parentheses: juxtaposition is AND, `||` is OR (looser), `!` negates
one ACL, and a line holds at most 64 words. So:

1. each distinct short code becomes a named ACL line, `acl <prefix>_a<n> <criterion>`, and
   costs one word wherever it is used;
2. the tree goes to negation normal form (browser names expanded, `not` pushed onto ACLs);
3. bottom-up, every node becomes a DNF over literals. When a node's DNF would exceed
   MAX_TERMS terms or MAX_CONDITION_WORDS words, a part is stored in a transaction
   variable by `set-var(txn.<prefix>_v<n>) bool(1) if <part>` and replaced by the literal
   `{ var(txn.<prefix>_v<n>) -m bool }` (an unset variable does not match). A small
   condition therefore compiles to one DNF test and no variables; a hostile one, e.g.
   `(a or b) and (c or d) and …`, to a chain of variables: never an exponential DNF.

Size: one ACL line per distinct short code (a browser name uses at most four), at most
two `set-var` lines per operand in the tree plus one, no condition over 40 words and no
line over 50 (HAProxy reads 64). The output is linear in the input whatever its shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from controller.conditions.parse import format_condition
from controller.conditions.syntax import (
    BROWSER_DEFINITIONS,
    And,
    Atom,
    ConditionError,
    Const,
    Expr,
    Kind,
    Not,
    Or,
    atoms,
    check_size,
)

__all__ = [
    "MAX_CONDITION_WORDS",
    "MAX_TERMS",
    "CompiledCondition",
    "compile_condition",
    "raw_acls",
    "requires_http",
]

MAX_TERMS = 8
"""Terms (`||`-separated) in one compiled condition."""

MAX_CONDITION_WORDS = 40
"""HAProxy words in one compiled condition; leaves 24 of a line's 64 for the rule before `if`."""

_VAR_WORDS = 5  # `{ var(txn.x) -m bool }`
_PREFIX = re.compile(r"[a-z0-9_]{1,32}")

Mode = Literal["http", "tcp"]
Term = tuple[str, ...]
Dnf = tuple[Term, ...]


@dataclass(frozen=True)
class CompiledCondition:
    """A condition as HAProxy lines.

    `setup` goes into the frontend before any rule that uses `test`, in this order: the
    named ACLs, then the `set-var` rules (`http-request` or `tcp-request content`).
    `test` is what follows `if`. It may contain `||`: appending words to it ANDs them
    with the last term only; compile with `single_term=True` to be allowed to do that.
    """

    setup: tuple[str, ...]
    test: str


@dataclass(frozen=True)
class DnfLimits:
    """When a part goes into a variable. Tests force pure DNF or one variable per node."""

    max_terms: int = MAX_TERMS
    max_words: int = MAX_CONDITION_WORDS

    def __post_init__(self) -> None:
        if self.max_terms < 1 or self.max_words < 2 * _VAR_WORDS:
            raise ValueError("limits too small to hold two variables in one term")


def requires_http(expr: Expr) -> bool:
    """Whether `expr` looks at anything beyond the client address.

    Raw ACLs count as not needing HTTP (they may test `src`, `dst_port`, `req.ssl_sni` …);
    whether they fit the mode is left to `haproxy -c` on the candidate configuration.
    """
    return any(a.kind not in TCP_KINDS for a in atoms(expr))


def raw_acls(expr: Expr) -> tuple[str, ...]:
    """The raw HAProxy ACLs in `expr`, in order, once each."""
    return tuple(dict.fromkeys(a.value for a in atoms(expr) if a.kind is Kind.RAW))


def compile_condition(
    expr: Expr, var_prefix: str, mode: Mode = "http", *, single_term: bool = False
) -> CompiledCondition:
    """`expr` as ACL and `set-var` lines plus a test; every name starts with `var_prefix`.

    `var_prefix` must be unique per compiled condition in a frontend (ACLs with the same
    name are ORed together by HAProxy). In `tcp` mode only source addresses, raw ACLs and
    true/false are allowed.
    """
    return _compile(expr, var_prefix, mode, single_term=single_term, limits=DnfLimits())


def _compile(
    expr: Expr, var_prefix: str, mode: Mode, *, single_term: bool, limits: DnfLimits
) -> CompiledCondition:
    if not _PREFIX.fullmatch(var_prefix):
        raise ValueError(f"invalid variable prefix {var_prefix!r}: 1 to 32 of a-z 0-9 _")
    if mode not in ("http", "tcp"):
        raise ValueError(f"invalid mode {mode!r}")
    check_size(expr)
    if mode == "tcp":
        for atom in atoms(expr):
            if atom.kind not in TCP_KINDS:
                shown = format_condition(atom)
                raise ConditionError(f"short code {shown!r} needs an http gateway")
    compiler = _Compiler(var_prefix, mode, limits)
    dnf = compiler.dnf(compiler.normal_form(expr, negate=False))
    if single_term and len(dnf) > 1:
        dnf = compiler.store(dnf)
    return CompiledCondition(setup=(*compiler.acl_lines, *compiler.var_lines), test=_render(dnf))


TCP_KINDS = frozenset({Kind.SOURCE, Kind.RAW, Kind.SNI})
"""What a tcp gateway can look at: the client address, the TLS hello's SNI, raw ACLs."""


def acl_criterion(atom: Atom, mode: Mode = "http") -> str:
    """What follows `acl <name>` for a positive, non-browser atom. SNI is the TLS hello's
    (`req.ssl_sni`, passed through) on tcp gateways, the terminated one's on http."""
    name, quoted = atom.name, f"'{atom.value}'"  # values hold no ' (syntax.check_text)
    match atom.kind:
        case Kind.USER_AGENT:
            # fhdr, not hdr: hdr splits at commas, and user agents say "(KHTML, like Gecko)"
            return f"req.fhdr(user-agent) -m sub -i -- {quoted}"
        case Kind.HOST:
            return f"req.fhdr(host),field(1,:) -m str -i -- {quoted}"
        case Kind.COOKIE:
            return f"req.cook({name}) -m found"
        case Kind.COOKIE_VALUE:
            return f"req.cook({name}) -m sub -- {quoted}"
        case Kind.HEADER:
            return f"req.fhdr_cnt({name}) gt 0"
        case Kind.HEADER_VALUE:
            return f"req.fhdr({name}) -m sub -i -- {quoted}"
        case Kind.PATH:
            return f"path -m str -- {quoted}"
        case Kind.PATH_CONTAINS:
            return f"path -m sub -- {quoted}"
        case Kind.PATH_PREFIX:
            return f"path -m beg -- {quoted}"
        case Kind.PARAM:
            return f"urlp({name}) -m found"
        case Kind.PARAM_VALUE:
            return f"urlp({name}) -m str -- {quoted}"
        case Kind.SOURCE:
            return f"src {atom.value}"
        case Kind.SNI:
            fetch = "req.ssl_sni" if mode == "tcp" else "ssl_fc_sni"
            return f"{fetch} -m str -i -- {quoted}"
        case Kind.RAW:
            return atom.value
    raise AssertionError(atom.kind)


@dataclass(frozen=True)
class _Literal:
    text: str


@dataclass(frozen=True)
class _Junction:
    conjunctive: bool
    operands: tuple[_Node, ...]


_Node = _Literal | _Junction


def _words(dnf: Dnf) -> int:
    return sum(lit.count(" ") + 1 for term in dnf for lit in term) + len(dnf) - 1


def _render(dnf: Dnf) -> str:
    return " || ".join(" ".join(term) for term in dnf)


class _Compiler:
    def __init__(self, prefix: str, mode: Mode, limits: DnfLimits) -> None:
        self.prefix = prefix
        self.mode = mode
        self.rule = "http-request" if mode == "http" else "tcp-request content"
        self.limits = limits
        self.acl_names: dict[Atom, str] = {}
        self.acl_lines: list[str] = []
        self.var_lines: list[str] = []
        self.vars = 0

    def acl(self, atom: Atom) -> str:
        positive = Atom(atom.kind, atom.name, atom.value)
        name = self.acl_names.get(positive)
        if name is None:
            name = self.acl_names[positive] = f"{self.prefix}_a{len(self.acl_names) + 1}"
            self.acl_lines.append(f"acl {name} {acl_criterion(positive, self.mode)}")
        return name

    def normal_form(self, expr: Expr, negate: bool) -> _Node:
        """Negation normal form with same-kind junctions flattened."""
        if isinstance(expr, Const):
            return _Literal("TRUE" if expr.value != negate else "FALSE")
        if isinstance(expr, Not):
            return self.normal_form(expr.operand, not negate)
        if isinstance(expr, And | Or):
            conjunctive = isinstance(expr, And) != negate
            operands: list[_Node] = []
            for operand in expr.operands:
                node = self.normal_form(operand, negate)
                if isinstance(node, _Junction) and node.conjunctive == conjunctive:
                    operands.extend(node.operands)
                else:
                    operands.append(node)
            return _Junction(conjunctive, tuple(operands))
        if expr.kind is Kind.BROWSER:
            return self.normal_form(BROWSER_DEFINITIONS[expr.value], negate)
        name = self.acl(expr)
        return _Literal(f"!{name}" if expr.negated != negate else name)

    def fits(self, dnf: Dnf) -> bool:
        return len(dnf) <= self.limits.max_terms and _words(dnf) <= self.limits.max_words

    def new_var(self) -> str:
        self.vars += 1
        return f"txn.{self.prefix}_v{self.vars}"

    def set_var(self, var: str, dnf: Dnf) -> None:
        self.var_lines.append(f"{self.rule} set-var({var}) bool(1) if {_render(dnf)}")

    def store(self, dnf: Dnf) -> Dnf:
        """Put `dnf` into a new variable; the literal testing it."""
        var = self.new_var()
        self.set_var(var, dnf)
        return ((f"{{ var({var}) -m bool }}",),)

    def dnf(self, node: _Node) -> Dnf:
        """A DNF equivalent to `node` that fits the limits (storing parts as needed)."""
        if isinstance(node, _Literal):
            return ((node.text,),)
        parts = [self.dnf(operand) for operand in node.operands]
        return self.conjoin(parts) if node.conjunctive else self.disjoin(parts)

    def disjoin(self, parts: list[Dnf]) -> Dnf:
        joined = tuple(term for part in parts for term in part)
        if self.fits(joined):
            return joined
        # One variable set by as many lines as it takes: each line ORs into it.
        var = self.new_var()
        chunk: Dnf = ()
        for part in parts:
            if chunk and not self.fits(chunk + part):
                self.set_var(var, chunk)
                chunk = ()
            chunk += part
        self.set_var(var, chunk)
        return ((f"{{ var({var}) -m bool }}",),)

    def product(self, left: Dnf, right: Dnf) -> Dnf | None:
        """`left` AND `right` distributed, or None when that would not fit."""
        terms = len(left) * len(right)
        left_words = sum(lit.count(" ") + 1 for term in left for lit in term)
        right_words = sum(lit.count(" ") + 1 for term in right for lit in term)
        words = len(right) * left_words + len(left) * right_words + terms - 1
        if terms > self.limits.max_terms or words > self.limits.max_words:
            return None
        return tuple(a + b for a in left for b in right)

    def conjoin(self, parts: list[Dnf]) -> Dnf:
        acc: Dnf = ((),)
        for part in parts:
            product = self.product(acc, part)
            if product is None and _words(part) > 1:
                part = self.store(part)
                product = self.product(acc, part)
            if product is None:
                acc = self.store(acc)
                product = self.product(acc, part)
            assert product is not None  # two single literals of at most 5 words always fit
            acc = product
        return acc
