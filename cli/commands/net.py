"""The network: ``fednode daemon``, ``status``, ``peers``, ``providers``, ``unban``, ``connect``,
``follow``, ``push``, ``pull``, ``clone`` and ``propose``. All but ``daemon`` and ``status`` ask the
running daemon through its local API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cli.context import client, emit, emit_json, get_node, get_repo, home, json_option, out
from fednode.errors import FednodeError
from fednode.history import repo_id_text
from fednode.node import Node


def _repo_name(ctx: click.Context, name: str | None) -> str:
    """A local repository (name or id), defaulting to the current one."""
    return get_repo(get_node(ctx), name).name


def _ref_lines(ctx: click.Context, refs: dict[str, str]) -> str:
    """``ref cid`` lines, peers shown by their 'fednode remote add' names (remotes/NAME/main)."""
    from fednode.workflows.refops import display_ref, remotes

    names = remotes(get_node(ctx).history)
    return "\n".join(sorted(f"{display_ref(k, names)} {v}" for k, v in refs.items()))


def _local_status(node: Node) -> dict[str, Any]:
    """Current repository, branch and head from the store (no daemon needed)."""
    info = node.current_repo()
    if info is None:
        return {"repository": None, "branch": None, "head": None}
    branch = node.history.current_branch(info)
    visibility = node.history.visibility(info.repo_id)
    try:
        head = node.history.branch_head(info, branch)
        message = node.history.load_commit(head).message.splitlines()[0:1]
    except FednodeError:
        return {"repository": info.name, "repository_id": repo_id_text(info.repo_id), "visibility": visibility,
                "branch": branch, "head": None, "head_message": ""}
    return {"repository": info.name, "repository_id": repo_id_text(info.repo_id), "visibility": visibility,
            "branch": branch, "head": str(head), "head_message": message[0] if message else ""}


def _daemon_status(home_dir: Path) -> tuple[str, dict[str, Any]]:
    """("running", the daemon's /status) or (why not, {}): fast, and never an error."""
    import json

    from fednode.daemon.pidfile import DAEMON_FILE, TOKEN_FILE, running_pid

    try:
        info = json.loads((home_dir / DAEMON_FILE).read_text())
        token = (home_dir / TOKEN_FILE).read_text().strip()
        port = int(info["api_port"])
    except (OSError, ValueError, KeyError, TypeError):
        return "not running", {}

    if running_pid(home_dir) is None:  # its pid is gone: our token goes to no one who took its port since
        return "not running (a stale daemon.json was left behind)", {}
    import httpx

    try:
        resp = httpx.get(f"http://127.0.0.1:{port}/status", headers={"Authorization": f"Bearer {token}"},
                         timeout=3.0)
    except httpx.ConnectError:
        return "not running (a stale daemon.json was left behind)", {}
    except httpx.HTTPError as exc:
        return f"not answering at 127.0.0.1:{port} ({type(exc).__name__})", {}
    if resp.status_code != 200:
        return f"answering with an error (HTTP {resp.status_code})", {}
    try:
        live = resp.json()
    except ValueError:
        return "answering with malformed data", {}
    if not isinstance(live, dict):
        return "answering with malformed data", {}
    return "running", {**live, "pid": info.get("pid")}


def _status_lines(data: dict[str, Any], state: str, live: dict[str, Any]) -> list[str]:
    """``fednode status`` in words: the repository, then the daemon."""
    lines = []
    if data.get("repository"):
        head = data["head"]
        lines += [f"repository {data['repository']} ({data['repository_id']})",
                  f"visibility {data['visibility']}",
                  f"branch     {data['branch']}",
                  f"head       {head[:16]} {data['head_message']}" if head else "head       (none)"]
    else:
        lines.append("repository (none selected: 'fednode repo use NAME')")
    held = data.get("repositories") or []
    lines.append("repos      " + (", ".join(f"{r['name']} ({r['visibility']})" for r in held) or "(none)"))
    if live:
        met = live.get("metrics", {})
        lines += [f"daemon     running (pid {live.get('pid', '?')})",
                  f"peer id    {live.get('peer_id')}",
                  f"addrs      {' '.join(live.get('addrs', []))}",
                  f"peers      {live.get('peers')}",
                  f"topics     {len(live.get('topics', []))}",
                  f"accepted   {met.get('accepted')} rejected {met.get('rejected')}",
                  f"banned     {len(live.get('bans', {}))}"]
    else:
        lines.append(f"daemon     {state}")
    return lines


@click.command()
@click.option("--listen", multiple=True, help="libp2p listen multiaddr (repeatable; overrides config).")
@click.option("--api-port", type=int, default=None, help="Local API port (0 = ephemeral, written to the home).")
@click.option("--bootstrap", multiple=True, help="Extra peer multiaddr with /p2p/ID (repeatable).")
@click.option("--log-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="JSON-lines log (default stderr); SIGHUP reopens it.")
@click.option("--log-max-mib", type=click.IntRange(min=0), default=64, show_default=True,
              help="Rotate the log file at this size (FILE.1, FILE.2, ...); 0: never (for logrotate).")
@click.option("--log-keep", type=click.IntRange(min=1, max=1000), default=5, show_default=True,
              help="Rotated log files kept.")
@click.option("--mdns", is_flag=True, help="Find peers on the local network (also [network] mdns = true).")
@click.pass_context
def daemon(ctx: click.Context, listen: tuple[str, ...], api_port: int | None, bootstrap: tuple[str, ...],
           log_file: Path | None, log_max_mib: int, log_keep: int, mdns: bool) -> None:
    """Run the network daemon (Noise + yamux, GossipSub, DHT, block exchange, local API)."""
    from fednode.daemon.process import run_daemon

    run_daemon(home(ctx), list(listen) or None, api_port, list(bootstrap), log_file, mdns,
               log_max_mib << 20, log_keep)


@click.command()
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """The current repository, branch and head, and the daemon's state (peer id, addresses,
    peers, message counters) when one runs."""
    node = get_node(ctx)
    data: dict[str, Any] = {"home": str(home(ctx)), **_local_status(node)}
    # every repository's visibility, so an operator sees at a glance what only members can read
    data["repositories"] = [{"name": r.name, "visibility": node.history.visibility(r.repo_id)}
                            for r in node.history.repos()]
    state, live = _daemon_status(home(ctx))
    data.update({**live, "daemon": state})
    if as_json:
        emit_json(data)
        return
    out.print("\n".join(_status_lines(data, state, live)), markup=False)


def _peer_lines(rows: list[dict[str, Any]]) -> str:
    return "\n".join(f"{r['peer_id']} {' '.join(r['addrs'][:1])}" for r in rows)


@click.command()
@json_option
@click.pass_context
def peers(ctx: click.Context, as_json: bool) -> None:
    """Connected peers."""
    rows = client(ctx).call("GET", "/peers")
    emit(rows, as_json, _peer_lines(rows) or "no peers")


@click.command()
@click.argument("cid")
@json_option
@click.pass_context
def providers(ctx: click.Context, cid: str, as_json: bool) -> None:
    """Peers the DHT names as providers of a commit CID (e.g. a branch head)."""
    rows = client(ctx).call("POST", "/providers", {"cid": cid})
    emit(rows, as_json, _peer_lines(rows) or "no providers")


@click.command()
@click.argument("peer")
@json_option
@click.pass_context
def unban(ctx: click.Context, peer: str, as_json: bool) -> None:
    """Lift a peer's ban now (bans otherwise last [network] ban_seconds, a day by default)."""
    res = client(ctx).call("POST", "/unban", {"peer": peer})
    emit(res, as_json, f"{peer} {'unbanned' if res['was_banned'] else 'was not banned'}")


@click.command()
@click.argument("addr")
@json_option
@click.pass_context
def connect(ctx: click.Context, addr: str, as_json: bool) -> None:
    """Dial a peer (multiaddr with /p2p/ID)."""
    res = client(ctx).call("POST", "/connect", {"addr": addr})
    emit(res, as_json, f"connected to {res['peer_id']}")


@click.command()
@click.argument("repo_id")
@click.option("--public", is_flag=True,
              help="The repository (not held here yet) is public: use its public topic. Without it, a "
                   "repository not held yet is followed on the opaque topic a private one uses.")
@json_option
@click.pass_context
def follow(ctx: click.Context, repo_id: str, public: bool, as_json: bool) -> None:
    """Subscribe to a repository's topic (by id or local name)."""
    res = client(ctx).call("POST", "/follow", {"repo": repo_id, "public": public})
    emit(res, as_json, f"following {res['repo']} on {res['topic']}")


@click.command()
@click.argument("repo_name", metavar="[REPO]", required=False)
@json_option
@click.pass_context
def push(ctx: click.Context, repo_name: str | None, as_json: bool) -> None:
    """Announce the local branch heads of REPO to its topic; say how many peers accepted them."""
    from fednode.workflows.membership import check_member

    node = get_node(ctx)
    info = get_repo(node, repo_name)
    check_member(node, info)  # peers reject a non-member's commits: refuse before publishing anything
    res = client(ctx).call("POST", "/push", {"repo": info.name})
    heads = "\n".join(f"{p['branch']} {p['head']}" for p in res["pushed"])
    peers, accepted = res["topic_peers"], res.get("accepted_by", 0)
    if peers and not accepted:  # published, and no peer holds it: not "pushed"
        if as_json:
            emit_json(res)
        raise FednodeError(f"published {len(res['pushed'])} head(s) of {info.name} to {peers} peer(s); accepted by "
                           f"none yet (see their logs, or 'fednode status' for rejections)")
    what = (f"accepted by {accepted} of {peers} peer(s) on the topic" if peers
            else "no peer on the topic yet: peers get the heads when they connect")
    emit(res, as_json, f"pushed\n{heads}\n{what}")


@click.command()
@click.argument("repo_name", metavar="[REPO]", required=False)
@click.option("--timeout", type=float, default=60.0, show_default=True)
@json_option
@click.pass_context
def pull(ctx: click.Context, repo_name: str | None, timeout: float, as_json: bool) -> None:
    """Fetch the heads peers announce for REPO and their blocks; move branches that fast-forward."""
    res = client(ctx).call("POST", "/pull", {"repo": _repo_name(ctx, repo_name), "timeout": timeout})
    # peers that could not or would not answer are said, not hidden behind the unchanged refs
    warnings = [f"warning: {e}" for e in res.get("errors", [])[:3]]
    emit(res, as_json, "\n".join([*warnings, _ref_lines(ctx, res["refs"])]))


@click.command()
@click.argument("repo_id")
@click.option("--peer", "peers", multiple=True, help="Peer multiaddr to ask (repeatable).")
@click.option("--timeout", type=float, default=60.0, show_default=True)
@json_option
@click.pass_context
def clone(ctx: click.Context, repo_id: str, peers: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """Fetch repository REPO_ID (genesis, branches, blocks) from connected or given peers."""
    res = client(ctx).call("POST", "/clone", {"repo": repo_id, "peers": list(peers), "timeout": timeout})
    get_node(ctx).use_repo_if_none(res["name"])
    emit(res, as_json, f"cloned {res['repo']} as {res['name']}\n" + _ref_lines(ctx, res["refs"]))


@click.command()
@click.argument("repo_name", metavar="[REPO]", required=False)
@click.option("-b", "--branch", default="main", show_default=True)
@click.option("-m", "--message", default="")
@json_option
@click.pass_context
def propose(ctx: click.Context, repo_name: str | None, branch: str, message: str, as_json: bool) -> None:
    """Publish a signed merge proposal for BRANCH's head (peers fetch it as proposals/<peer>/<branch>)."""
    res = client(ctx).call("POST", "/propose", {"repo": _repo_name(ctx, repo_name), "branch": branch,
                                                "message": message})
    emit(res, as_json, f"proposed {res['branch']} {res['head']}")


COMMANDS = [daemon, status, peers, providers, unban, connect, follow, push, pull, clone, propose]
