"""A text graph of history, drawn as ``git log --graph`` draws it (pure functions, no I/O).

Lanes sit at even character positions (column j at 2*j). After each commit every lane knows the
column it must reach; a lane that moves left travels one character per row, drawn ``/``, and has
arrived once it is at 2*t or 2*t + 1. Merges open one lane per new parent, drawn ``\\``; an octopus
(three or more new lanes) is marked ``*-.``, ``*---.`` and so on, as git marks it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
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
        idx = cols.index(cid)
        new: list[Hashable] = []  # the lanes below this commit
        place = partial(_place, new)
        lanes: list[tuple[int, int]] = []  # (position below this commit's rows, target column)
        for j in range(idx):
            lanes.append((2 * j, place(cols[j])))
        # every further parent gets an edge of its own on the right; one whose lane is already on
        # the left then slides over to it
        fresh = list(dict.fromkeys(p for p in parents[1:] if p not in parents[:1]))
        # a merge whose first parent's lane is on the left sends that edge there at once ('/') and
        # lays its other parents out from its own column on
        skew = int(bool(fresh) and parents[0] in new)
        spread = len(fresh) - skew  # columns the merge adds on its right
        # the last parent may be the lane just right of the commit: its edge joins that lane
        join = int(spread > 0 and idx + 1 < len(cols) and fresh[-1] == cols[idx + 1] and fresh[-1] not in new)
        if parents:
            lanes.append((2 * idx - skew, place(parents[0])))
            for m, p in enumerate(fresh, 1 - skew):
                lanes.append((2 * (idx + m), place(p)))
        for j in range(idx + 1, len(cols)):
            lanes.append((2 * (j + spread - join), place(cols[j])))
        targets = {j: place(cols[j]) for j in range(len(cols)) if j != idx}  # where each other lane goes

        # an octopus with lanes on its right first moves them out of the way, one character a row
        above: list[str] = []
        shift = 2 * (spread - 1) if spread >= 2 and idx < len(cols) - 1 else 0
        for k in range(shift):
            chars = {2 * j: "|" for j in range(idx + 1)}
            chars.update({2 * j + k: "\\" if k else "|" for j in range(idx + 1, len(cols))})
            above.append(_row(chars))

        # the commit's row
        chars = {}
        for j in range(len(cols)):
            if j < idx:
                chars[2 * j] = "/" if j in slid and targets.get(j, j) < j else "|"
            elif j > idx and shift:
                chars[2 * j + shift] = "|" if join else "\\"
            elif j > idx and spread == 1 and not join and 0 <= fanned < j:
                chars[2 * j] = "\\"  # the lane still leans right from the merge above, and goes on so
            elif j > idx:
                chars[2 * j] = "/" if j in slid and not fresh and targets.get(j, j) < j else "|"
        chars[2 * idx] = "*"
        if spread >= 2:  # octopus: a dash over each lane it opens beyond the first, then '.'
            for k in range(1, 2 * (spread - 1)):
                chars[2 * idx + k] = "-"
            chars[2 * idx + 2 * (spread - 1)] = "."
        width = 2 * max(len(cols) + spread - join, len(new))
        prefix = _row(chars).ljust(width)

        below: list[str] = []
        if fresh:  # the merge row: '|' straight down, '/' to a lane on the left, '\\' to each new lane on the right
            chars = {2 * j: "|" for j in range(idx + 1)}
            if skew:  # the first parent's edge leaves at once, over the lanes to its column ('_')
                chars[2 * idx - 1] = "/"
                run = range(2 * lanes[idx][1] + 3, 2 * idx - 1, 2)
                chars.update(dict.fromkeys(run, "_"))
                if run:
                    lanes[idx] = (run[0], lanes[idx][1])
            for m in range(1, spread + 1):
                chars[2 * (idx + m) - 1] = "\\"
            for j in range(idx + 1, len(cols)):
                if join:
                    chars[2 * (j + spread - 1)] = "|"
                elif spread:
                    chars[2 * (j + spread) - 1] = "\\"
                else:
                    chars[2 * j] = "|"
            below.append(_row(chars))
        slid, fanned = set(), idx if below and spread else -1
        while any(pos > 2 * t + 1 for pos, t in lanes):  # collapse rows until every lane has arrived
            slid, fanned = set(), -1
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
            below.append(_row(chars))
            lanes = list(dict.fromkeys(moved))
        cols = new
        out.append((above, prefix, below))
    return out
