"""The daemon's persistent state in the store's ``net`` database.

Keys: ``follow/<repo>``; ``members/<repo>`` (latest signed Membership); ``seq/<kind>/<repo><from>[branch]``
(last accepted seq, replay protection); ``ann/<repo><from><branch>`` (latest signed head announcement);
``prop/<repo><from><branch>`` (latest merge proposal); ``fetch/<repo><root cid>`` (unfinished fetch:
DAG-CBOR {providers, thens}); ``peer/<peer id>`` (last known addresses); ``own/<repo>`` (our last seq);
``ban/<peer id>`` (DAG-CBOR {until: unix seconds, reason}: a ban survives restarts until it expires);
``verified/<repo><commit cid>`` (the commit and its whole ancestry passed ``operations.verify`` in that repo).
"""

from __future__ import annotations

from collections.abc import Iterable

from fednode.store import Store
from protocol import dagcbor
from protocol.messages import HeadAnnouncement, Membership, decode
from protocol.multiformats import CID

DB = "net"


class NetState:
    def __init__(self, store: Store) -> None:
        self.store = store

    # follows
    def follow(self, repo_id: bytes) -> None:
        with self.store.write() as txn:
            txn.kv_put(DB, b"follow/" + repo_id, b"1")

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

    # membership
    def membership(self, repo_id: bytes) -> Membership | None:
        with self.store.read() as txn:
            raw = txn.kv_get(DB, b"members/" + repo_id)
        msg = decode(raw) if raw else None
        return msg if isinstance(msg, Membership) else None

    def put_membership(self, msg: Membership) -> None:
        with self.store.write() as txn:
            txn.kv_put(DB, b"members/" + msg.repo, msg.encode())

    # replay protection: strictly increasing seq per key
    @staticmethod
    def _seq_key(kind: str, repo: bytes, announcer: bytes, branch: str = "") -> bytes:
        return b"seq/" + kind.encode() + b"/" + repo + announcer + branch.encode()

    def last_seq(self, kind: str, repo: bytes, announcer: bytes, branch: str = "") -> int:
        with self.store.read() as txn:
            raw = txn.kv_get(DB, self._seq_key(kind, repo, announcer, branch))
        return -1 if raw is None else int.from_bytes(raw, "big")

    def claim_seq(self, kind: str, repo: bytes, announcer: bytes, branch: str, seq: int) -> bool:
        """Atomically record ``seq`` if it is newer than the last one; False for a replay."""
        key = self._seq_key(kind, repo, announcer, branch)
        with self.store.write() as txn:
            raw = txn.kv_get(DB, key)
            if raw is not None and int.from_bytes(raw, "big") >= seq:
                return False
            txn.kv_put(DB, key, seq.to_bytes(8, "big"))
        return True

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

    # unfinished fetches (resumed after a restart)
    def add_fetch(self, repo: bytes, root: CID, providers: list[str], thens: list[bytes]) -> None:
        with self.store.write() as txn:
            txn.kv_put(DB, b"fetch/" + repo + bytes(root),
                       dagcbor.encode({"providers": providers, "thens": thens}))

    def done_fetch(self, repo: bytes, root: CID) -> None:
        with self.store.write() as txn:
            txn.kv_delete(DB, b"fetch/" + repo + bytes(root))

    def fetches(self) -> list[tuple[bytes, CID, list[str], list[bytes]]]:
        out = []
        with self.store.read() as txn:
            items = txn.kv_items(DB, b"fetch/")
        for key, value in items:
            obj = dagcbor.decode(value)
            out.append((key[6:38], CID.from_bytes(key[38:]), list(obj["providers"]), list(obj["thens"])))
        return out

    # peers seen (reconnected after a restart)
    def put_peer(self, peer_id: str, addrs: list[str]) -> None:
        with self.store.write() as txn:
            txn.kv_put(DB, b"peer/" + peer_id.encode(), dagcbor.encode(addrs))

    def peers(self) -> dict[str, list[str]]:
        with self.store.read() as txn:
            return {k[5:].decode(): dagcbor.decode(v) for k, v in txn.kv_items(DB, b"peer/")}

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
