"""``fednode devchain``: a local Solana JSON-RPC endpoint over one LiteSVM with federity loaded.

Serves the subset fednode's RPC backend and a stock solana-py client use: getLatestBlockhash,
sendTransaction (base64/base58), getSignatureStatuses, getAccountInfo, getMultipleAccounts,
getBalance, requestAirdrop, getMinimumBalanceForRentExemption, getSlot, getBlockHeight,
getVersion, getHealth, getTransaction (base64: fee, compute units, logs, return data).
State lives in memory for the life of the process; loopback only.

Blockhashes: LiteSVM accepts only its latest blockhash and never changes it by itself. Here a
new blockhash (and slot) is issued whenever one is asked for after a transaction used the
current one, and the last 150 issued stay valid (as on a cluster), so clients that fetched a
blockhash a moment ago are not rejected and identical instructions in later transactions do
not collide (AlreadyProcessed).
"""

from __future__ import annotations

import base64
import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from solders.hash import Hash
from solders.litesvm import LiteSVM
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction
from solders.transaction_metadata import FailedTransactionMetadata
from solders.transaction_status import (
    InstructionErrorCustom,
    TransactionErrorFieldless,
    TransactionErrorInstructionError,
)

from fednode import safejson
from fednode.errors import FednodeError
from protocol.multiformats import b58decode, b58encode

VERSION = {"solana-core": "2.1.0", "feature-set": 0}
RECENT_BLOCKHASHES = 150
MAX_AIRDROP = 100 * 10**9


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def error_json(err: object) -> Any:
    """A TransactionError in the JSON form validators return (what solders parses)."""
    if isinstance(err, TransactionErrorInstructionError):
        inner = err.err
        detail: Any = {"Custom": inner.code} if isinstance(inner, InstructionErrorCustom) \
            else str(inner).rsplit(".", 1)[-1]  # fmt: skip
        return {"InstructionError": [err.index, detail]}
    if isinstance(err, TransactionErrorFieldless):
        return str(err).rsplit(".", 1)[-1]
    return {"InstructionError": [0, "GenericError"]}  # rarer structured variants, flattened


class DevChain:
    """One LiteSVM behind a lock; ``handle`` answers one JSON-RPC request object."""

    def __init__(self, program_id: Pubkey, elf: bytes) -> None:
        self.program_id = program_id
        self.svm = LiteSVM().with_blockhash_check(False)  # we check against our recent list instead
        self.svm.add_program(program_id, elf)
        self.lock = threading.Lock()
        self.recent: deque[Hash] = deque([self.svm.latest_blockhash()], maxlen=RECENT_BLOCKHASHES)
        self.used = False  # a transaction used the latest blockhash
        self.statuses: dict[str, dict[str, Any]] = {}
        self.transactions: dict[str, dict[str, Any]] = {}  # getTransaction answers

    # -- state helpers (lock held) --
    def _slot(self) -> int:
        return self.svm.get_clock().slot

    def _ctx(self, value: Any) -> dict[str, Any]:
        return {"context": {"slot": self._slot(), "apiVersion": VERSION["solana-core"]}, "value": value}

    def _advance(self) -> None:
        self.svm.expire_blockhash()
        self.svm.warp_to_slot(self._slot() + 1)
        self.recent.append(self.svm.latest_blockhash())
        self.used = False

    def _record(self, sig: str, err: Any) -> None:
        self.statuses[sig] = {"slot": self._slot(), "confirmations": None, "err": err,
                              "status": {"Ok": None} if err is None else {"Err": err},
                              "confirmationStatus": "finalized"}  # fmt: skip

    def _account(self, address: str, encoding: str) -> dict[str, Any] | None:
        account = self.svm.get_account(_pubkey(address))
        if account is None or account.lamports == 0:
            return None
        data = bytes(account.data)
        encoded = [b58encode(data), "base58"] if encoding == "base58" else [base64.b64encode(data).decode(), "base64"]
        return {"data": encoded, "executable": account.executable, "lamports": account.lamports,
                "owner": str(account.owner), "rentEpoch": account.rent_epoch, "space": len(data)}  # fmt: skip

    # -- methods --
    def handle(self, method: str, params: list[Any]) -> Any:
        with self.lock:
            fn = getattr(self, "rpc_" + method, None)
            if fn is None:
                raise RpcError(-32601, f"Method not found: {method}")
            try:
                return fn(*params)
            except (TypeError, ValueError, IndexError, KeyError) as exc:
                raise RpcError(-32602, f"Invalid params: {exc}") from None

    def rpc_getHealth(self, *_: Any) -> str:
        return "ok"

    def rpc_getVersion(self, *_: Any) -> dict[str, Any]:
        return VERSION

    def rpc_getSlot(self, *_: Any) -> int:
        return self._slot()

    def rpc_getBlockHeight(self, *_: Any) -> int:
        return self._slot()

    def rpc_getLatestBlockhash(self, *_: Any) -> dict[str, Any]:
        if self.used:
            self._advance()
        return self._ctx({"blockhash": str(self.svm.latest_blockhash()),
                          "lastValidBlockHeight": self._slot() + RECENT_BLOCKHASHES})  # fmt: skip

    def rpc_getMinimumBalanceForRentExemption(self, size: int, *_: Any) -> int:
        return self.svm.minimum_balance_for_rent_exemption(int(size))

    def rpc_getBalance(self, address: str, *_: Any) -> dict[str, Any]:
        return self._ctx(self.svm.get_balance(_pubkey(address)) or 0)

    def rpc_getAccountInfo(self, address: str, opts: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._ctx(self._account(address, (opts or {}).get("encoding", "base58")))

    def rpc_getMultipleAccounts(self, addresses: list[str], opts: dict[str, Any] | None = None) -> dict[str, Any]:
        if len(addresses) > 100:
            raise RpcError(-32602, "Too many inputs provided; max 100")
        encoding = (opts or {}).get("encoding", "base64")
        return self._ctx([self._account(a, encoding) for a in addresses])

    def rpc_getSignatureStatuses(self, sigs: list[str], *_: Any) -> dict[str, Any]:
        return self._ctx([self.statuses.get(s) for s in sigs])

    def rpc_requestAirdrop(self, address: str, lamports: int, *_: Any) -> str:
        if not 0 < int(lamports) <= MAX_AIRDROP:
            raise RpcError(-32602, f"airdrop of 1..{MAX_AIRDROP} lamports only")
        if self.used:
            self._advance()  # the faucet's transfer must differ from an earlier identical one
        result = self.svm.airdrop(_pubkey(address), int(lamports))
        if isinstance(result, FailedTransactionMetadata):
            raise RpcError(-32603, f"airdrop failed: {result.err()}")
        self.used = True
        sig = str(result.signature())
        self._record(sig, None)
        return sig

    def rpc_sendTransaction(self, data: str, opts: dict[str, Any] | None = None) -> str:
        encoding = (opts or {}).get("encoding", "base58")
        raw = base64.b64decode(data) if encoding == "base64" else b58decode(data)
        tx = VersionedTransaction.from_bytes(raw)
        sig = str(tx.signatures[0])
        if tx.message.recent_blockhash not in self.recent:
            raise _preflight("BlockhashNotFound", [], 0)
        if sig in self.statuses:
            raise _preflight("AlreadyProcessed", [], 0)
        keys = list(tx.message.account_keys)
        pre = [self.svm.get_balance(k) or 0 for k in keys]
        result = self.svm.send_transaction(tx)
        self.used = True
        if isinstance(result, FailedTransactionMetadata):
            meta = result.meta()
            # Like preflight on a validator: a failing transaction is rejected, not recorded.
            raise _preflight(error_json(result.err()), list(meta.logs()), meta.compute_units_consumed())
        self._record(sig, None)
        ret = result.return_data()
        ret_json = {"programId": str(ret.program_id), "data": [base64.b64encode(bytes(ret.data)).decode(), "base64"]} \
            if ret and bytes(ret.data) else None  # fmt: skip
        self.transactions[sig] = {
            "slot": self._slot(), "blockTime": None, "version": "legacy" if isinstance(tx.message, Message) else 0,
            "transaction": [base64.b64encode(raw).decode(), "base64"],
            "meta": {"err": None, "status": {"Ok": None}, "fee": result.fee(), "preBalances": pre,
                     "postBalances": [self.svm.get_balance(k) or 0 for k in keys], "innerInstructions": [],
                     "logMessages": list(result.logs()), "preTokenBalances": [], "postTokenBalances": [],
                     "rewards": [], "loadedAddresses": {"writable": [], "readonly": []},
                     "computeUnitsConsumed": result.compute_units_consumed(),
                     "returnData": ret_json},
        }  # fmt: skip
        return sig

    def rpc_getTransaction(self, sig: str, *_: Any) -> dict[str, Any] | None:
        return self.transactions.get(sig)  # always base64-encoded, whatever was asked


def _pubkey(text: str) -> Pubkey:
    return Pubkey.from_string(text)


def _preflight(err: Any, logs: list[str], units: int) -> RpcError:
    return RpcError(-32002, f"Transaction simulation failed: {json.dumps(err)}",
                    {"accounts": None, "err": err, "logs": logs, "unitsConsumed": units,
                     "returnData": None, "innerInstructions": None})  # fmt: skip


def _answer(chain: DevChain, request: Any) -> dict[str, Any]:
    rid = request.get("id") if isinstance(request, dict) else None
    try:
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            raise RpcError(-32600, "Invalid request")
        params = request.get("params") or []
        result = chain.handle(request["method"], params if isinstance(params, list) else [params])
        return {"jsonrpc": "2.0", "id": rid, "result": result}
    except RpcError as exc:
        error: dict[str, Any] = {"code": exc.code, "message": exc.message}
        if exc.data is not None:
            error["data"] = exc.data
        return {"jsonrpc": "2.0", "id": rid, "error": error}
    except Exception as exc:  # a bad transaction encoding, an odd key: answer, never crash
        return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32603, "message": f"Internal error: {exc}"}}


def check_loopback(host: str) -> None:
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise FednodeError(f"devchain binds to loopback only, not {host!r}")


def make_server(chain: DevChain, host: str, port: int) -> ThreadingHTTPServer:
    check_loopback(host)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: httpx reuses connections
        disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms stall

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            try:
                body = safejson.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            except ValueError:  # not JSON, nested too deeply (safejson), a bad Content-Length
                reply: Any = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}}
            else:
                reply = [_answer(chain, r) for r in body] if isinstance(body, list) else _answer(chain, body)
            payload = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_: Any) -> None:  # quiet: requests carry no secrets, but no noise either
            return

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
