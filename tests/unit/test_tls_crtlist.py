"""crt-lists: the rendered file and the live changes that reach the same content."""

from __future__ import annotations

import pytest

from controller.errors import InvalidInput
from controller.runtime.parse import parse_crt_list
from controller.tls.crtlist import CrtList, crt_list_changes, render_crt_list

D, A, B = "/s/certs/main.pem", "/s/certs/a.pem", "/s/certs/b.pem"


def test_render_puts_the_default_first_then_one_line_per_name() -> None:
    crt = CrtList.build(D, {"b.example": B, "a.example": A, "*.a.example": A})
    assert render_crt_list(crt) == (f"{D}\n{A} *.a.example\n{A} a.example\n{B} b.example\n")


@pytest.mark.parametrize(
    ("default", "names", "field"),
    [
        ("certs/a.pem", {}, "default"),
        ("/s/../a.pem", {}, "default"),
        (D, {"A.example": A}, "sni"),
        (D, {"a.example\n": A}, "sni"),
        (D, {"a b": A}, "sni"),
        (D, {"*": A}, "sni"),
        (D, {"a.example": "/s/a b.pem"}, "certificate"),
    ],
)
def test_build_checks_every_string(default: str, names: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        CrtList.build(default, names)
    assert info.value.problems[0]["field"] == field


def observed(text: str) -> list[object]:
    return parse_crt_list(text)  # type: ignore[return-value]


def test_changes_add_missing_names_before_deleting_stale_lines() -> None:
    desired = CrtList.build(D, {"a.example": A, "new.example": A, "b.example": B})
    live = parse_crt_list(
        f"# /s/list\n{D}:1\n{A}:2 a.example\n{B}:3 old.example\n{A}:4 a.example\n"
        f"{B}:5 [verify none] b.example\n{B}:6 b.example !x.example\n"
    )
    changes = crt_list_changes(desired, live)
    assert not changes.default_changed
    assert changes.add == ((B, "b.example"), (A, "new.example"))
    # a stale name, a duplicate, a line with options, a line with two filters
    assert changes.delete == ((B, 3), (A, 4), (B, 5), (B, 6))


def test_the_same_content_needs_no_change() -> None:
    desired = CrtList.build(D, {"a.example": A})
    live = parse_crt_list(f"# /s/list\n{D}:1\n{A}:7 a.example\n")
    assert crt_list_changes(desired, live).empty


@pytest.mark.parametrize("first", [f"{A}:1", f"{D}:1 a.example", f"{D}:1 [alpn h2]", ""])
def test_another_default_needs_a_reload(first: str) -> None:
    desired = CrtList.build(D, {})
    changes = crt_list_changes(desired, parse_crt_list(f"# /s/list\n{first}\n"))
    assert changes.default_changed
