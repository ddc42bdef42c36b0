"""The Search-R1 example's generated corpus and questions: fixed, split by country, half two-hop,
answerable from the corpus, and two-hop questions need two documents."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "search_r1"))
from make_data import country_facts, documents, split

from envs_contrib.search_r1.server import BM25Index


@pytest.fixture(scope="module")
def data():
    facts = country_facts()
    train, held_out = split(facts, 80, seed=20261126)
    return facts, documents(facts), train, held_out


def test_the_split_is_fixed_disjoint_and_half_two_hop(data):
    facts, _, train, held_out = data
    assert len(facts) > 200
    assert (train, held_out) == split(country_facts(), 80, seed=20261126)
    assert len(held_out) == 320 and sum(q["hops"] == 2 for q in held_out) == 160
    assert not {q["metadata"]["country"] for q in train} & {q["metadata"]["country"] for q in held_out}


def test_every_answer_is_in_the_corpus_and_two_hop_answers_are_not_next_to_the_capital(data):
    _, docs, _, held_out = data
    contents = [d["contents"] for d in docs]
    for q in held_out:
        assert any(q["golden_answers"][0] in c for c in contents), q
    capital_docs = {d["contents"].split("\n")[0].strip('"'): d["contents"] for d in docs if d["id"].startswith("capital:")}
    for q in (q for q in held_out if q["hops"] == 2 and "currency" in q["question"]):
        capital = q["question"].rsplit(" is ", 1)[-1].rstrip("?")
        assert q["golden_answers"][0] not in capital_docs[capital]  # the capital's document names only the country


def test_bm25_finds_the_capital_document(data):
    facts, docs, _, _ = data
    index = BM25Index(docs)
    f = facts[0]
    (top, _), *_ = index.search([f"capital of {f['name']}"], 2)[0]
    assert top["id"] in (f"capital:{f['name']}", f"country:{f['name']}")
