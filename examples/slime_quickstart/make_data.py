"""Data shaped like the Quick Start's (there is no dataset hub here): rows of
``{"prompt": [chat messages], "label": answer}`` as in ``dapo-math-17k.jsonl``, read with
``--input-key prompt --label-key label --apply-chat-template``. Problems are small arithmetic
questions with integer answers, asking for the answer in ``\\boxed{}`` (``question`` holds the bare
question); ``train.jsonl`` and
``eval.jsonl`` (the Quick Start's ``aime`` set) are drawn with fixed seeds and share no problem.

    python examples/slime_quickstart/make_data.py --out examples/slime_quickstart/data
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

INSTRUCTION = "Solve the problem. Put the final answer in \\boxed{{}}.\n\n{question}"


def problems(seed: int, count: int, exclude: frozenset[str] = frozenset()) -> list[dict[str, object]]:
    """``count`` distinct problems drawn with ``seed``, none of whose questions is in ``exclude``."""
    rng, rows, seen = random.Random(seed), [], set(exclude)
    while len(rows) < count:
        a, b, op = rng.randint(2, 30), rng.randint(2, 12), rng.choice("+-*")
        question = f"What is {a} {op} {b}?"
        if question in seen:
            continue
        seen.add(question)
        answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        rows.append({"prompt": [{"role": "user", "content": INSTRUCTION.format(question=question)}], "label": str(answer), "question": question})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    train = problems(seed=0, count=256)
    evals = problems(seed=1, count=64, exclude=frozenset(str(row["question"]) for row in train))
    for name, rows in (("train", train), ("eval", evals)):
        (args.out / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"{len(train)} training and {len(evals)} eval problems in {args.out}")


if __name__ == "__main__":
    main()
