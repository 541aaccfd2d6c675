"""`medscale eval on-commit`: evaluate the checkpoints named in the config, tag the results with the git commit,
compare them with the baseline's results in the same results folder, and fail on a regression.

The baseline is `eval.baseline` when given (e.g. the merge-base with the main branch), else the newest commit that
passed: every verdict is recorded (`OUT/commits/COMMIT.json`), so a rejected commit never becomes the yardstick (a
rejected commit followed by an empty one is still rejected).

The rule: a figure (higher is better) regresses when it dropped by more than `eval.tolerance` AND by more than the
noise, the larger half-width of the two 95% bootstrap intervals. Small test sets are noisy (BreastMNIST's 156
test images give about 3 points of standard error), so a drop inside the noise never fails the gate.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from medscale.core.errors import ConfigError
from medscale.core.storage import filesystem, put_bytes_atomic
from medscale.core.summary import Summary
from medscale.eval.config import EvalConfig
from medscale.eval.pool import evaluate, git_commit
from medscale.eval.results import read_results

NOT_SCORES = {"threshold"}  # rows that are settings, not figures where higher is better


def _half_width(row: Dict[str, Any]) -> float:
    low, high = row.get("low"), row.get("high")
    return 0.0 if low is None or high is None or math.isnan(low) else (high - low) / 2


def regressed(before: Dict[str, Any], now: Dict[str, Any], tolerance: float) -> bool:
    """The rule of this module's docstring."""
    drop = before["value"] - now["value"]
    return drop > tolerance and drop > max(_half_width(before), _half_width(now))


@dataclass
class CommitReport(Summary):
    """The change of every figure against the baseline commit's (`previous`)."""

    commit: str
    previous: Optional[str] = None
    lines: List[str] = field(default_factory=list)
    regressions: List[str] = field(default_factory=list)
    failed: List[str] = field(default_factory=list)

    def format(self) -> str:
        """A table of changes, then the verdict."""
        head = [f"medscale eval on-commit {self.commit[:12]} vs {str(self.previous)[:12]}",
                "| checkpoint | dataset | task | metric | before | now | change | |",
                "|---|---|---|---|---|---|---|---|"]
        verdict = (f"REGRESSION in {len(self.regressions)} figure(s)" if self.regressions else
                   "no regression" if self.previous else "no passing commit's results to compare with yet")
        return "\n".join(head + self.lines + [verdict] + [f"  FAILED {f}" for f in self.failed])


VERDICTS = "commits"  # OUT/commits/COMMIT.json: {"commit", "passed", "baseline", "time"}


def verdicts(out: str) -> Dict[str, Dict[str, Any]]:
    """{commit: its recorded verdict} of a results folder."""
    folder = Path(out) / VERDICTS
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def record_verdict(out: str, commit: str, passed: bool, baseline: Optional[str]) -> None:
    """Write `commit`'s verdict (atomically; a rerun of the same commit replaces it)."""
    folder = Path(out) / VERDICTS
    folder.mkdir(parents=True, exist_ok=True)
    put_bytes_atomic(filesystem(str(folder))[0], str(folder / f"{commit}.json"), json.dumps(
        {"commit": commit, "passed": passed, "baseline": baseline, "time": time.time()}).encode())


def baseline_of(cfg: EvalConfig, commit: str, rows: List[Dict[str, Any]]) -> Optional[str]:
    """`eval.baseline`, else the newest commit other than `commit` that passed and has results here."""
    if cfg.baseline:
        return cfg.baseline
    tagged = {r["commit"] for r in rows}
    passed = [(v["time"], c) for c, v in verdicts(cfg.out).items() if v.get("passed") and c != commit and c in tagged]
    return max(passed)[1] if passed else None


def on_commit(cfg: EvalConfig) -> CommitReport:
    """Evaluate for this commit (jobs already run for it are skipped), compare with the baseline, record the
    verdict."""
    commit = git_commit()
    summary = evaluate(cfg, per_commit=True)
    rows = read_results(summary.out)
    report = CommitReport(commit, failed=list(summary.failed))
    report.previous = baseline_of(cfg, commit, rows)
    if report.previous is not None:
        if not any(r["commit"] == report.previous for r in rows):
            raise ConfigError(f"eval.baseline {report.previous}: {summary.out} holds no results of that commit; "
                              "evaluate it first (MEDSCALE_COMMIT=... medscale eval on-commit)")
        _compare(report, rows, commit, cfg.tolerance)
    record_verdict(summary.out, commit, not report.regressions and not report.failed, report.previous)
    return report


def _compare(report: CommitReport, rows: List[Dict[str, Any]], commit: str, tolerance: float) -> None:
    latest: Dict[Tuple[str, str, Tuple], Dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: r["time"]):
        latest[(r["commit"], r["checkpoint"], (r["dataset"], r["task"], r["metric"]))] = r
    for (tag, name, what), now in sorted(latest.items()):
        before = latest.get((report.previous, name, what))
        if tag != commit or before is None or what[2] in NOT_SCORES:
            continue
        bad = regressed(before, now, tolerance)
        line = (f"| {name} | {what[0]} | {what[1]} | {what[2]} | {before['value']:.3f} | {now['value']:.3f} | "
                f"{now['value'] - before['value']:+.3f} | {'REGRESSION' if bad else ''} |")
        report.lines.append(line)
        if bad:
            report.regressions.append(f"{name} {what[0]} {what[1]} {what[2]}")
