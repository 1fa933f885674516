"""Who controls each repository: the holder of its NFT, read from the chain (issue 14).

Ownership is control: once a repository is bound to a Token-2022 NFT (the program's ``bind_nft``),
its owner is whoever the program last recorded as the NFT's holder (the nft account's ``holder``:
set at bind, by every holder action, by a sale, by ``sync_holder``), not its genesis author. This
task reads the nft accounts (PDA seeds "nft", repo_id) of every repository the node holds or
follows, in one ``accounts_data`` call, at start and every ``[chain] nft_refresh_s`` seconds
(default 30), and records each holder in the store (``NetState.set_controller``), where the
validator, block access, the API and the CLI read it. When the validator refuses an owner-only
message (``Validator.on_not_owner``) the next reading comes early (at most one every
``EARLY_GAP_S``): the chain may have moved since the last one.

A repository's binding is permanent on chain, so an nft account that is absent (a chain that never
saw the binding, an unreachable one) changes nothing here. A plain Token-2022 transfer does not
update the program's record: it takes effect in the daemons once anyone sends ``sync_holder``
(``fednode nft sync``) or the new holder acts on chain. The embedded chain is read only once this
node has used it (no chain, no LiteSVM to start).

When a reading makes this node the owner of a repository it holds (it bought or received the NFT),
``take_over`` signs the repository's membership itself (the list it inherits from the former
holder) and, for a private repository, a key message of a new epoch above every epoch known here
(``routes._repo_keys``): from then on members seal under a key the former holder never had.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from fednode.chain.aio import AsyncChainBackend, ChainUnavailable
from fednode.chain.autoflush import current_config
from fednode.chain.config import chain_section, open_backend
from fednode.chain.program import FederityProgram
from fednode.errors import FednodeError
from fednode.history import repo_id_text
from fednode.logs import log
from fednode.node import Node
from fednode.storage.netstate import NetState
from protocol import chain as layout
from protocol.multiformats import b58encode

if TYPE_CHECKING:
    from trio_typing import TaskStatus

    from fednode.daemon.service import Daemon

NFT_REFRESH_S = 30.0  # [chain] nft_refresh_s: seconds between two readings of the holders
EARLY_GAP_S = 5.0  # an early reading (a refused message) comes at most this often
_EMBEDDED_USED = b"meta/version"  # fednode.chain.embedded: present once the embedded chain holds state

Opener = Callable[[dict[str, Any]], AsyncChainBackend]


def refresh_interval(config: dict[str, Any]) -> float:
    """``[chain] nft_refresh_s``, checked: a one-line FednodeError if it is not a positive number."""
    value = (config.get("chain") or {}).get("nft_refresh_s", NFT_REFRESH_S)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
        raise FednodeError(f"[chain] nft_refresh_s must be a positive number of seconds, not {value!r}")
    return float(value)


class Ownership:
    """The holder-reading task (``run``) and the validator's early-reading hook (``suspect``)."""

    def __init__(self, node: Node, state: NetState, opener: Opener | None = None) -> None:
        self.node = node
        self.state = state
        self.opener: Opener = opener or (lambda config: open_backend(config, node.store))
        self.me = node.identity.public_key
        # told each repository this node has just become the owner of (a purchase, a transfer to it)
        self.on_taken: Callable[[bytes], Awaitable[None]] | None = None
        self.readings = 0  # completed readings of the chain (tests and metrics)
        self._wake = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._last_error: str | None = None

    def suspect(self, repo_id: bytes) -> None:
        """The validator refused an owner-only message for ``repo_id``: read the chain soon.
        Never blocks; safe from the trio thread and from worker threads."""
        try:
            trio.lowlevel.current_task()
        except RuntimeError:  # a worker thread: hand the wake-up to the trio loop
            if self._token is not None:
                self._token.run_sync_soon(self._wake.set)
            return
        self._wake.set()

    def _known(self) -> list[bytes]:
        return sorted({*self.state.local_repos().values(), *self.state.follows()})

    def _embedded_unused(self, config: dict[str, Any]) -> bool:
        if chain_section(config)["backend"] != "embedded":
            return False
        with self.node.store.read() as txn:
            return txn.kv_get("chain", _EMBEDDED_USED) is None

    async def refresh_once(self, config: dict[str, Any] | None = None) -> dict[bytes, bytes]:
        """Read every known repository's nft account and record its holder; returns the repositories
        whose recorded holder changed (repo id -> new holder). Chain errors propagate."""
        config = current_config(self.node) if config is None else config
        repos = self._known()
        if not repos or self._embedded_unused(config):
            return {}
        backend = self.opener(config)
        try:
            program = FederityProgram(backend.program_id)
            datas = await backend.accounts_data([program.nft_address(r) for r in repos])
            slot = await backend.slot() if any(datas) else 0
        finally:
            await backend.aclose()
        changed: dict[bytes, bytes] = {}
        taken: list[bytes] = []
        for repo_id, data in zip(repos, datas, strict=True):
            if not data:
                continue
            try:
                nft = layout.decode_nft(data)
            except ValueError as exc:  # LayoutError: not the program's record; nothing recorded
                log("nft_account_unreadable", "warning", repo=repo_id_text(repo_id), error=str(exc))
                continue
            if nft.repo_id != repo_id:
                continue
            before = self.state.owner(repo_id)
            if self.state.set_controller(repo_id, nft.holder, nft.mint, slot, nft.sale_seq):
                changed[repo_id] = nft.holder
                if nft.holder == self.me and before not in (None, self.me):
                    taken.append(repo_id)
                log("nft_holder_recorded", repo=repo_id_text(repo_id), holder=b58encode(nft.holder),
                    mint=b58encode(nft.mint), sale_seq=nft.sale_seq, slot=slot)  # fmt: skip
        self.readings += 1
        for repo_id in taken:
            if self.on_taken is None:
                break
            try:
                await self.on_taken(repo_id)
            except Exception as exc:  # the record stands; the holder can still sign with 'fednode members'
                log("nft_take_over_failed", "warning", repo=repo_id_text(repo_id), error=f"{type(exc).__name__}: {exc}")
        return changed

    async def _cycle(self) -> float:
        """One guarded reading; the seconds until the next regular one."""
        every = NFT_REFRESH_S
        try:
            config = current_config(self.node)
            every = refresh_interval(config)
            await self.refresh_once(config)
            self._last_error = None
        except Exception as exc:  # an absent chain, a broken config: the daemon goes on, and so does this task
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if error != self._last_error:  # logged once while it lasts: an absent chain is no emergency
                log("nft_holders_unread", "info" if isinstance(exc, ChainUnavailable) else "warning", error=error)
            self._last_error = error
        return every

    async def run(self, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        task_status.started()
        while True:
            every = await self._cycle()
            read_at = trio.current_time()
            with trio.move_on_after(every):
                await self._wake.wait()
            self._wake = trio.Event()  # suspicions raised during the wait are served by the next reading
            await trio.sleep_until(read_at + min(every, EARLY_GAP_S))


async def take_over(daemon: Daemon, repo_id: bytes) -> None:
    """This node now owns ``repo_id``: sign the membership it inherits (and, if private, a new key epoch)."""
    from fednode.daemon.routes import h_members

    state = daemon.state
    if repo_id not in state.local_repos().values():
        return  # followed only: nothing to sign for yet
    inherited = state.membership(repo_id)
    if inherited is not None and inherited.announcer == daemon.node.identity.public_key:
        return
    members = [b58encode(k) for k in inherited.members] if inherited is not None else []
    public = bool(inherited.public) if inherited is not None else False
    done = await h_members(daemon, {"repo": repo_id_text(repo_id), "members": members, "public": public})
    log("nft_taken_over", repo=repo_id_text(repo_id), members=len(members), epoch=done.get("epoch"))
