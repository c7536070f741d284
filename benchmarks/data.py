"""Data at scale: peak resident memory and training speed of ``pyrovae train`` on MNIST-shaped
uint8 files of N images, held in memory and streamed from disk, in one process and in two
(torchrun, gloo on the CPU).

For each N a file ``(N, 28, 28)`` of random pixels is written once (and read once, so that it
sits in the page cache: the speed compared is pyrovae's, not the disk's). Each run trains the
default VAE for ``--steps`` minibatches of 100 (``train.max_steps``), one torch thread per
process, with 10000 points held out, and evaluates at the end. Measured:

- images per second: the images trained on over the seconds spent in training steps (the
  metrics' ``samples_seen`` over their ``train_seconds``);
- peak resident memory: the largest ``VmHWM`` (high-water resident set) of each training
  process, summed over the ranks (the torchrun launcher left out); and the peak of the ranks'
  summed proportional set sizes (PSS: pages two processes share, such as libtorch's code,
  counted half in each), the memory two ranks take together.

The three targets (issue 21): streaming at >= 0.9x the in-memory speed; the streamed peak at the
largest N within 1.3x of that at the smallest; two streaming ranks together (PSS) within 1.5x of one.
An in-memory run whose float32 points do not fit is refused by pyrovae in one line: the table
says so.

    python benchmarks/data.py --json benchmarks/latest-data-cpu.json        # N = 60k, 600k, 6M
    python benchmarks/data.py --quick                                       # N = 20k, 60k; 200 steps
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEST_POINTS = 10_000


#: an in-memory run is not started when its float32 points would take more of the machine's memory
IN_MEMORY_RAM_SHARE = 0.4


def _ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def write_images(path: Path, n: int, chunk: int = 200_000) -> None:
    """A uint8 ``.npy`` of n random 28x28 images, written in chunks (memory flat in n)."""
    if path.exists():
        return
    images = np.lib.format.open_memmap(path.with_suffix(".part.npy"), mode="w+", dtype=np.uint8,
                                       shape=(n, 28, 28))
    rng = np.random.default_rng(0)
    for start in range(0, n, chunk):
        images[start:start + chunk] = rng.integers(0, 256, (min(chunk, n - start), 28, 28), dtype=np.uint8)
    images.flush()
    del images
    os.replace(path.with_suffix(".part.npy"), path)


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def _children(pid: int):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _kib(path: str, field: str):
    """A ``field:  N kB`` line of a /proc file, in KiB (None when the process is gone)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _peak_kib(pid: int):
    """The high-water resident set of a process."""
    return _kib(f"/proc/{pid}/status", "VmHWM")


def _pss_kib(pid: int):
    """The proportional set size: resident pages, those shared with other processes (libtorch's
    code, the page cache of a mapped file) divided among them."""
    return _kib(f"/proc/{pid}/smaps_rollup", "Pss")


def run(cmd, env, launcher: bool):
    """Run a command; its training processes' peak memory (KiB): the sum of their high-water
    resident sets (VmHWM), and the peak of their summed proportional set sizes (polled)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks, together, done = {}, [0], threading.Event()

    def poll():
        while not done.is_set():
            stack, pss = list(_children(proc.pid) if launcher else [proc.pid]), 0
            while stack:  # DataLoader workers are the ranks' children
                pid = stack.pop()
                peak = _peak_kib(pid)
                if peak is not None:
                    peaks[pid] = max(peaks.get(pid, 0), peak)
                pss += _pss_kib(pid) or 0
                stack += _children(pid)
            together[0] = max(together[0], pss)
            time.sleep(0.1)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    out, err = proc.communicate()
    done.set()
    thread.join()
    return proc.returncode, err, sum(peaks.values()), together[0]


def train(path: Path, n: int, in_memory: bool, nproc: int, steps: int, out: Path, workers: int):
    settings = {"data.name": "file", "data.path": str(path), "data.binarize": "dynamic",
                "data.test_fraction": TEST_POINTS / n, "data.in_memory": str(in_memory).lower(),
                "data.num_workers": workers, "train.max_steps": steps, "train.epochs": 1000,
                "train.batch_size": 100, "train.eval_every": 1000, "train.num_threads": 1,
                "train.progress": "false"}
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    cmd = [*launch, "-m", "pyrovae", "train", *sets, "--out", str(out), "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    code, err, peak_kib, pss_kib = run(cmd, env, launcher=nproc > 1)
    row = {"n": n, "mode": "in memory" if in_memory else "streamed", "processes": nproc, "num_workers": workers,
           "steps": steps, "wall_seconds": time.perf_counter() - start, "peak_rss_mib": peak_kib / 1024,
           "peak_pss_mib": pss_kib / 1024}
    if code != 0:
        row.update(images_per_s=None, refused=err.strip().splitlines()[-1] if err.strip() else f"exit {code}")
        return row
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    row.update(images_per_s=records[-1]["samples_seen"] / sum(r["train_seconds"] for r in records),
               test_elbo=records[-1]["test_elbo"], refused=None)
    return row


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[60_000, 600_000, 6_000_000])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--num-workers", type=int, default=0, help="data.num_workers of the streamed runs")
    p.add_argument("--dir", default=None, help="where the files are written (default: a temporary folder)")
    p.add_argument("--quick", action="store_true", help="N = 20k and 60k, 200 steps")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.steps = [20_000, 60_000], 200
    return args


def main(args) -> list:
    folder = Path(args.dir or tempfile.mkdtemp(prefix="pyrovae-data-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{'N':>10} {'mode':>10} {'procs':>5} {'images/s':>10} {'peak RSS':>10} {'peak PSS':>10}  note",
          flush=True)
    for n in args.sizes:
        path = folder / f"images-{n}.npy"
        write_images(path, n)
        warm(path)
        for in_memory in (True, False):
            for nproc in (1, 2):
                if in_memory and n * 784 * 4 * nproc > IN_MEMORY_RAM_SHARE * _ram_bytes():
                    rows.append({"n": n, "mode": "in memory", "processes": nproc, "images_per_s": None,
                                 "peak_rss_mib": None, "peak_pss_mib": None,
                                 "refused": f"not run: {nproc} x {n * 784 * 4 / 2**30:.1f} GiB of float32 points, "
                                            f"over {IN_MEMORY_RAM_SHARE:.0%} of this machine's memory"})
                    print(f"{n:>10} {'in memory':>10} {nproc:>5} {'-':>10} {'-':>10} {'-':>10}  {rows[-1]['refused']}")
                    continue
                out = folder / f"run-{n}-{'memory' if in_memory else 'streamed'}-{nproc}"
                subprocess.run(["rm", "-rf", str(out)], check=True)
                row = train(path, n, in_memory, nproc, args.steps, out, 0 if in_memory else args.num_workers)
                rows.append(row)
                speed = f"{row['images_per_s']:10.0f}" if row["images_per_s"] else f"{'-':>10}"
                note = (row["refused"] or "")[:90]
                print(f"{n:>10} {row['mode']:>10} {nproc:>5} {speed} {row['peak_rss_mib']:9.0f}M "
                      f"{row['peak_pss_mib']:9.0f}M  {note}", flush=True)
    targets = targets_of(rows)
    for name, value in targets.items():
        print(f"{name}: {value}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                                               "steps": args.steps, "rows": rows, "targets": targets}, indent=2))
    return rows


def targets_of(rows) -> dict:
    def find(n, mode, procs):
        return next((r for r in rows if r["n"] == n and r["mode"] == mode and r["processes"] == procs), None)

    sizes = sorted({r["n"] for r in rows})
    speed = {}
    for n in sizes:
        a, b = find(n, "streamed", 1), find(n, "in memory", 1)
        if a and b and a["images_per_s"] and b["images_per_s"]:
            speed[n] = a["images_per_s"] / b["images_per_s"]
    small, large = find(sizes[0], "streamed", 1), find(sizes[-1], "streamed", 1)
    two = {n: find(n, "streamed", 2)["peak_pss_mib"] / find(n, "streamed", 1)["peak_pss_mib"]
           for n in sizes if find(n, "streamed", 2) and find(n, "streamed", 1)}
    second = {n: find(n, "streamed", 2)["peak_pss_mib"] - find(n, "streamed", 1)["peak_pss_mib"]
              for n in two}  # what the second rank adds: flat in N when no rank holds the data
    return {"streamed_vs_in_memory_speed (>= 0.9)": speed,
            f"streamed_peak_rss_{sizes[-1]}_vs_{sizes[0]} (<= 1.3)": large["peak_rss_mib"] / small["peak_rss_mib"],
            "two_streaming_ranks_vs_one_peak_pss (<= 1.5)": two,
            "second_streaming_rank_adds_pss_mib": second}


if __name__ == "__main__":
    main(parse_args())
