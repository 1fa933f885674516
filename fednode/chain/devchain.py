"""``fednode devchain``: a local Solana JSON-RPC endpoint over one LiteSVM with federity loaded.

Serves the subset fednode's RPC backend and a stock solana-py client use: getLatestBlockhash,
sendTransaction (base64/base58), getSignatureStatuses, getAccountInfo, getMultipleAccounts,
getBalance, requestAirdrop, getMinimumBalanceForRentExemption, getSlot, getBlockHeight,
getVersion, getHealth, getGenesisHash, getTransaction (base64: fee, compute units, logs, return
data). Loopback only.

State lives in memory for the life of the process, unless ``--ledger DIR`` is given: then every
account a transaction or airdrop could have changed is appended to DIR/accounts.log (one
checksummed, fsynced record per transaction, written before the answer goes out) and a restart
rebuilds the chain from DIR/accounts.snap plus that log, like a local validator restarting from
its ledger: accounts (repositories, commit records, members, balances), the slot and the genesis
hash (DIR/genesis.json, drawn at random when the ledger is created) survive; signature statuses
and getTransaction details do not. A torn last record (a crash mid-write) is dropped. Each start
compacts the log into a new snapshot. One devchain per ledger at a time (DIR/lock).
Without a ledger, every start is a new chain with a new genesis hash.

Blockhashes: LiteSVM accepts only its latest blockhash and never changes it by itself. Here a
new blockhash (and slot) is issued whenever one is asked for after a transaction used the
current one, and the last 150 issued stay valid (as on a cluster), so clients that fetched a
blockhash a moment ago are not rejected and identical instructions in later transactions do
not collide (AlreadyProcessed).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import struct
import threading
import zlib
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from solders.account import Account
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


_SYSVAR_OWNER = Pubkey.from_string("Sysvar1111111111111111111111111111111111111")
_RECORD = struct.Struct(">II")  # payload length, crc32 of the payload


class Ledger:
    """Accounts of a devchain on disk: genesis.json, accounts.snap (all accounts at the last start)
    and accounts.log (records appended since). A record is u32 length, u32 crc32, then a payload
    of u64 slot and entries of 32-byte address, u32 length, bincode Account (length 0: closed)."""

    def __init__(self, path: Path, program_id: Pubkey) -> None:
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True)
            self.lock_file = open(path / "lock", "a+")
        except OSError as exc:
            raise FednodeError(f"cannot use ledger {path}: {exc.strerror}") from None
        try:
            fcntl.flock(self.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.lock_file.close()
            raise FednodeError(f"ledger {path} is in use by another devchain") from None
        try:
            self.genesis = self._genesis(program_id)
            self.accounts, self.slot = self._load()
            self._compact()
            self.log = open(path / "accounts.log", "ab")
        except OSError as exc:
            self.lock_file.close()
            raise FednodeError(f"cannot use ledger {path}: {exc.strerror}") from None
        except FednodeError:
            self.lock_file.close()
            raise

    def _genesis(self, program_id: Pubkey) -> str:
        file = self.path / "genesis.json"
        try:
            meta = json.loads(file.read_text())
        except FileNotFoundError:
            meta = {"genesis_hash": b58encode(os.urandom(32)),
                    "program_id": str(program_id)}  # fmt: skip
            _write_atomic(file, json.dumps(meta).encode())
        except ValueError:
            raise FednodeError(f"ledger {self.path}: genesis.json is not valid JSON") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("genesis_hash"), str):
            raise FednodeError(f"ledger {self.path}: genesis.json has no genesis_hash")
        if meta.get("program_id") != str(program_id):
            raise FednodeError(f"ledger {self.path} was created for program {meta.get('program_id')}, "
                               f"not {program_id}")  # fmt: skip
        return str(meta["genesis_hash"])

    def _load(self) -> tuple[dict[bytes, bytes], int]:
        accounts: dict[bytes, bytes] = {}
        slot = 0
        for name in ("accounts.snap", "accounts.log"):
            try:
                raw = (self.path / name).read_bytes()
            except FileNotFoundError:
                continue
            good = 0
            for end, record_slot, entries in _records(raw):
                good = end
                slot = max(slot, record_slot)
                for address, data in entries:
                    if data:
                        accounts[address] = data
                    else:
                        accounts.pop(address, None)
            if name == "accounts.snap" and good < len(raw):  # written whole or not at all: this is damage
                raise FednodeError(f"ledger {self.path}: accounts.snap is damaged (checksum mismatch at byte "
                                   f"{good}); restore it from a backup or start a new ledger")  # fmt: skip
            if name == "accounts.log" and good < len(raw):  # a torn tail: the write never completed
                with open(self.path / name, "r+b") as f:
                    f.truncate(good)
        return accounts, slot

    def _compact(self) -> None:
        """Everything known so far into a new snapshot; then the log starts empty."""
        entries = list(self.accounts.items())
        _write_atomic(self.path / "accounts.snap", _record(self.slot, entries))
        with open(self.path / "accounts.log", "wb") as f:
            os.fsync(f.fileno())

    def append(self, slot: int, entries: list[tuple[bytes, bytes]]) -> None:
        self.log.write(_record(slot, entries))
        self.log.flush()
        os.fsync(self.log.fileno())

    def close(self) -> None:
        self.log.close()
        self.lock_file.close()


def _record(slot: int, entries: list[tuple[bytes, bytes]]) -> bytes:
    payload = b"".join([struct.pack(">Q", slot)] + [a + struct.pack(">I", len(d)) + d for a, d in entries])
    return _RECORD.pack(len(payload), zlib.crc32(payload)) + payload


def _records(raw: bytes) -> Any:
    """(end offset, slot, entries) of each intact record, stopping at the first torn one."""
    pos = 0
    while pos + _RECORD.size <= len(raw):
        length, crc = _RECORD.unpack_from(raw, pos)
        payload = raw[pos + _RECORD.size:pos + _RECORD.size + length]
        if len(payload) != length or zlib.crc32(payload) != crc or length < 8:
            return
        slot, entries, at = struct.unpack_from(">Q", payload)[0], [], 8
        while at < length:
            address, (size,) = payload[at:at + 32], struct.unpack_from(">I", payload, at + 32)
            entries.append((address, payload[at + 36:at + 36 + size]))
            at += 36 + size
        pos += _RECORD.size + length
        yield pos, slot, entries


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class DevChain:
    """One LiteSVM behind a lock; ``handle`` answers one JSON-RPC request object."""

    def __init__(self, program_id: Pubkey, elf: bytes, ledger: Path | None = None) -> None:
        self.program_id = program_id
        self.svm = LiteSVM().with_blockhash_check(False)  # we check against our recent list instead
        self.ledger = Ledger(ledger, program_id) if ledger is not None else None
        if self.ledger is not None:
            for address, data in self.ledger.accounts.items():
                self.svm.set_account(Pubkey.from_bytes(address), Account.from_bytes(data))
            if self.ledger.slot:
                self.svm.warp_to_slot(self.ledger.slot)
            self.svm.expire_blockhash()  # not the blockhash a fresh chain starts with
        self.genesis = self.ledger.genesis if self.ledger is not None else b58encode(os.urandom(32))
        # Added after the restore so a stored account can never shadow the program we run.
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

    def _persist(self, addresses: list[Pubkey]) -> None:
        """Append the accounts a transaction could have changed to the ledger (if any), durably."""
        if self.ledger is None:
            return
        entries = []
        for address in dict.fromkeys(addresses):
            if address == self.program_id:
                continue
            account = self.svm.get_account(address)
            if account is not None and (account.executable or account.owner == _SYSVAR_OWNER):
                continue  # programs and sysvars come with every fresh chain
            data = b"" if account is None or account.lamports == 0 else bytes(account)
            entries.append((bytes(address), data))
        try:
            self.ledger.append(self._slot(), entries)
        except OSError as exc:
            raise RpcError(-32603, f"ledger write failed: {exc.strerror}") from None

    def close(self) -> None:
        if self.ledger is not None:
            with self.lock:
                self.ledger.close()

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

    def rpc_getGenesisHash(self, *_: Any) -> str:
        return self.genesis

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
        self._persist([_pubkey(address)])
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
            self._persist(keys)  # a failed transaction still charged its fee
            meta = result.meta()
            # Like preflight on a validator: a failing transaction is rejected, not recorded.
            raise _preflight(error_json(result.err()), list(meta.logs()), meta.compute_units_consumed())
        self._persist(keys)
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

        def do_POST(self) -> None:
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
