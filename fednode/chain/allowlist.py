"""The on-chain member allowlist changed together with the signed network membership: both lists
change, or neither (a failure after the chain changed undoes the on-chain change)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fednode.chain.session import describe_failure
from fednode.errors import FednodeError
from fednode.workflows.membership import MemberChange, unchanged_text
from protocol.multiformats import b58encode

if TYPE_CHECKING:
    from fednode.chain.anchoring import Anchorer
    from fednode.history import RepoInfo


async def apply_on_chain(a: Anchorer, repo: RepoInfo, change: MemberChange,
                         publish: Callable[[], str] | None) -> list[str]:
    """Change the on-chain allowlist, then the network membership (``publish``: None when it stays);
    what was done, in lines. The repository must be on chain and owned by this node. A failure after
    the chain changed undoes the on-chain change: both lists change, or neither."""
    from solders.pubkey import Pubkey

    record = await a.repo_record(repo.repo_id)
    if record is None:
        raise FednodeError(f"repository {repo.name} is not on chain: anchor its genesis first "
                           f"('fednode anchor {repo.name}:{repo.genesis}'); nothing was changed")
    if not await a.holds(record):  # the owner; for an NFT-bound repository, the NFT's holder
        raise FednodeError(f"only the on-chain owner {b58encode(await a.controller(record))} changes the members "
                           f"of {repo.name}; nothing was changed")
    todo = [raw for raw in change.addresses if await a.is_member(repo.repo_id, raw) != change.add]
    if not todo and publish is None:
        return [f"nothing to change: {unchanged_text(change)}"]
    done: list[bytes] = []
    try:
        for raw in todo:
            await a.set_member(repo, Pubkey.from_bytes(raw), change.add)
            done.append(raw)
        lines = [publish()] if publish else ["network: unchanged"]
    except Exception as exc:
        raise FednodeError(f"{describe_failure(exc)}; {await _undo(a, repo, done, change.add)}") from None
    verb, already = ("added", "members") if change.add else ("removed", "absent")
    skipped = len(change.addresses) - len(todo)
    return [*lines, f"chain: {verb} {len(todo)} member(s)" + (f" ({skipped} already {already})" if skipped else "")]


async def _undo(a: Anchorer, repo: RepoInfo, done: list[bytes], add: bool) -> str:
    """Reverse the on-chain changes already made; what is true afterwards, in words."""
    from solders.pubkey import Pubkey

    if not done:
        return "nothing was changed"
    left = []
    for raw in reversed(done):
        try:
            await a.set_member(repo, Pubkey.from_bytes(raw), not add)
        except Exception:  # the chain refused the undo too: say which address stays changed
            left.append(b58encode(raw))
    if left:
        return (f"the on-chain allowlist stays changed for {', '.join(left)} (undo with 'fednode chain members "
                f"{'remove' if add else 'add'}'); the network membership was not changed")
    return f"the on-chain change was undone for {len(done)} member(s); nothing was changed"
