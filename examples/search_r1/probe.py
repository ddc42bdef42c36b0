"""What a model answers per question type once its searches found the answer: a cheap look at the
answer turn, before (or instead of) a training run.

For each eval question, plays the ideal episode of the example config without the policy: search
the entity in the question, then (two-hop) the country the first passage names, each against the
BM25 index of the corpus with the env's top-k and passage format; then the env's "no searches
left" message and the ``<answer>`` prefill. At that point it scores, teacher-forced, every fact of
the question's country as the answer (`` X </answer>``): the probability of the gold answer, and
the share of questions whose most likely fact is the gold one or a fact of another type (a capital
for a currency question, say). With ``--samples`` it also samples answers (temperature as in the
config) and reports the exact match per type, which is what GRPO's groups see at the answer turn.

    python examples/search_r1/probe.py [--config examples/search_r1/grpo_smollm2.yaml] [--model DIR] [--countries 20]

The instruction and worked example every episode shares are run once (a KV cache copied per
question); ``last_search_message`` gets the question as the env gives it. On a busy 2-core CPU
three countries (12 questions) took about 8 minutes per config.

Under the original instruction (one currency-code worked example, "Write the answer now"), the
untrained model gave the gold subregion 0.0001 on average and the gold currency code 0.005: GRPO's
groups of 8 see almost no right answer of those types. Prints a markdown table per type and one
JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from agentrl.models.resolve import resolve_model
from envs_contrib.search_r1.retriever import format_passage
from envs_contrib.search_r1.server import BM25Index, load_corpus

HERE = Path(__file__).parent
FACTS = ("capital", "currency", "subregion", "country")
TAGS = {"think": "think", "search": "search", "information": "information", "answer": "answer"}


def episode(question: dict[str, Any], index: BM25Index, env: dict[str, Any], facts: dict[str, str]) -> list[dict[str, str]]:
    """The chat of the ideal episode of ``question``, ending in the ``<answer>`` prefill."""
    topk = int(env.get("topk", 3))
    queries = [facts["capital"], facts["country"]] if question["hops"] == 2 else [facts["country"]]
    messages = [{"role": "user", "content": env["instruction"].format(question=question["question"], **TAGS)}]
    for turn, query in enumerate(queries, 1):
        passages = [format_passage(doc) for doc, _ in index.search([query], topk)[0]]
        body = "\n".join(f"Doc {i}{p}" for i, p in enumerate(passages, 1))
        last = env.get("last_search_message", "").format(question=question["question"], **TAGS) if turn == len(queries) else ""
        messages += [{"role": "assistant", "content": f"<search> {query} </search>"},
                     {"role": "user", "content": f"\n<information>{body}</information>\n{last}"}]
    return messages + [{"role": "assistant", "content": "<answer>"}]


def prefix_cache(model: Any, prefix: list[int]) -> Any:
    """The KV cache of ``prefix`` (the instruction and worked example every episode shares)."""
    with torch.no_grad():
        return model(torch.tensor([prefix]), use_cache=True).past_key_values


def answer_logprobs(model: Any, tokenizer: Any, prefix: Any, context: list[int], answers: list[str]) -> list[float]:
    """log P(`` answer </answer>`` | context) of each answer, teacher-forced on one pass over the
    context past the shared ``prefix`` (``(tokens, cache)``)."""
    tokens, shared = prefix
    with torch.no_grad():
        cache = copy.deepcopy(shared)
        out = model(torch.tensor([context[len(tokens):]]), past_key_values=cache, use_cache=True)
        first, cache = torch.log_softmax(out.logits[0, -1].float(), -1), out.past_key_values
        scores = []
        for answer in answers:
            target = tokenizer(f" {answer} </answer>", add_special_tokens=False)["input_ids"]
            logits = model(torch.tensor([target[:-1]]), past_key_values=cache, use_cache=True).logits[0].float() if len(target) > 1 else None
            if len(target) > 1:
                cache.crop(-(len(target) - 1))  # back to the context
            rest = torch.log_softmax(logits, -1).gather(1, torch.tensor(target[1:])[:, None]).sum() if logits is not None else 0.0
            scores.append(float(first[target[0]] + rest))
    return scores


def common_prefix(contexts: list[list[int]]) -> list[int]:
    first = contexts[0]
    n = min(len(c) for c in contexts) - 1
    for c in contexts[1:]:
        n = next((i for i in range(n) if c[i] != first[i]), n)
    return first[:n]


def sample_answers(model: Any, tokenizer: Any, context: list[int], n: int, temperature: float) -> list[str]:
    ids = torch.tensor([context] * n)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                             max_new_tokens=16, pad_token_id=tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(out[:, len(context):], skip_special_tokens=True)
    return [t.split("</answer>")[0].strip() for t in texts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / "grpo_smollm2.yaml")
    parser.add_argument("--model", default=None, help="HF model directory (default: the config's hf-checkpoint)")
    parser.add_argument("--data", type=Path, default=HERE / "data")
    parser.add_argument("--countries", type=int, default=20, help="the first N held-out countries (4 questions each)")
    parser.add_argument("--samples", type=int, default=0, help="sampled answers per question (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the sampling of --samples")
    args = parser.parse_args()
    torch.manual_seed(args.seed)  # a script: the process's generator is this run's alone
    from agentrl.rewards.text import exact_match

    config = yaml.safe_load(args.config.read_text())
    env = config["env-kwargs"]
    model_dir = args.model or str(resolve_model(config.get("hf-checkpoint", "smollm2-135m")))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    index = BM25Index(load_corpus(args.data / "corpus.jsonl"))
    questions = [json.loads(line) for line in (args.data / "eval.jsonl").read_text().splitlines()][: 4 * args.countries]
    facts = {q["metadata"]["country"]: {"country": q["metadata"]["country"]} for q in questions}
    for q in questions:
        facts[q["metadata"]["country"]][q["asks"]] = q["golden_answers"][0]
    contexts = []
    for q in questions:
        text = tokenizer.apply_chat_template(episode(q, index, env, facts[q["metadata"]["country"]]), tokenize=False, continue_final_message=True)
        contexts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    shared = common_prefix(contexts)
    prefix = (shared, prefix_cache(model, shared))
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for q, context in zip(questions, contexts, strict=True):
        f = facts[q["metadata"]["country"]]
        scores = dict(zip(FACTS, answer_logprobs(model, tokenizer, prefix, context, [f[k] for k in FACTS]), strict=True))
        row = {"p_gold": math.exp(scores[q["asks"]]), "top": max(scores, key=scores.__getitem__)}
        if args.samples:
            answers = sample_answers(model, tokenizer, context, args.samples, float(config.get("rollout-temperature", 1.0)))
            row |= {"em": sum(exact_match(a, q["golden_answers"]) for a in answers) / len(answers), "answers": answers[:3]}
        rows[f"{q['hops']}-hop {q['asks']}"].append(row)
    print("| question | n | P(gold) mean | top fact is gold | top fact is another fact |" + (" sampled EM |" if args.samples else ""))
    print("|---|---|---|---|---|" + ("---|" if args.samples else ""))
    summary = {}
    for kind, rs in sorted(rows.items()):
        asks = kind.split()[-1]
        s = {"n": len(rs), "p_gold": sum(r["p_gold"] for r in rs) / len(rs), "top_gold": sum(r["top"] == asks for r in rs) / len(rs)}
        if args.samples:
            s["sampled_em"] = sum(r["em"] for r in rs) / len(rs)
        summary[kind] = s
        print(f"| {kind} | {s['n']} | {s['p_gold']:.3f} | {s['top_gold']:.2f} | {1 - s['top_gold']:.2f} |"
              + (f" {s['sampled_em']:.3f} |" if args.samples else "") + f" e.g. {rs[0].get('answers', rs[0]['top'])}")
    print(json.dumps({"config": str(args.config), "model": model_dir, "by_type": summary}))


if __name__ == "__main__":
    main()
