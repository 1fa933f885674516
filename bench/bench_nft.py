"""Compute units, fees and sizes of the model-NFT transactions (issue 14) in LiteSVM, with the real
Token-2022 program and our compiled federity program.

    python bench/bench_nft.py

Measures: the NFT mint transaction (fednode.chain.nftmint) and bind_nft; a plain Token-2022 transfer
and sync_holder; the sale transaction an offer carries (buyer's token account + federity sell) with
0, 3 and 8 contributors, and with 3 where one wallet is empty so its part waits in the nft PDA
(owed), then the claim that pays it; merges and set_head that rewrite the metadata "head" field, next to the same
merge on a repository without an NFT. Targets: mint + bind <= 60k CU; sale with 8 contributors
<= 100k CU. Exits 1 if one is missed. (The CLI's offer/accept adds no instruction to the sale.)
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from py_ecc.optimized_bn128 import G1, curve_order, multiply, normalize
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.system_program import TransferParams
from solders.system_program import transfer as system_transfer
from solders.transaction import Transaction

from fednode.chain.backend import LiteSVMBackend, TxResult
from fednode.chain.client import FederityClient
from fednode.chain.nftmint import mint_nft_instructions
from fednode.chain.program import ed25519_proof, token_account_address
from programs.build import build
from protocol import chain as layout
from protocol import token2022 as tok
from protocol.chain import Kind

TARGETS = {"mint tx + bind_nft": 60_000, "sale, 8 contributors, new ATA": 100_000}
PROGRAM_ID = Keypair.from_seed(bytes([7]) * 32).pubkey()
OWNER, BUYER = Keypair.from_seed(bytes([1]) * 32), Keypair.from_seed(bytes([2]) * 32)
AUTHORS = [Keypair.from_seed(bytes([100 + i]) * 32) for i in range(8)]

Row = tuple[int, int, int]  # transaction CU, fee (lamports), wire bytes


def h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def g1(k: int) -> bytes:
    x, y = normalize(multiply(G1, k % curve_order))
    return int(x).to_bytes(32, "big") + int(y).to_bytes(32, "big")


class Bench:
    def __init__(self, elf: bytes) -> None:
        self.backend = LiteSVMBackend()
        self.backend.deploy(PROGRAM_ID, elf)
        for kp in (OWNER, BUYER, *AUTHORS):
            self.backend.airdrop(kp.pubkey(), 10**12)
        self.client = FederityClient(self.backend, PROGRAM_ID)
        self.rows: dict[str, Row] = {}
        self.mints = 0

    def send(self, name: str, ixs: Sequence[Instruction], signers: Sequence[Keypair]) -> TxResult:
        tx = self.backend.send(ixs, signers)
        message = Message(list(ixs), signers[0].pubkey())
        size = len(bytes(Transaction(list(signers), message, self.backend.svm.latest_blockhash())))
        if name not in self.rows or tx.compute_units > self.rows[name][0]:  # repeated: keep the worst
            self.rows[name] = (tx.compute_units, tx.fee, size)
        return tx

    def repo(self, name: str) -> bytes:
        """A repository created by OWNER with a genesis on main; its members are AUTHORS."""
        body = h(name)
        rid = layout.commit_hash(bytes(OWNER.pubkey()), Kind.INIT, (), body)
        sig = bytes(OWNER.sign_message(rid))
        self.client.create_repo(OWNER, rid, body, sig)
        self.client.anchor_commit(OWNER, rid, body, sig, kind=Kind.INIT, branch="main")
        for a in AUTHORS:
            self.client.add_member(OWNER, rid, a.pubkey())
        return rid

    def updates(self, rid: bytes, n: int, tag: str) -> list[bytes]:
        """n committed updates (one per author, off-branch) of the genesis."""
        out = []
        for i in range(n):
            author, label = AUTHORS[i], f"{tag}-{i}"
            commit = layout.commit_hash(bytes(author.pubkey()), Kind.UPDATE, (rid,), h(label))
            self.client.anchor_commit(author, rid, h(label), bytes(author.sign_message(commit)), kind=Kind.UPDATE,
                                      branch=None, parents=(rid,), commitment=g1(i + 1))  # fmt: skip
            out.append(commit)
        return out

    def merge(self, name: str, rid: bytes, inputs: list[bytes], first: int = 0) -> None:
        """Merge ``inputs`` (updates ``first``.. of ``updates``: commitment (first + k + 1) * G) with
        weights 1..n, committed: C = sum_k w_k * C_k."""
        n = len(inputs)
        body = layout.Merge(h(name), layout.branch_hash("main"), tuple(inputs), tuple(range(1, n + 1)),
                            g1(sum((k + 1) * (first + k + 1) for k in range(n))))  # fmt: skip
        commit = body.commit_hash(bytes(OWNER.pubkey()))
        nft = self.client.nft_ref(rid, OWNER.pubkey())
        ixs = [ed25519_proof(OWNER.pubkey(), bytes(OWNER.sign_message(commit)), commit),
               self.client.program.merge(OWNER.pubkey(), rid, body, nft=nft)]
        self.send(name, ixs, [OWNER])

    def mint(self, rid: bytes) -> Pubkey:
        self.mints += 1  # seeded: the same addresses (and bump searches) every run
        mint = Keypair.from_seed(hashlib.sha256(b"bench_nft mint %d" % self.mints).digest())
        fields = {"repo": rid.hex(), "head": rid.hex()}
        rent = self.backend.svm.minimum_balance_for_rent_exemption
        ixs = mint_nft_instructions(OWNER.pubkey(), mint.pubkey(), self.client.program.repo_address(rid),
                                    "a model", "FED", "ipfs://bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
                                    fields, lambda size: int(rent(size)))  # fmt: skip
        self.send("NFT mint tx (10 instructions)", ixs, [OWNER, mint])
        bind = self.client.program.bind_nft(OWNER.pubkey(), rid, mint.pubkey(),
                                            token_account_address(OWNER.pubkey(), mint.pubkey()), 500, False, "main")
        self.send("bind_nft", [bind], [OWNER])
        return mint.pubkey()

    def sale(self, name: str, rid: bytes, seller: Keypair, buyer: Keypair, mint: Pubkey, price: int = 10**9) -> None:
        nft = self.client.nft(rid)
        assert nft is not None
        keys = [Pubkey.from_bytes(c[0]) for c in nft.contributors]
        ixs = [tok.create_associated_token_account_idempotent(buyer.pubkey(), buyer.pubkey(), mint),
               self.client.program.sell(seller.pubkey(), buyer.pubkey(), rid, mint, price, nft.sale_seq, keys)]
        self.send(name, ixs, [buyer, seller])


def run(elf: bytes) -> dict[str, Row]:
    b = Bench(elf)
    plain = b.repo("plain")
    b.merge("merge, 6 committed inputs, no NFT", plain, b.updates(plain, 6, "p"))

    rid = b.repo("bound")
    mint = b.mint(rid)
    b.merge("merge, 2 committed inputs + head", rid, b.updates(rid, 2, "a"))
    b.merge("merge, 6 committed inputs + head", rid, b.updates(rid, 6, "b"))
    head = b.client.head(rid, "main")
    assert head is not None
    b.send("set_head + head", [b.client.program.set_head(OWNER.pubkey(), rid, layout.branch_hash("main"), rid,
                                                         nft=b.client.nft_ref(rid, OWNER.pubkey()))], [OWNER])
    transfer = [tok.create_associated_token_account_idempotent(OWNER.pubkey(), BUYER.pubkey(), mint),
                tok.transfer_checked(token_account_address(OWNER.pubkey(), mint), mint,
                                     token_account_address(BUYER.pubkey(), mint), OWNER.pubkey(), 1, 0)]
    b.send("plain transfer (ATA + transfer_checked)", transfer, [OWNER])
    b.send("sync_holder", [b.client.program.sync_holder(rid, token_account_address(BUYER.pubkey(), mint))], [OWNER])
    b.sale("sale, 6 contributors, ATA exists", rid, BUYER, OWNER, mint)  # the merges above made 6 contributors

    rid3 = b.repo("three")
    mint3 = b.mint(rid3)
    b.merge("merge3", rid3, b.updates(rid3, 3, "c"))
    b.sale("sale, 3 contributors, new ATA", rid3, OWNER, BUYER, mint3)

    rid8 = b.repo("eight")
    mint8 = b.mint(rid8)
    eight = b.updates(rid8, 8, "e")
    for i in range(2):  # 8 committed inputs do not fit one NFT-bound merge (6 do)
        b.merge(f"merge8-{i}", rid8, eight[4 * i : 4 * i + 4], first=4 * i)
    b.sale("sale, 8 contributors, new ATA", rid8, OWNER, BUYER, mint8)
    rid0 = b.repo("zero")
    mint0 = b.mint(rid0)
    b.sale("sale, 0 contributors, new ATA", rid0, OWNER, BUYER, mint0)
    # an emptied wallet: its part (below the rent-exempt minimum) waits in the nft PDA; claim pays it later
    nft3 = b.client.nft(rid3)
    assert nft3 is not None
    empty = next(a for a in AUTHORS if bytes(a.pubkey()) == nft3.contributors[0][0])
    drain = TransferParams(from_pubkey=empty.pubkey(), to_pubkey=OWNER.pubkey(),
                           lamports=b.backend.balance(empty.pubkey()))
    b.send("drain", [system_transfer(drain)], [OWNER, empty])
    b.sale("sale, 3 contributors, 1 part owed, ATA exists", rid3, BUYER, OWNER, mint3, price=10**6)
    nft3 = b.client.nft(rid3)
    assert nft3 is not None and nft3.contributors[0][2] > 0 and b.backend.balance(empty.pubkey()) == 0
    b.backend.airdrop(empty.pubkey(), int(b.backend.svm.minimum_balance_for_rent_exemption(0)))
    b.send("claim (after funding the wallet)", [b.client.program.claim(rid3, 0, empty.pubkey())], [OWNER])
    rows = {k: v for k, v in b.rows.items() if not k.startswith(("merge3", "merge8", "drain"))}
    mint_cu, bind_cu = rows["NFT mint tx (10 instructions)"][0], rows["bind_nft"][0]
    rows["mint tx + bind_nft"] = (mint_cu + bind_cu, rows["NFT mint tx (10 instructions)"][1] + rows["bind_nft"][1],
                                  0)  # fmt: skip
    return rows


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        elf = build(Path(tmp))[3].read_bytes()
    rows = run(elf)
    print(f"{'transaction':<48} {'CU':>8} {'fee':>7} {'bytes':>6}  target")
    missed = 0
    for name, (cu, fee, size) in rows.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else f"<= {target:,}  {'PASS' if cu <= target else 'MISS'}"
        missed += target is not None and cu > target
        print(f"{name:<48} {cu:>8,} {fee:>7,} {size or '':>6}  {verdict}")
    print("mint and bind: the worst of 4 mints (CU varies with the bump searches of the mint address);")
    print("sale = the offer's transaction: create the buyer's token account (new ATA, or it exists) + sell")
    print("fees in lamports (5,000 per signature); rent deposits are not fees and are not counted")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
