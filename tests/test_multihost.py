"""Several processes and several hosts: `dmd2report build` under torchrun, on one machine with gloo on the CPU.

Two torchrun agents of two processes each meet through torchrun's own c10d rendezvous, as two hosts sharing the
work directory would (docs/gpus-and-hosts.md gives the commands). The sharded stores must equal a one-process run
file for file, the later stages run once (on rank 0), and a host that dies mid-stage is resumed by rerunning the
same command on every host: the chunks written before it died are kept, not computed again.
"""

import os
import signal
import socket
import subprocess
import sys
import time

SMALL = """
[run]
name = "hosts test"
workdir = "{w}/work"
site = "{w}/site"
device = "cpu"
[model]
preset = "demo"
[data]
max_samples = 96
[features]
batch_size = 8
chunk_size = 16
full_per_class = 4
recon_per_class = 1
[generate]
samples = 48
variant_samples = 24
[embedding]
pca_components = 16
n_neighbors = 10
[metrics]
bootstrap = 20
[atlas]
anchors_per_class = 1
atlas_grid = 4
[trajectory]
enabled = false
"""
STORES = ("real", "gen-class", "gen-blend")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}   # the same arithmetic in every process


def _config(tmp_path, name):
    path = tmp_path / f"{name}.toml"
    path.write_text(SMALL.format(w=tmp_path / name))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _host(config, port):
    """One host's command, the same on every host: torchrun's c10d rendezvous at a known endpoint."""
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=2",
                             "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=hosts-test",
                             "-m", "dmd2report.cli", "build", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def _kill_host(agent: subprocess.Popen) -> None:
    """SIGKILL a torchrun agent and its workers (they run in sessions of their own: the agent's group is not theirs),
    as when the machine dies."""
    children = {}
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat))
    todo, doomed = [agent.pid], []
    while todo:
        pid = todo.pop()
        doomed.append(pid)
        todo += children.get(pid, [])
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _finish(hosts, timeout=240):
    out = []
    for h in hosts:
        try:
            out_text, err = h.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for g in hosts:
                _kill_host(g)
            raise
        out.append((h.returncode, out_text, err))
    return out


def _files(store):
    return sorted(p.relative_to(store) for p in store.rglob("*") if p.is_file() and p.name != "manifest.json")


def test_two_hosts_of_two_processes_equal_one_and_resume_after_a_host_dies(tmp_path):
    one = subprocess.run([sys.executable, "-c", "import sys; from dmd2report.config import load_config; "
                          "from dmd2report.context import Context; from dmd2report.pipeline import run_stages; "
                          "run_stages(Context.create(load_config(sys.argv[1])), ('extract', 'generate'))",
                          str(_config(tmp_path, "one"))], capture_output=True, text=True, env=ENV)
    assert one.returncode == 0, one.stderr[-2000:]

    config = _config(tmp_path, "hosts")
    chunks = tmp_path / "hosts" / "work" / "stores" / "real" / "chunks"
    port = _free_port()
    first = [_host(config, port), _host(config, port)]
    deadline = time.monotonic() + 180
    while not any(chunks.glob("*.json")) and time.monotonic() < deadline and first[1].poll() is None:
        time.sleep(0.1)
    _kill_host(first[1])                      # the second host dies mid-extract
    (code, _, _), _ = _finish(first)
    assert code != 0                          # the surviving host's processes fail: no half run looks complete
    assert not (tmp_path / "hosts" / "site" / "index.html").exists()
    kept = {p.name: p.stat().st_mtime_ns for p in chunks.glob("*.json")}
    assert kept, "the first chunks were written before the host died"

    again = _finish([_host(config, port), _host(config, port)])   # the same command on both hosts
    assert [code for code, _, _ in again] == [0, 0], [l for _, _, e in again for l in e.splitlines() if "rror" in l][:5]
    outs = [out for _, out, _ in again]
    assert {p.name: p.stat().st_mtime_ns for p in chunks.glob("*.json") if p.name in kept} == kept   # resumed
    logs = "".join(err for _, _, err in again)
    assert sum(out.count("report: ") for out in outs) == 1   # printed once, by rank 0
    assert logs.count("[extract] running") == 1 and logs.count("[fit] running") == 1   # logged and run by rank 0
    for name in STORES:
        a, b = tmp_path / "one" / "work" / "stores" / name, tmp_path / "hosts" / "work" / "stores" / name
        files = _files(a)
        assert files == _files(b) and len([f for f in files if f.parts[0] == "features"]) >= 2 * 2, name
        for f in files:
            assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (tmp_path / "hosts" / "site" / "index.html").exists()
