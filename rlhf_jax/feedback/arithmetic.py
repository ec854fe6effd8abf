"""A task graded by a program rather than a simulated human: generated arithmetic problems, "a op b =", with
operands in [0, max_operand) and op one of ``operations``, prompted after two solved examples
(``SHOTS``); the grader reads the first integer of the response and scores 1 when it is the exact answer, 0
otherwise. The same grader is the reward and the gold metric (held-out exact-match accuracy).

Every problem is in one split, decided by a hash of its text (``split_of``): 1 in 5 is held out, the same
ones for every seed, run and machine. The difficulty is the operand range and the operations.
"""

from __future__ import annotations

import dataclasses
import hashlib
import operator
import re
from collections.abc import Sequence

import numpy as np

OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
SHOTS = "2 + 3 = 5\n4 - 7 = -3\n"  # one negative answer: without it the model never writes one
HELD_OUT_SHARE = 5  # one problem in 5 is in the test split
_QUESTION = re.compile(r"(\d+) ([-+*]) (\d+) =\s*$")
_INTEGER = re.compile(r"-?\d+")


@dataclasses.dataclass(frozen=True)
class Problem:
    left: int
    operation: str
    right: int

    @property
    def question(self) -> str:
        return f"{self.left} {self.operation} {self.right} ="

    @property
    def prompt(self) -> str:
        return SHOTS + self.question

    @property
    def answer(self) -> int:
        return OPERATIONS[self.operation](self.left, self.right)


def split_of(problem: Problem) -> str:
    """'test' for the problems whose question hashes to 0 mod ``HELD_OUT_SHARE``, else 'train'."""
    digest = int(hashlib.sha256(problem.question.encode()).hexdigest(), 16)
    return "test" if digest % HELD_OUT_SHARE == 0 else "train"


def problems(max_operand: int, operations: str, split: str, seed: int = 0) -> list[Problem]:
    """Every problem of ``split`` at this difficulty, in an order of ``seed``."""
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r} is not 'train' or 'test'")
    unknown = sorted(set(operations) - set(OPERATIONS))
    if unknown or not operations:
        raise ValueError(f"operations {operations!r}: each must be one of {''.join(OPERATIONS)}")
    found = [Problem(a, op, b) for op in operations for a in range(max_operand) for b in range(max_operand)]
    found = [p for p in found if split_of(p) == split]
    return [found[i] for i in np.random.default_rng(seed).permutation(len(found))]


def parse_problem(prompt: str) -> Problem:
    """The problem a prompt asks (its last line), or ValueError naming the prompt."""
    match = _QUESTION.search(prompt)
    if match is None:
        raise ValueError(f"not an arithmetic prompt (no 'a op b =' at its end): {prompt[-60:]!r}")
    return Problem(int(match.group(1)), match.group(2), int(match.group(3)))


def parse_answer(response: str) -> int | None:
    """The first integer in the response (a leading minus sign included), None if there is none."""
    match = _INTEGER.search(response.replace(",", ""))
    return None if match is None else int(match.group())


class Grader:
    """score(prompts, responses) -> 1.0 where the response's first integer is the prompt's answer, else 0.0:
    the reward and the gold labeler of the arithmetic task (``rl.reward='arithmetic'``)."""

    name = "arithmetic exact match"

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        return np.asarray([float(parse_answer(r) == parse_problem(p).answer) for p, r in zip(prompts, responses)],
                          np.float64)
