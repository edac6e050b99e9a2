"""What ``import relprop`` costs beyond ``import numpy``: relprop's cumulative time in
``python -X importtime -c "import numpy, relprop"``, median over fresh processes, read from
compiled bytecode (as after ``pip install .``) and compiling every module (no bytecode cache:
an editable install under ``PYTHONDONTWRITEBYTECODE=1``); and the modules it adds to numpy's.

    python bench/import_time.py [--runs 21]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

CODE = "import numpy, sys; before = set(sys.modules); import relprop; " \
       "print(*sorted(set(sys.modules) - before))"


def once(env):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", CODE], env=env,
                          capture_output=True, text=True, check=True)
    us = re.search(r"^import time:\s+\d+ \|\s+(\d+) \| relprop$", proc.stderr, re.M)
    return int(us.group(1)) / 1000, proc.stdout.split()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=21, help="fresh processes per case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as empty:
        cases = {
            "from bytecode": dict(os.environ, PYTHONPYCACHEPREFIX=cache,
                                  PYTHONDONTWRITEBYTECODE=""),
            "compiling": dict(os.environ, PYTHONPYCACHEPREFIX=empty, PYTHONDONTWRITEBYTECODE="1"),
        }
        once(cases["from bytecode"])  # writes the cache
        times = {name: [] for name in cases}
        for _ in range(args.runs):  # interleaved, so that both meet the machine alike
            for name, env in cases.items():
                ms, modules = once(env)
                times[name].append(ms)
    for name, ms in times.items():
        print(f"import relprop beyond numpy, {name}: median {statistics.median(ms):.1f} ms "
              f"(min {min(ms):.1f}, max {max(ms):.1f}; {args.runs} runs)")
    print(f"modules it adds to numpy's ({len(modules)}): {' '.join(modules)}")


if __name__ == "__main__":
    main()
