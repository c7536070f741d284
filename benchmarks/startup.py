"""Start-up of the ``pyrovae`` command line beside a bare ``python -c pass``: how long the commands
that answer at once (``--help``, ``--version``, a subcommand's ``--help``, an argument error)
take as whole processes, medians over alternating repeats. None of them imports torch, Pyro or
matplotlib (``tests/test_cli.py`` checks it through ``sys.modules``).

    ./dev python benchmarks/startup.py                      # about 10 s
    ./dev python benchmarks/startup.py --repeats 15 --json benchmarks/latest-startup-cpu.json
"""

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "pyrovae --help": [sys.executable, "-m", "pyrovae.app.cli", "--help"],
    "pyrovae --version": [sys.executable, "-m", "pyrovae.app.cli", "--version"],
    "pyrovae train --help": [sys.executable, "-m", "pyrovae.app.cli", "train", "--help"],
    "pyrovae evaluate (no run)": [sys.executable, "-m", "pyrovae.app.cli", "evaluate"],
    "pyrovae trian (a typo)": [sys.executable, "-m", "pyrovae.app.cli", "trian"],
}


def seconds(command) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs of each command (default 7)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    times = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):  # alternating, so a drift of the machine's speed hits every command alike
        for name, command in COMMANDS.items():
            times[name].append(seconds(command))
    base = statistics.median(times["python -c pass"])
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"{args.repeats} runs each (medians)\n")
    print("| command | seconds | over python -c pass |")
    print("| --- | ---: | ---: |")
    rows = {}
    for name, values in times.items():
        median = statistics.median(values)
        rows[name] = {"median_s": median, "over_python_s": median - base, "all_s": values}
        print(f"| {name} | {median:.3f} | {median - base:+.3f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"repeats": args.repeats, "commands": rows}, indent=1) + "\n")
        print(f"\nwritten: {args.json}")
    return rows


if __name__ == "__main__":
    main()
