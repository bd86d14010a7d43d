"""The experiment's words: `plan`'s list, `status`'s table and the progress lines of `run`."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping

from steel_seg.workflow.experiment.plan import STALE, TODO, Verdict
from steel_seg.workflow.experiment.records import DONE, FAILED, RUNNING, Record

STATES = (DONE, STALE, TODO)


def clock(seconds: float | None) -> str:
    """`47.0s`, `3m12s`, `1h02m`."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes = int(seconds // 60)
    return f"{minutes}m{int(seconds % 60):02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def counts(verdicts: Iterable[Verdict]) -> str:
    found = Counter(v.state for v in verdicts)
    return ", ".join(f"{found[s]} {s}" for s in STATES if found[s])


def plan_text(title: str, verdicts: Mapping[str, Verdict]) -> str:
    """One line a step: its state, id and why."""
    width = max(len(step_id) for step_id in verdicts)
    lines = [f"{title}: {len(verdicts)} steps: {counts(verdicts.values())}"]
    lines += [
        f"  {v.state:6s} {v.step.id:{width}s}  {'; '.join(v.reasons)}".rstrip() for v in verdicts.values()
    ]
    return "\n".join(lines)


def status_text(title: str, verdicts: Mapping[str, Verdict], running_pid: int | None) -> str:
    """`plan_text` with each step's time, when it ended and its figures, the tuned Dice and the last error."""
    width = max(len(step_id) for step_id in verdicts)
    run = f"a run is in progress (pid {running_pid})" if running_pid else "no run in progress"
    lines = [
        f"{title}: {len(verdicts)} steps: {counts(verdicts.values())}; {run}",
        f"  {'state':7s} {'step':{width}s}  {'time':>7s}  {'ended':16s}  note",
    ]
    for v in verdicts.values():
        r = v.record
        state = _shown_state(v, running_pid)
        ended = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.ended)) if r and r.ended else "-"
        lines.append(
            f"  {state:7s} {v.step.id:{width}s}  {clock(r.seconds if r else None):>7s}  {ended:16s}  "
            f"{note(v)}".rstrip()
        )
    records = [v.record for v in verdicts.values() if v.record]
    lines.append(f"time in steps: {clock(sum(r.seconds or 0 for r in records))}")
    lines.append(tuned_line(records))
    lines.append(last_error(records))
    return "\n".join(lines)


def _shown_state(v: Verdict, running_pid: int | None) -> str:
    if v.record is None or v.state == DONE:
        return v.state
    if v.record.state == RUNNING:
        return "running" if running_pid == v.record.pid else "stopped"
    return FAILED if v.record.state == FAILED else v.state


def note(v: Verdict) -> str:
    """A done step's figures, else why it is not done."""
    if v.state != DONE:
        return "; ".join(v.reasons)
    result = v.record.result
    if "dice_after" in result:
        before, after = result["dice_before"], result["dice_after"]
        return f"tuned OOF Dice {before:.4f} -> {after:.4f} ({result['n_images']} images)"
    if "epochs" in result:
        figures = ", ".join(
            f"{k} {result[k]:.4f}" for k in ("val_dice", "val_loss") if result.get(k) is not None
        )
        return f"{result['epochs']} epoch(s), {figures}"
    if "selected" in result:
        return f"{result['selected']} of {result['images']} images selected"
    return ""


def tuned_line(records: Iterable[Record]) -> str:
    tuned = [r for r in records if "dice_after" in r.result]
    if not tuned:
        return "tuned OOF Dice: not yet"
    last = max(tuned, key=lambda r: _round(r.step))  # the last pseudo-label round's
    result = last.result
    return (
        f"tuned OOF Dice ({last.step}): {result['dice_after']:.4f} ({result['dice_before']:.4f} before "
        f"tuning, {result['n_images']} images)"
    )


def _round(step_id: str) -> int:
    """The pseudo-label round of a step id (`r2/tune` -> 2, `tune` -> 0)."""
    match = re.match(r"r(\d+)/", step_id)
    return int(match.group(1)) if match else 0


def last_error(records: Iterable[Record]) -> str:
    failed = [r for r in records if r.state == FAILED]
    if not failed:
        return "last error: none"
    last = max(failed, key=lambda r: r.ended or r.started)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(last.ended or last.started))
    return f"last error: {last.step} at {when}: {last.error}  (log: {last.log})"


def line(elapsed: float, word: str, step_id: str, text: str = "") -> str:
    """A progress line: `[0:01:23] done   train/unet-f0  in 47.0s; ...`."""
    h, rest = divmod(int(elapsed), 3600)
    return f"[{h}:{rest // 60:02d}:{rest % 60:02d}] {word:6s} {step_id}  {text}".rstrip()


class TrainingClock:
    """The ETA of the training jobs of one `run`: their mean time so far, over the jobs left, `parallel`
    at a time."""

    def __init__(self, total: int, parallel: int):
        self.total, self.parallel, self.seconds = total, max(1, parallel), []

    def finished(self, seconds: float) -> str:
        self.seconds.append(seconds)
        left = self.total - len(self.seconds)
        if left <= 0:
            return f"training: all {self.total} jobs done"
        mean = sum(self.seconds) / len(self.seconds)
        eta = mean * -(-left // self.parallel)
        return f"training: {len(self.seconds)}/{self.total} jobs done, ETA {clock(eta)}"
