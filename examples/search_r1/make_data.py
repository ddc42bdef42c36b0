"""Build the Search-R1 example's offline corpus and questions from the ``countryinfo`` package.

Facts live in separate documents, so multi-hop questions need two searches: one document per
capital city ("X is the capital city of C.") and one per country ("C is a country in S. C uses
the currency with code K."). Questions use Search-R1's fields (``question``, ``golden_answers``)
plus ``hops``, ``asks`` (``capital``, ``currency`` or ``subregion``) and ``metadata.country``:

* single-hop: "What is the capital of C?", "What is the currency code of C?";
* two-hop: "What is the currency code of the country whose capital is X?",
  "In which subregion is the country whose capital is X?".

Countries are split with a fixed seed, so held-out questions are about countries the training
questions never mention; the corpus covers every country.

    python examples/search_r1/make_data.py --out examples/search_r1/data
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from countryinfo import all_countries


def country_facts() -> list[dict[str, str]]:
    """``name``, ``capital``, ``currency``, ``subregion`` of every country that has all four."""
    facts = []
    for country in all_countries():
        try:
            row = {"name": country.name(), "capital": country.capital(), "currency": (country.currencies() or [""])[0], "subregion": country.subregion()}
        except (KeyError, AttributeError, TypeError):
            continue
        if all(isinstance(v, str) and v for v in row.values()):
            facts.append({k: v.strip() for k, v in row.items()})
    return sorted(facts, key=lambda f: f["name"])


def documents(facts: list[dict[str, str]]) -> list[dict[str, str]]:
    docs = []
    for f in facts:
        docs.append({"id": f"capital:{f['name']}", "contents": f'"{f["capital"]}"\n{f["capital"]} is the capital city of {f["name"]}.'})
        docs.append({"id": f"country:{f['name']}", "contents": f'"{f["name"]}"\n{f["name"]} is a country in {f["subregion"]}. '
                                                                f'{f["name"]} uses the currency with code {f["currency"]}.'})
    return docs


def questions(f: dict[str, str]) -> list[dict[str, Any]]:
    name, capital = f["name"], f["capital"]
    rows = [
        (f"What is the capital of {name}?", "capital", 1),
        (f"What is the currency code of {name}?", "currency", 1),
        (f"What is the currency code of the country whose capital is {capital}?", "currency", 2),
        (f"In which subregion is the country whose capital is {capital}?", "subregion", 2),
    ]
    return [{"question": q, "golden_answers": [f[asks]], "hops": hops, "asks": asks, "metadata": {"country": name}} for q, asks, hops in rows]


def split(facts: list[dict[str, str]], eval_countries: int, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, eval) questions; the eval countries are drawn with ``seed`` and never in train."""
    order = list(facts)
    random.Random(seed).shuffle(order)
    held_out, train = order[:eval_countries], order[eval_countries:]
    return [q for f in train for q in questions(f)], [q for f in held_out for q in questions(f)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--eval-countries", type=int, default=80)
    parser.add_argument("--seed", type=int, default=20261126)
    args = parser.parse_args()
    facts = country_facts()
    train, held_out = split(facts, args.eval_countries, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("corpus", documents(facts)), ("train", train), ("eval", held_out)):
        with open(args.out / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        print(f"wrote {len(rows)} rows to {args.out / f'{name}.jsonl'}")


if __name__ == "__main__":
    main()
