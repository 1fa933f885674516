"""``fednode nft mint|show|transfer|offer|accept|share|sync|claim``: a repository's Token-2022 NFT.

Thin: parse, one call into fednode/chain/nft.py inside a chain session, print. trio, solders and
the chain client load only when a command runs (fast start).
"""

from __future__ import annotations

import decimal
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cli.context import emit_json, get_node, json_option, out
from fednode.chain import session
from fednode.errors import FednodeError, first_line

if TYPE_CHECKING:
    from fednode.chain.anchoring import Anchorer
    from fednode.chain.nft import NftClient, NftView
    from fednode.node import Node

LAMPORTS_PER_SOL = 10**9
WAITS = ("will wait in the nft account until claimed ('fednode nft claim'): paid directly, it would leave the "
         "contributor's wallet below the rent-exempt minimum (an empty wallet, a small amount)")
VALIDITY = ("it is valid while its blockhash is recent: on a cluster about 60-90 seconds (150 blocks); on "
            "'fednode devchain' until 150 newer blockhashes have been issued")


def _client(a: Anchorer) -> NftClient:
    from fednode.chain.nft import NftClient

    return NftClient(a.history, a.identity, a.backend)


def _sol(lamports: int) -> str:
    return f"{decimal.Decimal(lamports) / LAMPORTS_PER_SOL:f} SOL"


def _tx_json(tx: Any, **extra: Any) -> dict[str, Any]:
    return {**extra, "signature": tx.signature, "compute_units": tx.compute_units, "fee": tx.fee}


def _cost(tx: Any) -> str:
    """What a transaction cost, as the chain reported it (an endpoint that keeps no details: 0 CU)."""
    return f"signature {tx.signature}, {tx.compute_units} compute units, fee {tx.fee} lamports"


def parse_price(text: str) -> int:
    """``--price`` in SOL (up to 9 decimals) -> lamports; one-line error otherwise."""
    try:
        value = decimal.Decimal(text.strip())
    except decimal.InvalidOperation:
        value = decimal.Decimal("NaN")
    lamports = value * LAMPORTS_PER_SOL
    if not value.is_finite() or value <= 0 or lamports != lamports.to_integral_value() or lamports >= 2**64:
        raise FednodeError(f"invalid --price {text!r}: a positive amount of SOL with at most 9 decimals, e.g. 1.5")
    return int(lamports)


def parse_bps(text: str) -> int:
    if not text.isdigit() or int(text) > 10_000:
        raise FednodeError(f"invalid share {text!r}: basis points 0..10000 (100 = 1%)")
    return int(text)


def _address(what: str, text: str) -> Any:
    from fednode.chain.config import parse_pubkey

    return parse_pubkey(what, text)


def _repo_id(node: Node, text: str) -> tuple[bytes, str]:
    """REPO_OR_REPO_ID: a local repository's name, or a repository id (base58 or 64 hex); the name
    is the local one where this node has the repository."""
    from fednode.history.repos import parse_repo_id

    raw = parse_repo_id(text)
    if raw is None and len(text) == 64:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = None
    for info in node.history.repos():
        if text == info.name or raw == info.repo_id:
            return info.repo_id, info.name
    if raw is None:
        raise FednodeError(f"no repository {text!r} here, and it is not a repository id")
    return raw, text


@click.group()
def nft() -> None:
    """The repository's NFT (Token-2022): mint, show, transfer, sell, contributors' share and claims."""


@nft.command("mint")
@click.argument("repo")
@click.option("-b", "--branch", default="main", show_default=True, help="Branch whose anchored head the NFT shows.")
@click.option("--share", "share", default="0", help="Contributors' share of every sale, basis points (100 = 1%).")
@click.option("--lock-share", is_flag=True, help="Fix the share for ever (set_share is then refused).")
@click.option("--license", "license_text", default=None, help="License named in the metadata document.")
@click.option("--symbol", default="FED", show_default=True)
@json_option
@click.pass_context
def mint(ctx: click.Context, repo: str, branch: str, share: str, lock_share: bool, license_text: str | None,
         symbol: str, as_json: bool) -> None:  # fmt: skip
    """Mint REPO's NFT and bind the repository to it (one transaction; owner only)."""
    bps = parse_bps(share)
    if not symbol or len(symbol.encode()) > 10:
        raise FednodeError(f"invalid --symbol {symbol!r}: 1..10 bytes")

    async def go(a: Anchorer, node: Node) -> Any:
        return await _client(a).mint(node.repo(repo), branch, bps, lock_share, symbol, license_text)

    done = session.run(get_node(ctx), go)
    data = {"mint": str(done.mint), "uri": done.uri, "head": done.head, "signature": done.tx.signature,
            "compute_units": done.tx.compute_units, "fee": done.tx.fee}  # fmt: skip
    if as_json:
        emit_json(data)
        return
    out.print(f"minted NFT of {repo}: mint {done.mint}", markup=False)
    out.print(f"uri        {done.uri}", markup=False)
    out.print(f"head       {done.head} ({branch})", markup=False)
    out.print(f"signature  {done.tx.signature} ({done.tx.compute_units} compute units, fee {done.tx.fee} lamports)",
              markup=False)  # fmt: skip


@nft.command("refresh")
@click.argument("repo")
@click.option("--license", "license_text", default=None, help="License named in the document (default: kept).")
@json_option
@click.pass_context
def refresh(ctx: click.Context, repo: str, license_text: str | None, as_json: bool) -> None:
    """Point REPO's NFT at a new metadata document for its anchored head now (holder only)."""

    async def go(a: Anchorer, node: Node) -> Any:
        return await _client(a).refresh(node.repo(repo), license_text)

    done = session.run(get_node(ctx), go)
    if as_json:
        emit_json(_tx_json(done.tx, uri=done.uri, head=done.head))
        return
    out.print(f"uri of {repo}'s NFT: {done.uri} (head {done.head[:16]}; {_cost(done.tx)})", markup=False)


def _print_view(view: NftView) -> None:
    data = view.to_json()
    if view.holder_holds:
        holder = f"{data['holder']} (holds it)"
    else:
        holder = (f"{data['holder']} (recorded; its token account does not hold the NFT: it moved outside "
                  "fednode, run 'fednode nft sync')")  # fmt: skip
    rows = [("mint", data["mint"]), ("holder", holder), ("name", data["name"]), ("symbol", data["symbol"]),
            ("uri", data["uri"]), ("repo", data["repo_field"]), ("head", data["head"]),
            ("share", f"{view.record.share_bps} bps" + (" (locked)" if view.record.share_locked else "")),
            ("sales", str(view.record.sale_seq))]  # fmt: skip
    for label, value in rows:  # name, symbol and uri are the holder's: no terminal escapes reach the screen
        out.print(f"{label:11}{first_line(str(value), 1000)}", markup=False)
    for key, weight, owed in data["contributors"]:
        waiting = f", owed {_sol(owed)} waiting in the nft account ('fednode nft claim')" if owed else ""
        out.print(f"contributor {key} weight {weight}{waiting}", markup=False)


@nft.command("show")
@click.argument("repo_or_id")
@json_option
@click.pass_context
def show(ctx: click.Context, repo_or_id: str, as_json: bool) -> None:
    """The NFT of a repository as the chain holds it: holder, metadata, share, contributors."""
    node = get_node(ctx)
    repo_id, name = _repo_id(node, repo_or_id)

    async def go(a: Anchorer, node: Node) -> NftView:
        return await _client(a).require(repo_id, name)

    from fednode.workflows.nft import read_document

    view = session.run(node, go)
    doc, why = read_document(node.store, view.metadata.uri if view.metadata else None)
    if as_json:
        emit_json({**view.to_json(), "document": doc, "document_note": why or None})
        return
    _print_view(view)
    if doc is None:
        out.print(f"document   {why}", markup=False)
    else:
        attrs = {a["trait_type"]: a["value"] for a in doc["attributes"]}
        out.print(f"document   {doc['name']}: {attrs.get('commits')} commit(s) at head "
                  f"{str(attrs.get('head'))[:16]}, license {attrs.get('license')}, image {doc['image']}",
                  markup=False)  # fmt: skip


@nft.command("transfer")
@click.argument("repo", metavar="REPO_OR_ID")
@click.argument("to")
@json_option
@click.pass_context
def transfer(ctx: click.Context, repo: str, to: str, as_json: bool) -> None:
    """Give REPO's NFT (and with it control of the repository) to wallet TO."""
    dest = _address("recipient", to)
    node = get_node(ctx)
    repo_id, name = _repo_id(node, repo)

    async def go(a: Anchorer, node: Node) -> Any:
        return await _client(a).transfer(repo_id, name, dest)

    tx = session.run(node, go)
    if as_json:
        emit_json(_tx_json(tx, holder=str(dest)))
        return
    out.print(f"transferred the NFT of {repo} to {dest}; it now controls the repository ({_cost(tx)})",
              markup=False)  # fmt: skip


@nft.command("offer")
@click.argument("repo", metavar="REPO_OR_ID")
@click.option("--price", required=True, help="Price in SOL (paid by the buyer, split with the contributors).")
@click.option("--to", "buyer", required=True, help="The buyer's wallet address.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@json_option
@click.pass_context
def offer(ctx: click.Context, repo: str, price: str, buyer: str, out_path: Path, as_json: bool) -> None:
    """Write a sale offer: one transaction signed by this node (the seller), for the buyer to accept."""
    from fednode.atomic import atomic_file

    lamports, to = parse_price(price), _address("buyer", buyer)
    node = get_node(ctx)
    repo_id, name = _repo_id(node, repo)

    async def go(a: Anchorer, node: Node) -> Any:
        if a.backend.kind == "embedded":
            raise FednodeError("the embedded chain is this node's alone, so no buyer can accept an offer on it: use "
                               "one chain with the buyer ('fednode devchain' or a cluster URL)")  # fmt: skip
        client = _client(a)
        made = await client.offer(repo_id, name, lamports, to)
        paid = [lam for _, _, lam in made.contributors]
        return made, await client.waiting(await client.require(repo_id, name), paid, to)

    made, waits = session.run(node, go)
    with atomic_file(out_path) as f:
        f.write(json.dumps(made.to_json(), indent=2).encode() + b"\n")
    paid = sum(lam for _, _, lam in made.contributors)
    if as_json:
        emit_json({**made.to_json(), "out": str(out_path), "seller_lamports": lamports - paid, "waits": waits})
        return
    out.print(f"offer written to {out_path}: the NFT of {repo} (mint {made.mint}) to {to} for {_sol(lamports)} "
              f"(seller {_sol(lamports - paid)}, contributors {_sol(paid)})", markup=False)  # fmt: skip
    for (key, _, lam), wait in zip(made.contributors, waits, strict=True):
        if wait:
            out.print(f"contributor {key}'s {_sol(lam)} {WAITS} (as of now)", markup=False)
    out.print(f"{VALIDITY}; it is void once the NFT changes hands", markup=False)


@nft.command("accept")
@click.argument("offer_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="Do not ask before signing and submitting.")
@json_option
@click.pass_context
def accept(ctx: click.Context, offer_file: Path, yes: bool, as_json: bool) -> None:
    """Check an offer against the chain, then sign and submit it (this node is the buyer)."""
    from fednode.chain.nftoffer import MAX_OFFER_BYTES, parse_offer

    try:
        with offer_file.open("rb") as f:
            raw = f.read(MAX_OFFER_BYTES + 1)  # parse_offer refuses more: read no further
    except OSError as exc:
        raise FednodeError(f"cannot read {offer_file}: {exc.strerror}") from None
    parsed = parse_offer(raw)
    if as_json and not yes:
        raise FednodeError("--json does not ask: add --yes once you have checked the offer")

    async def go(a: Anchorer, node: Node) -> Any:
        client = _client(a)
        review = await client.review_offer(parsed)
        if not as_json:
            for line in _review_lines(review):
                out.print(line, markup=False)
        if not yes and not click.confirm("sign and submit?", default=False):
            raise FednodeError("not accepted: nothing was signed or sent")
        return await client.accept(review)

    tx = session.run(get_node(ctx), go)
    if as_json:
        emit_json(_tx_json(tx, holder=str(parsed.buyer), price_lamports=parsed.price))
        return
    out.print(f"bought: the NFT is this node's, and with it control of the repository ({_cost(tx)})", markup=False)


def _review_lines(review: Any) -> list[str]:
    from fednode.history import repo_id_text

    o = review.offer
    meta = review.view.metadata
    lines = [f"buying the NFT of {meta.name if meta else '?'} (repository {repo_id_text(o.repo_id)}, mint {o.mint})",
             f"from {o.seller} for {_sol(o.price)}: the seller gets {_sol(review.seller_lamports)}; the "
             f"contributors' share is {o.share_bps} bps"]  # fmt: skip
    for (key, weight, _), lam, wait in zip(o.contributors, review.paid, review.waits, strict=True):
        lines.append(f"  contributor {key} (weight {weight}) gets {_sol(lam)}" + (f", which {WAITS}" if wait else ""))
    return lines


@nft.command("share")
@click.argument("repo", metavar="REPO_OR_ID")
@click.argument("bps")
@json_option
@click.pass_context
def share(ctx: click.Context, repo: str, bps: str, as_json: bool) -> None:
    """Set the contributors' share of every sale to BPS basis points (holder only, unless locked)."""
    value = parse_bps(bps)
    node = get_node(ctx)
    repo_id, name = _repo_id(node, repo)

    async def go(a: Anchorer, node: Node) -> Any:
        return await _client(a).set_share(repo_id, name, value)

    tx = session.run(node, go)
    if as_json:
        emit_json(_tx_json(tx, share_bps=value))
        return
    out.print(f"contributors' share of {repo}: {value} bps ({_cost(tx)})", markup=False)


@nft.command("sync")
@click.argument("repo_or_id")
@click.option("--holder", default=None, help="The wallet that now holds the NFT (default: this node, else the "
                                              "recorded holder).")  # fmt: skip
@json_option
@click.pass_context
def sync(ctx: click.Context, repo_or_id: str, holder: str | None, as_json: bool) -> None:
    """Record on chain who holds the NFT now (anyone may; after a transfer outside fednode)."""
    who = _address("holder", holder) if holder else None
    node = get_node(ctx)
    repo_id, name = _repo_id(node, repo_or_id)

    async def go(a: Anchorer, node: Node) -> Any:
        return await _client(a).sync(repo_id, name, who)

    recorded, tx = session.run(node, go)
    if as_json:
        emit_json(_tx_json(tx, holder=str(recorded)) if tx else {"holder": str(recorded), "signature": None})
        return
    if tx is None:
        out.print(f"holder already recorded: {recorded}", markup=False)
    else:
        out.print(f"recorded holder {recorded} ({_cost(tx)})", markup=False)


@nft.command("claim")
@click.argument("repo_or_id")
@click.option("--contributor", default=None, help="The contributor to pay (default: this node).")
@json_option
@click.pass_context
def claim(ctx: click.Context, repo_or_id: str, contributor: str | None, as_json: bool) -> None:
    """Pay a contributor what sales left owed to it in the nft account (anyone may; this node pays the fee)."""
    who = _address("contributor", contributor) if contributor else None
    node = get_node(ctx)
    repo_id, name = _repo_id(node, repo_or_id)

    async def go(a: Anchorer, node: Node) -> Any:
        return await _client(a).claim(repo_id, name, who)

    paid_to, owed, tx = session.run(node, go)
    if as_json:
        emit_json(_tx_json(tx, contributor=str(paid_to), lamports=owed))
        return
    out.print(f"paid {_sol(owed)} owed by the NFT of {repo_or_id} to {paid_to} ({_cost(tx)})", markup=False)


COMMANDS = [nft]
