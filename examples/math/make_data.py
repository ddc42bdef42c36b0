"""Generate the math example's train and held-out eval sets (there is no dataset hub).

Problems are small arithmetic questions with integer answers: single-digit sums, times tables
and sums or differences within 20, each asked in one of several phrasings (``What is 7 + 5?``,
``What is the product of 6 and 7?`` ...). They are facts SmolLM2-135M-Instruct mostly knows but
rarely answers in the ``\\boxed{}`` format the reward requires, so RL visibly changes its
behaviour within minutes. Problems are drawn by a fixed seed; train and eval share no problem
(the same arithmetic fact may appear in both, phrased differently). Rows use slime's default
keys: ``input``, ``label``.

    python examples/math/make_data.py --out examples/math/data
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

PHRASINGS = {
    "+": ["What is {a} + {b}?", "Compute {a} plus {b}.", "What is the sum of {a} and {b}?", "Add {a} and {b}.", "How much is {a} + {b}?"],
    "-": ["What is {a} - {b}?", "Compute {a} minus {b}.", "What is the difference {a} - {b}?", "Subtract {b} from {a}.", "How much is {a} - {b}?"],
    "*": ["What is {a} * {b}?", "Compute {a} times {b}.", "What is the product of {a} and {b}?", "Multiply {a} by {b}.", "How much is {a} x {b}?"],
}

MAX_PROBLEMS = 3500  # distinct problems the phrasings and ranges give, with margin


def _draw(rng: random.Random) -> tuple[int, str, int]:
    kind = rng.random()
    if kind < 0.4:
        return rng.randint(1, 9), "+", rng.randint(1, 9)
    if kind < 0.7:
        return rng.randint(2, 9), "*", rng.randint(2, 9)
    a, op, b = rng.randint(1, 20), rng.choice("+-"), rng.randint(1, 20)
    return (max(a, b), op, min(a, b)) if op == "-" else (a, op, b)


def make_problems(seed: int, count: int) -> list[dict[str, object]]:
    """``count`` distinct problems drawn with ``seed``; the same arguments give the same list."""
    if count > MAX_PROBLEMS:
        raise ValueError(f"the generator has about {MAX_PROBLEMS} distinct problems; asked for {count}")
    rng = random.Random(seed)
    seen: set[str] = set()
    rows = []
    while len(rows) < count:
        a, op, b = _draw(rng)
        text = rng.choice(PHRASINGS[op]).format(a=a, b=b)
        if text in seen:
            continue
        seen.add(text)
        answer = a + b if op == "+" else a - b if op == "-" else a * b
        rows.append({"input": text, "label": str(answer), "metadata": {"op": op}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--train-size", type=int, default=2500)
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
