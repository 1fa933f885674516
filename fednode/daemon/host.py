"""The libp2p host: the wallet key is the peer identity; Noise only, yamux only, TCP."""

from __future__ import annotations

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

from fednode.identity import Identity

HEARTBEAT_S = 1  # py-libp2p's default of 120 s would leave the mesh empty for minutes


def key_pair(identity: Identity) -> KeyPair:
    """Same seed -> same Ed25519 key -> peer id equal to ``identity.peer_id``."""
    return create_new_key_pair(identity.seed)


def build_host(kp: KeyPair, mdns: bool = False) -> IHost:
    # An explicit sec_opt: the default one also accepts /plaintext/2.0.0, secio and TLS.
    noise = NoiseTransport(kp, noise_privkey=new_x25519().private_key)
    return new_host(key_pair=kp, sec_opt={NOISE_ID: noise}, muxer_preference="YAMUX", enable_mDNS=mdns)


def build_pubsub(host: IHost) -> tuple[Pubsub, GossipSub]:
    router = GossipSub(
        [PROTOCOL_ID_V11], degree=6, degree_low=4, degree_high=12,
        heartbeat_interval=HEARTBEAT_S,
        # every test and dev node shares 127.0.0.1: IP-diversity rules would starve the mesh
        eclipse_protection_enabled=False,
        max_messages_per_topic_per_second=50.0,
    )
    pubsub = Pubsub(host, router, strict_signing=True, seen_ttl=600)
    return pubsub, router


def parse_addrs(addrs: list[str]) -> list[multiaddr.Multiaddr]:
    return [multiaddr.Multiaddr(a) for a in addrs]


def peer_id_of_key(public_key: bytes) -> ID:
    return ID.from_pubkey(Ed25519PublicKey.from_bytes(public_key))
