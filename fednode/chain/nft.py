"""A repository's Token-2022 NFT from the node's side: mint and bind it, read it, transfer it,
offer and accept a sale, set the contributors' share, sync the recorded holder, claim what a
sale left owed to a contributor (a part too small for its empty wallet waits in the nft PDA).

Every command checks what the chain says first and refuses in one line before it builds or sends
anything; each sends ONE transaction, so it happens whole or not at all. The mint keypair is
drawn here and dropped after the mint transaction: its mint authority is removed in that same
transaction, so the key can do nothing afterwards. Offers: fednode/chain/nftoffer.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import Transaction

from fednode.chain.aio import AsyncChainBackend, ChainUnavailable
from fednode.chain.anchoring import explain
from fednode.chain.backend import ChainError, TxResult
from fednode.chain.nftmint import MAX_NAME_BYTES, MAX_SYMBOL_BYTES, mint_nft_instructions
from fednode.chain.nftoffer import Offer, difference
from fednode.chain.program import FederityProgram, token_account_address
from fednode.errors import FednodeError
from fednode.history import History, RepoInfo, repo_id_text
from fednode.identity import Identity
from fednode.nft.document import explorer_url
from fednode.workflows import nft as nftwork
from protocol import chain as layout
from protocol import token2022 as tok
from protocol.multiformats import b58encode

PACKET_DATA_SIZE = 1232
MIN_BALANCE = 100_000_000  # lamports: below this a faucet-backed node tops itself up (as anchoring does)
AIRDROP = 2_000_000_000
FEE_MARGIN = 10_000_000  # lamports a buyer needs beyond the price: fees and its token account's rent


@dataclass(frozen=True)
class NftView:
    """A repository's NFT as the chain holds it now."""

    repo_id: bytes
    record: layout.NftAccount
    mint: Pubkey
    state: tok.MintState
    holder: Pubkey  # as recorded by the program
    holder_amount: int  # what the recorded holder's associated token account holds of the mint

    @property
    def metadata(self) -> tok.TokenMetadata | None:
        return self.state.metadata

    @property
    def holder_holds(self) -> bool:
        return self.holder_amount == 1

    def to_json(self) -> dict[str, Any]:
        meta = self.metadata
        return {"repo": repo_id_text(self.repo_id), "mint": str(self.mint), "holder": str(self.holder),
                "holder_holds": self.holder_holds, "sale_seq": self.record.sale_seq,
                "name": meta.name if meta else None, "symbol": meta.symbol if meta else None,
                "uri": meta.uri if meta else None,
                "repo_field": meta.field("repo") if meta else None, "head": meta.field("head") if meta else None,
                "update_authority": str(meta.update_authority) if meta and meta.update_authority else None,
                "supply": self.state.supply, "decimals": self.state.decimals,
                "mint_authority": str(self.state.mint_authority) if self.state.mint_authority else None,
                "freeze_authority": str(self.state.freeze_authority) if self.state.freeze_authority else None,
                "share_bps": self.record.share_bps,
                "share_locked": self.record.share_locked,
                "contributors": [[b58encode(k), w, owed] for k, w, owed in self.record.contributors]}  # fmt: skip


@dataclass(frozen=True)
class Minted:
    mint: Pubkey
    uri: str
    head: str  # hex commit hash
    tx: TxResult


@dataclass(frozen=True)
class Review:
    """An offer the buyer rebuilt and found exact: what it buys and where the price goes."""

    offer: Offer
    view: NftView
    seller_lamports: int
    paid: list[int]  # per contributor, table order
    waits: list[bool]  # per contributor: its part will wait in the nft PDA (claim), not be paid directly


def _table(record: layout.NftAccount, paid: list[int]) -> tuple[tuple[Pubkey, int, int], ...]:
    """The contributor table with what each gets of a sale: (key, weight, lamports)."""
    return tuple((Pubkey.from_bytes(c[0]), c[1], lam) for c, lam in zip(record.contributors, paid, strict=True))


class NftClient:
    def __init__(self, history: History, identity: Identity, backend: AsyncChainBackend) -> None:
        self.history = history
        self.identity = identity
        self.backend = backend
        self.program = FederityProgram(backend.program_id)
        self.me = identity.keypair.pubkey()

    # --- reads --------------------------------------------------------------------------------

    async def token_amount(self, owner: Pubkey, mint: Pubkey) -> int:
        """What ``owner``'s associated token account holds of ``mint`` (0: none, frozen, or not its)."""
        data = await self.backend.account_data(token_account_address(owner, mint))
        if data is None:
            return 0
        account = tok.decode_token_account(data)
        ok = account.mint == mint and account.owner == owner and account.state == tok.STATE_INITIALIZED
        return account.amount if ok else 0

    async def view(self, repo_id: bytes) -> NftView | None:
        """The NFT of ``repo_id`` (None when the repository has none on this chain)."""
        data = await self.backend.account_data(self.program.nft_address(repo_id))
        if data is None:
            return None
        record = layout.decode_nft(data)
        mint = Pubkey.from_bytes(record.mint)
        mint_data = await self.backend.account_data(mint)
        if mint_data is None:
            raise FednodeError(f"the NFT record of {repo_id_text(repo_id)} names mint {mint}, which does not exist")
        holder = Pubkey.from_bytes(record.holder)
        return NftView(repo_id, record, mint, tok.decode_mint(mint_data), holder, await self.token_amount(holder, mint))

    async def require(self, repo_id: bytes, name: str) -> NftView:
        view = await self.view(repo_id)
        if view is None:
            raise FednodeError(f"repository {name} has no NFT on this chain (mint one with 'fednode nft mint')")
        return view

    async def _require_holding(self, view: NftView, name: str) -> None:
        if await self.token_amount(self.me, view.mint) != 1:
            raise FednodeError(f"this node ({self.me}) does not hold the NFT of {name} (recorded holder: "
                               f"{view.holder})")  # fmt: skip

    # --- sending ------------------------------------------------------------------------------

    async def _fund(self) -> None:
        if self.backend.faucet and await self.backend.balance(self.me) < MIN_BALANCE:
            await self.backend.airdrop(self.me, AIRDROP)

    async def _send(self, ixs: list[Instruction], extra: Sequence[Keypair] = ()) -> TxResult:
        signers = [self.identity.keypair, *extra]
        size = len(bytes(Transaction(signers, Message(ixs, self.me), Hash.default())))
        if size > PACKET_DATA_SIZE:  # say it before the chain does, in our words
            raise FednodeError(f"the transaction would be {size} bytes, over Solana's {PACKET_DATA_SIZE}")
        await self._fund()
        return await self.backend.send(ixs, signers)

    # --- mint ---------------------------------------------------------------------------------

    async def mint(self, repo: RepoInfo, branch: str, share_bps: int, lock_share: bool, symbol: str,
                   license_text: str | None) -> Minted:  # fmt: skip
        """Mint and bind ``repo``'s NFT in one transaction (owner only, genesis and ``branch`` head
        anchored, no NFT yet). The metadata files are stored (pinned, source "nft") just before
        the transaction; they stay if it fails, and the error says so."""
        chain_repo = await self._mint_checks(repo, branch, share_bps, symbol)
        head_hash = chain_repo.branches[layout.branch_hash(branch)]
        facts = nftwork.head_facts(self.history, repo, branch, head_hash)
        mint = Keypair()
        base = await self.backend.minimum_balance(0)  # asked before anything is stored
        published = nftwork.publish(self.history, repo, facts, symbol, license_text, self._explorer(mint.pubkey()))
        repo_pda = self.program.repo_address(repo.repo_id)
        kept = (f"the metadata files {published.document_cid} and {published.image_cid} stay pinned here under "
                "source 'nft'")  # fmt: skip
        fields = {"repo": repo.repo_id.hex(), "head": head_hash.hex()}
        try:
            ixs = mint_nft_instructions(self.me, mint.pubkey(), repo_pda, published.summary.name, symbol,
                                        published.uri, fields,
                                        lambda size: base * (size + 128) // 128)  # rent is linear in size + 128
            ixs.append(self.program.bind_nft(self.me, repo.repo_id, mint.pubkey(),
                                             token_account_address(self.me, mint.pubkey()), share_bps, lock_share,
                                             branch))  # fmt: skip
            tx = await self._send(ixs, [mint])
        except (FednodeError, ChainError) as exc:
            why = f"transaction rejected: {explain(exc)}" if isinstance(exc, ChainError) else str(exc)
            raise FednodeError(f"{why}; no NFT was minted ({kept})") from None
        except ChainUnavailable as exc:  # sent or not, nobody can say: the chain will
            raise FednodeError(f"chain unavailable: {exc}; whether mint {mint.pubkey()} landed is not known: "
                               f"see 'fednode nft show {repo.name}' ({kept})") from None
        return Minted(mint.pubkey(), published.uri, head_hash.hex(), tx)

    def _explorer(self, mint: Pubkey) -> str | None:
        """A public explorer page for the document's external_url, on clusters that have one."""
        if self.backend.kind != "rpc":
            return None
        url = self.backend.endpoint
        for cluster in ("devnet", "testnet"):
            if cluster in url:
                return explorer_url(str(mint), cluster)
        return explorer_url(str(mint)) if "mainnet" in url else None

    async def _mint_checks(self, repo: RepoInfo, branch: str, share_bps: int, symbol: str) -> layout.RepoAccount:
        """Everything that would refuse the mint, checked before anything is stored or sent."""
        if not 0 <= share_bps <= layout.MAX_SHARE_BPS:
            raise FednodeError(f"invalid share {share_bps}: 0..{layout.MAX_SHARE_BPS} basis points")
        for what, text, most in (("name", repo.name, MAX_NAME_BYTES), ("symbol", symbol, MAX_SYMBOL_BYTES)):
            if not 1 <= len(text.encode()) <= most:
                raise FednodeError(f"the NFT {what} {text!r} must be 1..{most} bytes")
        data = await self.backend.account_data(self.program.repo_address(repo.repo_id))
        if data is None:
            raise FednodeError(f"repository {repo.name} is not on chain: anchor it first "
                               f"('fednode anchor {branch} -r {repo.name}')")  # fmt: skip
        chain_repo = layout.decode_repo(data)
        if chain_repo.mint != layout.ZERO32 or await self.backend.account_data(self.program.nft_address(repo.repo_id)):
            raise FednodeError(f"repository {repo.name} already has an NFT (mint {Pubkey.from_bytes(chain_repo.mint)})")
        if chain_repo.owner != bytes(self.me):
            raise FednodeError(f"only the repository owner {b58encode(chain_repo.owner)} can mint its NFT, "
                               f"not this node ({self.me})")  # fmt: skip
        if layout.branch_hash(branch) not in chain_repo.branches:
            raise FednodeError(f"branch {branch} of {repo.name} has no head on chain: anchor it first "
                               f"('fednode anchor {branch} -r {repo.name}')")  # fmt: skip
        return chain_repo

    async def refresh(self, repo: RepoInfo, license_text: str | None) -> Minted:
        """Point the NFT's uri at a new metadata document describing the tracked branch's anchored
        head now (the document is a snapshot; the chain's ``head`` field follows on its own).
        Holder only; symbol kept, license kept unless given. Nothing is sent when the uri would
        not change."""
        view = await self.require(repo.repo_id, repo.name)
        await self._require_holding(view, repo.name)
        meta = view.metadata
        if meta is None:
            raise FednodeError(f"the mint of {repo.name} carries no metadata")
        branch = next((b for b in self.history.branches(repo) if layout.branch_hash(b) == view.record.head_branch),
                      None)  # fmt: skip
        if branch is None:
            raise FednodeError(f"this node has no branch of {repo.name} that the NFT tracks: pull it first")
        data = await self.backend.account_data(self.program.repo_address(repo.repo_id))
        heads = layout.decode_repo(data).branches if data else {}
        head_hash = heads.get(view.record.head_branch)
        if head_hash is None:
            raise FednodeError(f"branch {branch} of {repo.name} has no head on chain")
        if license_text is None:
            old, _ = nftwork.read_document(self.history.store, meta.uri)
            attrs = {a.get("trait_type"): a.get("value") for a in (old or {}).get("attributes", [])}
            license_text = attrs.get("license") if isinstance(attrs.get("license"), str) else None
        facts = nftwork.head_facts(self.history, repo, branch, head_hash)
        published = nftwork.publish(self.history, repo, facts, meta.symbol, license_text, self._explorer(view.mint))
        if published.uri == meta.uri:
            raise FednodeError(f"the NFT of {repo.name} already points at this document ({meta.uri}): nothing sent")
        try:
            tx = await self._send([self.program.set_uri(self.me, repo.repo_id, view.mint, published.uri)])
        except ChainError as exc:
            raise FednodeError(f"transaction rejected: {explain(exc)}; the uri is unchanged (the new files "
                               f"{published.document_cid} and {published.image_cid} stay pinned here)") from None
        return Minted(view.mint, published.uri, head_hash.hex(), tx)

    # --- holder actions -----------------------------------------------------------------------

    async def transfer(self, repo_id: bytes, name: str, to: Pubkey) -> TxResult:
        """Move the NFT to ``to``'s associated token account and record ``to`` as holder, one tx."""
        view = await self.require(repo_id, name)
        if to == self.me:
            raise FednodeError(f"this node ({self.me}) is the recipient: nothing to transfer")
        if not to.is_on_curve():  # a program address: no key could ever sign for the repository again
            raise FednodeError(f"{to} is not a wallet (an off-curve program address): nobody could sign with it, "
                               "so the repository would lose its controller; nothing was sent")  # fmt: skip
        await self._require_holding(view, name)
        dest = token_account_address(to, view.mint)
        ixs = [tok.create_associated_token_account_idempotent(self.me, to, view.mint),
               tok.transfer_checked(token_account_address(self.me, view.mint), view.mint, dest, self.me, 1, 0),
               self.program.sync_holder(repo_id, dest)]  # fmt: skip
        return await self._send(ixs)

    async def set_share(self, repo_id: bytes, name: str, share_bps: int) -> TxResult:
        if not 0 <= share_bps <= layout.MAX_SHARE_BPS:
            raise FednodeError(f"invalid share {share_bps}: 0..{layout.MAX_SHARE_BPS} basis points")
        view = await self.require(repo_id, name)
        if view.record.share_locked:
            raise FednodeError(f"the contributors' share of {name} is locked at {view.record.share_bps} "
                               "basis points (fixed when the NFT was minted)")  # fmt: skip
        await self._require_holding(view, name)
        return await self._send([self.program.set_share(self.me, repo_id,
                                                        token_account_address(self.me, view.mint), share_bps)])

    async def sync(self, repo_id: bytes, name: str, holder: Pubkey | None) -> tuple[Pubkey, TxResult | None]:
        """Record who holds the NFT (permissionless). ``holder``: whose associated token account to
        record (default: this node if it holds it, else the recorded holder). None: already right."""
        view = await self.require(repo_id, name)
        if holder is None:
            holder = self.me if await self.token_amount(self.me, view.mint) == 1 else view.holder
        if await self.token_amount(holder, view.mint) != 1:
            hint = "" if holder != view.holder else "; name the new holder with --holder ADDRESS"
            raise FednodeError(f"{holder} does not hold the NFT of {name} in its associated token account{hint}")
        if holder == view.holder:
            return holder, None
        ix = self.program.sync_holder(repo_id, token_account_address(holder, view.mint))
        return holder, await self._send([ix])

    # --- sale ---------------------------------------------------------------------------------

    def _sale_message(self, view: NftView, seller: Pubkey, buyer: Pubkey, price: int, blockhash: Hash) -> Message:
        contributors = [Pubkey.from_bytes(c[0]) for c in view.record.contributors]
        ixs = [tok.create_associated_token_account_idempotent(buyer, buyer, view.mint),
               self.program.sell(seller, buyer, view.repo_id, view.mint, price, view.record.sale_seq,
                                 contributors)]  # fmt: skip
        return Message.new_with_blockhash(ixs, buyer, blockhash)

    async def offer(self, repo_id: bytes, name: str, price: int, buyer: Pubkey) -> Offer:
        """The sale of the NFT to ``buyer`` for ``price`` lamports, signed by this node (the seller)."""
        view = await self.require(repo_id, name)
        if buyer == self.me:
            raise FednodeError("the buyer is this node: an offer goes to another wallet")
        if price <= 0:
            raise FednodeError("the price must be more than 0")
        await self._require_holding(view, name)
        if view.holder != self.me:
            raise FednodeError(f"the program records {view.holder} as holder: run 'fednode nft sync {name}' "
                               "first (a buyer checks the recorded holder)")  # fmt: skip
        message = self._sale_message(view, self.me, buyer, price, await self.backend.latest_blockhash())
        tx = Transaction.new_unsigned(message)
        tx.partial_sign([self.identity.keypair], message.recent_blockhash)
        _, paid = layout.sale_amounts(price, view.record.share_bps, view.record.contributors)
        return Offer(repo_id, view.mint, self.me, buyer, price, view.record.sale_seq, view.record.share_bps,
                     _table(view.record, paid), tx)  # fmt: skip

    async def review_offer(self, offer: Offer) -> Review:
        """Rebuild the sale from the offer's price and the chain's state; refuse (FednodeError) unless
        the offer's transaction is exactly that, signed by the seller."""
        name = repo_id_text(offer.repo_id)[:16]
        if offer.buyer != self.me:
            raise FednodeError(f"offer refused: it is for buyer {offer.buyer}, not this node ({self.me})")
        view = await self.require(offer.repo_id, name)
        if offer.mint != view.mint:
            raise FednodeError(f"offer refused: mint {offer.mint} is not the repository's NFT ({view.mint})")
        if offer.sale_seq != view.record.sale_seq:
            raise FednodeError(f"offer refused: stale: the NFT changed hands after it was made (sale {offer.sale_seq}, "
                               f"chain at sale {view.record.sale_seq}): already executed or superseded")  # fmt: skip
        if offer.seller != view.holder or not view.holder_holds:
            raise FednodeError(f"offer refused: the seller {offer.seller} does not hold the NFT (recorded holder "
                               f"{view.holder}, holding: {'yes' if view.holder_holds else 'no'})")  # fmt: skip
        actual = offer.tx.message
        expected = self._sale_message(view, offer.seller, self.me, offer.price, actual.recent_blockhash)
        if bytes(expected) != bytes(actual):
            raise FednodeError(f"offer refused: {difference(expected, actual, self.program.program_id)}")
        signers = list(actual.account_keys[:actual.header.num_required_signatures])
        seller_sig = offer.tx.signatures[signers.index(offer.seller)]
        if not seller_sig.verify(offer.seller, bytes(actual)):
            raise FednodeError("offer refused: the seller's signature does not cover this transaction")
        seller_amount, paid = layout.sale_amounts(offer.price, view.record.share_bps, view.record.contributors)
        table = _table(view.record, paid)
        if offer.share_bps != view.record.share_bps or offer.contributors != table:
            raise FednodeError("offer refused: its share or contributors' split differs from the chain's "
                               f"({view.record.share_bps} bps over {len(table)} contributor(s))")  # fmt: skip
        balance = await self.backend.balance(self.me)
        if balance < offer.price + FEE_MARGIN:
            raise FednodeError(f"this node has {balance / 1e9:.9f} SOL; the offer needs {offer.price / 1e9:.9f} SOL "
                               "plus fees")  # fmt: skip
        return Review(offer, view, seller_amount, paid, await self.waiting(view, paid, self.me))

    async def waiting(self, view: NftView, paid: Sequence[int], buyer: Pubkey) -> list[bool]:
        """Per contributor (table order): will its part of a sale now wait in the nft PDA (owed,
        paid by claim) instead of being paid directly? The program's rule (layout.waits): an
        account the part would leave below its rent-exempt minimum, e.g. an empty wallet. A
        contributing buyer keeps its part. Balances may change before the sale executes."""
        keys = [Pubkey.from_bytes(c[0]) for c in view.record.contributors]
        found = await self.backend.accounts_data(keys)
        waits = []
        for key, data, amount in zip(keys, found, paid, strict=True):
            if amount == 0 or key == buyer:
                waits.append(False)
                continue
            balance = await self.backend.balance(key) if data is not None else 0
            need = await self.backend.minimum_balance(len(data or b""))
            waits.append(layout.waits(balance, amount, need))
        return waits

    async def claim(self, repo_id: bytes, name: str, contributor: Pubkey | None) -> tuple[Pubkey, int, TxResult]:
        """Pay ``contributor`` (default: this node) what sales left owed to it in the nft PDA; this
        node pays the fee. Returns (contributor, lamports paid, tx)."""
        view = await self.require(repo_id, name)
        who = contributor or self.me
        keys = [Pubkey.from_bytes(c[0]) for c in view.record.contributors]
        if who not in keys:
            raise FednodeError(f"{who} is not a contributor of {name}")
        index = keys.index(who)
        owed = view.record.contributors[index][2]
        if owed == 0:
            raise FednodeError(f"nothing is owed to {who} by the NFT of {name}")
        data = await self.backend.account_data(who)
        balance = await self.backend.balance(who) if data is not None else 0
        need = await self.backend.minimum_balance(len(data or b""))
        if layout.waits(balance, owed, need):
            raise FednodeError(f"{who} holds {balance} lamports: the {owed} owed would leave it below the rent-exempt "
                               f"minimum of {need}; fund it with at least {need - balance - owed} lamports first, "
                               "then claim")  # fmt: skip
        return who, owed, await self._send([self.program.claim(repo_id, index, who)])

    async def accept(self, review: Review) -> TxResult:
        """Add this node's signature to a reviewed offer and submit it."""
        tx = review.offer.tx
        tx.partial_sign([self.identity.keypair], tx.message.recent_blockhash)
        try:
            return await self.backend.send_transaction(tx)
        except ChainUnavailable as exc:
            raise FednodeError(f"chain unavailable: {exc}; whether the sale landed is not known: see 'fednode nft "
                               f"show {repo_id_text(review.offer.repo_id)}' (an offer can execute only once)") from None
        except ChainError as exc:
            if "BlockhashNotFound" in str(exc):  # the chain's words for an offer that waited too long
                raise FednodeError("offer expired: its blockhash is no longer recent on this chain, so the chain "
                                   "refused it and nothing happened; ask the seller for a new offer") from None
            raise
