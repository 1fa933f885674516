"""A text graph of history, like ``git log --graph`` (pure function, no I/O)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence


def graph_lines(commits: Sequence[tuple[Hashable, Sequence[Hashable]]]) -> list[tuple[str, str]]:
    """For commits in child-before-parent order, return (graph prefix, extra line) pairs.

    Each commit gets a prefix such as ``"* | "``; when a commit opens or closes
    lanes, the extra line (``"|\\ "`` or ``"|/ "`` shapes) follows it, else "".
    """
    lanes: list[Hashable | None] = []
    out: list[tuple[str, str]] = []
    for cid, parents in commits:
        if cid in lanes:
            col = lanes.index(cid)
        else:
            lanes.append(cid)
            col = len(lanes) - 1
        # lanes that were waiting for this commit merge into its column
        joined = [i for i, lane in enumerate(lanes) if lane == cid and i != col]
        prefix = " ".join("*" if i == col else ("|" if lane is not None else " ") for i, lane in enumerate(lanes))
        for i in joined:
            lanes[i] = None
        extra = ""
        if parents:
            lanes[col] = parents[0]
            opened = 0
            for p in parents[1:]:
                if p not in lanes:
                    lanes.insert(col + 1 + opened, p)
                    opened += 1
            if opened:
                extra = " ".join("|" for _ in range(col + 1)) + "\\" * opened
        else:
            lanes[col] = None
        if joined and not extra:
            if parents:
                extra = " ".join("|" if lane is not None else " " for lane in lanes[: max(joined)]) + "/"
            else:  # a root: the lanes that met here end
                extra = " ".join("|" if i == col or i in joined else " " for i in range(max(joined))) + "/"
        while lanes and lanes[-1] is None:
            lanes.pop()
        out.append((prefix + " ", extra))
    return out
