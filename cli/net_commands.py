"""Network commands (``fednode daemon``, ``status``, ``peers``, ``push``, ``pull``, ``clone``, ``follow``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cli.main import _node, _repo, _set_current, emit_json, out


def _client(ctx: click.Context):  # noqa: ANN202
    from fednode.daemon.client import Client

    return Client(ctx.obj["home"])


def _emit(data: Any, as_json: bool, text: str) -> None:
    if as_json:
        emit_json(data)
    else:
        out.print(text, markup=False)


def _repo_name(ctx: click.Context, name: str | None) -> str:
    """A local repository (name or id), defaulting to the current one."""
    node = _node(ctx)
    return _repo(node, name).name


def register(main: click.Group) -> None:
    """Add this module's commands to the ``fednode`` group."""

    @main.command()
    @click.option("--listen", multiple=True, help="libp2p listen multiaddr (repeatable; overrides config).")
    @click.option("--api-port", type=int, default=None, help="Local API port (0 = ephemeral, written to the home).")
    @click.option("--bootstrap", multiple=True, help="Extra peer multiaddr with /p2p/ID (repeatable).")
    @click.option("--log-file", type=click.Path(path_type=Path), default=None, help="JSON-lines log (default stderr).")
    @click.option("--mdns", is_flag=True, help="Find peers on the local network (also [network] mdns = true).")
    @click.pass_context
    def daemon(ctx: click.Context, listen: tuple[str, ...], api_port: int | None, bootstrap: tuple[str, ...],
               log_file: Path | None, mdns: bool) -> None:
        """Run the network daemon (Noise + yamux, GossipSub, DHT, block exchange, local API)."""
        from fednode.daemon.main import run_daemon

        run_daemon(ctx.obj["home"], list(listen) or None, api_port, list(bootstrap), log_file, mdns)

    @main.command()
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def status(ctx: click.Context, as_json: bool) -> None:
        """The running daemon: peer id, addresses, peers, message counters (fails when none answers)."""
        s = _client(ctx).call("GET", "/status")
        met = s["metrics"]
        _emit(s, as_json, f"peer id {s['peer_id']}\naddrs   {' '.join(s['addrs'])}\npeers   {s['peers']}\n"
                          f"topics  {len(s['topics'])}\naccepted {met['accepted']} rejected {met['rejected']}\n"
                          f"banned  {len(s.get('bans', {}))}")

    @main.command()
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def peers(ctx: click.Context, as_json: bool) -> None:
        """Connected peers."""
        rows = _client(ctx).call("GET", "/peers")
        _emit(rows, as_json, "\n".join(f"{r['peer_id']} {' '.join(r['addrs'][:1])}" for r in rows) or "no peers")

    @main.command()
    @click.argument("cid")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def providers(ctx: click.Context, cid: str, as_json: bool) -> None:
        """Peers the DHT names as providers of a commit CID (e.g. a branch head)."""
        rows = _client(ctx).call("POST", "/providers", {"cid": cid})
        _emit(rows, as_json, "\n".join(f"{r['peer_id']} {' '.join(r['addrs'][:1])}" for r in rows) or "no providers")

    @main.command()
    @click.argument("peer")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def unban(ctx: click.Context, peer: str, as_json: bool) -> None:
        """Lift a peer's ban now (bans otherwise last [network] ban_seconds, a day by default)."""
        res = _client(ctx).call("POST", "/unban", {"peer": peer})
        _emit(res, as_json, f"{peer} {'unbanned' if res['was_banned'] else 'was not banned'}")

    @main.command()
    @click.argument("addr")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def connect(ctx: click.Context, addr: str, as_json: bool) -> None:
        """Dial a peer (multiaddr with /p2p/ID)."""
        res = _client(ctx).call("POST", "/connect", {"addr": addr})
        _emit(res, as_json, f"connected to {res['peer_id']}")

    @main.command()
    @click.argument("repo_id")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def follow(ctx: click.Context, repo_id: str, as_json: bool) -> None:
        """Subscribe to a repository's topic (by id or local name)."""
        res = _client(ctx).call("POST", "/follow", {"repo": repo_id})
        _emit(res, as_json, f"following {res['repo']} on {res['topic']}")

    @main.command()
    @click.argument("repo_name", metavar="[REPO]", required=False)
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def push(ctx: click.Context, repo_name: str | None, as_json: bool) -> None:
        """Announce the local branch heads of REPO to its topic."""
        res = _client(ctx).call("POST", "/push", {"repo": _repo_name(ctx, repo_name)})
        _emit(res, as_json, "\n".join(f"pushed {p['branch']} {p['head']}" for p in res["pushed"])
              + f"\n{res['topic_peers']} peer(s) on the topic")

    @main.command()
    @click.argument("repo_name", metavar="[REPO]", required=False)
    @click.option("--timeout", type=float, default=60.0, show_default=True)
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def pull(ctx: click.Context, repo_name: str | None, timeout: float, as_json: bool) -> None:
        """Fetch the heads peers announce for REPO and their blocks; move branches that fast-forward."""
        res = _client(ctx).call("POST", "/pull", {"repo": _repo_name(ctx, repo_name), "timeout": timeout})
        _emit(res, as_json, "\n".join(f"{k} {v}" for k, v in sorted(res["refs"].items())))

    @main.command()
    @click.argument("repo_id")
    @click.option("--peer", "peers", multiple=True, help="Peer multiaddr to ask (repeatable).")
    @click.option("--timeout", type=float, default=60.0, show_default=True)
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def clone(ctx: click.Context, repo_id: str, peers: tuple[str, ...], timeout: float, as_json: bool) -> None:
        """Fetch repository REPO_ID (genesis, branches, blocks) from connected or given peers."""
        res = _client(ctx).call("POST", "/clone", {"repo": repo_id, "peers": list(peers), "timeout": timeout})
        node = _node(ctx)
        with node.store.read() as txn:
            current = txn.get_meta("current_repo")
        if current is None:  # like git clone: the new repository becomes the current one
            _set_current(node, res["name"])
        _emit(res, as_json, f"cloned {res['repo']} as {res['name']}\n"
              + "\n".join(f"{k} {v}" for k, v in sorted(res["refs"].items())))

    @main.command()
    @click.argument("members", nargs=-1)
    @click.option("-r", "--repo", "repo_name", default=None)
    @click.option("--public", is_flag=True, help="Accept merge proposals from anyone.")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def members(ctx: click.Context, members: tuple[str, ...], repo_name: str | None, public: bool,
                as_json: bool) -> None:
        """Owner: sign and publish REPO's member list (wallet addresses; replaces the previous list)."""
        res = _client(ctx).call("POST", "/members", {"repo": _repo_name(ctx, repo_name), "members": list(members),
                                                     "public": public})
        _emit(res, as_json, f"{res['members']} member(s) besides the owner; public={res['public']}")

    @main.command()
    @click.argument("repo_name", metavar="[REPO]", required=False)
    @click.option("-b", "--branch", default="main", show_default=True)
    @click.option("-m", "--message", default="")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def propose(ctx: click.Context, repo_name: str | None, branch: str, message: str, as_json: bool) -> None:
        """Publish a signed merge proposal for BRANCH's head (peers fetch it as proposals/<peer>/<branch>)."""
        res = _client(ctx).call("POST", "/propose", {"repo": _repo_name(ctx, repo_name), "branch": branch,
                                                     "message": message})
        _emit(res, as_json, f"proposed {res['branch']} {res['head']}")
