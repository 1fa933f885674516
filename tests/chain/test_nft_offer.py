"""Selling a repository's NFT between two node homes on one real ``fednode devchain``: an offer
made by the seller and accepted by the buyer moves the NFT and the lamports exactly
(``protocol.chain.sale_amounts``); tampered, replayed and stale offers are refused by ``accept``
with one line naming the problem, and nothing is submitted (balances and holder unchanged)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner
from helpers import assert_one_line_error, copy_home, model_arrays, perturb, run_fednode, write_model
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer
from solders.transaction import Transaction
from test_devchain import copy_branch, devchain, program_cache  # noqa: F401  (fixtures)

from cli.app import main as cli_main
from fednode.chain.config import DEV_PROGRAM_ID
from fednode.chain.program import FederityProgram, token_account_address
from fednode.chain.rpc import RpcBackend
from fednode.node import init_home
from protocol import chain as layout
from protocol import token2022 as tok

SOL = 10**9


def fed(home: Path, *args: object, ok: bool = True, input: str | None = None) -> Any:
    result = CliRunner().invoke(cli_main, ["--home", str(home), *map(str, args)], catch_exceptions=False,
                                input=input)  # fmt: skip
    if ok:
        assert result.exit_code == 0, f"{args}: {result.output} {result.stderr}"
    return result


def fed_json(home: Path, *args: object) -> Any:
    return json.loads(fed(home, *args, "--json").stdout)


def make_home(tmp_path: Path, name: str, url: str) -> tuple[Path, Keypair]:
    key, home = Keypair(), tmp_path / name
    (tmp_path / f"{name}.key").write_text(key.to_json())
    init_home(home, tmp_path / f"{name}.key")
    fed(home, "chain", "use", "rpc", "--url", url)
    return home, key


class Chain:
    """Direct reads and raw transactions on the devchain (what a wallet would do)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _run(self, fn: Callable[[RpcBackend], Any]) -> Any:
        async def go() -> Any:
            backend = RpcBackend(self.url, DEV_PROGRAM_ID, faucet=True)
            try:
                return await fn(backend)
            finally:
                await backend.aclose()

        return trio.run(go)

    def balances(self, *keys: Pubkey) -> list[int]:
        async def read(b: RpcBackend) -> list[int]:
            return [await b.balance(k) for k in keys]

        return self._run(read)

    def airdrop(self, key: Pubkey, lamports: int) -> None:
        self._run(lambda b: b.airdrop(key, lamports))

    def send(self, ixs: list[Instruction], signer: Keypair) -> Any:
        return self._run(lambda b: b.send(ixs, [signer]))

    def blockhash(self) -> Any:
        return self._run(lambda b: b.latest_blockhash())


def resign(offer: dict, seller: Keypair, ixs: list[Instruction], payer: Pubkey) -> dict:
    """The offer with its transaction replaced by ``ixs`` signed by the seller (a seller who lies)."""
    blockhash = Transaction.from_bytes(base64.b64decode(offer["transaction"])).message.recent_blockhash
    tx = Transaction.new_unsigned(Message.new_with_blockhash(ixs, payer, blockhash))
    tx.partial_sign([seller], blockhash)
    return {**offer, "transaction": base64.b64encode(bytes(tx)).decode()}


def sale_ixs(offer: dict, seller: Pubkey, buyer: Pubkey, *, price: int | None = None, mint: Pubkey | None = None,
             contributors: list[Pubkey] | None = None) -> list[Instruction]:  # fmt: skip
    program = FederityProgram(DEV_PROGRAM_ID)
    repo_id = bytes(Pubkey.from_string(offer["repo"]))  # base58 of the 32-byte id
    mint = mint or Pubkey.from_string(offer["mint"])
    table = contributors if contributors is not None else [Pubkey.from_string(c[0]) for c in offer["contributors"]]
    return [tok.create_associated_token_account_idempotent(buyer, buyer, mint),
            program.sell(seller, buyer, repo_id, mint, offer["price_lamports"] if price is None else price,
                         offer["sale_seq"], table)]  # fmt: skip


@pytest.fixture
def market(tmp_path: Path, devchain: str) -> dict:  # noqa: F811
    """A seller holding the NFT of "demo" (share 10%, two contributors from an anchored merge), a
    funded buyer, and a third wallet; all on one devchain."""
    seller, seller_key = make_home(tmp_path, "seller", devchain)
    buyer, buyer_key = make_home(tmp_path, "buyer", devchain)
    third, third_key = make_home(tmp_path, "third", devchain)
    arrays = model_arrays(0)
    models = [write_model(tmp_path / f"m{k}.safetensors", perturb(arrays, k) if k else arrays) for k in range(4)]
    fed(seller, "repo", "create", "demo", "--from", models[0])
    fed(seller, "commit", "--from", models[1], "-m", "seller round")
    fed(seller, "anchor", "main")
    minted = fed_json(seller, "nft", "mint", "demo", "--share", "1000")
    # A member's update merged by the holder: the program tallies both authors' weights.
    member = tmp_path / "member"
    copy_home(seller, member)
    run_fednode(member, "init", "--force")
    fed(member, "chain", "use", "rpc", "--url", devchain)
    member_key = Pubkey.from_string(json.loads(run_fednode(member, "id", "--json").stdout)["address"])
    fed(seller, "chain", "members", "add", member_key)
    fed(member, "branch", "alice", "main")
    fed(member, "commit", "-b", "alice", "--from", models[2], "-m", "member round")
    fed(member, "anchor", "alice")
    copy_branch(member, seller, "demo", "alice")
    fed(seller, "commit", "--from", models[3], "-m", "seller round 2")
    fed(seller, "merge", "alice", "--weights", "equal")
    fed(seller, "anchor", "main")
    chain = Chain(devchain)
    chain.airdrop(buyer_key.pubkey(), 20 * SOL)
    chain.airdrop(third_key.pubkey(), 2 * SOL)
    return {"seller": seller, "seller_key": seller_key, "buyer": buyer, "buyer_key": buyer_key, "third": third,
            "third_key": third_key, "member": member, "member_key": member_key,
            "mint": Pubkey.from_string(minted["mint"]), "chain": chain, "tmp": tmp_path}  # fmt: skip


def refused(m: dict, offer: dict, *needles: str, home: Path | None = None, answer: str | None = None) -> None:
    """``accept`` of ``offer`` fails with one line holding ``needles``; nothing moved on chain."""
    path = m["tmp"] / "tampered.json"
    path.write_text(json.dumps(offer))
    keys = (m["seller_key"].pubkey(), m["buyer_key"].pubkey(), m["member_key"])
    before = (m["chain"].balances(*keys), fed_json(m["seller"], "nft", "show", "demo"))
    flags = ["--yes"] if answer is None else []
    result = fed(home or m["buyer"], "nft", "accept", path, *flags, ok=False, input=answer)
    assert result.exit_code == 1, result.output
    assert_one_line_error(result.stderr, *needles)
    assert (m["chain"].balances(*keys), fed_json(m["seller"], "nft", "show", "demo")) == before


def make_offer(m: dict, price: str = "1.5") -> dict:
    path = m["tmp"] / "offer.json"
    text = fed(m["seller"], "nft", "offer", "demo", "--price", price, "--to", m["buyer_key"].pubkey(),
               "--out", path).stdout  # fmt: skip
    assert "offer written to" in text and "150 newer blockhashes" in text
    return json.loads(path.read_text())


def test_offer_accept_moves_nft_and_lamports_exactly(market: dict) -> None:
    m = market
    seller, buyer = m["seller_key"].pubkey(), m["buyer_key"].pubkey()
    before = fed_json(m["seller"], "nft", "show", "demo")
    assert before["holder"] == str(seller) and before["sale_seq"] == 0
    contributors = before["contributors"]
    assert {c[0] for c in contributors} == {str(seller), str(m["member_key"])}, contributors
    offer = make_offer(m)
    assert offer["price_lamports"] == 1_500_000_000 and offer["buyer"] == str(buyer)
    assert [c[2] for c in contributors] == [0, 0]  # nothing owed: every part is paid directly
    seller_amount, paid = layout.sale_amounts(offer["price_lamports"], 1000, [c[1] for c in contributors])
    assert offer["contributors"] == [[k, w, lam] for (k, w, _), lam in zip(contributors, paid, strict=True)]
    keys = (seller, buyer, m["member_key"])
    b0 = m["chain"].balances(*keys)
    assert fed(m["buyer"], "nft", "accept", m["tmp"] / "offer.json", "--json", ok=False).exit_code == 1  # --yes
    done = fed_json(m["buyer"], "nft", "accept", m["tmp"] / "offer.json", "--yes")
    assert done["holder"] == str(buyer) and done["compute_units"] > 0 and done["fee"] == 10_000, done
    b1 = m["chain"].balances(*keys)
    to_seller = seller_amount + paid[[c[0] for c in contributors].index(str(seller))]
    to_member = paid[[c[0] for c in contributors].index(str(m["member_key"]))]
    ata_rent = m["chain"].balances(token_account_address(buyer, m["mint"]))[0]
    assert b1[0] - b0[0] == to_seller and b1[2] - b0[2] == to_member
    assert b0[1] - b1[1] == offer["price_lamports"] + ata_rent + 10_000  # price + its token account + 2 signatures
    after = fed_json(m["buyer"], "nft", "show", offer["repo"])  # by id: the buyer has no copy of the repository
    assert after["holder"] == str(buyer) and after["holder_holds"] is True and after["sale_seq"] == 1
    assert after["document"] is None and "not in this node's store" in after["document_note"]  # minted elsewhere
    # The same offer again: the sale it names already happened.
    refused(m, offer, "stale", "already executed")


def test_an_expired_offer_is_refused_by_the_chain(market: dict) -> None:
    """What the offer's output promises: valid until 150 newer blockhashes (devchain: one per transaction)."""
    m = market
    offer = make_offer(m)
    for _ in range(151):  # each airdrop is a transaction: the next one gets a new blockhash
        m["chain"].airdrop(m["third_key"].pubkey(), 1)
    refused(m, offer, "offer expired", "nothing happened")


def test_accept_asks_first(market: dict) -> None:
    offer = make_offer(market)
    refused(market, offer, "not accepted", "nothing was signed or sent", answer="n\n")
    text = fed(market["buyer"], "nft", "accept", market["tmp"] / "tampered.json", input="y\n").stdout
    assert "the seller gets" in text and "contributors' share is 1000 bps" in text and "bought" in text


def test_tampered_offers_are_refused_and_nothing_is_sent(market: dict) -> None:
    m = market
    seller_key, seller, buyer = m["seller_key"], m["seller_key"].pubkey(), m["buyer_key"].pubkey()
    offer = make_offer(m)
    refused(m, {**offer, "price_lamports": 1}, "price", "1500000000")  # the file says less than the tx
    refused(m, resign(offer, seller_key, sale_ixs(offer, seller, buyer, price=3 * SOL), buyer), "price")
    other = m["third_key"].pubkey()
    refused(m, resign(offer, seller_key, sale_ixs(offer, seller, other), other), "buyer")
    refused(m, offer, "for buyer", home=m["third"])  # accepted by a node that is not the buyer
    fake = Keypair().pubkey()
    refused(m, {**offer, "mint": str(fake)}, "mint", str(fake))
    refused(m, resign(offer, seller_key, sale_ixs(offer, seller, buyer, mint=fake), buyer), "mint")
    extra = transfer(TransferParams(from_pubkey=buyer, to_pubkey=seller, lamports=SOL))
    refused(m, resign(offer, seller_key, [*sale_ixs(offer, seller, buyer), extra], buyer), "extra instruction",
            "System program")  # fmt: skip
    refused(m, resign(offer, seller_key, sale_ixs(offer, seller, buyer, contributors=[]), buyer),
            "0 contributor account(s) instead of 2")  # fmt: skip
    # The price changed in the file and the transaction alike, without the seller's signature.
    tx = Transaction.from_bytes(base64.b64decode(offer["transaction"]))
    forged = Transaction.new_unsigned(Message.new_with_blockhash(sale_ixs(offer, seller, buyer, price=1), buyer,
                                                                 tx.message.recent_blockhash))  # fmt: skip
    forged = Transaction.populate(forged.message, list(tx.signatures))
    refused(m, {**offer, "price_lamports": 1, "transaction": base64.b64encode(bytes(forged)).decode()}, "signature")
    assert fed_json(m["seller"], "nft", "show", "demo")["holder"] == str(seller)
    # Offers only come from the holder, to someone else.
    for home, to, needle in ((m["buyer"], other, "does not hold"), (m["seller"], seller, "the buyer is this node")):
        result = fed(home, "nft", "offer", offer["repo"], "--price", "1", "--to", to, "--out", m["tmp"] / "x.json",
                     ok=False)  # fmt: skip
        assert result.exit_code == 1 and not (m["tmp"] / "x.json").exists()
        assert_one_line_error(result.stderr, needle)


def test_stale_offers_and_a_seller_who_no_longer_holds(market: dict) -> None:
    m = market
    seller_key, seller, third = m["seller_key"], m["seller_key"].pubkey(), m["third_key"].pubkey()
    old = make_offer(m)
    fed(m["seller"], "nft", "transfer", "demo", third)  # and back: the NFT changed hands twice since
    fed(m["third"], "nft", "transfer", old["repo"], seller)  # by id: the third wallet has no copy
    refused(m, old, "stale")
    offer = make_offer(m, "2")
    assert offer["sale_seq"] == 2
    # The seller moves the token with a plain wallet transfer (no sync): the record still names it.
    mint = m["mint"]
    m["chain"].send([tok.create_associated_token_account_idempotent(seller, third, mint),
                     tok.transfer_checked(token_account_address(seller, mint), mint,
                                          token_account_address(third, mint), seller, 1, 0)], seller_key)  # fmt: skip
    refused(m, offer, "does not hold the NFT")


def test_a_failed_mint_says_what_stayed(tmp_path: Path, devchain: str) -> None:  # noqa: F811
    """A mint the chain refuses (here: a wallet without funds and no faucet) creates no NFT; the one
    line says so and names the metadata files that stay pinned."""
    home, key = make_home(tmp_path, "poor", devchain)
    fed(home, "repo", "create", "demo", "--from", write_model(tmp_path / "m.safetensors", model_arrays(0)))
    fed(home, "anchor", "main")
    chain = Chain(devchain)
    (balance,) = chain.balances(key.pubkey())
    chain.send([transfer(TransferParams(from_pubkey=key.pubkey(), to_pubkey=Keypair().pubkey(),
                                        lamports=balance - 5000))], key)  # fmt: skip
    assert chain.balances(key.pubkey()) == [0]
    config = home / "config.toml"
    config.write_text(config.read_text() + "airdrop = false\n")  # [chain] is the last table
    result = fed(home, "nft", "mint", "demo", ok=False)
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "no NFT was minted", "stay pinned here under source 'nft'")
    assert_one_line_error(fed(home, "nft", "show", "demo", ok=False).stderr, "has no NFT")
    pins = {p["cid"] for p in fed_json(home, "ipfs", "pins")}
    named = [word for word in result.stderr.split() if word.startswith("bafk")]
    assert len(named) == 2 and set(named) <= pins, (named, pins)


def test_difference_names_what_changed() -> None:
    """nftoffer.difference on messages built here (no chain): each change is named in words."""
    from solders.hash import Hash

    from fednode.chain.nftoffer import difference

    seller, buyer, mint = Keypair().pubkey(), Keypair().pubkey(), Keypair().pubkey()
    contributors = [Keypair().pubkey(), Keypair().pubkey()]
    offer = {"repo": str(Keypair().pubkey()), "mint": str(mint), "price_lamports": 5 * SOL, "sale_seq": 3,
             "contributors": [[str(c), 1, 0] for c in contributors]}  # fmt: skip
    blockhash = Hash.new_unique()

    def msg(ixs: list[Instruction], payer: Pubkey = buyer, bh: Any = blockhash) -> Message:
        return Message.new_with_blockhash(ixs, payer, bh)

    good = sale_ixs(offer, seller, buyer)
    expected = msg(good)
    extra = transfer(TransferParams(from_pubkey=buyer, to_pubkey=seller, lamports=1))
    cases = {
        "price: the transaction pays 1 lamports, the offer says 5000000000": msg(sale_ixs(offer, seller, buyer,
                                                                                          price=1)),
        "extra instruction(s) #0 (System program)": msg([extra, *good]),
        "extra instruction(s) #2 (System program)": msg([*good, extra]),
        "missing instruction(s) #0 (Associated Token Account program)": msg(good[1:]),
        "other accounts as seller, seller token account": msg(sale_ixs(offer, Keypair().pubkey(), buyer)),
        "other accounts as buyer's token account, mint": msg(sale_ixs(offer, seller, buyer, mint=Keypair().pubkey())),
        "1 contributor account(s) instead of 2": msg(sale_ixs(offer, seller, buyer, contributors=contributors[:1])),
        "other accounts as contributor 2": msg(sale_ixs(offer, seller, buyer,
                                                        contributors=[contributors[0], Keypair().pubkey()])),
        "fee payer": msg(good, payer=seller),
        "blockhash": msg(good, bh=Hash.new_unique()),
    }  # fmt: skip
    for words, actual in cases.items():
        assert bytes(actual) != bytes(expected)
        said = difference(expected, actual, DEV_PROGRAM_ID)
        assert words in said, (words, said)


def test_an_empty_wallet_part_waits_in_the_nft_account_and_is_claimed(market: dict) -> None:
    """The member empties its wallet: the sale still goes through; its small part waits in the nft
    account (offer, review and show say so); a claim before the wallet is funded is refused with
    one line and moves nothing; afterwards anyone's claim pays exactly what is owed, once."""
    from cli.commands.nft import _sol
    from fednode.node import open_node

    m = market
    chain, member = m["chain"], m["member_key"]
    node = open_node(m["member"])
    try:
        member_kp = node.identity.keypair
    finally:
        node.close()
    (balance,) = chain.balances(member)
    chain.send([transfer(TransferParams(from_pubkey=member, to_pubkey=Keypair().pubkey(), lamports=balance - 5000))],
               member_kp)  # fmt: skip
    assert chain.balances(member) == [0]
    rent0 = chain._run(lambda b: b.minimum_balance(0))
    path = m["tmp"] / "small.json"
    text = fed(m["seller"], "nft", "offer", "demo", "--price", "0.01", "--to", m["buyer_key"].pubkey(),
               "--out", path).stdout  # fmt: skip
    offer = json.loads(path.read_text())
    part = next(lam for k, _, lam in offer["contributors"] if k == str(member))
    assert 0 < part < rent0, (part, rent0)  # S = 1,000,000 lamports shared by two: below 890,880
    assert f"contributor {member}'s" in text and "will wait in the nft account" in text
    seller, buyer = m["seller_key"].pubkey(), m["buyer_key"].pubkey()
    nft_pda = FederityProgram(DEV_PROGRAM_ID).nft_address(bytes(Pubkey.from_string(offer["repo"])))
    keys = (seller, buyer, member, nft_pda)
    b0 = chain.balances(*keys)
    review = fed(m["buyer"], "nft", "accept", path, input="y\n").stdout
    assert f"contributor {member}" in review and "which will wait in the nft account" in review and "bought" in review
    b1 = chain.balances(*keys)
    assert b1[2] == 0 and b1[3] - b0[3] == part  # the part waits in the nft account, not in the wallet
    assert b1[0] - b0[0] == offer["price_lamports"] - part  # the seller's own part and the rest are paid
    shown = fed_json(m["buyer"], "nft", "show", offer["repo"])
    assert [c[2] for c in shown["contributors"] if c[0] == str(member)] == [part]
    assert f"owed {_sol(part)} waiting" in fed(m["buyer"], "nft", "show", offer["repo"]).stdout
    # before the wallet is funded: refused in one line, nothing moves
    result = fed(m["third"], "nft", "claim", offer["repo"], "--contributor", member, ok=False)
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "rent-exempt minimum", "fund it with at least")
    assert chain.balances(member, nft_pda) == [0, b1[3]]
    chain.airdrop(member, rent0)
    done = fed_json(m["third"], "nft", "claim", offer["repo"], "--contributor", member)
    assert (done["contributor"], done["lamports"]) == (str(member), part) and done["fee"] == 5000
    assert chain.balances(member, nft_pda) == [rent0 + part, b0[3]]
    result = fed(m["third"], "nft", "claim", offer["repo"], "--contributor", member, ok=False)
    assert_one_line_error(result.stderr, "nothing is owed")
    assert chain.balances(member, nft_pda) == [rent0 + part, b0[3]]


def test_a_deeply_nested_offer_file_is_refused_not_a_crash() -> None:
    """An offer file comes from anyone; with py_ecc's recursion limit (100,000) the stdlib parser
    overflowed the C stack on 60,000 nested brackets: a segmentation fault, not an error."""
    import sys

    from fednode.chain.nftoffer import parse_offer
    from fednode.errors import FednodeError

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        with pytest.raises(FednodeError, match="malformed offer: not JSON"):
            parse_offer(b"[" * 60_000)
    finally:
        sys.setrecursionlimit(limit)
