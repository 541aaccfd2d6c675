"""`medscale eval on-commit`: evaluate the checkpoints named in the config, tag the results with the git commit,
compare them with the previous commit's results in the same results folder, and fail on a regression.

The rule: a figure (higher is better) regresses when it dropped by more than `eval.tolerance` AND by more than the
noise, the larger half-width of the two 95% bootstrap intervals. Small test sets are noisy (BreastMNIST's 156
test images give about 3 points of standard error), so a drop inside the noise never fails the gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from medscale.core.summary import Summary
from medscale.eval.config import EvalConfig
from medscale.eval.pool import evaluate, git_commit
from medscale.eval.results import ResultStore

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
    """The change of every figure against the previous commit's."""

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
                   "no regression" if self.previous else "no previous commit's results to compare with")
        return "\n".join(head + self.lines + [verdict] + [f"  FAILED {f}" for f in self.failed])


def on_commit(cfg: EvalConfig) -> CommitReport:
    """Evaluate for this commit (jobs already run for it are skipped) and compare with the newest other commit."""
    commit = git_commit()
    summary = evaluate(cfg, per_commit=True)
    rows = ResultStore(summary.out).rows
    report = CommitReport(commit, failed=list(summary.failed))
    others = sorted({(r["time"], r["commit"]) for r in rows if r["commit"] != commit})
    if not others:
        return report
    report.previous = others[-1][1]
    latest: Dict[Tuple[str, str, Tuple], Dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: r["time"]):
        latest[(r["commit"], r["checkpoint"], (r["dataset"], r["task"], r["metric"]))] = r
    for (tag, name, what), now in sorted(latest.items()):
        before = latest.get((report.previous, name, what))
        if tag != commit or before is None or what[2] in NOT_SCORES:
            continue
        bad = regressed(before, now, cfg.tolerance)
        line = (f"| {name} | {what[0]} | {what[1]} | {what[2]} | {before['value']:.3f} | {now['value']:.3f} | "
                f"{now['value'] - before['value']:+.3f} | {'REGRESSION' if bad else ''} |")
        report.lines.append(line)
        if bad:
            report.regressions.append(f"{name} {what[0]} {what[1]} {what[2]}")
    return report
