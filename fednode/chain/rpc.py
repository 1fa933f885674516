"""JSON-RPC backend over solana-py's AsyncClient, usable under trio.

solana-py's ``confirm_transaction`` and rate limiter need asyncio, so confirmation is our own
loop: poll ``getSignatureStatuses`` with ``trio.sleep`` until confirmed, failed or timed out.
Transport failures become ChainUnavailable (retry later); RPC errors become ChainError.

Answers are bounded: solana-py reads a whole answer into memory, so an endpoint that answered
gigabytes would exhaust ours. A response hook on solana-py's own HTTP session (its settings, proxies
included, kept) wraps each answer's body so that reading more than MAX_ANSWER_BYTES fails, and an
answer in a content encoding is refused (we ask for none: a small compressed body can inflate to
any size past a byte count).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TypeVar

import httpx2
import trio
from solana.exceptions import SolanaRpcException
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Confirmed
from solana.rpc.core import RPCException
from solana.rpc.models import TxOpts
from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import Transaction
from solders.transaction_status import (
    InstructionErrorCustom,
    TransactionConfirmationStatus,
    TransactionErrorInstructionError,
)

from fednode.chain.aio import AsyncChainBackend, ChainUnavailable
from fednode.chain.backend import ChainError, TxResult
from fednode.errors import first_line
from fednode.logs import shown_url

LAMPORTS_PER_SIGNATURE = 5000
_Response = TypeVar("_Response")
_CONFIRMED = (TransactionConfirmationStatus.Confirmed, TransactionConfirmationStatus.Finalized)
# The most one answer may be: an account holds at most 10 MiB, 13.4 MiB in base64, plus the JSON around it
MAX_ANSWER_BYTES = 32 << 20


class AnswerTooLarge(Exception):
    """An RPC answer went past MAX_ANSWER_BYTES, or came compressed."""


class _Bounded(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, limit: int) -> None:
        self.inner = inner
        self.limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        total = 0
        async for chunk in self.inner:
            total += len(chunk)
            if total > self.limit:
                raise AnswerTooLarge(f"an answer of more than {self.limit} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _bound_answer(response: httpx2.Response) -> None:
    """solana-py's session's response hook (before the body is read): the body bounded, no encoding."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise AnswerTooLarge(f"a {encoding[:20]}-encoded answer (none was asked for)")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
        raise AnswerTooLarge(f"an answer of {declared} bytes, over {MAX_ANSWER_BYTES}")
    assert isinstance(response.stream, httpx2.AsyncByteStream)
    response.stream = _Bounded(response.stream, MAX_ANSWER_BYTES)


def _bounded(client: AsyncClient) -> AsyncClient:
    session = client._provider.session
    session.headers["Accept-Encoding"] = "identity"
    session.event_hooks = {**session.event_hooks, "response": [*session.event_hooks["response"], _bound_answer]}
    return client


class RpcBackend(AsyncChainBackend):
    kind = "rpc"

    def __init__(self, url: str, program_id: Pubkey, *, faucet: bool = False, timeout: float = 10.0,
                 confirm_timeout: float = 60.0) -> None:  # fmt: skip
        self.url = url
        self.shown = shown_url(url)  # in errors, which are logged and stored: no API key, no password
        self.endpoint = url
        self.timeout = timeout
        self.genesis: str | None = None  # cached: a chain's genesis never changes under one connection
        self.program_id = program_id
        self.faucet = faucet
        self.confirm_timeout = confirm_timeout
        self.client = _bounded(AsyncClient(url, commitment=Confirmed, timeout=timeout))

    async def _call(self, what: str, coro: Awaitable[_Response]) -> _Response:
        """One RPC call, bounded as a whole (httpx's timeout bounds each read, and solana-py retries a
        timed-out call once): a slow, unreachable or garbled endpoint is ChainUnavailable."""
        try:
            with trio.fail_after(2 * self.timeout + 1):
                return await coro
        except trio.TooSlowError:
            raise ChainUnavailable(f"{self.shown} gave no whole answer within {2 * self.timeout + 1:.0f} s "
                                   f"({what})") from None
        except AnswerTooLarge as exc:
            raise ChainUnavailable(f"{self.shown} answered too much ({what}): {exc}") from None
        except SolanaRpcException as exc:  # connection refused, timeout, HTTP error
            raise ChainUnavailable(f"{self.shown} unreachable ({what}): "
                                   f"{first_line(exc.error_msg or exc)}") from None
        except RPCException as exc:
            raise _rpc_error(what, exc) from None
        except Exception as exc:  # not JSON, nested too deeply, fields missing: solders' parser refused it
            raise ChainUnavailable(f"{self.shown} answered something unreadable ({what}): "
                                   f"{type(exc).__name__}: {first_line(exc)}") from None

    async def genesis_hash(self) -> str:
        if self.genesis is None:
            try:
                self.genesis = str((await self._call("getGenesisHash", self.client.get_genesis_hash())).value)
            except ChainError as exc:
                raise ChainError(f"{self.shown} does not answer getGenesisHash ({exc}): cannot tell which chain "
                                 "it is, so nothing is sent to it") from None  # fmt: skip
        return self.genesis

    async def send(self, instructions: Sequence[Instruction], signers: Sequence[Keypair]) -> TxResult:
        if not signers:
            raise ValueError("at least one signer (the fee payer) is required")
        tx = Transaction(list(signers), Message(list(instructions), signers[0].pubkey()), await self.latest_blockhash())
        return await self.send_transaction(tx)

    async def latest_blockhash(self) -> Hash:
        return (await self._call("getLatestBlockhash", self.client.get_latest_blockhash())).value.blockhash

    async def minimum_balance(self, size: int) -> int:
        """The endpoint's rent-exempt minimum, refused when far from Solana's default rent (the
        amount moves out of the wallet into a new account: a lying endpoint must not set it)."""
        call = self.client.get_minimum_balance_for_rent_exemption(size)
        value = (await self._call("getMinimumBalanceForRentExemption", call)).value
        expected = await super().minimum_balance(size)
        if not expected // 10 <= value <= expected * 10:
            raise ChainError(f"{self.shown} says an account of {size} bytes needs {value} lamports to be "
                             f"rent-exempt; Solana's rent says {expected}: refused, nothing sent")
        return value

    async def send_transaction(self, tx: Transaction) -> TxResult:
        opts = TxOpts(skip_confirmation=True, preflight_commitment=Confirmed)
        sig = (await self._call("sendTransaction", self.client.send_raw_transaction(bytes(tx), opts))).value
        if sig != tx.signatures[0]:  # the id of a transaction is its first signature: known, not believed
            raise ChainUnavailable(f"{self.shown} answered signature {str(sig)[:100]} for transaction "
                                   f"{tx.signatures[0]}")
        await self._confirm(sig)
        try:  # fee, compute units, logs and return data, where the endpoint keeps them
            fetched = (await self.client.get_transaction(sig, "base64", Confirmed, 0)).value
            meta = fetched.transaction.meta if fetched is not None else None
            if meta is not None:
                ret = meta.return_data
                return TxResult(str(sig), meta.compute_units_consumed or 0, meta.fee, list(meta.log_messages or []),
                                bytes(ret.data) if ret else b"")  # fmt: skip
        except Exception:  # unreachable, or an answer solders cannot read: the fee is worked out below
            pass
        # Not kept by the endpoint: the fee as the runtime charges it, every transaction and precompile signature.
        message = tx.message
        precompiles = sum(ix.data[0] for ix in message.instructions
                          if str(message.account_keys[ix.program_id_index]) in _SIG_PRECOMPILES and ix.data)
        return TxResult(signature=str(sig), compute_units=0,
                        fee=(len(tx.signatures) + precompiles) * LAMPORTS_PER_SIGNATURE)  # fmt: skip

    async def _confirm(self, sig: Signature) -> None:
        delay = 0.02  # a local chain confirms at once; a cluster takes ~0.4-1 s: back off to 0.4 s
        with trio.move_on_after(self.confirm_timeout):
            while True:
                resp = await self._call("getSignatureStatuses", self.client.get_signature_statuses([sig]))
                if len(resp.value) != 1:
                    raise ChainUnavailable(f"{self.shown} answered {len(resp.value)} statuses for one signature")
                status = resp.value[0]
                if status is not None:
                    if status.err is not None:
                        raise _tx_error(status.err, [])
                    if status.confirmation_status in _CONFIRMED:
                        return
                await trio.sleep(delay)
                delay = min(delay * 2, 0.4)
        raise ChainUnavailable(f"transaction {sig} not confirmed within {self.confirm_timeout:.0f} s")

    async def accounts_data(self, addresses: Sequence[Pubkey]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for i in range(0, len(addresses), 100):  # getMultipleAccounts takes at most 100 keys
            batch = list(addresses[i:i + 100])
            resp = await self._call("getMultipleAccounts", self.client.get_multiple_accounts(batch))
            if len(resp.value) != len(batch):  # shifted data would land on the wrong addresses
                raise ChainUnavailable(f"{self.shown} answered {len(resp.value)} accounts for {len(batch)}")
            out.extend(None if a is None or a.lamports == 0 else bytes(a.data) for a in resp.value)
        return out

    async def balance(self, address: Pubkey) -> int:
        return (await self._call("getBalance", self.client.get_balance(address))).value

    async def airdrop(self, address: Pubkey, lamports: int) -> None:
        sig = (await self._call("requestAirdrop", self.client.request_airdrop(address, lamports))).value
        await self._confirm(sig)

    async def slot(self) -> int:
        return (await self._call("getSlot", self.client.get_slot())).value

    async def aclose(self) -> None:
        await self.client.close()


_SIG_PRECOMPILES = {"Ed25519SigVerify111111111111111111111111111", "KeccakSecp256k11111111111111111111111111111"}


def _tx_error(err: object, logs: Sequence[str]) -> ChainError:
    if isinstance(err, TransactionErrorInstructionError):
        inner = err.err
        code = inner.code if isinstance(inner, InstructionErrorCustom) else None
        return ChainError(f"instruction {err.index} failed: {inner}", code, err.index, logs)
    return ChainError(f"transaction failed: {err}", None, None, logs)


def _rpc_error(what: str, exc: RPCException) -> ChainError:
    parsed = exc.args[0] if exc.args else exc
    data = getattr(parsed, "data", None)
    err = getattr(data, "err", None)
    if err is not None:  # preflight simulation failed: the program's own error
        return _tx_error(err, list(getattr(data, "logs", None) or []))
    return ChainError(f"{what}: {first_line(str(getattr(parsed, 'message', parsed)))}")  # stored and printed
