"""Generate the math example's train and held-out eval sets (there is no dataset hub).

Problems are small arithmetic questions (``What is 37 + 48?``) with integer answers, drawn by a
fixed seed; train and eval share no problem. Rows use slime's default keys: ``input``, ``label``.

    python examples/math/make_data.py --out examples/math/data
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def make_problems(seed: int, count: int) -> list[dict[str, object]]:
    """``count`` distinct problems drawn with ``seed``; the same arguments give the same list."""
    rng = random.Random(seed)
    seen: set[tuple[int, str, int]] = set()
    rows = []
    while len(rows) < count:
        op = rng.choice("++-*")
        a, b = (rng.randint(2, 12), rng.randint(2, 12)) if op == "*" else (rng.randint(10, 99), rng.randint(10, 99))
        if op == "-" and b > a:
            a, b = b, a
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        rows.append({"input": f"What is {a} {op} {b}?", "label": str(OPERATIONS[op](a, b)), "metadata": {"op": op}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--eval-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=20261126)
    args = parser.parse_args()
    rows = make_problems(args.seed, args.train_size + args.eval_size)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in (("eval", rows[: args.eval_size]), ("train", rows[args.eval_size :])):
        with open(args.out / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in part)
        print(f"wrote {len(part)} problems to {args.out / f'{name}.jsonl'}")


if __name__ == "__main__":
    main()
