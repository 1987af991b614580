"""Summaries of py-spy ``--format raw`` profiles (collapsed stacks), as written by
``run.py --profile DIR``: the functions with the most samples, inclusive and self.

    python tests/benchmarks/profile_summary.py DIR/sep10-*.txt [--top 25] [--grep kyc_host]

Each line of a raw profile is ``frame;frame;...;frame COUNT`` (outermost first), a frame being
``function (file:line)``. Inclusive counts a function once per stack it appears in.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")
_LINENO = re.compile(r":\d+\)$")


def frames_of(stack: str) -> list[str]:
    """Frames without line numbers, so one function is one entry."""
    return [_LINENO.sub(")", f.strip()) for f in stack.split(";") if f.strip()]


def summarize(paths: list[Path], top: int, grep: str | None) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            match = _LINE.match(line)
            if not match:
                continue
            count = int(match.group(2))
            frames = frames_of(match.group(1))
            if not frames:
                continue
            total += count
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
    if not total:
        return "no samples\n"
    lines = [f"{total} samples in {len(paths)} file(s)", "", "inclusive %  function"]
    shown = 0
    for frame, count in inclusive.most_common():
        if grep and grep not in frame:
            continue
        if frame.startswith(("process ", "thread ")):
            continue
        lines.append(f"{100 * count / total:10.1f}  {frame}")
        shown += 1
        if shown >= top:
            break
    lines += ["", "self %      function"]
    for frame, count in own.most_common(top):
        lines.append(f"{100 * count / total:10.1f}  {frame}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--grep", help="only inclusive entries containing this text")
    args = parser.parse_args(argv)
    sys.stdout.write(summarize(args.paths, args.top, args.grep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
