"""The condition language of routes: parsed, printed, evaluated, and compiled to HAProxy.

Pure: no I/O. See `parse` for the grammar, `syntax` for limits and what values may hold,
`haproxy` for the compilation and its size bound, `evaluate` for the reference meaning.
"""

from controller.conditions.evaluate import RequestFacts, evaluate
from controller.conditions.haproxy import (
    MAX_CONDITION_WORDS,
    MAX_TERMS,
    CompiledCondition,
    compile_condition,
    raw_acls,
    requires_http,
)
from controller.conditions.parse import format_condition, parse_condition
from controller.conditions.syntax import (
    BROWSER_DEFINITIONS,
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
)

__all__ = [
    "BROWSERS",
    "BROWSER_DEFINITIONS",
    "MAX_ATOMS",
    "MAX_CONDITION_WORDS",
    "MAX_DEPTH",
    "MAX_TERMS",
    "MAX_TEXT_LENGTH",
    "And",
    "Atom",
    "CompiledCondition",
    "ConditionError",
    "Const",
    "Expr",
    "Kind",
    "Not",
    "Or",
    "RequestFacts",
    "compile_condition",
    "evaluate",
    "format_condition",
    "parse_condition",
    "raw_acls",
    "requires_http",
]
