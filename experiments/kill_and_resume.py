"""Kill a run with SIGKILL at seeded moments and restart it after each kill. For each kill, report where
it landed: the stage the run's log had reached, and whether an orbax write was under way.

The log's stages come from its ``rlhf-jax HH:MM:SS stage NAME...`` lines (rlhf_jax.runs.pipeline). An orbax
write is under way when a ``*.orbax-checkpoint-tmp*`` directory of the attempt's is in the workdir.

    python experiments/kill_and_resume.py --kills 3 --seed 28 --between 60,600 --after assets \\
        --workdir runs/sentiment_quick -- .venv/bin/rlhf-jax run --config configs/sentiment_quick.py

The command runs in a process group of its own, and the whole group is killed (a shell command too).

Attempt i is killed at a time drawn uniformly from ``--between LO,HI`` seconds after it started (``--after
STAGE``: after its log reached that stage, so that a first attempt's install is not cut). After the last
kill the command runs to its end. Prints one JSON line: each kill, the final exit status, the seconds.
``run_with_kills`` also takes moments tied to a stage: (stage, seconds after it started).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

# The pipeline's stages in order, as its log names them.
STAGES = ("assets", "collect", "reward model training", "reward model evaluation", "rl", "evaluation", "report")
STAGE_LINE = re.compile(r"^rlhf-jax \d\d:\d\d:\d\d stage (?P<stage>[a-z ]+?)(:|$)")


ORBAX_WRITE = "orbax write"  # a Moment's stage: the first moment an orbax write is seen under way


@dataclasses.dataclass(frozen=True)
class Moment:
    """``seconds`` after ``stage`` (or a later one) started in the attempt's log; ``stage`` None: after the
    attempt started; ``ORBAX_WRITE``: as soon as a checkpoint is seen being written."""

    stage: str | None
    seconds: float


@dataclasses.dataclass
class Attempt:
    code: int | None = None
    killed: bool = False
    stage: str = "start-up"  # the last stage the log reached
    orbax_write: bool = False
    seconds: float = 0.0
    timeline: list = dataclasses.field(default_factory=list)  # (stage, seconds since the attempt started)


def _reached(attempt: Attempt, stage: str | None) -> float | None:
    """When the attempt's log reached ``stage`` or a later one (seconds since it started), or None."""
    if stage is None:
        return 0.0
    later = STAGES[STAGES.index(stage):]
    times = [t for name, t in attempt.timeline if name in later]
    return times[0] if times else None


def attempt(command: list[str], moment: Moment | None, workdir: str, log_path: str, env=None,
            timeout: float = 3600) -> Attempt:
    """Run ``command`` once; kill it at ``moment`` (None: let it end). Its stderr is appended to ``log_path``."""
    out = Attempt()
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)  # its own process group: a shell and what it started

    def read():
        with open(log_path, "a") as log:
            for line in process.stderr:
                log.write(line)
                log.flush()
                match = STAGE_LINE.match(line)
                if match and match["stage"] in STAGES:
                    out.timeline.append((match["stage"], time.monotonic() - start))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    started = time.time()

    def writing():  # a temporary directory of this attempt's (one a kill left behind is older)
        for path in glob.glob(os.path.join(workdir, "**", "*orbax-checkpoint-tmp*"), recursive=True):
            try:
                if os.path.getmtime(path) >= started:
                    return True
            except OSError:  # renamed meanwhile: the write just finished
                pass
        return False

    while process.poll() is None and time.monotonic() - start < timeout:
        if moment is not None:
            if moment.stage == ORBAX_WRITE:
                due = writing()
            else:
                began = _reached(out, moment.stage)
                due = began is not None and time.monotonic() - start >= began + moment.seconds
            if due:
                out.orbax_write = writing()
                out.stage = out.timeline[-1][0] if out.timeline else "start-up"
                os.killpg(process.pid, signal.SIGKILL)
                out.killed = True
                break
        time.sleep(0.005 if moment is not None and moment.stage == ORBAX_WRITE else 0.05)
    if process.poll() is None and not out.killed:
        os.killpg(process.pid, signal.SIGKILL)  # past the timeout
    out.code = process.wait()
    reader.join(timeout=10)
    out.seconds = time.monotonic() - start
    if not out.killed and out.timeline:
        out.stage = out.timeline[-1][0]
    return out


def run_with_kills(command: list[str], moments: list[Moment], workdir: str, log_path: str, env=None) -> dict:
    """``command`` killed at each of ``moments`` in turn (each in a fresh attempt), then run to its end.
    A moment the run outlives is skipped; returns the landed kills, every attempt's timeline, the exit
    status of the last attempt."""
    kills, attempts = [], []
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    for index, moment in enumerate(moments):
        result = attempt(command, moment, workdir, log_path, env)
        attempts.append(result)
        if result.killed:
            kills.append({"attempt": index, "target": dataclasses.asdict(moment), "stage": result.stage,
                          "orbax_write": result.orbax_write, "seconds": round(result.seconds, 2)})
        elif result.code == 0:
            break  # the run ended before this moment came
        else:
            raise RuntimeError(f"attempt {index} exited with status {result.code}: see {log_path}")
    if not attempts or attempts[-1].killed:
        attempts.append(attempt(command, None, workdir, log_path, env))
    final = attempts[-1]
    return {"kills": kills, "code": final.code, "attempts": len(attempts),
            "timelines": [a.timeline for a in attempts], "seconds": round(sum(a.seconds for a in attempts), 1)}


def landed_per_stage(kills: list[dict]) -> dict[str, int]:
    counts = {}
    for kill in kills:
        counts[kill["stage"]] = counts.get(kill["stage"], 0) + 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--between", default="60,900", help="LO,HI: seconds after an attempt starts (or --after)")
    parser.add_argument("--after", default=None, choices=STAGES,
                        help="count the seconds from this stage's start (or a later one's), not the attempt's")
    parser.add_argument("--workdir", required=True, help="the run's workdir (to see orbax writes under way)")
    parser.add_argument("--log", default=None, help="the attempts' stderr (default: WORKDIR.kills.log)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    low, high = (float(x) for x in args.between.split(","))
    rng = random.Random(args.seed)
    moments = [Moment(args.after, rng.uniform(low, high)) for _ in range(args.kills)]
    log_path = args.log or args.workdir.rstrip("/") + ".kills.log"
    result = run_with_kills(command, moments, args.workdir, log_path)
    result["per_stage"] = landed_per_stage(result["kills"])
    print(json.dumps(result))
    return 0 if result["code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
