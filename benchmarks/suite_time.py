"""Where the test suite's time goes: per test module and the slowest tests, from pytest's JUnit XML.

    python benchmarks/suite_time.py --run                 # the suite as CI runs it (-n 2 --dist loadscope)
    python benchmarks/suite_time.py --junit=results.xml   # a finished run's XML (pytest --junitxml=...)
    python benchmarks/suite_time.py --list

Prints the modules by summed test time (setup + call + teardown, as pytest's JUnit report counts
them) and the slowest tests, and writes benchmarks/results/suite_time.json with the machine, the
commit and the suite's wall time (pytest's, without installing anything). Summed times exceed the wall time: two workers
share the cores, and a test's own subprocesses count in its time.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "benchmarks", "results", "suite_time.json")
PYTEST = ["-m", "pytest", "-q", "-n", "2", "--dist", "loadscope"]  # the README's test command's options


def read_junit(path: str) -> tuple[list[dict], float | None]:
    """([{module, test, seconds, outcome}] of every test case in the XML, pytest's wall time)."""
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    wall = float(suite.get("time")) if suite is not None and suite.get("time") else None
    out = []
    for case in root.iter("testcase"):
        outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        parts = case.get("classname", "").split(".")
        while len(parts) > 1 and parts[-1][:1].isupper():  # a test class's name follows its module's
            parts.pop()
        out.append({"module": "/".join(parts) + ".py", "test": case.get("name"), "seconds": float(case.get("time", 0)),
                    "outcome": outcome})
    return out, wall


def summarize(cases: list[dict], wall: float | None, top: int = 25) -> dict:
    modules = collections.defaultdict(lambda: [0.0, 0])
    for c in cases:
        modules[c["module"]][0] += c["seconds"]
        modules[c["module"]][1] += 1
    outcomes = collections.Counter(c["outcome"] for c in cases)
    return {"wall_seconds": wall, "summed_seconds": round(sum(c["seconds"] for c in cases), 1),
            "tests": len(cases), "outcomes": dict(outcomes),
            "modules": [{"module": m, "seconds": round(s, 1), "tests": n}
                        for m, (s, n) in sorted(modules.items(), key=lambda kv: -kv[1][0])],
            "slowest": [{k: c[k] for k in ("module", "test", "seconds")}
                        for c in sorted(cases, key=lambda c: -c["seconds"])[:top]]}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="store_true", help="run the suite (as CI does) and time it")
    p.add_argument("--junit", default="", help="a pytest JUnit XML to summarize instead")
    p.add_argument("--list", action="store_true", help="print what would run and exit")
    p.add_argument("--commit", default="", help="the commit the --junit run tested (default: this checkout's)")
    p.add_argument("--out", default=OUT)
    a = p.parse_args()
    if a.list or not (a.run or a.junit):
        print(f"--run: {sys.executable} {' '.join(PYTEST)} --junitxml=TMP (in {REPO}); --junit=FILE: summarize")
        return 0
    path = a.junit
    if a.run:
        path = os.path.join(tempfile.mkdtemp(prefix="suite_time-"), "junit.xml")
        subprocess.run([sys.executable, *PYTEST, f"--junitxml={path}"], cwd=REPO, check=False)
    cases, wall = read_junit(path)  # wall: pytest's own, from start to end of the session
    result = {"machine": {"cpu": _cpu(), "cores": os.cpu_count()}, "commit": a.commit or _commit(),
              **summarize(cases, None if wall is None else round(wall, 1))}
    print(f"{result['tests']} tests {result['outcomes']}; wall {wall} s; summed {result['summed_seconds']} s")
    print(f"{'module':<52} {'tests':>5} {'seconds':>8}")
    for m in result["modules"]:
        print(f"{m['module']:<52} {m['tests']:>5} {m['seconds']:>8.1f}")
    print(f"\n{'slowest test':<90} {'seconds':>8}")
    for c in result["slowest"]:
        print(f"{(c['module'] + '::' + c['test'])[:90]:<90} {c['seconds']:>8.1f}")
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
