"""How the daemon's components see one another: small interfaces (in the spirit of py-libp2p's
``abc.py``), so each component receives only what it calls and is tested with stand-ins.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from libp2p.peer.id import ID

from protocol.messages import HeadAnnouncement
from protocol.multiformats import CID

if TYPE_CHECKING:
    from fednode.daemon.jobs import Job

T = TypeVar("T")


class Spawner(Protocol):
    """Background tasks of the daemon's nursery (``tasks.Tasks``)."""

    def spawn(self, where: str, fn: Callable[..., Awaitable[Any]], /, *args: Any) -> None:
        """Start ``fn``; its exceptions are logged and counted under ``where``, never raised."""

    def start_soon(self, fn: Callable[..., Awaitable[Any]], /, *args: Any) -> None:
        """Start ``fn``, which guards itself."""


class Penalizer(Protocol):
    """Counts a peer's misbehaviour; enough of it bans the peer (``bans.Bans``)."""

    def penalize(self, peer: ID, reason: str, /) -> None: ...


class BanList(Protocol):
    """Whether a peer is banned now (``bans.Bans``)."""

    def is_banned(self, peer: ID, /) -> bool: ...


class Blacklist(Protocol):
    """What ``bans.Bans`` uses of py-libp2p's Pubsub: its blacklist (gossip ignored, connection dropped)."""

    def is_peer_blacklisted(self, peer_id: ID, /) -> bool: ...

    def add_to_blacklist(self, peer_id: ID, /) -> None: ...

    def remove_from_blacklist(self, peer_id: ID, /) -> None: ...

    def get_blacklisted_peers(self) -> set[ID]: ...


class PeerView(Protocol):
    """The peers we may ask for data (``peers.Peers``)."""

    def usable(self) -> list[ID]:
        """Connected peers that are not banned."""

    def topic_peers(self, repo_id: bytes, /) -> list[ID]:
        """The peers subscribed to ``repo_id``'s gossip topic."""

    def providers(self, first: list[str], repo_id: bytes, /) -> list[ID]:
        """Usable peers to fetch from: ``first``, then the topic's peers, then any."""


class Subscriptions(Protocol):
    """The repositories' gossip topics (``gossip.Gossip``)."""

    def is_subscribed(self, repo_id: bytes, /) -> bool: ...

    async def subscribe(self, repo_id: bytes, /) -> None: ...

    async def publish(self, repo_id: bytes, data: bytes, /) -> None: ...


class FetchScheduler(Protocol):
    """Fetch jobs (``jobs.FetchJobs``)."""

    def schedule(self, repo: bytes, root: CID, providers: list[str], then: bytes | list[bytes] | None, /) -> Job:
        """Fetch ``root``'s closure from ``providers`` (or any peer), then apply ``then``."""

    async def fetch_block(self, repo: bytes, cid: CID, peer: ID, accept: Callable[[bytes], bool], /) -> bytes | None:
        """``cid``'s block from ``peer`` alone, hash-checked (None: not served); stored as ``repo``'s
        only if ``accept`` says so."""


class ProviderFinder(Protocol):
    """DHT lookups that dial what they find (``discovery.Discovery``)."""

    async def find_providers(self, key: str, what: str, /) -> list[str]: ...


class ProvideRequests(Protocol):
    """Asks for DHT provide passes, run in the background (``discovery.Discovery``)."""

    def provide_new_soon(self) -> None:
        """Provide what was never provided (a moved branch, a push)."""

    def provide_all_soon(self) -> None:
        """Provide every local repository and head again (a clone)."""


class ReaderThreads(Protocol):
    """Store reads in a worker thread, beside the event loop (``exchange.Fetcher``)."""

    async def run_reading(self, fn: Callable[[], T], /) -> T: ...


class FetchFollowUp(Protocol):
    """What a completed fetch job does next (``apply.Applier``)."""

    async def apply(self, repo_id: bytes, raw: bytes, /) -> None:
        """Move a branch or record a peer's ref for one announcement or proposal."""

    async def register_clone(self, repo_id: bytes, genesis: CID, source: str, /) -> None:
        """Check a fetched genesis commit and register its repository."""


class Applying(FetchFollowUp, Protocol):
    """``apply.Applier`` as the heads exchange sees it."""

    def applied(self, repo_id: bytes, ann: HeadAnnouncement, /) -> bool:
        """Whether the ref this announcement would set already points at its head."""


class Misbehaviour(Protocol):
    """Reports of a served stream's misbehaviour (``fairness.FairServing``)."""

    def misbehaved(self, peer: ID, reason: str, /) -> bool: ...
