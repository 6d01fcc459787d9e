"""Run the test suite tier by tier and print each tier's wall time against its budget.

Tiers: unit, integration, distributed, gpu (CUDA tests skip themselves without a GPU). The install time
measured by the Makefile is reported as its own tier. Exits non-zero when any tier fails.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIERS = (("unit", 10), ("integration", 15), ("distributed", 15), ("gpu", 5))
BUDGET_INSTALL_MIN = 8


def run_tier(name: str, extra: list[str]) -> tuple[int, dict[str, int], float]:
    report = ROOT / ".pytest_cache" / f"junit-{name}.xml"
    report.parent.mkdir(exist_ok=True)
    start = time.time()
    cmd = [sys.executable, "-m", "pytest", f"tests/{name}", "-q", "-m", "not slow", f"--junitxml={report}", *extra]
    code = subprocess.call(cmd, cwd=ROOT)
    elapsed = time.time() - start
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if report.is_file():
        suite = ET.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        total, failures = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped = int(suite.get("skipped", 0))
        counts = {"passed": total - failures - skipped, "failed": failures, "skipped": skipped}
    if code == 5:  # no tests collected in this tier
        code = 0
    return code, counts, elapsed


def main() -> int:
    extra = sys.argv[1:]
    rows, failed_tiers = [], []
    install = ROOT / ".venv" / ".install_seconds"
    if install.is_file():
        rows.append(("install", int(install.read_text()) / 60, BUDGET_INSTALL_MIN, "-"))
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    for name, budget in TIERS:
        if not any((ROOT / "tests" / name).glob("test_*.py")):
            continue
        code, counts, elapsed = run_tier(name, extra)
        for k in totals:
            totals[k] += counts[k]
        if code != 0:
            failed_tiers.append(name)
        rows.append((name, elapsed / 60, budget,
                     f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"))
    print("\n tier          minutes  budget  within  result")
    for name, minutes, budget, result in rows:
        print(f" {name:12s} {minutes:8.2f} {budget:7d}  {'yes' if minutes <= budget else 'NO':6s}  {result}")
    if failed_tiers:
        print(f"failed tiers: {', '.join(failed_tiers)}")
    print(f"total: {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped")
    return 1 if failed_tiers else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
