"""``make demo``: the network. A devchain and three hospital daemons on 127.0.0.1, federated rounds.

Each hospital is a separate node home with its own wallet, daemon (libp2p on an ephemeral port,
local API on another) and a non-IID share of scikit-learn's breast-cancer data set. Hospital 1
owns the repository: it creates it, anchors it on the devchain (a local Solana JSON-RPC server
running our program) and admits hospitals 2 and 3 as members (the signed network membership and
the on-chain allowlist). They clone it over libp2p. Each round every hospital trains on its own
patients, commits, anchors its commit and proposes it; the owner reviews the proposals, merges
them exactly with FedAvg, verifies the merge, anchors it and pushes it; the members pull it and
start the next round from it. At the end ``verify --chain`` runs on every node, and a table
compares the federated model with each hospital's local-only model on the common held-out set.

Every step runs the real ``fednode`` command line (``python -m cli``) and is printed.
Every process started here is stopped in a ``finally``: SIGTERM (SIGINT for the devchain),
a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fednode.history import refs

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"  # fednode/examples
ROOT = Path(__file__).resolve().parents[2]  # the repository root, where `python -m cli` runs
TORCH_SCRIPT = EXAMPLES / "cancer_torch.py"
SCRIPT_ARG = str(TORCH_SCRIPT.relative_to(ROOT))  # every CLI step runs in ROOT: shown short
STEP_TIMEOUT = 120.0  # seconds any one CLI step may take
START_TIMEOUT = 60.0  # seconds a daemon or the devchain may take to come up
STOP_TIMEOUT = 10.0  # seconds a process gets after SIGTERM before SIGKILL
TIMING = bool(os.environ.get("FEDNODE_DEMO_TIMING"))  # each CLI step's duration on stderr


class DemoError(Exception):
    """A step failed: the message is the demo's one-line explanation."""


@dataclass
class Hospital:
    site: int
    home: Path
    address: str = ""
    peer_id: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"hospital-{self.site}"


@dataclass
class Proc:
    """A long-running process the demo started (devchain or daemon) and must stop."""

    what: str
    popen: subprocess.Popen
    stop_signal: int = signal.SIGTERM
    returncode: int | None = None
    logs: tuple[Path, ...] = ()

    def tail(self, lines: int = 3) -> str:
        out = []
        for path in self.logs:
            try:
                out += path.read_text(errors="replace").strip().splitlines()[-lines:]
            except OSError:
                pass
        return "\n".join(out)


class Network:
    def __init__(self, work: Path, epochs: int) -> None:
        self.work = work
        self.epochs = epochs
        self.procs: list[Proc] = []
        self.hospitals = [Hospital(s, work / f"hospital-{s}") for s in (1, 2, 3)]
        self.chain_url = ""
        self.running: set[subprocess.Popen] = set()  # CLI steps in flight (killed if the demo stops early)
        self.stopping = False
        self._lock = threading.Lock()
        self._local = threading.local()

    # --- running the CLI ---------------------------------------------------------------

    def say(self, text: str) -> None:
        """Print ``text``, or keep it for later when this thread runs one hospital's steps."""
        buf = getattr(self._local, "buf", None)
        if buf is None:
            print(text, flush=True)
        else:
            buf.append(text)

    def fed(self, h: Hospital, *args: str, check: bool = True, show: bool = True, text: bool = True,
            timeout: float = STEP_TIMEOUT) -> subprocess.CompletedProcess:
        """Run ``fednode ARGS`` as hospital ``h`` (its home, its data share) and print it."""
        if show:
            self.say(f"\n[{h.name}] $ fednode {shlex.join(args)}")
        env = {**os.environ, "FEDNODE_HOME": str(h.home), "FEDNODE_SITE": str(h.site), "COLUMNS": "110"}
        t0 = time.monotonic()
        with self._lock:
            if self.stopping:
                raise DemoError("stopping")
            popen = subprocess.Popen([sys.executable, "-m", "cli", *args], env=env, text=True, cwd=ROOT,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.running.add(popen)
        try:
            stdout, stderr = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.communicate()
            raise DemoError(f"{h.name}: fednode {shlex.join(args)} did not finish within {timeout:.0f} s") from None
        finally:
            with self._lock:
                self.running.discard(popen)
        proc = subprocess.CompletedProcess(popen.args, popen.returncode, stdout, stderr)
        if show and text and stdout.strip():
            self.say(stdout.rstrip("\n"))
        if (show or proc.returncode != 0) and stderr.strip():
            self.say(stderr.rstrip("\n"))
        if TIMING:
            print(f"  [{time.monotonic() - t0:.2f} s] {h.name} {shlex.join(args[:2])}", file=sys.stderr, flush=True)
        if check and proc.returncode != 0:
            last = (stderr.strip().splitlines() or ["(no output)"])[-1]
            raise DemoError(f"{h.name}: fednode {shlex.join(args)} failed: {last}")
        return proc

    def fed_json(self, h: Hospital, *args: str, show: bool = True) -> Any:
        """``fednode ARGS --json``: the command is printed (when ``show``), its JSON is returned."""
        return json.loads(self.fed(h, *args, "--json", show=show, text=False).stdout)

    def each(self, hospitals: list[Hospital], step: Callable[[Hospital], Any]) -> list[Any]:
        """Run ``step`` for every hospital at once (each is its own machine); print in order."""
        if len(hospitals) == 1:
            return [step(hospitals[0])]

        def run(h: Hospital) -> tuple[list[str], Any, BaseException | None]:
            self._local.buf = []
            try:
                return self._local.buf, step(h), None
            except (DemoError, OSError, ValueError, KeyError) as exc:
                return self._local.buf, None, exc
            finally:
                del self._local.buf

        pool = ThreadPoolExecutor(len(hospitals))
        try:
            outcomes = list(pool.map(run, hospitals))
        except BaseException:  # interrupted: end the steps in flight rather than wait for them
            self.kill_running()
            raise
        finally:
            pool.shutdown(wait=True)
        for lines, _, _ in outcomes:
            for line in lines:
                print(line, flush=True)
        for _, _, exc in outcomes:
            if exc is not None:
                raise exc if isinstance(exc, DemoError) else DemoError(f"{type(exc).__name__}: {exc}")
        return [value for _, value, _ in outcomes]

    def wait(self, pred: Callable[[], Any], what: str, timeout: float = 30.0, interval: float = 0.3) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = pred()
            if value:
                return value
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(interval)

    # --- processes ---------------------------------------------------------------------

    def _start(self, what: str, args: list[str], env: dict[str, str], stop_signal: int,
               log_dir: Path) -> Proc:
        out, err = log_dir / f"{what}.stdout", log_dir / f"{what}.stderr"
        with self._lock, open(out, "wb") as fo, open(err, "wb") as fe:
            if self.stopping:
                raise DemoError("stopping")
            popen = subprocess.Popen([sys.executable, "-m", "cli", *args], env={**os.environ, **env},
                                     stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, cwd=ROOT)
        proc = Proc(what, popen, stop_signal, logs=(out, err))
        with self._lock:
            self.procs.append(proc)
        self.say(f"  started {what} (pid {popen.pid})")
        return proc

    def _alive(self, proc: Proc) -> bool:
        if proc.popen.poll() is not None:
            raise DemoError(f"{proc.what} exited with status {proc.popen.returncode}: {proc.tail(1)}")
        return True

    def start_devchain(self) -> None:
        print("\n$ fednode devchain --port 0 &   # a local Solana JSON-RPC chain with our program loaded", flush=True)
        proc = self._start("devchain", ["devchain", "--port", "0"], {}, signal.SIGINT, self.work)

        def listening() -> str | None:
            self._alive(proc)
            for line in proc.logs[0].read_text().splitlines():
                if line.startswith("devchain listening on "):
                    return line.split()[3]
            return None

        self.chain_url = self.wait(listening, "the devchain to listen", START_TIMEOUT, 0.1)
        print(f"  devchain listening on {self.chain_url}", flush=True)

    def start_daemon(self, h: Hospital, bootstrap: list[str]) -> None:
        args = ["daemon", "--listen", "/ip4/127.0.0.1/tcp/0", "--api-port", "0",
                "--log-file", str(h.home / "daemon.log")]
        for addr in bootstrap:
            args += ["--bootstrap", addr]
        shown = [a if not a.startswith("/ip4/127.0.0.1/tcp/") or a.endswith("/0") else "<hospital-1>" for a in args]
        self.say(f"\n[{h.name}] $ fednode {shlex.join(shown)} &")
        proc = self._start(f"{h.name}-daemon", args, {"FEDNODE_HOME": str(h.home)}, signal.SIGTERM, self.work)
        proc.logs += (h.home / "daemon.log",)

        def ready() -> dict[str, Any] | None:
            self._alive(proc)
            try:
                info = json.loads((h.home / "daemon.json").read_text())
            except (OSError, ValueError):
                return None
            return info if info.get("pid") == proc.popen.pid else None

        h.info = self.wait(ready, f"{h.name}'s daemon to start", START_TIMEOUT, 0.1)
        self.say(f"  {h.name}: libp2p {h.info['addrs'][0]}, API 127.0.0.1:{h.info['api_port']}")

    def kill_running(self) -> None:
        """End the CLI steps in flight (the demo failed or was interrupted); start no new one."""
        with self._lock:
            self.stopping = True
            for popen in self.running:
                popen.kill()

    def stop_all(self) -> None:
        """Stop every process started here, newest first: signal, bounded wait, then SIGKILL."""
        self.kill_running()
        if not self.procs:
            return
        print("\n=== stopping every process ===", flush=True)
        for proc in reversed(self.procs):
            p = proc.popen
            if TIMING and p.poll() is None:
                fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
                print(f"  [cpu {cpu:.1f} s] {proc.what}", file=sys.stderr, flush=True)
            if p.poll() is None:
                p.send_signal(proc.stop_signal)
                try:
                    p.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=STOP_TIMEOUT)
                    print(f"  {proc.what} (pid {p.pid}) did not stop in {STOP_TIMEOUT:.0f} s: killed", flush=True)
            proc.returncode = p.returncode
            print(f"  stopped {proc.what} (pid {p.pid}), exit status {p.returncode}", flush=True)

    # --- the walkthrough ---------------------------------------------------------------

    def setup(self) -> str:
        owner, members = self.hospitals[0], self.hospitals[1:]
        print("=== a devchain and three hospitals, each its own node home, wallet and daemon ===")
        self.start_devchain()

        def init(h: Hospital) -> None:
            shown = self.fed(h, "init").stdout
            h.address = shown.split("wallet", 1)[1].split()[0]
            self.fed(h, "chain", "use", "rpc", "--url", self.chain_url)

        self.each(self.hospitals, init)
        genesis = self.work / "genesis.safetensors"
        write_genesis(genesis)
        print("\n=== hospital-1 owns the repository: it creates it and anchors it ===")
        created = self.fed(owner, "repo", "create", "cancer", "--from", str(genesis), "-m", "untrained MLP 30-16-2")
        repo_id = created.stdout.split("\nid", 1)[1].split()[0]
        self.fed(owner, "anchor", "main")
        self.start_daemon(owner, [])
        self.each(members, lambda h: self.start_daemon(h, [owner.info["addrs"][0]]))
        for h in self.hospitals:
            h.peer_id = h.info["peer_id"]
        print("\n=== the owner admits hospitals 2 and 3 (signed membership + on-chain allowlist) ===")
        self.fed(owner, "members", "add", *(h.address for h in members))
        self.fed(owner, "members", "list")

        def join(h: Hospital) -> None:
            self.fed(h, "clone", repo_id, "--peer", owner.info["addrs"][0])

            def admitted() -> bool:  # the owner's signed membership, received by gossip
                listed = self.fed(h, "members", "list", "--no-chain", show=False).stdout
                if h.address not in listed:
                    return False
                self.say(f"\n[{h.name}] $ fednode members list --no-chain\n{listed.rstrip()}")
                return True

            self.wait(admitted, f"{h.name} to receive the signed membership")

        self.each(members, join)
        return repo_id

    def round(self, rnd: int) -> Path:
        owner, members = self.hospitals[0], self.hospitals[1:]
        print(f"\n=== round {rnd}: every hospital trains on its own patients (at once); only weights leave ===")

        def work(h: Hospital) -> str:
            branch = h.name
            if rnd == 1:
                self.fed(h, "branch", branch, "main")
            else:
                self.fed(h, "merge", "main", "--into", branch)  # a fast-forward to the merged model
            trained = self.fed_json(h, "train", "cancer", "--script", SCRIPT_ARG, "-b", branch, "--epochs",
                                    str(self.epochs), "--quiet", "--seed", str(rnd), "-m", f"{h.name} round {rnd}")
            metrics = " ".join(f"{k}={v:.3g}" for k, v in sorted(trained["metrics"].items()))
            info = trained["info"]["training"]
            self.say(f"[{branch} {trained['cid'][:15]}] {trained['message']}\n"
                     f"{info['samples']} samples, {info['epochs']} epoch(s); on its own held-out patients: {metrics}")
            self.fed(h, "anchor", branch)
            if h is not owner:
                self.fed(h, "propose", "cancer", "-b", branch, "-m", f"round {rnd}")
            return trained["cid"]

        heads = dict(zip((h.site for h in self.hospitals), self.each(self.hospitals, work), strict=True))
        print(f"\n--- round {rnd}: the owner reviews the proposals and merges them (FedAvg, weighted by samples) ---")

        def review(h: Hospital) -> str:
            ref = refs.proposal(h.peer_id, h.name)

            def arrived() -> bool:
                shown = self.fed(owner, "show", ref, "--json", check=False, show=False)
                return shown.returncode == 0 and json.loads(shown.stdout)["cid"] == heads[h.site]

            self.wait(arrived, f"{h.name}'s round-{rnd} proposal to reach the owner")
            args = ["review", ref, "--into", "main"]
            if rnd == 1:
                args += ["--eval", SCRIPT_ARG]  # before/after on the owner's own held-out patients
            self.fed(owner, *args)
            return ref

        inputs = [owner.name, *self.each(members, review)]
        result = self.fed_json(owner, "merge", *inputs, "--strategy", "fedavg", "--into", "main",
                               "-m", f"round {rnd}: FedAvg")
        merged, record = result["cid"], result.get("info", {}).get("merge", {})
        who = {cid: f"hospital-{site}" for site, cid in heads.items()}
        weights = ", ".join(f"{who.get(c, c[:16])} {w}" for c, w in zip(record.get("inputs", []),
                                                                          record.get("weights", []), strict=False))
        print(f"[main {merged[:15]}] round {rnd}: FedAvg of {len(inputs)} updates; weights (samples): {weights}",
              flush=True)
        self.fed(owner, "verify", "main")  # recomputes every merge bit for bit
        self.fed(owner, "anchor", "main")
        self.fed(owner, "push", "cancer")

        def pull(h: Hospital) -> None:
            def fast_forwarded() -> bool:
                pulled = self.fed_json(h, "pull", "cancer", "--timeout", "20", show=False)["refs"]
                return pulled.get(refs.branch("main")) == merged

            self.say(f"\n[{h.name}] $ fednode pull cancer")
            self.wait(fast_forwarded, f"{h.name} to receive the round-{rnd} merge", interval=0.5)
            self.say(f"{refs.branch('main')} {merged}  (the round-{rnd} merge)")

        self.each(members, pull)
        out = self.work / f"round-{rnd}.safetensors"
        self.fed(owner, "checkout", "main", "--out", str(out), show=False)
        return out

    def finish(self) -> None:
        print("\n=== every node checks the whole history against the chain ===")

        self.each(self.hospitals, lambda h: self.fed(h, "verify", "main", "--chain"))
        status = self.fed_json(self.hospitals[0], "chain", "status", show=False)
        if status["queue_length"]:
            raise DemoError(f"the owner still has {status['queue_length']} anchoring request(s) queued")
        (repo,) = status["repos"]
        self.fed(self.hospitals[0], "log", "cancer", "main", "-n", "5", "--oneline")
        print(f"\non chain: {repo['commit_count']} commits of cancer anchored, main at "
              f"{repo['heads']['main'][:16]}, nothing left queued", flush=True)


def write_genesis(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from fednode.examples import cancer_torch

    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in cancer_torch.model().state_dict().items()}, str(path))


def heldout_accuracy(path: Path) -> float:
    """Accuracy on the common held-out test set (20% of patients, held out from every hospital)."""
    import torch
    from safetensors.torch import load_file

    from fednode.examples import cancer_torch
    from fednode.examples.cancer_data import test_set

    model = cancer_torch.model()
    model.load_state_dict(load_file(str(path)))
    x, y = test_set()
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


class LocalOnly:
    """Each hospital's local-only model: the same script, epochs and seeds, on its own data alone."""

    def __init__(self, work: Path, genesis: Path) -> None:
        self.work = work
        self.current = {s: genesis for s in (1, 2, 3)}

    def train_round(self, rnd: int, epochs: int) -> dict[int, float]:
        from fednode.workflows.training import run_training

        acc = {}
        saved = os.environ.get("FEDNODE_SITE")
        try:
            for site in (1, 2, 3):
                os.environ["FEDNODE_SITE"] = str(site)
                workdir = self.work / f"local-{site}-{rnd}"
                workdir.mkdir()
                result = run_training(TORCH_SCRIPT, self.current[site], epochs, seed=rnd, quiet=True, workdir=workdir)
                self.current[site] = result.weights
                acc[site] = heldout_accuracy(result.weights)
        finally:
            if saved is None:
                os.environ.pop("FEDNODE_SITE", None)
            else:
                os.environ["FEDNODE_SITE"] = saved
        return acc


def table(rows: list[tuple[int, float, dict[int, float]]]) -> str:
    head = "round | federated (3 hospitals) | hospital-1 local-only | hospital-2 local-only | hospital-3 local-only"
    lines = ["accuracy on the common held-out test set (114 patients no hospital trains on):", head,
             "-" * len(head)]
    for rnd, fed_acc, local in rows:
        lines.append(f"{rnd:>5} | {fed_acc:>23.3f} | " + " | ".join(f"{local[s]:>21.3f}" for s in (1, 2, 3)))
    return "\n".join(lines)


def run(epochs: int = 5, rounds: int = 3) -> int:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="fednode-demo-"))
    net = Network(work, epochs)
    print(f"fednode demo: {rounds} federated rounds, {epochs} local epoch(s) each; work directory {work}")

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # run the finally below: stop every process

    previous = signal.signal(signal.SIGTERM, on_term)
    failure = None
    try:
        net.setup()
        local = LocalOnly(work, work / "genesis.safetensors")
        rows = []
        for rnd in range(1, rounds + 1):
            merged = net.round(rnd)
            rows.append((rnd, heldout_accuracy(merged), local.train_round(rnd, epochs)))
            print(f"\nafter round {rnd}: federated {rows[-1][1]:.3f}; local-only "
                  + ", ".join(f"hospital-{s} {a:.3f}" for s, a in rows[-1][2].items()), flush=True)
        net.finish()
        print("\n" + table(rows), flush=True)
    except DemoError as exc:
        failure = str(exc)
    except KeyboardInterrupt:
        failure = "interrupted"
    except Exception as exc:
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the stopping short
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            net.stop_all()
        finally:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
    if failure is None:
        unclean = [p for p in net.procs if p.returncode not in (0, -signal.SIGINT)]
        if unclean:
            failure = "not every process stopped cleanly: " + ", ".join(f"{p.what} ({p.returncode})" for p in unclean)
    if failure is not None:
        for proc in net.procs:
            if proc.tail():
                print(f"--- last lines of {proc.what}:\n{proc.tail()}", file=sys.stderr)
        print(f"demo failed: {failure} (work directory {work})", file=sys.stderr)
        return 1
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s; every process stopped; homes kept in {work}")
    return 0
