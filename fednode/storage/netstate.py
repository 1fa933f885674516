"""The daemon's persistent state in the store's ``net`` database.

Keys: ``follow/<repo>``; ``members/<repo>`` (latest signed Membership); ``keys/<repo>`` (latest signed
RepoKeys of a private repository: served to members in heads replies); ``seq/<kind>/<repo><from>[branch]``
(last accepted seq, replay protection); ``ann/<repo><from><branch>`` (latest signed head announcement);
``prop/<repo><from><branch>`` (latest merge proposal); ``fetch/<repo><root cid>`` (unfinished fetch:
DAG-CBOR {providers, thens, since: unix seconds it was first recorded}); ``gone/<repo><root cid>`` (a fetch
that expired: 8-byte first-recorded time, so a re-announcement does not restart its clock);
``peer/<peer id>`` (last known addresses); ``own/<repo>`` (our last seq);
``ban/<peer id>`` (DAG-CBOR {until: unix seconds, reason}: a ban survives restarts until it expires);
``verified/<repo><commit cid>`` (the commit and its whole ancestry passed ``operations.verify`` in that repo);
``ctl/<repo>`` (the repository's controller: the holder of its NFT as the program last recorded it, read from
the chain by ``daemon/ownership.py``: DAG-CBOR {holder, mint, slot, sale_seq}).

Ownership: a repository without a ``ctl/`` record is owned by its genesis author; once its NFT is
bound on chain the recorded holder owns it (``owner``), whoever authored the genesis.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fednode.errors import FednodeError
from fednode.logs import log
from fednode.storage.store import Store, Txn
from protocol import dagcbor
from protocol.messages import HeadAnnouncement, Membership, MergeProposal, RepoKeys, decode
from protocol.multiformats import CID
from protocol.objects import Commit

DB = "net"
MAX_PEER_ADDRS = 8  # addresses stored (and redialled) per peer; identify may list 1,000
MAX_ADDR_CHARS = 256
FETCH, GONE = b"fetch/", b"gone/"
# [network] fetch_expiry_seconds: an unfinished fetch (a head announced but never served) is dropped this
# long after it was first recorded, with the announcements and proposals of its head; its partial data is
# then garbage for gc. 48 h is the lifetime of an IPFS DHT provider record: a provider that served
# nothing for that long is gone. A fetch that expires is not refused later: a re-announcement fetches
# again, but its record keeps the first time (``gone/``), so it is dropped at the next sweep unless it
# completes. ``gone/`` entries are forgotten after GONE_FACTOR expiry periods.
FETCH_EXPIRY_SECONDS = 48 * 3600.0
SignedMessage = HeadAnnouncement | MergeProposal | Membership | RepoKeys  # what ``record`` keeps, per announcer
GONE_FACTOR = 8
LAG_SLOTS = 9000  # about an hour of Solana slots: how far an RPC node may lag behind what we read before


def fetch_expiry_seconds(config: dict[str, Any]) -> float:
    """``[network] fetch_expiry_seconds`` from a node config, checked (a one-line error if wrong)."""
    value = config.get("network", {}).get("fetch_expiry_seconds", FETCH_EXPIRY_SECONDS)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e12:
        raise FednodeError(f"[network] fetch_expiry_seconds must be a positive number of seconds, not {value!r}")
    return float(value)


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


@dataclass(frozen=True)
class FetchRecord:
    repo: bytes
    root: CID
    providers: list[str]
    thens: list[bytes]
    since: float | None  # None: written by an older version (stamped at the next sweep)


def fetch_records(txn: Txn) -> list[FetchRecord]:
    """Every well-formed ``fetch/`` record (a malformed one is skipped, never raised)."""
    out = []
    for key, value in txn.kv_items(DB, FETCH):
        try:
            root = CID.from_bytes(key[len(FETCH) + 32 :])
            obj = dagcbor.decode(value)
        except Exception:  # a damaged record is skipped: it must not stop fsck, gc or the daemon
            continue
        if len(key) < len(FETCH) + 33 or not isinstance(obj, dict):
            continue
        providers = [p for p in _list(obj.get("providers")) if isinstance(p, str)]
        thens = [t for t in _list(obj.get("thens")) if isinstance(t, bytes)]
        since = obj.get("since")
        since = float(since) if isinstance(since, int) and not isinstance(since, bool) else None
        out.append(FetchRecord(key[len(FETCH) : len(FETCH) + 32], root, providers, thens, since))
    return out


@dataclass(frozen=True)
class Controller:
    """Who controls an NFT-bound repository: ``holder`` (32-byte key) of ``mint``, as the chain's nft
    account recorded it; ``slot``: the chain slot it was read at; ``sale_seq``: the account's count of
    recorded holder changes (orders two readings of one mint)."""

    holder: bytes
    mint: bytes
    slot: int
    sale_seq: int = 0


def _controller(raw: bytes | None) -> Controller | None:
    try:
        obj = dagcbor.decode(raw) if raw else None
    except Exception:  # a damaged record: as if none (the next refresh writes it again)
        return None
    if not isinstance(obj, dict):
        return None
    holder, mint, slot, seq = obj.get("holder"), obj.get("mint"), obj.get("slot"), obj.get("sale_seq", 0)
    if not (isinstance(holder, bytes) and len(holder) == 32 and isinstance(mint, bytes) and len(mint) == 32):
        return None
    if not (isinstance(slot, int) and isinstance(seq, int) and min(slot, seq) >= 0):
        return None
    return Controller(holder, mint, int(slot), int(seq))


def controller_in(txn: Txn, repo_id: bytes) -> Controller | None:
    """``NetState.controller`` inside a caller's transaction (the history layer's owner checks)."""
    return _controller(txn.kv_get(DB, b"ctl/" + repo_id))


class NetState:
    def __init__(self, store: Store) -> None:
        self.store = store

    # follows
    def follow(self, repo_id: bytes, public: bool = False) -> None:
        """Follow ``repo_id``'s gossip; ``public`` says which topic to use while we do not hold it
        (a private repository's topic is opaque: following it by its public name would tell every
        peer its id)."""
        with self.store.write() as txn:
            txn.kv_put(DB, b"follow/" + repo_id, b"public" if public else b"private")

    def followed_public(self, repo_id: bytes) -> bool:
        """Whether ``repo_id`` was followed as public (b"1": a follow from before visibility existed)."""
        with self.store.read() as txn:
            return txn.kv_get(DB, b"follow/" + repo_id) in (b"1", b"public")

    def follows(self) -> list[bytes]:
        with self.store.read() as txn:
            return [k[7:] for k, _ in txn.kv_items(DB, b"follow/")]

    # repository facts from the history store
    def genesis(self, repo_id: bytes) -> CID | None:
        with self.store.read() as txn:
            raw = txn.get_ref(repo_id, "genesis")
        return None if raw is None else CID.from_bytes(raw)

    def local_repos(self) -> dict[str, bytes]:
        with self.store.read() as txn:
            return txn.list_repos()

    # control: the NFT holder once the repository is bound, else the genesis author
    def controller(self, repo_id: bytes) -> Controller | None:
        """The recorded holder of ``repo_id``'s NFT; None while the repository is not known to be bound."""
        with self.store.read() as txn:
            return controller_in(txn, repo_id)

    def set_controller(self, repo_id: bytes, holder: bytes, mint: bytes, slot: int, sale_seq: int = 0) -> bool:
        """Record what the chain says controls ``repo_id``; whether the holder (or mint) changed. A reading older
        than the stored one (same mint, lower sale_seq: a lagging RPC node) is ignored, for LAG_SLOTS slots:
        a lower sale_seq read that much later, or a stored reading from a slot that much beyond the one
        read now, means the stored one was false (an endpoint that lied), and it is replaced; else one
        forged reading with a huge sale_seq would pin a false holder for good."""
        if len(holder) != 32 or len(mint) != 32 or slot < 0 or sale_seq < 0:
            raise FednodeError("a controller record needs a 32-byte holder and mint and a slot >= 0")
        new = Controller(holder, mint, slot, sale_seq)
        with self.store.write() as txn:
            old = _controller(txn.kv_get(DB, b"ctl/" + repo_id))
            lagging = old is not None and old.sale_seq > sale_seq and old.slot <= slot + LAG_SLOTS and \
                slot < old.slot + LAG_SLOTS
            if old is not None and old.mint == mint and (lagging or old == new):
                return False
            txn.kv_put(DB, b"ctl/" + repo_id, dagcbor.encode(
                {"holder": holder, "mint": mint, "slot": slot, "sale_seq": sale_seq}))
        return old is None or (old.holder, old.mint) != (holder, mint)

    def genesis_author(self, repo_id: bytes) -> bytes | None:
        """The author of ``repo_id``'s genesis commit; None when it is not held (or damaged)."""
        genesis = self.genesis(repo_id)
        if genesis is None:
            return None
        with self.store.read() as txn:
            if not txn.has_block(genesis):
                return None
            try:
                return Commit.decode(txn.get_block(genesis)).author
            except Exception:  # a damaged genesis: nobody is its owner
                return None

    def owner(self, repo_id: bytes) -> bytes | None:
        """Who controls ``repo_id`` now: the recorded NFT holder, else the genesis author (None when
        this node holds neither: an unknown repository)."""
        ctl = self.controller(repo_id)
        if ctl is not None and self.genesis(repo_id) is not None:
            return ctl.holder
        return self.genesis_author(repo_id)

    # membership
    def membership(self, repo_id: bytes) -> Membership | None:
        with self.store.read() as txn:
            raw = txn.kv_get(DB, b"members/" + repo_id)
        msg = decode(raw) if raw else None
        return msg if isinstance(msg, Membership) else None

    def listed_members(self, repo_id: bytes, owner: bytes) -> set[bytes]:
        """The members the latest stored membership lists, as the read rule counts them: an unbound
        repository's list counts when ``owner`` signed it; a bound one's was accepted from its holder
        at the time (a former holder's list stands until the new one signs). The daemon's readers
        (``daemon/access.py``) and sealed backups (``workflows/sealedcar.py``) both use this."""
        membership = self.membership(repo_id)
        if membership is None:
            return set()
        bound = self.controller(repo_id) is not None
        return set(membership.members) if bound or membership.announcer == owner else set()

    def put_membership(self, msg: Membership) -> None:
        with self.store.write() as txn:
            txn.kv_put(DB, b"members/" + msg.repo, msg.encode())

    # a private repository's latest key message (its owner's; wrapped keys only, never a key)
    def keys_message(self, repo_id: bytes) -> RepoKeys | None:
        with self.store.read() as txn:
            raw = txn.kv_get(DB, b"keys/" + repo_id)
        msg = decode(raw) if raw else None
        return msg if isinstance(msg, RepoKeys) else None

    def put_keys_message(self, msg: RepoKeys) -> None:
        with self.store.write() as txn:
            txn.kv_put(DB, b"keys/" + msg.repo, msg.encode())

    # replay protection: strictly increasing seq per key
    @staticmethod
    def _seq_key(kind: str, repo: bytes, announcer: bytes, branch: str = "") -> bytes:
        return b"seq/" + kind.encode() + b"/" + repo + announcer + branch.encode()

    def last_seq(self, kind: str, repo: bytes, announcer: bytes, branch: str = "") -> int:
        with self.store.read() as txn:
            raw = txn.kv_get(DB, self._seq_key(kind, repo, announcer, branch))
        return -1 if raw is None else int.from_bytes(raw, "big")

    def record(self, msg: SignedMessage, replay_ok: bool = False) -> bool:
        """The bookkeeping after a signed message was accepted: claim its seq (replay protection)
        and store it (the latest announcement, proposal, membership or key message), in one transaction.
        False, and nothing stored, for a seq not newer than the last claimed one, unless
        ``replay_ok`` (a heads reply may carry the latest announcement again: stored, idempotent)."""
        key = self._seq_key(msg.kind, msg.repo, msg.announcer, getattr(msg, "branch", ""))
        with self.store.write() as txn:
            raw = txn.kv_get(DB, key)
            claimed = raw is None or int.from_bytes(raw, "big") < msg.seq
            if claimed:
                txn.kv_put(DB, key, msg.seq.to_bytes(8, "big"))
            elif not replay_ok:
                return False
            if isinstance(msg, Membership):
                txn.kv_put(DB, b"members/" + msg.repo, msg.encode())
            elif isinstance(msg, RepoKeys):
                txn.kv_put(DB, b"keys/" + msg.repo, msg.encode())
            elif isinstance(msg, MergeProposal):
                txn.kv_put(DB, b"prop/" + msg.repo + msg.announcer + msg.branch.encode(), msg.encode())
            else:
                txn.kv_put(DB, b"ann/" + msg.repo + msg.announcer + msg.branch.encode(), msg.encode())
        return claimed

    def next_own_seq(self, repo: bytes, now_us: int) -> int:
        key = b"own/" + repo
        with self.store.write() as txn:
            raw = txn.kv_get(DB, key)
            seq = max(now_us, (int.from_bytes(raw, "big") + 1) if raw else 0)
            txn.kv_put(DB, key, seq.to_bytes(8, "big"))
        return seq

    # announcements received (served to peers that clone or catch up)
    def put_announcement(self, msg: HeadAnnouncement) -> None:
        with self.store.write() as txn:
            txn.kv_put(DB, b"ann/" + msg.repo + msg.announcer + msg.branch.encode(), msg.encode())

    def announcements(self, repo_id: bytes) -> list[bytes]:
        with self.store.read() as txn:
            return [v for _, v in txn.kv_items(DB, b"ann/" + repo_id)]

    def put_proposal(self, repo: bytes, announcer: bytes, branch: str, raw: bytes) -> None:
        with self.store.write() as txn:
            txn.kv_put(DB, b"prop/" + repo + announcer + branch.encode(), raw)

    def proposals(self, repo_id: bytes) -> list[bytes]:
        with self.store.read() as txn:
            return [v for _, v in txn.kv_items(DB, b"prop/" + repo_id)]

    # unfinished fetches (resumed after a restart, dropped after fetch_expiry_seconds)
    def add_fetch(self, repo: bytes, root: CID, providers: list[str], thens: list[bytes]) -> None:
        """Record (or update) a fetch; it keeps the time it was first recorded, even across an expiry."""
        key = repo + bytes(root)
        with self.store.write() as txn:
            since = int(time.time())
            old = txn.kv_get(DB, FETCH + key)
            gone = txn.kv_get(DB, GONE + key)
            try:
                first = dagcbor.decode(old).get("since") if old else None
            except Exception:  # a damaged record is replaced
                first = None
            if isinstance(first, int) and not isinstance(first, bool):
                since = min(since, first)
            if gone is not None and len(gone) == 8:
                since = min(since, int.from_bytes(gone, "big"))
            txn.kv_put(DB, FETCH + key, dagcbor.encode({"providers": providers, "thens": thens, "since": since}))

    def done_fetch(self, repo: bytes, root: CID) -> None:
        with self.store.write() as txn:
            txn.kv_delete(DB, FETCH + repo + bytes(root))
            txn.kv_delete(DB, GONE + repo + bytes(root))

    def fetches(self) -> list[tuple[bytes, CID, list[str], list[bytes]]]:
        with self.store.read() as txn:
            return [(r.repo, r.root, r.providers, r.thens) for r in fetch_records(txn)]

    def expire_fetches(self, max_age: float, now: float | None = None) -> list[tuple[bytes, CID]]:
        """Drop fetches first recorded more than ``max_age`` seconds ago, with the stored announcements
        and proposals of their heads (we would otherwise serve them to peers), in one transaction.
        Records from older versions (no time) are stamped now. Returns the expired (repo, root).
        A first pass reads only: a sweep with nothing to do writes nothing (it runs every sync round)."""
        now = time.time() if now is None else now
        with self.store.read() as txn:
            if not _sweep(txn, max_age, now, write=False)[1]:
                return []
        with self.store.write() as txn:
            expired, _ = _sweep(txn, max_age, now, write=True)
        for _repo, root, age in expired:
            log("fetch_expired", "warning", root=str(root), age_seconds=int(age))
        return [(repo, root) for repo, root, _ in expired]

    # peers seen (reconnected after a restart)
    def put_peer(self, peer_id: str, addrs: list[str], limit: int | None = None) -> bool:
        """Store where ``peer_id`` listens: at most MAX_PEER_ADDRS addresses of at most MAX_ADDR_CHARS,
        none naming another peer (a peer chooses what it advertises; each is dialled later). A new
        peer is not stored once ``limit`` peers are. Whether it was stored."""
        key = b"peer/" + peer_id.encode()
        kept = _peer_addrs(peer_id, addrs)
        if not kept:
            return False
        with self.store.write() as txn:
            if limit is not None and txn.kv_get(DB, key) is None and \
                    sum(1 for _ in txn.kv_items(DB, b"peer/")) >= limit:
                return False
            txn.kv_put(DB, key, dagcbor.encode(kept))
        return True

    def peers(self) -> dict[str, list[str]]:
        with self.store.read() as txn:
            rows = txn.kv_items(DB, b"peer/")
        # the same bounds on what older versions stored
        return {k[5:].decode(): _peer_addrs(k[5:].decode(), dagcbor.decode(v)) for k, v in rows}

    # bans (kept across restarts until they expire)
    def put_ban(self, peer_id: str, until: float, reason: str) -> None:
        with self.store.write() as txn:
            txn.kv_put(DB, b"ban/" + peer_id.encode(), dagcbor.encode({"until": int(until), "reason": reason}))

    def bans(self) -> dict[str, dict[str, object]]:
        with self.store.read() as txn:
            return {k[4:].decode(): dagcbor.decode(v) for k, v in txn.kv_items(DB, b"ban/")}

    def drop_ban(self, peer_id: str) -> None:
        with self.store.write() as txn:
            txn.kv_delete(DB, b"ban/" + peer_id.encode())

    # commits that passed operations.verify: a verdict is permanent, since a commit is content-addressed
    # and immutable (its CID fixes its bytes, manifest, tensor blocks and parents); it is kept per repo
    # because verify also checks that every commit of the ancestry belongs to the repo it verifies
    def mark_verified(self, repo_id: bytes, cids: Iterable[CID]) -> None:
        with self.store.write() as txn:
            for cid in cids:
                txn.kv_put(DB, b"verified/" + repo_id + bytes(cid), b"")

    def is_verified(self, repo_id: bytes, cid: CID) -> bool:
        with self.store.read() as txn:
            return txn.kv_get(DB, b"verified/" + repo_id + bytes(cid)) is not None


def _sweep(txn: Txn, max_age: float, now: float, write: bool) -> tuple[list[tuple[bytes, CID, float]], bool]:
    """``expire_fetches``' work: the expired (repo, root, age) and whether anything changes; with
    ``write=False`` nothing is written (a read transaction asks whether there is work)."""
    expired: list[tuple[bytes, CID, float]] = []
    changes = False
    for rec in fetch_records(txn):
        key = rec.repo + bytes(rec.root)
        if rec.since is None:
            changes = True
            if write:
                txn.kv_put(DB, FETCH + key, dagcbor.encode(
                    {"providers": rec.providers, "thens": rec.thens, "since": int(now)}))
        elif now - rec.since > max_age:
            expired.append((rec.repo, rec.root, now - rec.since))
            changes = True
            if write:
                txn.kv_delete(DB, FETCH + key)
                txn.kv_put(DB, GONE + key, int(rec.since).to_bytes(8, "big"))
    gone = {(r, bytes(c)) for r, c, _ in expired}
    for key, value in txn.kv_items(DB, GONE):
        if len(value) != 8 or now - int.from_bytes(value, "big") > GONE_FACTOR * max_age:
            changes = True
            if write:
                txn.kv_delete(DB, key)
        else:
            gone.add((key[len(GONE) : len(GONE) + 32], key[len(GONE) + 32 :]))
    for prefix in (b"ann/", b"prop/") if gone else ():
        for key, value in txn.kv_items(DB, prefix):
            try:
                msg = decode(value)
            except Exception:  # a damaged entry is left alone
                continue
            if isinstance(msg, HeadAnnouncement | MergeProposal) and (msg.repo, bytes(msg.head)) in gone:
                changes = True
                if write:
                    txn.kv_delete(DB, key)
    return expired, changes


def _peer_addrs(peer_id: str, addrs: object) -> list[str]:
    """``addrs`` as put_peer keeps them: strings of at most MAX_ADDR_CHARS naming no other peer, the
    first MAX_PEER_ADDRS of them."""
    if not isinstance(addrs, list):
        return []
    kept = [a for a in dict.fromkeys(a for a in addrs if isinstance(a, str))
            if len(a) <= MAX_ADDR_CHARS and ("/p2p/" not in a or a.endswith("/p2p/" + peer_id))]
    return kept[:MAX_PEER_ADDRS]
