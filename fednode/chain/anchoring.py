"""Anchoring fednode commits on chain: queue (outbox), send in order, verify, manage members.

One code path over any AsyncChainBackend. The node's wallet is its identity key: it signs the
transactions, and the Ed25519 precompile instruction carries the commit's own stored signature
over its commit hash. Instructions carry the commit's body digest, kind and parent hashes; the
program recomputes the commit hash from them with the signer as author, so only a commit's
author can anchor it. Program rules this follows (programs/README.md): the genesis author creates
the repository on chain and owns it (``create_repo`` carries the genesis' body digest, checked to
hash with the owner as author to the repository id, and the genesis commit's own signature over
it); members anchor their commits; merges go through ``merge``, which only the owner may sign.

NFT-bound repositories (issue 14: ownership is control): once ``bind_nft`` has set the repo's mint,
"owner" on chain means "holds the NFT": this node acts as owner exactly when its associated token
account of the mint (``token2022.associated_token_address(wallet, mint)``) holds it (amount 1, not
frozen), and every holder-gated instruction it sends (add_member, remove_member, merge,
anchor_commit) carries the four trailing NFT accounts (``NftRef(mint, that token account)``; a
member's anchor_commit carries them too, its token slot unused). Offline, the holder the daemon last
read (``NetState.controller``) stands in for the chain.

Repositories that require update proofs (issue 15; ``fednode.zk.policy`` in the genesis settings): the
create_repo item also writes the policy's verifying key and seals it (``write_vk``, ``seal_vk``), so the
program enforces the policy; an anchor item of an update that carries a proof is followed by
``prove_commit``. Both are replays of what the chain already holds when re-run after a crash (written
chunks are skipped, a sealed key or a PROVEN record counts as done). A policy that names a remainder key
(``rvk``) gets it written and sealed the same way (``write_rvk``, ``seal_rvk``), and an anchored FedAvg merge
that carries C(d), C(r) and its remainder proof is followed by ``prove_merge``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from solders.hash import Hash
from solders.instruction import Instruction
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import Transaction

from fednode.chain import outbox
from fednode.chain.aio import AsyncChainBackend, ChainId, ChainUnavailable
from fednode.chain.backend import ChainError, TxResult
from fednode.chain.program import FederityProgram, NftRef, ed25519_proof
from fednode.chain.zkanchor import (
    NO_ZK,
    ZkPair,
    keys_to_seal,
    merge_weights,
    provable_merge,
    to_prove,
    valid_proof,
    zk_commitments,
)
from fednode.errors import FednodeError
from fednode.history import History, RepoInfo
from fednode.identity import Identity
from fednode.lazy import lazy_import
from fednode.logs import log
from fednode.storage.netstate import NetState
from fednode.zk.curve import ZkError
from protocol import chain as layout
from protocol import token2022
from protocol.chain import ErrorCode, Kind
from protocol.multiformats import CID, b58encode
from protocol.objects import Commit

if TYPE_CHECKING:
    from fednode.zk import policy as zpol
else:
    zpol = lazy_import("fednode.zk.policy")  # numpy and the curve code: only for repositories with a policy

DB = "chain"
_ANCHORED = b"anchored/"  # + repo_id + commit_hash -> json {cid, index, slot, signature, fee, cu}
_MEMBER = b"member/"  # + repo_id + member: members this node added (for `members list`)
PACKET_DATA_SIZE = 1232  # bytes: the most a Solana transaction may take on the wire
MIN_BALANCE = 100_000_000  # lamports; below this a faucet-backed node tops itself up
AIRDROP = 2_000_000_000
# Said wherever another node's anchors are missing from an embedded chain: it is this node's alone.
SHARED_CHAIN_HINT = ("this node anchors to its own embedded chain, which no other node sees: to check other "
                     "members' anchors, every node must use one chain: run 'fednode devchain' and "
                     "'fednode chain use rpc --url http://127.0.0.1:8899' on each node, or use a cluster URL")


@dataclass
class FlushResult:
    sent: list[dict[str, object]] = field(default_factory=list)
    remaining: int = 0
    error: str | None = None
    unavailable: bool = False
    held: int = 0  # queued for another chain (or for none): not sent here


def _hex(b: bytes) -> str:
    return b.hex()


def _short(cid: CID | str) -> str:
    return str(cid)[:16]


def explain(exc: ChainError) -> str:
    """A program error with its name from protocol.chain, e.g. ``... error 13 (NOT_A_MEMBER)``."""
    if exc.code is None:
        return str(exc)
    try:
        name = ErrorCode(exc.code).name
    except ValueError:
        name = "unknown"
    return f"instruction {exc.index} failed: program error {exc.code} ({name})"


def _head_move(repo: layout.RepoAccount | None, branch: str | None, parents: list[bytes], as_owner: bool) -> bytes:
    """The branch an anchor may move without being rejected, else zero (anchor, move nothing):
    an existing branch only fast-forwards; only the owner creates one (program rules)."""
    if branch is None or repo is None:
        return layout.ZERO32
    key = layout.branch_hash(branch)
    head = repo.branches.get(key)
    if (head is None and as_owner and len(repo.branches) < layout.MAX_BRANCHES) or head in parents:
        return key
    return layout.ZERO32


def _tx_bytes(ixs: list[Instruction], signer: Identity) -> int:
    tx = Transaction([signer.keypair], Message(ixs, signer.keypair.pubkey()), Hash.default())
    return len(bytes(tx))


@dataclass(frozen=True)
class _ChainView:
    """What ``enqueue`` knows of a repository on chain (or, offline, from this node's records)."""

    chain_repo: layout.RepoAccount | None
    anchored: set[bytes]  # commit hashes with an on-chain record
    member: bool  # whether this node may anchor there
    online: bool
    repo_exists: bool
    owner: bytes  # who acts as owner there: the NFT holder of a bound repository, else repo.owner
    controls: bool  # whether this node is that owner (holds the NFT, for a bound repository)
    # anchored, not PROVEN: updates in a repository that requires proofs, merges with C(d) in one with a
    # remainder key
    unproven: frozenset[bytes] = frozenset()


class Anchorer:
    def __init__(self, history: History, identity: Identity, backend: AsyncChainBackend) -> None:
        self.history = history
        self.store = history.store
        self.identity = identity
        self.backend = backend
        self.program = FederityProgram(backend.program_id)
        self.me = identity.public_key

    # --- chain reads --------------------------------------------------------------------------

    async def repo_record(self, repo_id: bytes) -> layout.RepoAccount | None:
        data = await self.backend.account_data(self.program.repo_address(repo_id))
        return layout.decode_repo(data) if data else None

    async def commit_records(self, repo_id: bytes, hashes: Sequence[bytes]) -> list[layout.CommitAccount | None]:
        datas = await self.backend.accounts_data([self.program.commit_address(repo_id, h) for h in hashes])
        return [layout.decode_commit(d) if d else None for d in datas]

    async def is_member(self, repo_id: bytes, member: bytes) -> bool:
        return bool(await self.backend.account_data(self.program.member_address(repo_id, Pubkey.from_bytes(member))))

    def nft_ref(self, repo: layout.RepoAccount | None) -> NftRef | None:
        """The trailing NFT accounts this node passes for ``repo`` (None: not NFT-bound)."""
        if repo is None or repo.mint == layout.ZERO32:
            return None
        mint = Pubkey.from_bytes(repo.mint)
        return NftRef(mint, token2022.associated_token_address(self.identity.keypair.pubkey(), mint))

    async def holds(self, repo: layout.RepoAccount | None) -> bool:
        """Whether this node may act as ``repo``'s owner: its owner when unbound; when bound, its
        token account of the mint holds the NFT (the program's holder check: amount 1, not frozen)."""
        ref = self.nft_ref(repo)
        if repo is None or ref is None:
            return repo is not None and repo.owner == self.me
        data = await self.backend.account_data(ref.holder_token)
        try:
            account = token2022.decode_token_account(data) if data else None
        except token2022.TokenLayoutError:
            return False
        return account is not None and account.mint == ref.mint and bytes(account.owner) == self.me \
            and account.amount == 1 and account.state == token2022.STATE_INITIALIZED  # fmt: skip

    async def controller(self, repo: layout.RepoAccount) -> bytes:
        """Who acts as ``repo``'s owner, for messages: the holder the program recorded, else repo.owner."""
        if repo.mint == layout.ZERO32:
            return repo.owner
        data = await self.backend.account_data(self.program.nft_address(repo.repo_id))
        try:
            return layout.decode_nft(data).holder if data else repo.owner
        except ValueError:
            return repo.owner

    # --- queueing -----------------------------------------------------------------------------

    def _locally_anchored(self, repo_id: bytes, here: ChainId) -> set[bytes]:
        """Commits this node anchored on ``here`` (records from before chains were recorded count)."""
        found = set()
        with self.store.read() as txn:
            prefix = _ANCHORED + repo_id
            for k, v in txn.kv_items(DB, prefix):
                chain = ChainId.from_json(json.loads(v).get("chain"))
                if chain is None or chain.matches(here):
                    found.add(k[len(prefix):])
        return found

    def _embedded_hint(self) -> str:
        return f"; {SHARED_CHAIN_HINT}" if self.backend.kind == "embedded" else ""

    async def enqueue(self, repo: RepoInfo, cid: CID, branch: str) -> list[outbox.OutboxItem]:
        """Queue ``cid`` and its unanchored ancestors, parents first. Raises FednodeError (and
        queues nothing) for what can never succeed: foreign or owner-only commits."""
        layout.branch_hash(branch)
        ancestry = list(reversed(list(self.history.walk([cid]))))  # walk yields children first
        rid = _hex(repo.repo_id)
        here = await self.backend.chain_id(required=False)  # what new items are bound to
        with self.store.read() as txn:  # items waiting for another chain do not count as queued here
            queued = {(i.op, i.commit_hash) for i in outbox.items(txn)
                      if i.repo_id == rid and i.placement(here) == "this"}  # fmt: skip
        genesis_author = self.history.load_commit(repo.genesis).author
        view = await self._chain_view(repo, ancestry, here, genesis_author)
        first_parents = self._first_parents(cid)  # REV's own line: these move the branch head
        new: list[outbox.OutboxItem] = []
        if ("create_repo", "") not in queued and (not view.repo_exists or self._key_missing(repo, view)):
            new += self._create_repo_item(repo, genesis_author, view.online, here)
        for c, cm in ancestry:
            h = cm.commit_hash()
            if ("anchor", _hex(h)) in queued:
                continue
            if h in view.anchored:  # done, unless it is an update (or merge) this node can still prove
                if h in view.unproven and cm.author == self.me and (cm.kind != "merge" or view.controls) \
                        and valid_proof(repo, cm):
                    new.append(outbox.OutboxItem(0, "anchor", rid, _hex(h), str(c), cm.kind, chain=here.to_json()))
                continue
            if self._anchorable(repo, c, cm, branch, view):
                new.append(outbox.OutboxItem(0, "anchor", rid, _hex(h), str(c), cm.kind,
                                             branch if cm.kind == "merge" or c in first_parents else None,
                                             chain=here.to_json()))  # fmt: skip
        if new:
            self._requeue(rid, ancestry, new)
        return new

    async def _chain_view(self, repo: RepoInfo, ancestry: list[tuple[CID, Commit]], here: ChainId,
                          genesis_author: bytes) -> _ChainView:  # fmt: skip
        """The chain, when reachable, is the truth; offline, this node's records stand in for it
        (the owner: the NFT holder the daemon last read, else the genesis author).
        Online, an anchored record that does not match its commit raises FednodeError."""
        try:
            chain_repo = await self.repo_record(repo.repo_id)
            records = await self.commit_records(repo.repo_id, [cm.commit_hash() for _, cm in ancestry])
            anchored = {cm.commit_hash() for (_, cm), r in zip(ancestry, records, strict=True) if r is not None}
            unproven = frozenset(r.commit_hash for r in records if r is not None and to_prove(r, chain_repo))
            for (c, cm), r in zip(ancestry, records, strict=True):
                if r is not None and (bad := self._check(c, cm, r, repo.repo_id)):
                    raise FednodeError(f"{bad[0]}; see 'fednode chain verify'")
            if chain_repo is None:
                return _ChainView(None, anchored, True, True, False, genesis_author, genesis_author == self.me)
            controls = await self.holds(chain_repo)
            owner = self.me if controls else await self.controller(chain_repo)
            member = controls or await self.is_member(repo.repo_id, self.me)
            return _ChainView(chain_repo, anchored, member, True, True, owner, controls, unproven)
        except ChainUnavailable:
            anchored = self._locally_anchored(repo.repo_id, here)
            owner = NetState(self.store).owner(repo.repo_id) or genesis_author
            return _ChainView(None, anchored, True, online=False, repo_exists=repo.repo_id in anchored,
                              owner=owner, controls=owner == self.me)  # fmt: skip

    def _create_repo_item(self, repo: RepoInfo, genesis_author: bytes, online: bool,
                          here: ChainId) -> list[outbox.OutboxItem]:  # fmt: skip
        """The create_repo item when this node is the genesis author; none when another node must
        create it (refused online: it cannot have happened; offline it may have already)."""
        if genesis_author == self.me:
            return [outbox.OutboxItem(0, "create_repo", _hex(repo.repo_id), cid=str(repo.genesis),
                                      chain=here.to_json())]  # fmt: skip
        if online:
            raise FednodeError(f"repository {repo.name} is not on chain yet: only its genesis author "
                               f"{b58encode(genesis_author)} can create it there (the program checks their "
                               f"signature over the repository id){self._embedded_hint()}")  # fmt: skip
        return []

    def _key_missing(self, repo: RepoInfo, view: _ChainView) -> bool:
        """An existing repository whose genesis requires proofs (or names a remainder key) but whose key this
        node (its creator and controller) has not sealed yet: an older client created it, or a crash came
        between the two."""
        if view.chain_repo is None or not view.controls or "zk" not in repo.settings \
                or view.chain_repo.owner != self.me:
            return False
        try:
            policy = zpol.policy_of(repo.settings)
        except ZkError:
            return False
        return policy is not None and bool(keys_to_seal(policy, view.chain_repo))

    def _anchorable(self, repo: RepoInfo, c: CID, cm: Commit, branch: str, view: _ChainView) -> bool:
        """Whether this node queues the unanchored commit ``c``; FednodeError where it never could."""
        if cm.author != self.me:
            if view.online:
                raise FednodeError(f"commit {_short(c)} by {b58encode(cm.author)} is not anchored: "
                                   "only its author can anchor it (its signature is the proof)"
                                   f"{self._embedded_hint()}")  # fmt: skip
            return False  # offline: its author may anchor it before we flush
        if cm.kind == "merge" and not view.controls:
            raise FednodeError(f"merge commit {_short(c)} can only be anchored by the repository owner "
                               f"{b58encode(view.owner)}{self._holder_note(view.chain_repo)}: the program's "
                               "merge instruction is owner-signed")  # fmt: skip
        if cm.kind == "merge" and (size := self._tx_size(repo.repo_id, cm, branch, view.chain_repo)) > PACKET_DATA_SIZE:
            raise FednodeError(f"merge commit {_short(c)} has {len(cm.parents)} parents: its anchoring transaction "
                               f"would be {size} bytes, over Solana's {PACKET_DATA_SIZE}-byte limit (about 9 "
                               "parents fit)")
        if not view.controls and not view.member:
            raise FednodeError(f"this node ({self.identity.address}) is not a member of {repo.name} on chain: "
                               f"ask the owner to run 'fednode chain members add {self.identity.address}'"
                               f"{self._embedded_hint()}")  # fmt: skip
        return True

    def _requeue(self, rid: str, ancestry: list[tuple[CID, Commit]], new: list[outbox.OutboxItem]) -> None:
        """Re-sequence this repository's queue with ``new``: an item queued earlier may depend on what
        is queued now (e.g. the chain was reset), so parents-first must hold across both."""
        with self.store.write() as txn:
            old = [i for i in outbox.items(txn) if i.repo_id == rid]
            for item in old:
                outbox.remove(txn, item)
            position = {_hex(cm.commit_hash()): n for n, (_, cm) in enumerate(ancestry)}
            last = len(position)
            merged = sorted(old + new, key=lambda i: (i.op != "create_repo", position.get(i.commit_hash, last)))
            for item in merged:
                outbox.append(txn, item)

    def _holder_note(self, repo: layout.RepoAccount | None) -> str:
        return " (the holder of its NFT)" if self.nft_ref(repo) is not None else ""

    def _tx_size(self, repo_id: bytes, commit: Commit, branch: str, repo: layout.RepoAccount | None) -> int:
        return _tx_bytes(self._anchor_ixs(repo_id, commit, branch, repo, holds=True, zk=NO_ZK), self.identity)

    def _first_parents(self, cid: CID) -> set[CID]:
        line, current = set(), cid
        while True:
            line.add(current)
            parents = self.history.load_commit(current).parents
            if not parents:
                return line
            current = parents[0]

    def queue(self) -> list[outbox.OutboxItem]:
        with self.store.read() as txn:
            return outbox.items(txn)

    # --- sending ------------------------------------------------------------------------------

    async def ensure_funds(self) -> None:
        if self.backend.faucet and await self.backend.balance(self.identity.keypair.pubkey()) < MIN_BALANCE:
            await self.backend.airdrop(self.identity.keypair.pubkey(), AIRDROP)

    async def send(self, ixs: list[Instruction]) -> TxResult:
        return await self.backend.send(ixs, [self.identity.keypair])

    async def flush(self) -> FlushResult:
        """Send queued items in order. A rejected item stays queued with its error and holds back
        the later items of its repository (they may depend on it); other repositories go on.
        An unreachable chain stops the flush: everything stays queued for the next one."""
        result = FlushResult()
        blocked: set[str] = set()
        current: outbox.OutboxItem | None = None
        here = ChainId(None, str(self.backend.program_id), self.backend.endpoint)
        try:
            try:
                here = await self.backend.chain_id()  # only items meant for this chain go out
            except ChainError as exc:  # an endpoint that cannot say which chain it is gets nothing
                result.error, result.remaining = str(exc), len(self.queue())
                result.held = result.remaining
                return result
            # Items leave the queue only here; later arrivals wait for the next flush.
            pending = [i for i in self.queue() if i.placement(here) == "this"]
            if pending:
                await self.ensure_funds()
            for current in pending:
                if current.repo_id in blocked:
                    continue
                try:
                    self._bind(current, here)
                    result.sent.append(await self._execute(current, here))
                except ChainError as exc:
                    blocked.add(current.repo_id)
                    result.error = result.error or f"#{current.seq} {current.op} {current.cid[:16]}: {explain(exc)}"
                    self._failed(current, explain(exc))
        except ChainUnavailable as exc:
            result.error, result.unavailable = str(exc), True
            head = current or next((i for i in self.queue() if i.placement(here) == "this"), None)
            if head is not None:
                self._failed(head, str(exc))
        left = self.queue()
        result.remaining = len(left)
        result.held = sum(1 for i in left if i.placement(here) != "this")
        return result

    def _bind(self, item: outbox.OutboxItem, here: ChainId) -> None:
        """An item bound to an endpoint only (queued while it was unreachable) is bound to the genesis
        hash it answers with now, before anything is sent."""
        target = item.target()
        if target is not None and target.genesis is None and here.genesis:
            item.chain = here.to_json()
            with self.store.write() as txn:
                if txn.kv_get(outbox.DB, item.key()) is not None:
                    outbox.save(txn, item)

    def retarget(self, here: ChainId, seqs: Sequence[int] | None = None) -> list[outbox.OutboxItem]:
        """Bind queued items (``seqs``, or every one not meant for ``here``) to ``here``; returns them.
        Unknown sequence numbers raise FednodeError and change nothing."""
        with self.store.write() as txn:
            queued = {i.seq: i for i in outbox.items(txn)}
            if seqs is None:
                chosen = [i for i in queued.values() if i.placement(here) != "this"]
            else:
                missing = [s for s in seqs if s not in queued]
                if missing:
                    raise FednodeError(f"no queued item #{missing[0]} (see 'fednode chain status')")
                chosen = [queued[s] for s in dict.fromkeys(seqs)]
            for item in chosen:
                item.chain, item.attempts, item.error = here.to_json(), 0, None
                outbox.save(txn, item)
        return chosen

    def _failed(self, item: outbox.OutboxItem, error: str) -> None:
        with self.store.write() as txn:
            if txn.kv_get(outbox.DB, item.key()) is not None:
                item.attempts += 1
                item.error = error
                outbox.save(txn, item)

    async def _execute(self, item: outbox.OutboxItem, here: ChainId) -> dict[str, object]:
        repo_id = bytes.fromhex(item.repo_id)
        info: dict[str, object] = {"seq": item.seq, "op": item.op, "cid": item.cid}
        if item.op == "create_repo":
            existing = await self.repo_record(repo_id)
            if existing is not None and existing.owner != self.me:
                raise ChainError(f"repository already created on chain by {b58encode(existing.owner)}")
            if existing is None:
                try:
                    created = await self.send(self._create_repo_ixs(repo_id, item.cid))
                    info.update(signature=created.signature, fee=created.fee, compute_units=created.compute_units)
                except ChainError as exc:  # another flush (CLI or daemon) created it first: that is ours too
                    again = await self.repo_record(repo_id) if exc.code == ErrorCode.REPO_ALREADY_EXISTS else None
                    if again is None or again.owner != self.me:
                        raise
            sealed = await self._seal_key(repo_id, item.cid)
            if sealed:
                info["key_transactions"] = sealed
            with self.store.write() as txn:
                outbox.remove(txn, item)
            return info
        cid = CID.parse(item.cid)
        commit = self.history.load_commit(cid)
        h = bytes.fromhex(item.commit_hash)
        record = (await self.commit_records(repo_id, [h]))[0]
        tx: TxResult | None = None
        if record is None:  # not a replay after a crash: send it
            chain_repo = await self.repo_record(repo_id)
            holds = await self.holds(chain_repo)
            zk = await self._zk_to_send(repo_id, cid, commit)
            try:
                tx = await self.send(self._anchor_ixs(repo_id, commit, item.branch, chain_repo, holds, zk=zk))
            except ChainError as exc:
                # Another flush of this queue (the CLI's and the daemon's may overlap) anchored it
                # between our read and our send: the record it left is checked like any replay's.
                if exc.code != ErrorCode.COMMIT_ALREADY_ANCHORED:
                    raise
            record = (await self.commit_records(repo_id, [h]))[0]
            if record is None:
                raise ChainError("transaction confirmed but the commit record is missing")
            if tx is None and (bad := self._check(cid, commit, record, repo_id)):
                raise ChainError(f"anchored meanwhile by another flush, but {bad[0]}")
        proved = await self._prove(repo_id, cid, commit, record)
        if proved is not None:
            info.update(prove_signature=proved.signature, prove_compute_units=proved.compute_units)
        entry = {"cid": item.cid, "index": record.index, "slot": record.slot,
                 "signature": tx.signature if tx else None, "fee": tx.fee if tx else 0,
                 "compute_units": tx.compute_units if tx else 0}  # fmt: skip
        with self.store.write() as txn:
            txn.kv_put(DB, _ANCHORED + repo_id + h, json.dumps({**entry, "chain": here.to_json()}).encode())
            outbox.remove(txn, item)
        info.update(entry)
        return info

    async def _seal_key(self, repo_id: bytes, genesis_cid: str) -> list[str]:
        """Write and seal the genesis policy's verifying key on chain (write_vk, seal_vk), unless the
        repository requires proofs already, and its remainder key (write_rvk, seal_rvk) when it names one;
        the transactions' signatures. A replay skips the chunks the record holds; where this node cannot do
        it (not the controller any more, a malformed policy) it logs one line and leaves it to
        ``fednode chain verify`` to report."""
        try:
            genesis = self.history.load_commit(CID.parse(genesis_cid) if genesis_cid
                                               else self.history.repo_by_id(repo_id).genesis)  # fmt: skip
            settings = genesis.info.get("settings") or {}
            if "zk" not in settings:
                return []
            policy = zpol.policy_of(settings)
        except (FednodeError, ValueError, ZkError) as exc:
            log("zk_key_not_set", level="warning", repo=_hex(repo_id)[:16], why=str(exc))
            return []
        chain_repo = await self.repo_record(repo_id)
        keys = keys_to_seal(policy, chain_repo) if policy is not None and chain_repo is not None else []
        if not keys:
            return []
        assert chain_repo is not None
        if not await self.holds(chain_repo):
            log("zk_key_not_set", level="warning", repo=_hex(repo_id)[:16],
                why="this node no longer controls the repository: its holder must seal the key")
            return []
        owner = self.identity.keypair.pubkey()
        sent = []
        for vk, bound2, remainder in keys:
            record = await self.zkvk_record(repo_id, remainder)
            written = record.vk if record is not None else b""
            for ixs in self.program.set_vk(owner, repo_id, vk, bound2, nft=self.nft_ref(chain_repo), written=written,
                                           remainder=remainder):  # fmt: skip
                try:
                    sent.append((await self.send(ixs)).signature)
                except ChainError:
                    again = await self.repo_record(repo_id)  # another flush sealed it meanwhile: done
                    if again is None or not (again.has_remainder_key if remainder else again.requires_proofs):
                        raise
        return sent

    async def zkvk_record(self, repo_id: bytes, remainder: bool = False) -> layout.ZkVkAccount | None:
        """The repository's update key record, or with ``remainder`` its merge remainder key's."""
        data = await self.backend.account_data(self.program.zkvk_address(repo_id, remainder))
        return layout.decode_zkvk(data, remainder) if data else None

    async def _prove(self, repo_id: bytes, cid: CID, commit: Commit, record: layout.CommitAccount) -> TxResult | None:
        """prove_commit for an anchored update that carries a proof, in a repository whose chain record
        requires proofs; None where there is nothing to send (no proof, none required, already PROVEN).
        A proof the program refuses raises its named error (``explain``): the item stays queued."""
        zk = commit.info.get("zk")
        if record.proven or commit.kind == "init" or not isinstance(zk, dict) or "proof" not in zk:
            return None
        proof = zpol.proof_of(commit)
        if proof is None:
            raise ChainError(f"commit {_short(cid)} carries a proof that is not bytes")
        chain_repo = await self.repo_record(repo_id)
        if chain_repo is None or not (provable_merge(record, chain_repo) if commit.kind == "merge"
                                      else chain_repo.requires_proofs):  # fmt: skip
            return None
        if len(proof) != layout.PROOF_BYTES:
            raise ChainError(f"commit {_short(cid)} carries a {len(proof)}-byte proof, not {layout.PROOF_BYTES}")
        me = self.identity.keypair.pubkey()
        if commit.kind == "merge":
            if not await self.holds(chain_repo):  # prove_merge is holder-gated, as merge is
                log("merge_not_proven_on_chain", level="warning", cid=str(cid),
                    why="this node no longer controls the repository: its holder must prove the merge")
                return None
            ixs = self._prove_merge_ixs(repo_id, cid, commit, chain_repo)
            if not ixs:
                return None
        else:
            ixs = [self.program.prove_commit(me, repo_id, record.commit_hash, zpol.proof_hash(commit), proof)]
        try:
            return await self.send(ixs)
        except ChainError:
            again = (await self.commit_records(repo_id, [record.commit_hash]))[0]
            if again is None or not again.proven:  # else another flush proved it meanwhile: done
                raise
            return None

    def _prove_merge_ixs(self, repo_id: bytes, cid: CID, commit: Commit,
                         chain_repo: layout.RepoAccount) -> list[Instruction]:  # fmt: skip
        """prove_merge for an anchored FedAvg merge (its C(r), weights and remainder proof); none (and one log
        line) where its transaction would not fit: every merge that fits with C(d), C(r) fits here too."""
        remainder = commit.info["zk"].get("remainder")
        proof = zpol.proof_of(commit)
        if not isinstance(remainder, bytes) or proof is None:
            raise ChainError(f"merge {_short(cid)} carries a proof but no remainder commitment C(r)")
        body = layout.ProveMerge(commit.commit_hash(), zpol.proof_hash(commit), merge_weights(commit), remainder,
                                 proof)  # fmt: skip
        ixs = self.program.prove_merge_ixs(self.identity.keypair.pubkey(), repo_id, body, commit.parent_hashes,
                                           nft=self.nft_ref(chain_repo))  # fmt: skip
        if (size := _tx_bytes(ixs, self.identity)) > PACKET_DATA_SIZE:
            log("merge_not_proven_on_chain", level="warning", cid=str(cid),
                why=f"prove_merge would be {size} bytes, over {PACKET_DATA_SIZE}")
            return []
        return ixs

    async def _zk_to_send(self, repo_id: bytes, cid: CID, commit: Commit) -> ZkPair:
        """The commitments ``commit``'s anchor carries; none (and one log line) where the program would
        refuse them: malformed zk info, or a merge whose C(d), C(r) do not check against its inputs'
        anchored commitments (an input of nonzero weight anchored without one, e.g. by an old client)."""
        zk, why = zk_commitments(commit)
        if why is None and commit.kind == "merge" and zk != NO_ZK:
            why = await self._merge_check_fails(repo_id, commit, zk)
        if why is not None:
            log("anchor_without_commitment", level="warning", cid=str(cid), why=why)
            return NO_ZK
        return zk

    async def _merge_check_fails(self, repo_id: bytes, commit: Commit, zk: ZkPair) -> str | None:
        from fednode.zk.merge_check import check_linear_merge  # numpy and the MSM backend: merges only

        weights = merge_weights(commit)
        hashes = [p for p, w in zip(commit.parent_hashes, weights, strict=True) if w]
        records = await self.commit_records(repo_id, hashes)
        if any(r is None for r in records):
            return None  # an input not anchored: the program refuses the merge itself (INPUT_NOT_ANCHORED)
        inputs = [r.commitment for r in records if r is not None and r.commitment is not None]
        if len(inputs) != len(hashes):
            return "an input of nonzero weight is anchored without a commitment"
        c_d, c_r = zk
        if c_d is None or c_r is None:
            return None
        try:
            ok = check_linear_merge(inputs, [w for w in weights if w], c_d, c_r)
        except ZkError as exc:
            return str(exc)
        return None if ok else "sum_k w_k C_k != W C(d) + C(r) over the inputs' anchored commitments"

    def _create_repo_ixs(self, repo_id: bytes, genesis_cid: str = "") -> list[Instruction]:
        """create_repo preceded by the proof the program requires: the genesis commit's stored
        signature over its commit hash (= the repository id), which the program recomputes from the
        owner's key and the genesis' body digest: it succeeds only for the genesis author."""
        try:
            cid = CID.parse(genesis_cid) if genesis_cid else self.history.repo_by_id(repo_id).genesis
            genesis = self.history.load_commit(cid)
        except (FednodeError, ValueError) as exc:
            raise ChainError(f"genesis commit of repository {_hex(repo_id)[:16]} unavailable: {exc}") from None
        if genesis.kind != "init" or genesis.commit_hash() != repo_id:
            raise ChainError(f"commit {_short(cid)} is not the genesis of repository {_hex(repo_id)[:16]}")
        if genesis.author != self.me:
            raise ChainError(f"only the genesis author {b58encode(genesis.author)} can create this repository on "
                             f"chain (the program checks their signature over the repository id), not this node "
                             f"({self.identity.address})")  # fmt: skip
        owner = self.identity.keypair.pubkey()
        return [ed25519_proof(owner, genesis.sig, repo_id),
                self.program.create_repo(owner, repo_id, genesis.body_digest())]

    def _anchor_ixs(self, repo_id: bytes, commit: Commit, branch: str | None, repo: layout.RepoAccount | None,
                    holds: bool | None = None, zk: ZkPair | None = None) -> list[Instruction]:  # fmt: skip
        """``holds``: whether this node acts as ``repo``'s owner (``Anchorer.holds``; None: it is
        ``repo``'s owner, the rule of a repository without an NFT). ``zk``: the (commitment, remainder)
        to send (None: from the commit's zk info, ``zk_commitments``)."""
        if zk is None:
            zk = zk_commitments(commit)[0]
        h = commit.commit_hash()
        nft = self.nft_ref(repo)
        if commit.author != self.me:
            raise ChainError("only a commit's author can anchor it")
        # The program recomputes h from (author = the signer, kind, parents, body digest): the
        # parents are the signed parent hashes, in the commit's order.
        parents, digest = list(commit.parent_hashes), commit.body_digest()
        author = self.identity.keypair.pubkey()
        proof = ed25519_proof(author, commit.sig, h)
        if commit.kind == "merge":
            merge = layout.Merge(digest, layout.branch_hash(branch or "main"), tuple(parents), merge_weights(commit),
                                 *zk)  # fmt: skip
            ixs = [proof, self.program.merge(author, repo_id, merge, nft=nft)]
            if zk != NO_ZK and (size := _tx_bytes(ixs, self.identity)) > PACKET_DATA_SIZE:
                # C(d) and C(r) take 128 bytes: past about 7 inputs the merge is anchored without them.
                log("anchor_without_commitment", level="warning", cid=str(commit.cid()),
                    why=f"with C(d) and C(r) the transaction is {size} bytes, over {PACKET_DATA_SIZE}")
                ixs[1] = self.program.merge(author, repo_id, replace(merge, commitment=None, remainder=None), nft=nft)
            return ixs
        as_owner = repo is not None and (repo.owner == self.me if holds is None else holds)
        anchor = layout.AnchorCommit(digest, Kind[commit.kind.upper()], _head_move(repo, branch, parents, as_owner),
                                     tuple(parents), zk[0])  # fmt: skip
        return [proof, self.program.anchor_commit(author, repo_id, anchor, as_owner=as_owner, nft=nft)]

    async def repo_summary(self, repo: RepoInfo) -> dict[str, object]:
        """What the chain holds for a local repository: owner, count, heads of local branch names."""
        record = await self.repo_record(repo.repo_id)
        if record is None:
            return {"name": repo.name, "on_chain": False}
        names = {layout.branch_hash(b): b for b in self.history.branches(repo)}
        heads = {names.get(k, "#" + k.hex()[:16]): v.hex() for k, v in record.branches.items()}
        owner = await self.controller(record)  # the NFT holder of a bound repository
        out: dict[str, object] = {"name": repo.name, "on_chain": True, "owner": b58encode(owner),
                                  "commit_count": record.commit_count, "heads": heads}  # fmt: skip
        if record.mint != layout.ZERO32:
            out["mint"] = b58encode(record.mint)
        return out

    # --- members ------------------------------------------------------------------------------

    async def set_member(self, repo: RepoInfo, member: Pubkey, add: bool) -> TxResult:
        chain_repo = await self.repo_record(repo.repo_id)
        if chain_repo is None:
            raise FednodeError(f"repository {repo.name} is not on chain: anchor its genesis first "
                               f"('fednode anchor {repo.name}:{repo.genesis}')")  # fmt: skip
        if not await self.holds(chain_repo):
            raise FednodeError(f"only the repository owner {b58encode(await self.controller(chain_repo))}"
                               f"{self._holder_note(chain_repo)} can change members")
        if bytes(member) == self.me:
            raise FednodeError("the owner is implicitly a member")
        present = await self.is_member(repo.repo_id, bytes(member))
        if present == add:
            raise FednodeError(f"{member} is {'already' if add else 'not'} a member of {repo.name}")
        await self.ensure_funds()
        me = self.identity.keypair.pubkey()
        ix = (self.program.add_member if add else self.program.remove_member)(me, repo.repo_id, member,
                                                                             nft=self.nft_ref(chain_repo))
        tx = await self.send([ix])
        with self.store.write() as txn:
            key = _MEMBER + repo.repo_id + bytes(member)
            txn.kv_put(DB, key, b"") if add else txn.kv_delete(DB, key)
        return tx

    async def members(self, repo: RepoInfo, known: Sequence[bytes] = ()) -> dict[str, object]:
        """Owner and members on chain, among the candidates this node knows: members it added,
        every author in its copy of the repository, this node's own wallet and ``known`` (e.g. the
        signed network membership): there is no on-chain member index."""
        chain_repo = await self.repo_record(repo.repo_id)
        if chain_repo is None:
            raise FednodeError(f"repository {repo.name} is not on chain")
        with self.store.read() as txn:
            prefix = _MEMBER + repo.repo_id
            candidates = {k[len(prefix):] for k, _ in txn.kv_items(DB, prefix)}
        heads = [*self.history.branches(repo).values(), *self.history.tags(repo).values()]
        candidates |= {cm.author for _, cm in self.history.walk(heads)} | {self.me, *known}
        owner = await self.controller(chain_repo)
        candidates.discard(owner)
        ordered = sorted(candidates)
        datas = await self.backend.accounts_data(
            [self.program.member_address(repo.repo_id, Pubkey.from_bytes(m)) for m in ordered])
        return {"owner": b58encode(owner),
                "members": [b58encode(m) for m, d in zip(ordered, datas, strict=True) if d]}  # fmt: skip

    # --- verification -------------------------------------------------------------------------

    async def verify(self, repo: RepoInfo, cid: CID) -> tuple[int, list[str]]:
        """Every commit of ``cid``'s ancestry matches its anchored record and is validly signed,
        and the repository accumulator equals the hash chain over the anchored commits."""
        chain_repo = await self.repo_record(repo.repo_id)
        if chain_repo is None:
            if self.history.load_commit(repo.genesis).author != self.me:
                return 0, [f"repository {repo.name} is not on chain{self._embedded_hint()}"]
            return 0, [f"repository {repo.name} is not on chain"]
        ancestry = list(reversed(list(self.history.walk([cid]))))
        hashes = [cm.commit_hash() for _, cm in ancestry]
        records = await self.commit_records(repo.repo_id, hashes)
        problems = await self._policy_problems(repo, chain_repo)
        for (c, cm), record in zip(ancestry, records, strict=True):
            problems += self._check(c, cm, record, repo.repo_id, proofs=chain_repo.requires_proofs,
                                    merge_proofs=chain_repo.has_remainder_key)  # fmt: skip
        if self.backend.kind == "embedded" and any(r is None and cm.author != self.me
                                                   for (_, cm), r in zip(ancestry, records, strict=True)):
            # Another node's commit missing here: its author anchored it, if at all, on its own chain.
            problems.insert(0, f"commits by other nodes are not anchored on this chain: {SHARED_CHAIN_HINT}")
        # Accumulator: every anchored commit this node knows, in anchoring (index) order.
        heads = [*self.history.branches(repo).values(), *self.history.tags(repo).values(), cid]
        known = {cm.commit_hash(): c for c, cm in self.history.walk(heads)}
        all_records = await self.commit_records(repo.repo_id, list(known))
        by_index = {r.index: r.commit_hash for r in all_records if r is not None}
        missing = [i for i in range(chain_repo.commit_count) if i not in by_index]
        if missing:
            problems.append(f"accumulator: {len(missing)} of {chain_repo.commit_count} anchored commits are not in "
                            f"this node's store (first index {missing[0]}): cannot recompute it")
        else:
            acc = layout.ZERO32
            for i in range(chain_repo.commit_count):
                acc = layout.accumulate(acc, by_index[i])
            if acc != chain_repo.accumulator:
                problems.append("accumulator: the repository's on-chain accumulator does not equal the hash "
                                "chain over its anchored commits")
        return len(ancestry), problems

    async def _policy_problems(self, repo: RepoInfo, chain_repo: layout.RepoAccount) -> list[str]:
        """Whether the chain enforces the genesis policy: the repository requires proofs exactly when the
        genesis does, with the policy's verifying key and bound; it has a remainder key exactly when the
        policy names one, that one."""
        if "zk" not in repo.settings and not chain_repo.requires_proofs and not chain_repo.has_remainder_key:
            return []
        try:
            policy = zpol.policy_of(repo.settings)
        except ZkError as exc:
            return [f"the repository's proof policy is malformed ({exc})"]
        return await self._update_key_problems(repo, chain_repo, policy) \
            + await self._remainder_key_problems(repo, chain_repo, policy)

    async def _update_key_problems(self, repo: RepoInfo, chain_repo: layout.RepoAccount,
                                   policy: zpol.ZkPolicy | None) -> list[str]:  # fmt: skip
        required = policy is not None and policy.require_proof
        if not chain_repo.requires_proofs:
            return ["the genesis requires update proofs, but the repository on chain does not (its verifying key "
                    "is not sealed: the owner's next flush seals it)"] if required else []
        if policy is None or not required:
            return ["the repository on chain requires update proofs, but its genesis has no proof policy"]
        record = await self.zkvk_record(repo.repo_id)
        if record is None or (record.key_id, record.vk, record.bound2) != (policy.key_id, policy.vk_bytes,
                                                                           policy.bound2):  # fmt: skip
            return ["the verifying key or bound on chain is not the genesis policy's"]
        return []

    async def _remainder_key_problems(self, repo: RepoInfo, chain_repo: layout.RepoAccount,
                                      policy: zpol.ZkPolicy | None) -> list[str]:  # fmt: skip
        named = policy is not None and policy.remainder_vk_bytes is not None
        if not chain_repo.has_remainder_key:
            return ["the genesis names a remainder key, but the repository on chain has none sealed (the owner's "
                    "next flush seals it)"] if named else []
        if policy is None or not named:
            return ["the repository on chain has a remainder key, but its genesis policy names none"]
        record = await self.zkvk_record(repo.repo_id, remainder=True)
        if record is None or (record.key_id, record.vk) != (policy.remainder_key_id, policy.remainder_vk_bytes):
            return ["the remainder key on chain is not the genesis policy's"]
        return []

    def _check(self, cid: CID, commit: Commit, record: layout.CommitAccount | None, repo_id: bytes, *,
               proofs: bool = False, merge_proofs: bool = False) -> list[str]:  # fmt: skip
        """How ``record`` differs from ``commit``; ``proofs``: the repository requires proofs on chain, so
        an update that is not PROVEN is a problem too; ``merge_proofs``: it has a remainder key, so is a
        FedAvg merge (one carrying C(r)) anchored with C(d) and not PROVEN."""
        name = f"commit {_short(cid)}"
        problems = [] if self.history.verify_commit_signature(commit) else [f"{name}: invalid signature"]
        if record is None:
            return problems + [f"{name}: not anchored"]
        parents = [self.history.load_commit(p).commit_hash() for p in commit.parents]
        checks = [("repository", record.repo_id == repo_id), ("author", record.author == commit.author),
                  ("kind", record.kind.name.lower() == commit.kind),
                  ("parents", record.n_parents == len(parents)
                   and record.parents_digest == layout.parents_digest(parents)),
                  # anchored without one is allowed (zk info dropped, old clients); another one is not
                  ("commitment", record.commitment in (None, zk_commitments(commit)[0][0]))]  # fmt: skip
        bad = [what for what, ok in checks if not ok]
        if bad:
            problems.append(f"{name}: anchored record differs ({', '.join(bad)})")
        if proofs and commit.kind not in ("init", "merge") and not record.proven:
            problems.append(f"{name}: not proven on chain")
        if merge_proofs and commit.kind == "merge" and not record.proven and record.commitment is not None \
                and zk_commitments(commit)[0][1] is not None:
            problems.append(f"{name}: FedAvg merge not proven on chain (no valid remainder proof sent)")
        return problems
