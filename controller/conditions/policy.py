"""What a raw HAProxy ACL (`< ... >`) may do unless the operator allows more by name.

A raw ACL is written by whoever may write routes, but HAProxy evaluates it with the rights
of the HAProxy process, and `haproxy -c` reports errors quoting what it read. By default a
raw ACL may only look at the request and the connection. Refused, from HAProxy 2.6's
doc/configuration.txt (and still so in 2.8-3.x):

- the ACL flags `-f <file>` (patterns read from any file: `-f /etc/shadow` comes back in
  the error text, `-f /dev/zero` keeps `haproxy -c` busy for a minute) and `-M` (that
  file read as a map; §7.1). `-m <method>` names a matching method, never a file; `-n`
  and `-u <id>` read nothing;
- the fetch `env(<name>)`: the process environment (§7.3.2; also `getenv`, which is not
  HAProxy's but reads the same);
- the converters `map`, `map_<match>` and `map_<match>_<output>` (e.g. `map_str`,
  `map_beg_int`, `map_regm`, `map_ip_ip`): a map file (§7.3.1);
- the converter `jwt_verify(<alg>,<key>)`: `<key>` may be a certificate path, read at start;
- Lua fetches and converters (`lua.<name>`): code;
- the converter `debug`: copies samples into a ring buffer, stdout or stderr;
- double quotes (HAProxy expands `$VAR`, `${VAR}`, `${VAR-default}` and `.FILE`-style
  pseudo-variables inside them, §2.3), backslash escapes (`\\x22` builds any character,
  §2.2), `${` and `%[` (a sample expression wherever log-format applies).

Not refused: fetches of HAProxy's own state (`nbsrv`, `be_*`, `srv_*`, stick tables,
`var`), `hostname`, `http_auth(<userlist>)` (checks credentials against a userlist
configured elsewhere, reveals none), the device-detection converters (they read only the
database the `global` section names). Patterns of IP matches may be host names that
`haproxy -c` resolves by DNS unless `-n` is given: that costs time, not secrets.
"""

from __future__ import annotations

import re
import shlex

from controller.conditions.haproxy import raw_acls
from controller.conditions.syntax import ConditionError, Expr
from controller.errors import shown

__all__ = ["UnsafeAcl", "check_acl_policy", "unsafe_reason"]

_TEXT_RULES = (
    ('"', "uses double quotes, in which HAProxy expands environment variables"),
    ("\\", "uses a backslash escape"),
    ("${", "uses a '${' environment expansion"),
    ("%[", "uses a '%[' sample expression"),
)
_FILE_FLAGS = {"-f": "reads patterns from a file (-f)", "-M": "reads a map file (-M)"}

_KEYWORD = re.compile(r"(?:^|,)\s*([A-Za-z0-9._+:-]+)")
"""A fetch name (start of the sample expression) or a converter name (after a comma)."""


def _keyword_reason(name: str) -> str | None:
    name = name.lower()
    if name in ("env", "getenv"):
        return f"reads the environment ({name})"
    if name == "map" or name.startswith("map_"):
        return f"reads a map file ({name})"
    if name == "jwt_verify":
        return "may read a certificate file (jwt_verify)"
    if name.startswith("lua."):
        return f"runs Lua code ({name})"
    if name == "debug":
        return "copies request data to HAProxy's event sinks (debug)"
    return None


def unsafe_reason(raw: str) -> str | None:
    """Why `raw` reads files or the environment or runs code, or None when it does not."""
    for needle, reason in _TEXT_RULES:
        if needle in raw:
            return reason
    try:
        # HAProxy's own word splitting once double quotes and backslashes are gone:
        # blanks separate words, single quotes group and are removed ('-'f is -f)
        words = shlex.split(raw)
    except ValueError:
        return "has an unbalanced quote"
    for word in words:
        if word in _FILE_FLAGS:
            return _FILE_FLAGS[word]
    # only the first word is evaluated: the others are flags and literal patterns
    for name in _KEYWORD.findall(words[0] if words else ""):
        if found := _keyword_reason(name):
            return found
    return None


class UnsafeAcl(ConditionError):
    """A raw ACL that needs the operator's `--allow-unsafe-acls`."""


def check_acl_policy(expr: Expr) -> None:
    """Refuse the first raw ACL of `expr` that reads files or the environment or runs code."""
    for raw in raw_acls(expr):
        reason = unsafe_reason(raw)
        if reason:
            raise UnsafeAcl(
                f"raw ACL {shown(raw)} {reason}: refused unless the controller runs with "
                "--allow-unsafe-acls"
            )
