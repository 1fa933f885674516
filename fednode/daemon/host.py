"""The libp2p host: the wallet key is the peer identity; Noise only, yamux only, TCP."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import multiaddr
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import Ed25519PublicKey, create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from fednode.daemon import readahead, yamuxwindow
from fednode.errors import FednodeError
from fednode.identity import Identity

HEARTBEAT_S = 1  # py-libp2p's default of 120 s would leave the mesh empty for minutes


def key_pair(identity: Identity) -> KeyPair:
    """Same seed -> same Ed25519 key -> peer id equal to ``identity.peer_id``."""
    return create_new_key_pair(identity.seed)


def build_host(kp: KeyPair, mdns: bool = False) -> IHost:
    # An explicit sec_opt: the default one also accepts /plaintext/2.0.0, secio and TLS.
    noise = NoiseTransport(kp, noise_privkey=new_x25519().private_key)
    host = new_host(key_pair=kp, sec_opt={NOISE_ID: noise}, muxer_preference="YAMUX", enable_mDNS=mdns)
    readahead.install(host)  # fewer, larger socket reads (fednode/daemon/readahead.py)
    yamuxwindow.install()  # window updates as go-yamux sends them (fednode/daemon/yamuxwindow.py)
    return host


def build_pubsub(host: IHost) -> tuple[Pubsub, GossipSub]:
    """GossipSub with every parameter we rely on set here: py-libp2p's defaults change between
    releases, and some (adaptive gossip) silently override what we configure."""
    router = GossipSub(
        [PROTOCOL_ID_V11], degree=6, degree_low=4, degree_high=12,
        heartbeat_initial_delay=0.1,
        heartbeat_interval=HEARTBEAT_S,
        # On by default in 0.8.1: every 30 s it scores "network health" and, on a small network
        # (few mesh peers scores as poor health), raises the heartbeat to 30-60 s, so IHAVE gossip,
        # mesh repair and the message cache's clock slow 30-60x (a new subscriber then gets replays
        # tens of seconds old). We want the fixed 1 s beat.
        adaptive_gossip_enabled=False,
        # message cache: IHAVE covers the last 3 beats, IWANT is answered for 5 (so with the fixed
        # beat a peer that subscribes is replayed only the last ~3 s of messages)
        gossip_window=3, gossip_history=5,
        time_to_live=60,  # fanout state of a topic we published to without subscribing
        # peers come from bootstrap, stored peers and the DHT; PX would hand us peers a pruner chose
        do_px=False,
        prune_back_off=60, unsubscribe_back_off=10,
        score_params=None,  # py-libp2p scoring stays inert: our own penalties ban (Bans.penalize)
        # every test and dev node shares 127.0.0.1: IP-diversity rules would starve the mesh
        eclipse_protection_enabled=False,
        spam_protection_enabled=True,
        max_messages_per_topic_per_second=50.0,  # default 10: a push is 2 messages per branch, bursts exceed it
    )
    # seen_ttl 600 s: a replayed message id is dropped for 10 min; 1 MiB RPCs: our messages are <= 512 KiB
    pubsub = Pubsub(host, router, strict_signing=True, seen_ttl=600, max_inbound_rpc_size=1024 * 1024)
    return pubsub, router


def parse_addrs(addrs: list[str]) -> list[multiaddr.Multiaddr]:
    return [multiaddr.Multiaddr(a) for a in addrs]


def listen_endpoints(addrs: list[str]) -> list[tuple[str, socket.AddressFamily, str, int]]:
    """(addr, family, ip, port) of each listen address; FednodeError unless /ip4|ip6/IP/tcp/PORT
    (py-libp2p would listen on every interface for a /dns4 name, and on nothing for /udp)."""
    out = []
    for addr in addrs:
        try:
            ma = multiaddr.Multiaddr(addr)
            names = [p.name for p in ma.protocols()]
        except Exception:
            raise FednodeError(f"invalid listen address {addr!r}: use /ip4/IP/tcp/PORT or /ip6/IP/tcp/PORT") from None
        if names not in (["ip4", "tcp"], ["ip6", "tcp"]):
            raise FednodeError(f"unsupported listen address {addr}: use /ip4/IP/tcp/PORT or /ip6/IP/tcp/PORT")
        family = socket.AF_INET if names[0] == "ip4" else socket.AF_INET6
        out.append((addr, family, str(ma.value_for_protocol(names[0])), int(ma.value_for_protocol("tcp"))))
    return out


def probe_listen(addrs: list[str]) -> None:
    """Refuse a TCP port that another process listens on, before the host starts. py-libp2p's
    listener sets SO_REUSEPORT, so a second daemon would bind the same port and the kernel would
    split connections between the two. A bind WITHOUT SO_REUSEPORT is refused (EADDRINUSE) by any
    listener, SO_REUSEPORT or not (measured); SO_REUSEADDR lets our own previous run's TIME_WAIT
    connections pass, so a restart on the same port works."""
    for addr, family, ip, port in listen_endpoints(addrs):
        if port == 0:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((ip, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:  # e.g. an IP that is not this host's
                    raise FednodeError(f"cannot listen on {addr}: {exc.strerror}") from None
                raise FednodeError(f"cannot listen on {addr}: address already in use (by another process, another "
                                   "daemon?); choose another port with --listen or [network] listen") from None


def _listening_sockets() -> list[tuple[str, int]] | None:
    """(ip, port) of every listening TCP socket on this host (Linux /proc; None elsewhere)."""
    found = []
    for name, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            if family == socket.AF_INET:
                return None
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != "0A":  # 0A: LISTEN
                continue
            ip_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(ip_hex)  # each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((socket.inet_ntop(family, raw), int(port_hex, 16)))
    return found


def shared_ports(addrs: list[str]) -> list[str]:
    """The fixed-port listen addresses that some other socket listens on too, once our host
    listens: a second daemon that passed ``probe_listen`` at the same moment as we did (both
    listeners set SO_REUSEPORT, so both binds succeed). Either side then refuses to run."""
    sockets = _listening_sockets()
    if sockets is None:
        return []
    wild = ("0.0.0.0", "::")
    ends = [(ip, port) for _, _, ip, port in listen_endpoints(addrs)]

    def overlapping(ip: str, port: int, among: list[tuple[str, int]]) -> int:
        return sum(1 for i, p in among if p == port and (i == ip or i in wild or ip in wild))

    # more listeners overlapping (ip, port) than our own configured ones (0.0.0.0 + :: on one port)
    return [addr for addr, _, ip, port in listen_endpoints(addrs)
            if port and overlapping(ip, port, sockets) > overlapping(ip, port, ends)]


def not_listening(host: IHost, addrs: list[str]) -> list[str]:
    """The configured addresses the started host has no listener for (py-libp2p only logs those)."""
    listeners = getattr(host.get_network(), "listeners", {})
    return [a for a in addrs if str(multiaddr.Multiaddr(a)) not in listeners]


def peer_id_of_key(public_key: bytes) -> ID:
    return ID.from_pubkey(Ed25519PublicKey.from_bytes(public_key))
