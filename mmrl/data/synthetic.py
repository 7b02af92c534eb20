"""Generated tasks with verifiable answers, for CPU demos and tests (no downloads)."""
from __future__ import annotations

import random


def addition(num_examples: int, max_operand: int, seed: int) -> list[dict]:
    """'What is a + b?' with a, b in [0, max_operand]; the reference solution is '<answer>a+b</answer>'."""
    rng = random.Random(seed)
    rows = []
    for i in range(num_examples):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        rows.append({"id": f"add-{i}", "question": f"What is {a} + {b}?", "answer": str(a + b),
                     "solution": f"<answer>{a + b}</answer>"})
    return rows


TASKS = {"addition": addition}


def generate(task: str, num_examples: int, max_operand: int, seed: int) -> list[dict]:
    if task not in TASKS:
        raise ValueError(f"data.synthetic.task: unknown task '{task}'; valid: {sorted(TASKS)}")
    return TASKS[task](num_examples=num_examples, max_operand=max_operand, seed=seed)
