"""Sale offers of a repository's NFT: the offer file, and naming what differs between the
transaction an offer carries and the one the buyer rebuilds from the chain.

An offer is ONE legacy transaction, fee payer the buyer: the buyer's associated token account
created idempotently, then federity ``sell``. The seller signs it partially; the buyer never signs
what it did not rebuild itself byte for byte (``NftClient.review_offer``). No I/O here.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import SanitizeError, Transaction

from fednode import safejson
from fednode.chain.program import ASSOCIATED_TOKEN_PROGRAM_ID, SYSTEM_PROGRAM_ID, TOKEN_2022_PROGRAM_ID
from fednode.errors import FednodeError
from fednode.history import repo_id_text
from fednode.history.repos import parse_repo_id
from protocol import chain as layout
from protocol.multiformats import FormatError

OFFER_VERSION = 1
MAX_OFFER_BYTES = 64 * 1024
_ATA_ROLES = ("payer", "buyer's token account", "token account owner", "mint", "system program", "token program")
_SELL_ROLES = tuple(r.split(" [")[0] for r in layout.ACCOUNTS[layout.Ix.SELL][:-1])


@dataclass(frozen=True)
class Offer:
    """offer.json as read, types checked (not yet compared with the chain)."""

    repo_id: bytes
    mint: Pubkey
    seller: Pubkey
    buyer: Pubkey
    price: int  # lamports
    sale_seq: int
    share_bps: int
    contributors: tuple[tuple[Pubkey, int, int], ...]  # key, weight, lamports
    tx: Transaction

    def to_json(self) -> dict[str, Any]:
        return {"version": OFFER_VERSION, "repo": repo_id_text(self.repo_id), "mint": str(self.mint),
                "seller": str(self.seller), "buyer": str(self.buyer), "price_lamports": self.price,
                "sale_seq": self.sale_seq, "share_bps": self.share_bps,
                "contributors": [[str(k), w, lam] for k, w, lam in self.contributors],
                "transaction": base64.b64encode(bytes(self.tx)).decode()}  # fmt: skip


def _bad(why: str) -> FednodeError:
    return FednodeError(f"malformed offer: {why}")


def _int(data: dict[str, Any], key: str, limit: int = 2**64) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise _bad(f"{key!r} must be an integer 0..{limit - 1}")
    return value


def _key(value: Any, what: str) -> Pubkey:
    try:
        if isinstance(value, str):
            return Pubkey.from_string(value)
    except ValueError:
        pass
    raise _bad(f"{what} is not a base58 address")


def _contributors(value: Any) -> tuple[tuple[Pubkey, int, int], ...]:
    if not isinstance(value, list) or len(value) > layout.MAX_CONTRIBUTORS:
        raise _bad(f"'contributors' must be a list of at most {layout.MAX_CONTRIBUTORS} [key, weight, lamports]")
    rows = []
    for row in value:
        if not (isinstance(row, list) and len(row) == 3 and all(isinstance(x, int) and not isinstance(x, bool)
                                                               and 0 <= x < 2**64 for x in row[1:])):  # fmt: skip
            raise _bad("each contributor must be [key, weight, lamports]")
        rows.append((_key(row[0], "a contributor key"), row[1], row[2]))
    return tuple(rows)


def parse_offer(raw: bytes) -> Offer:
    """offer.json bytes -> Offer; FednodeError("malformed offer: ...") for anything else."""
    if len(raw) > MAX_OFFER_BYTES:
        raise _bad(f"larger than {MAX_OFFER_BYTES} bytes")
    try:
        data = safejson.loads(raw)  # an offer file comes from anyone: deep nesting must not crash us
    except (ValueError, UnicodeDecodeError):
        raise _bad("not JSON") from None
    if not isinstance(data, dict) or data.get("version") != OFFER_VERSION:
        raise _bad(f"not a version-{OFFER_VERSION} offer object")
    repo_id = parse_repo_id(data["repo"]) if isinstance(data.get("repo"), str) else None
    if repo_id is None:
        raise _bad("'repo' is not a repository id")
    try:
        tx = Transaction.from_bytes(base64.b64decode(str(data.get("transaction", "")), validate=True))
    except (ValueError, binascii.Error):
        raise _bad("'transaction' is not a base64 Solana transaction") from None
    try:
        tx.sanitize()  # every index in range, signature count = required signers
    except SanitizeError:
        raise _bad("its transaction is inconsistent (indexes or signature count)") from None
    if not tx.signatures:
        raise _bad("its transaction has no signers")
    return Offer(repo_id, _key(data.get("mint"), "'mint'"), _key(data.get("seller"), "'seller'"),
                 _key(data.get("buyer"), "'buyer'"), _int(data, "price_lamports"), _int(data, "sale_seq"),
                 _int(data, "share_bps", layout.MAX_SHARE_BPS + 1), _contributors(data.get("contributors")),
                 tx)  # fmt: skip


# --- naming a difference ------------------------------------------------------------------------

_PROGRAMS = {SYSTEM_PROGRAM_ID: "System program", TOKEN_2022_PROGRAM_ID: "Token-2022",
             ASSOCIATED_TOKEN_PROGRAM_ID: "Associated Token Account program"}  # fmt: skip


@dataclass(frozen=True)
class _Ix:
    program: Pubkey
    accounts: tuple[tuple[Pubkey, bool, bool], ...]  # key, signer, writable
    data: bytes


def _flags(message: Message, i: int) -> tuple[bool, bool]:
    h = message.header
    signed, n = h.num_required_signatures, len(message.account_keys)
    writable = i < signed - h.num_readonly_signed_accounts or signed <= i < n - h.num_readonly_unsigned_accounts
    return i < signed, writable


def _decompile(message: Message) -> list[_Ix]:
    keys = message.account_keys
    try:
        return [_Ix(keys[ix.program_id_index], tuple((keys[a], *_flags(message, a)) for a in bytes(ix.accounts)),
                    bytes(ix.data)) for ix in message.instructions]  # fmt: skip
    except IndexError:
        raise FednodeError("offer refused: its transaction names accounts it does not list") from None


def _program_name(key: Pubkey, federity: Pubkey) -> str:
    return "federity" if key == federity else _PROGRAMS.get(key, str(key))


def _sell_data(expected: bytes, actual: bytes) -> str:
    try:
        e, a = layout.decode_instruction(expected), layout.decode_instruction(actual)
    except FormatError:
        return "its sell instruction data is not a sell"
    if not isinstance(a, layout.Sell) or not isinstance(e, layout.Sell):
        return "its federity instruction is not a sell"
    if a.price != e.price:
        return f"price: the transaction pays {a.price} lamports, the offer says {e.price}"
    return f"sale_seq: the transaction says {a.sale_seq}, the chain {e.sale_seq}"


def _roles(program: Pubkey, federity: Pubkey, n: int) -> list[str]:
    base = _ATA_ROLES if program == ASSOCIATED_TOKEN_PROGRAM_ID else _SELL_ROLES if program == federity else ()
    return [base[j] if j < len(base) else (f"contributor {j - len(base) + 1}" if program == federity
                                           else f"account {j}") for j in range(n)]  # fmt: skip


def _instruction_difference(i: int, e: _Ix, a: _Ix, federity: Pubkey) -> str | None:
    where = f"instruction {i} ({_program_name(e.program, federity)})"
    if e.program != a.program:
        return f"{where}: the transaction calls {_program_name(a.program, federity)} instead"
    if e.data != a.data:
        return f"{where}: {_sell_data(e.data, a.data)}" if e.program == federity else f"{where}: its data differs"
    if len(e.accounts) != len(a.accounts):
        if e.program == federity and min(len(e.accounts), len(a.accounts)) >= len(_SELL_ROLES):
            base = len(_SELL_ROLES)  # the sale's fixed accounts, then one per contributor
            return f"{where}: {len(a.accounts) - base} contributor account(s) instead of {len(e.accounts) - base}"
        return f"{where}: {len(a.accounts)} accounts instead of {len(e.accounts)}"
    roles = _roles(e.program, federity, len(e.accounts))
    keys = [roles[j] for j, (x, y) in enumerate(zip(e.accounts, a.accounts, strict=True)) if x[0] != y[0]]
    if keys:
        return f"{where}: other accounts as {', '.join(keys)}"
    flags = [roles[j] for j, (x, y) in enumerate(zip(e.accounts, a.accounts, strict=True)) if x[1:] != y[1:]]
    return f"{where}: other signer/writable flags for {', '.join(flags)}" if flags else None


def _unmatched(longer: list[_Ix], shorter: list[_Ix]) -> list[int] | None:
    """Indexes of ``longer`` left over when ``shorter`` is a subsequence of it (None: it is not)."""
    left, j = [], 0
    for i, ix in enumerate(longer):
        if j < len(shorter) and ix == shorter[j]:
            j += 1
        else:
            left.append(i)
    return left if j == len(shorter) else None


def _named(ixs: list[_Ix], at: list[int], federity: Pubkey) -> str:
    return ", ".join(f"#{i} ({_program_name(ixs[i].program, federity)})" for i in at)


def difference(expected: Message, actual: Message, federity: Pubkey) -> str:
    """What the offer's message does differently from the expected one, in words (first found)."""
    if actual.account_keys[:1] != expected.account_keys[:1]:
        payer = actual.account_keys[0] if actual.account_keys else "nobody"
        return f"buyer: the transaction's fee payer is {payer}, not the buyer {expected.account_keys[0]}"
    exp, act = _decompile(expected), _decompile(actual)
    extra = _unmatched(act, exp) if len(act) > len(exp) else None
    if extra:
        return (f"extra instruction(s) {_named(act, extra, federity)}: an offer holds only the buyer's token "
                "account and the sale")
    missing = _unmatched(exp, act) if len(act) < len(exp) else None
    if missing:
        return f"missing instruction(s) {_named(exp, missing, federity)}"
    for i, (e, a) in enumerate(zip(exp, act, strict=False)):
        found = _instruction_difference(i, e, a, federity)
        if found:
            return found
    if len(act) != len(exp):
        return f"the transaction has {len(act)} instructions, not {len(exp)}"
    if actual.recent_blockhash != expected.recent_blockhash:
        return "its blockhash differs"
    return "its accounts are listed in another order or with other flags"
