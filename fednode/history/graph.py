"""A text graph of history, drawn as ``git log --graph`` draws it (pure functions, no I/O).

Lanes sit at even character positions (column j at 2*j). After each commit every lane knows the
column it must reach; a lane that moves left travels one character per row, drawn ``/``, and has
arrived once it is at 2*t or 2*t + 1. Merges open one lane per new parent, drawn ``\\``; an octopus
(three or more new lanes) is marked ``*-.``, ``*---.`` and so on, as git marks it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from functools import partial

Node = tuple[Hashable, Sequence[Hashable]]


def topo_order(commits: Sequence[tuple[Hashable, Sequence[Hashable], int]]) -> list[Hashable]:
    """Children before parents, one line of history at a time (git's ``--topo-order``): tips newest
    first, and after a merge the last parent's line before the first parent's, so a side branch is
    drawn whole beside its merge. ``commits`` are (id, parents, time); ties in time go by id."""
    times = {cid: (time, str(cid)) for cid, _, time in commits}
    parents = {cid: [p for p in ps if p in times] for cid, ps, _ in commits}
    waiting = dict.fromkeys(times, 0)  # children not yet shown
    for ps in parents.values():
        for p in ps:
            waiting[p] += 1
    stack = sorted((c for c, n in waiting.items() if n == 0), key=times.__getitem__)  # newest on top
    out: list[Hashable] = []
    while stack:
        cid = stack.pop()
        out.append(cid)
        for p in parents[cid]:
            waiting[p] -= 1
            if waiting[p] == 0:
                stack.append(p)
    return out


def _place(new: list[Hashable], x: Hashable) -> int:
    """The column of ``x`` among the lanes below a commit, a new one on the right if it has none."""
    if x not in new:
        new.append(x)
    return new.index(x)


def _row(chars: dict[int, str]) -> str:
    line = [" "] * (max(chars, default=-1) + 1)
    for pos, ch in chars.items():
        line[pos] = ch
    return "".join(line)


@dataclass
class _Commit:
    """Where one commit sits and where the lanes below it go."""

    idx: int  # the commit's column
    width: int  # lanes above the commit
    new: list[Hashable]  # the lanes below the commit, left to right
    lanes: list[tuple[int, int]]  # (position below this commit's rows, target column)
    targets: dict[int, int]  # where each other lane above goes
    fresh: list[Hashable]  # parents beyond the first, each opening an edge of its own
    skew: int  # 1: a merge whose first parent's lane is on the left sends that edge there at once
    spread: int  # columns the merge adds on its right
    join: int  # 1: the last parent is the lane just right of the commit, and its edge joins it
    shift: int  # characters an octopus first moves the lanes on its right


def _layout(cols: list[Hashable], idx: int, parents: Sequence[Hashable]) -> _Commit:
    new: list[Hashable] = []
    place = partial(_place, new)
    lanes = [(2 * j, place(cols[j])) for j in range(idx)]
    # every further parent gets an edge of its own on the right; one whose lane is already on
    # the left then slides over to it
    fresh = list(dict.fromkeys(p for p in parents[1:] if p not in parents[:1]))
    # a merge whose first parent's lane is on the left sends that edge there at once ('/') and
    # lays its other parents out from its own column on
    skew = int(bool(fresh) and parents[0] in new)
    spread = len(fresh) - skew
    join = int(spread > 0 and idx + 1 < len(cols) and fresh[-1] == cols[idx + 1] and fresh[-1] not in new)
    if parents:
        lanes.append((2 * idx - skew, place(parents[0])))
        for m, p in enumerate(fresh, 1 - skew):
            lanes.append((2 * (idx + m), place(p)))
    for j in range(idx + 1, len(cols)):
        lanes.append((2 * (j + spread - join), place(cols[j])))
    targets = {j: place(cols[j]) for j in range(len(cols)) if j != idx}
    shift = 2 * (spread - 1) if spread >= 2 and idx < len(cols) - 1 else 0
    return _Commit(idx, len(cols), new, lanes, targets, fresh, skew, spread, join, shift)


def _shift_rows(c: _Commit) -> list[str]:
    """An octopus with lanes on its right first moves them out of the way, one character a row."""
    rows = []
    for k in range(c.shift):
        chars = {2 * j: "|" for j in range(c.idx + 1)}
        chars.update({2 * j + k: "\\" if k else "|" for j in range(c.idx + 1, c.width)})
        rows.append(_row(chars))
    return rows


def _lane_char(c: _Commit, j: int, slid: set[int], fanned: int) -> tuple[int, str]:
    """Position and character of lane ``j`` (not the commit's) on the commit's row."""
    if j < c.idx:
        return 2 * j, "/" if j in slid and c.targets.get(j, j) < j else "|"
    if c.shift:
        return 2 * j + c.shift, "|" if c.join else "\\"
    if c.spread == 1 and not c.join and 0 <= fanned < j:
        return 2 * j, "\\"  # the lane still leans right from the merge above, and goes on so
    return 2 * j, "/" if j in slid and not c.fresh and c.targets.get(j, j) < j else "|"


def _commit_row(c: _Commit, slid: set[int], fanned: int) -> str:
    """The commit's own row: '*' in its column, the other lanes as they pass, padded so the text
    after it lines up."""
    chars = dict(_lane_char(c, j, slid, fanned) for j in range(c.width) if j != c.idx)
    chars[2 * c.idx] = "*"
    if c.spread >= 2:  # octopus: a dash over each lane it opens beyond the first, then '.'
        for k in range(1, 2 * (c.spread - 1)):
            chars[2 * c.idx + k] = "-"
        chars[2 * c.idx + 2 * (c.spread - 1)] = "."
    width = 2 * max(c.width + c.spread - c.join, len(c.new))
    return _row(chars).ljust(width)


def _merge_row(c: _Commit) -> str:
    """'|' straight down, '/' to a lane on the left, '\\' to each new lane on the right."""
    idx = c.idx
    chars = {2 * j: "|" for j in range(idx + 1)}
    if c.skew:  # the first parent's edge leaves at once, over the lanes to its column ('_')
        chars[2 * idx - 1] = "/"
        run = range(2 * c.lanes[idx][1] + 3, 2 * idx - 1, 2)
        chars.update(dict.fromkeys(run, "_"))
        if run:
            c.lanes[idx] = (run[0], c.lanes[idx][1])
    for m in range(1, c.spread + 1):
        chars[2 * (idx + m) - 1] = "\\"
    for j in range(idx + 1, c.width):
        if c.join:
            chars[2 * (j + c.spread - 1)] = "|"
        elif c.spread:
            chars[2 * (j + c.spread) - 1] = "\\"
        else:
            chars[2 * j] = "|"
    return _row(chars)


def _collapse_row(lanes: list[tuple[int, int]]) -> tuple[str, list[tuple[int, int]], set[int]]:
    """One row that moves each lane not yet arrived one character left; returns the row, the lanes
    after it and the columns a lane reached by '/'."""
    slid: set[int] = set()
    staying = {2 * t for pos, t in lanes if pos <= 2 * t + 1}
    moved: list[tuple[int, int]] = []
    chars = {pos: "|" for pos in staying}
    horizontal = True  # the first lane to move may run '_' over the lanes it passes
    for pos, t in sorted(lanes):
        if pos <= 2 * t + 1:  # arrived (a lane left of its column, never expected, snaps to it)
            moved.append((2 * t, t))
            continue
        step = pos - 1
        if step in staying:  # a lane stands there: pass it
            step -= 1
        chars[step] = "/"
        run = range(2 * t + 3, pos - 2, 2) if horizontal else range(0)
        horizontal = False
        for k in run:
            chars[k] = "_"
        if run:
            step = run[0]
        moved.append((step, t))
        if step // 2 == t:
            slid.add(t)
    return _row(chars), list(dict.fromkeys(moved)), slid


def graph_lines(commits: Sequence[Node]) -> list[tuple[list[str], str, list[str]]]:
    """For commits in child-before-parent order, return (lines above, graph prefix, lines below)
    for each: the prefix (``"| * "``, padded so the text after it lines up) goes before the commit's
    text; the lines above make room for an octopus, the lines below (``"|\\"``, ``"|/"``) lead to
    its parents."""
    cols: list[Hashable] = []  # the commit each lane waits for, left to right
    slid: set[int] = set()  # columns a lane reached by '/' on the row just drawn
    fanned = -1  # when that row was a merge's '\\' row: the merge's column
    out: list[tuple[list[str], str, list[str]]] = []
    for cid, parents in commits:
        if cid not in cols:
            cols.append(cid)  # a tip: a new lane on the right
        c = _layout(cols, cols.index(cid), parents)
        above = _shift_rows(c)
        prefix = _commit_row(c, slid, fanned)
        below = [_merge_row(c)] if c.fresh else []
        slid, fanned = set(), c.idx if below and c.spread else -1
        lanes = c.lanes
        while any(pos > 2 * t + 1 for pos, t in lanes):  # collapse rows until every lane has arrived
            row, lanes, slid = _collapse_row(lanes)
            fanned = -1
            below.append(row)
        cols = c.new
        out.append((above, prefix, below))
    return out
