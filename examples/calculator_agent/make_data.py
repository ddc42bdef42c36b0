"""Multi-digit arithmetic a 135M model cannot do in its head: ``What is 4821 * 37?``.

    python examples/calculator_agent/make_data.py --out examples/calculator_agent/data

Writes ``train.jsonl`` (2,000 problems) and ``eval.jsonl`` (200 held-out problems, none in train),
each row ``{"input", "label"}``, the same every time (seeded).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

OPS = (("+", lambda a, b: a + b), ("-", lambda a, b: a - b), ("*", lambda a, b: a * b))


def problems(rng: random.Random, count: int, seen: set[str]) -> list[dict[str, str]]:
    rows = []
    while len(rows) < count:
        symbol, fn = rng.choice(OPS)
        a, b = rng.randint(100, 9999), rng.randint(10 if symbol == "*" else 100, 99 if symbol == "*" else 9999)
        question = f"What is {a} {symbol} {b}?"
        if question not in seen:
            seen.add(question)
            rows.append({"input": question, "label": str(fn(a, b))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--eval", type=int, default=200)
    args = parser.parse_args()
    rng, seen = random.Random(0), set()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, count in (("eval", args.eval), ("train", args.train)):
        with open(args.out / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in problems(rng, count, seen))


if __name__ == "__main__":
    main()
