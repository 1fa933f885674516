"""Truthful outcomes: an operation succeeds, or it changes nothing and says why in one line.

A table of refused operations, each through the real console script: exit code 1, exactly one line
on stderr, and every database of the store unchanged (``store_fingerprint``). Then real daemons:
``members add`` before the genesis is anchored publishes nothing, a non-member's ``push`` is
refused before anything is published, and ``push`` says how many peers accepted its heads.
"""

from __future__ import annotations

import http.server
import json
import os
import textwrap
import threading
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from daemon_harness import DaemonProc, daemons, make_home, open_nodes, wait_for
from helpers import assert_one_line_error, run_fednode, store_fingerprint, write_model
from solders.keypair import Keypair
from test_cli_errors import daemon_api_port_taken

from fednode.history import History
from fednode.identity import Identity
from fednode.node import open_node
from fednode.tensors.modelio import ArraySource

OTHER = Identity(Keypair.from_seed(bytes(range(100, 132))))  # owns repository "theirs"

# a case: (home with repositories "m" and "theirs", tmp dir, exit stack) -> (CLI args, words the line must hold)
Case = Callable[[Path, Path, ExitStack], tuple[list[str], tuple[str, ...]]]


def torch_arrays(hidden: int = 16, seed: int = 0) -> dict[str, tuple[str, np.ndarray]]:
    """The state_dict of Sequential(Linear(30, hidden), ReLU(), Linear(hidden, 2)), on a 2**-12 grid."""
    rng = np.random.default_rng(seed)

    def f32(*shape: int) -> np.ndarray:
        return (np.round(rng.standard_normal(shape) * 4096) / 4096 / 8).astype(np.float32)

    return {"0.weight": ("F32", f32(hidden, 30)), "0.bias": ("F32", f32(hidden)),
            "2.weight": ("F32", f32(2, hidden)), "2.bias": ("F32", f32(2))}


SEQUENTIAL = "import torch\n\n\ndef model():\n    return torch.nn.Sequential({layers})\n"
DATA = ("\n\ndef data():\n    x, y = torch.zeros(8, 30), torch.zeros(8, dtype=torch.long)\n"
        "    ds = torch.utils.data.TensorDataset(x, y)\n    return ds, ds\n")
RIGHT = "torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)"


def script(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(textwrap.dedent(text))
    return str(path)


# --- members and push -------------------------------------------------------------------------------------

def members_add_without_daemon(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    return ["members", "add", str(Keypair().pubkey()), "-r", "m"], ("no daemon", "nothing was changed")


def members_add_the_owner(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    with open_node(home) as node:
        me = node.identity.address
    return ["members", "add", me, "-r", "m"], ("owner is implicitly a member",)


def members_add_not_owner(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    return ["members", "add", str(Keypair().pubkey()), "-r", "theirs"], ("only the repository owner",)


def members_add_bad_address(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    return ["members", "add", "0OIl", "-r", "m"], ("invalid address",)


def push_not_a_member(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    return ["push", "theirs"], ("you are not a member of theirs", "fednode members add", OTHER.address)


# --- train ------------------------------------------------------------------------------------------------

def train_data_raises(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    path = script(tmp, "raises.py", SEQUENTIAL.format(layers=RIGHT)
                  + "\n\ndef data():\n    raise ValueError('no data for site 7')\n")
    return ["train", "m", "--script", path, "--quiet"], (
        "training script failed: ValueError: no data for site 7 (raises.py:9)",)


def train_model_raises(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    path = script(tmp, "zero.py", "def model():\n    return 1 / 0\n\n\ndef data():\n    pass\n")
    return ["train", "m", "--script", path, "--quiet"], ("ZeroDivisionError: division by zero (zero.py:2)",)


def train_forward_fails(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    bad_data = DATA.replace("torch.zeros(8, 30)", "torch.zeros(8, 7)")
    path = script(tmp, "shapes.py", SEQUENTIAL.format(layers=RIGHT) + bad_data)
    return ["train", "m", "--script", path, "--quiet"], ("training script failed: RuntimeError", "(8x7 and 30x16)")


def train_wrong_sizes(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    layers = "torch.nn.Linear(30, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2), torch.nn.Linear(2, 2)"
    path = script(tmp, "small.py", SEQUENTIAL.format(layers=layers) + DATA)
    return ["train", "m", "--script", path, "--quiet"], (
        "does not match the repository's tensors", "missing (in the model, not the repository): 3.weight, 3.bias",
        "size mismatch: 0.weight model [8, 30] vs repository [16, 30]")


def train_wrong_names(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    path = script(tmp, "names.py", """\
        import torch


        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(30, 16)
                self.out = torch.nn.Linear(16, 2)


        def model():
            return Net()


        def data():
            raise AssertionError("never reached: the weights do not fit")
        """)
    return ["train", "m", "--script", path, "--quiet"], (
        "missing (in the model, not the repository): fc.weight, fc.bias, out.weight (+1 more)",
        "unexpected (in the repository, not the model): 0.bias, 0.weight, 2.bias (+1 more)")


def train_syntax_error(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    path = script(tmp, "typo.py", "import torch\n\ndef model(:\n    pass\n")
    return ["train", "m", "--script", path], ("typo.py failed to import: SyntaxError", "(typo.py:3)")


def train_executable_fails(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    path = script(tmp, "job.py", """\
        def main():
            raise RuntimeError("disk quota exceeded")


        if __name__ == "__main__":
            main()
        """)
    return ["train", "m", "--script", path], (
        "job.py failed with exit code 1: RuntimeError: disk quota exceeded (job.py:2)",)


def train_executable_writes_garbage(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    # a plain script without a __main__ guard: run once, as an executable (it was imported first, and failed)
    path = script(tmp, "plain.py", "import sys\n\nassert sys.argv[2].endswith('.safetensors')\n"
                                   "open(sys.argv[2], 'w').write('not weights')\n")
    return ["train", "m", "--script", path], ("training script plain.py wrote unreadable weights",
                                              "not a safetensors file")


def train_script_exits(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    path = script(tmp, "quits.py", SEQUENTIAL.format(layers=RIGHT) + "\n\ndef data():\n    raise SystemExit(0)\n")
    return ["train", "m", "--script", path, "--quiet"], ("sys.exit(0)", "(quits.py:9)")  # exit 0, nothing stored


def train_data_file_missing(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    path = script(tmp, "reads.py", SEQUENTIAL.format(layers=RIGHT)
                  + "\n\ndef data():\n    return open('/nonexistent/site.csv')\n")
    return ["train", "m", "--script", path, "--quiet"], (
        "training script failed: FileNotFoundError", "/nonexistent/site.csv", "(reads.py:9)")


def review_eval_raises(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    run_fednode(home, "branch", "b", "main", "-r", "m")
    run_fednode(home, "commit", "m", "-b", "b", "-m", "update", "--from",
                write_model(tmp / "update.safetensors", torch_arrays(seed=1)))
    path = script(tmp, "judge.py", SEQUENTIAL.format(layers=RIGHT)
                  + "\n\ndef data():\n    raise KeyError('heldout')\n")
    return ["review", "b", "-r", "m", "--eval", path], ("evaluation script failed: KeyError: 'heldout' (judge.py:9)",)


def train_unknown_branch(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    path = script(tmp, "ok.py", SEQUENTIAL.format(layers=RIGHT) + DATA)
    return ["train", "m", "--script", path, "-b", "nope"], ("unknown branch 'nope'",)


def train_negative_epochs(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    path = script(tmp, "ok.py", SEQUENTIAL.format(layers=RIGHT) + DATA)
    return ["train", "m", "--script", path, "--epochs", "-1"], ("--epochs must be at least 1",)


# --- model files and names --------------------------------------------------------------------------------

def from_plain_directory(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    (tmp / "weights").mkdir()
    (tmp / "weights" / "notes.txt").write_text("no model here")
    return ["commit", "m", "--from", str(tmp / "weights"), "-m", "x"], ("weights",)


def from_missing_file(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    return ["commit", "m", "--from", str(tmp / "nope.safetensors"), "-m", "x"], ("nope.safetensors",)


def from_empty_file(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    (tmp / "empty.safetensors").write_bytes(b"")
    return ["commit", "m", "--from", str(tmp / "empty.safetensors"), "-m", "x"], ("empty.safetensors",)


def from_renamed_text(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    (tmp / "notes.safetensors").write_text("just some notes, renamed")
    return ["repo", "create", "n", "--from", str(tmp / "notes.safetensors")], ("notes.safetensors",)


def from_unreadable_file(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    path = write_model(tmp / "locked.safetensors", torch_arrays(seed=1))
    path.chmod(0)
    return ["commit", "m", "--from", str(path), "-m", "x"], ("permission denied", "locked.safetensors")


def metric_not_finite(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    path = write_model(tmp / "next.safetensors", torch_arrays(seed=1))
    return ["commit", "m", "--from", str(path), "-m", "x", "--metric", "loss=nan"], ("invalid --metric 'loss=nan'",)


def unknown_repository(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    return ["log", "nope"], ("unknown repository 'nope'",)


def unknown_revision(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    return ["checkout", "nope", "-r", "m", "--out", str(tmp / "x.safetensors")], ("unknown revision 'nope'",)


def empty_repository_name(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    return ["show", ":main"], ("unknown repository ''",)  # was LMDB's MDB_BAD_VALSIZE


def overlong_repository_name(home: Path, tmp: Path, _: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    return ["repo", "use", "x" * 600], ("unknown repository 'xxx",)  # over LMDB's 511-byte key limit


def api_port_in_use(home: Path, tmp: Path, stack: ExitStack) -> tuple[list[str], tuple[str, ...]]:
    _, args, needles = daemon_api_port_taken(home, tmp, stack)  # the case of test_cli_errors.py
    return args, needles


CASES: list[Case] = [
    members_add_without_daemon, members_add_the_owner, members_add_not_owner, members_add_bad_address,
    push_not_a_member,
    train_data_raises, train_model_raises, train_forward_fails, train_wrong_sizes, train_wrong_names,
    train_syntax_error, train_executable_fails, train_executable_writes_garbage, train_script_exits,
    train_data_file_missing, train_unknown_branch, train_negative_epochs, review_eval_raises,
    from_plain_directory, from_missing_file, from_empty_file, from_renamed_text, from_unreadable_file,
    metric_not_finite, unknown_repository, unknown_revision, empty_repository_name, overlong_repository_name,
    api_port_in_use,
]


@pytest.fixture
def repos_home(home: Path) -> Path:
    """Repository "m" (ours: a torch Sequential's tensors) and "theirs" (owned by OTHER)."""
    with open_node(home) as node:
        node.history.create_repo("m", ArraySource(torch_arrays()))
        History(node.store, OTHER).create_repo("theirs", ArraySource(torch_arrays(seed=5)))
    return home


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_refused_is_one_line_and_changes_nothing(case: Case, repos_home: Path, tmp_path: Path) -> None:
    if case is from_unreadable_file and os.geteuid() == 0:
        pytest.skip("root reads a file without permissions")
    with ExitStack() as stack:
        args, needles = case(repos_home, tmp_path, stack)
        before = store_fingerprint(repos_home)
        proc = run_fednode(repos_home, *args, check=False, timeout=120)
        assert proc.returncode == 1, (proc.returncode, proc.stderr)
        assert_one_line_error(proc.stderr, *needles)
        assert store_fingerprint(repos_home) == before


# --- real daemons ---------------------------------------------------------------------------------------

def _membership(home: Path) -> dict:
    return json.loads(run_fednode(home, "members", "list", "-r", "m", "--no-chain", "--json").stdout)["network"]


def test_members_add_before_the_genesis_is_anchored_publishes_nothing(tmp_path: Path) -> None:
    owner, member = make_home(tmp_path, "owner"), make_home(tmp_path, "member")
    model = write_model(tmp_path / "m0.safetensors", torch_arrays())
    run_fednode(owner, "repo", "create", "m", "--from", model, "--public")  # cloned before B is a member
    repo_id = json.loads(run_fednode(owner, "repo", "list", "--json").stdout)[0]["id"]
    member_addr = json.loads(run_fednode(member, "id", "--json").stdout)["address"]
    with daemons(DaemonProc(owner).start()) as (a,):
        with daemons(DaemonProc(member, (a.addr,)).start()) as (b,):
            b.api("POST", "/clone", {"repo": repo_id, "peers": [a.addr], "timeout": 20})
            refused = run_fednode(owner, "members", "add", member_addr, "-r", "m", check=False)
            assert refused.returncode == 1, refused.stdout
            assert a.metrics()["published"].get("members", 0) == 0  # nothing went out
            assert _membership(owner) == {"members": [], "public": False}
            assert_one_line_error(refused.stderr, "not on chain", "anchor its genesis first", "nothing was changed")
            assert refused.stdout == ""
            # once the genesis is anchored the same command changes both lists
            run_fednode(owner, "anchor", "m:main")
            added = run_fednode(owner, "members", "add", member_addr, "-r", "m").stdout
            assert "network: 1 member(s)" in added and "chain: added 1 member(s)" in added
            assert _membership(owner)["members"] == [member_addr]
            wait_for(lambda: _membership(member)["members"] == [member_addr], 10, "the membership to reach B")


def test_push_by_a_non_member_is_refused_before_anything_is_published(tmp_path: Path) -> None:
    owner, outsider = make_home(tmp_path, "owner"), make_home(tmp_path, "outsider")
    run_fednode(owner, "repo", "create", "m", "--from", write_model(tmp_path / "m0.safetensors", torch_arrays()),
                "--public")  # non-members clone it: this test is not about reading
    repo_id = json.loads(run_fednode(owner, "repo", "list", "--json").stdout)[0]["id"]
    with daemons(DaemonProc(owner).start()) as (a,):
        with daemons(DaemonProc(outsider, (a.addr,)).start()) as (b,):
            b.api("POST", "/clone", {"repo": repo_id, "peers": [a.addr], "timeout": 20})
            run_fednode(outsider, "commit", "m", "--from",
                        write_model(tmp_path / "m1.safetensors", torch_arrays(seed=1)), "-m", "my idea")
            refused = run_fednode(outsider, "push", "m", check=False)
            assert refused.returncode == 1, refused.stdout
            assert_one_line_error(refused.stderr, "you are not a member of m", "fednode members add")
            assert "pushed" not in refused.stdout
            # the daemon refuses too (an API client that skips the CLI's check)
            answer = b.api("POST", "/push", {"repo": "m"}, expect=403)
            assert "not a member" in answer["error"]
            assert not b.metrics()["published"]  # neither commit nor announcement went out
            assert a.metrics()["rejected"].get("not_member", 0) == 0


def test_push_says_how_many_peers_accepted(tmp_path: Path) -> None:
    owner, clone, follower = (make_home(tmp_path, n) for n in ("owner", "clone", "follower"))
    run_fednode(owner, "repo", "create", "m", "--from", write_model(tmp_path / "m0.safetensors", torch_arrays()),
                "--public")  # non-members clone it: this test is not about reading
    repo_id = json.loads(run_fednode(owner, "repo", "list", "--json").stdout)[0]["id"]
    (node,) = open_nodes(owner)
    try:
        info = node.history.repo("m")
        node.history.commit(info, ArraySource(torch_arrays(seed=1)), "epoch 1")
    finally:
        node.close()
    with daemons(DaemonProc(owner).start()) as (a,):
        # a peer that follows the topic without the repository rejects the heads (unknown_repo)
        with daemons(DaemonProc(follower, (a.addr,)).start()) as (c,):
            c.api("POST", "/follow", {"repo": repo_id, "public": True})
            wait_for(lambda: a.api("GET", "/status")["peers"] >= 1, 10, "C to connect")
            wait_for(lambda: json.loads(run_fednode(owner, "push", "m", "--json", check=False).stdout or "{}")
                     .get("topic_peers"), 15, "C on the topic")
            unaccepted = run_fednode(owner, "push", "m", check=False)
            assert unaccepted.returncode == 1, unaccepted.stdout
            assert_one_line_error(unaccepted.stderr, "published 1 head(s) of m to 1 peer(s); accepted by none yet")
            assert c.metrics()["rejected"].get("unknown_repo", 0) >= 1
        with daemons(DaemonProc(clone, (a.addr,)).start()) as (b,):
            b.api("POST", "/clone", {"repo": repo_id, "peers": [a.addr], "timeout": 20})
            wait_for(lambda: json.loads(run_fednode(owner, "push", "m", "--json", check=False).stdout or "{}")
                     .get("accepted_by"), 15, "B to accept a push")
            pushed = run_fednode(owner, "push", "m")
            assert "accepted by 1 of 1 peer(s)" in pushed.stdout


class _FailingDaemon(http.server.BaseHTTPRequestHandler):
    """A local API that answers /status and then fails to publish (a daemon losing its disk, say)."""

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(200, {"peer_id": "fake"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer(500, {"error": "cannot publish: no space left on device"})

    def log_message(self, *args: object) -> None:
        pass


def test_members_add_undoes_the_chain_when_publishing_fails(repos_home: Path) -> None:
    """The chain changed, then the daemon failed to publish: the on-chain change is undone."""
    run_fednode(repos_home, "anchor", "m:main")  # the embedded chain
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FailingDaemon)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # this test's process stands for the daemon: the CLI talks only to a live pid
        (repos_home / "daemon.json").write_text(json.dumps({"pid": os.getpid(), "api_port": server.server_address[1]}))
        (repos_home / "api.token").write_text("token")
        before = _membership(repos_home)
        member = str(Keypair().pubkey())
        refused = run_fednode(repos_home, "members", "add", member, "-r", "m", check=False)
        assert refused.returncode == 1, refused.stdout
        assert_one_line_error(refused.stderr, "no space left on device",
                              "the on-chain change was undone for 1 member(s); nothing was changed")
        chain = json.loads(run_fednode(repos_home, "chain", "members", "list", "-r", "m", "--json").stdout)
        assert chain["members"] == []
        absent = run_fednode(repos_home, "chain", "members", "remove", member, "-r", "m", check=False)
        assert_one_line_error(absent.stderr, f"{member} is not a member of m")  # asked of the chain itself
        assert _membership(repos_home) == before
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
