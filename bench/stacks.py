"""Where the controller's time goes: top costs in py-spy's raw (collapsed) stacks.

`python -m bench.scale --profile DIR` writes one file per controller process
(`controller-<size>-start.txt`: the start; `controller-<size>-run.txt`: the adopting controller
through every measured row). This lists the functions with the largest share of the samples
that pass through `--under` (a substring of a frame, e.g. `patch_weights` or `Engine.start`):
*inclusive* (the function or anything it calls) and *self* (the function's own code).
Run: `.venv/bin/python -m bench.stacks FILE [--under FRAME] [--top 10]`.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

from bench.common import markdown_table

_LINE = re.compile(r":\d+\)$")


def frame_name(frame: str) -> str:
    """`Engine.change (controller/engine.py:142)` → `Engine.change (controller/engine.py)`."""
    return _LINE.sub(")", frame)


def read_stacks(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks.append(([frame_name(f) for f in frames.split(";")], int(count)))
    return stacks


def top_costs(stacks: list[tuple[list[str], int]], under: str, top: int) -> tuple[int, str]:
    """(samples under the frame, a table of the top functions by inclusive share)."""
    chosen = [(frames, n) for frames, n in stacks if any(under in f for f in frames)]
    total = sum(n for _, n in chosen)
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, n in chosen:
        start = next(i for i, f in enumerate(frames) if under in f)
        for frame in set(frames[start:]):
            inclusive[frame] += n
        own[frames[-1]] += n
    rows = [
        [name, f"{count / total:.1%}", f"{own[name] / total:.1%}"]
        for name, count in inclusive.most_common(top)
    ]
    self_rows = [[name, f"{count / total:.1%}"] for name, count in own.most_common(top)]
    text = "\n\n".join([
        markdown_table(["function (inclusive)", "inclusive", "self"], rows),
        markdown_table(["function (self)", "self"], self_rows),
    ])
    return total, text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stacks", description=__doc__)
    parser.add_argument("file", type=Path)
    parser.add_argument("--under", default="", help="a substring of a frame ('' = all)")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args(argv)
    stacks = read_stacks(args.file)
    total, table = top_costs(stacks, args.under, args.top)
    everything = sum(n for _, n in stacks)
    print(f"{total} of {everything} samples pass through {args.under or 'anything'!r}\n")
    print(table)


if __name__ == "__main__":
    main()
