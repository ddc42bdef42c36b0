"""The ``agentrl`` command line. Flag names follow slime wherever slime has the concept.

    agentrl train [--config FILE.yaml] [--flag value ...]
    agentrl envs
    agentrl check-env ID [--hf-checkpoint SPEC]
    agentrl rollout --env ID --prompt-data FILE [--hf-checkpoint SPEC] --n-samples-per-prompt N --output FILE.jsonl
    agentrl serve --model-path SPEC [--host 127.0.0.1] [--port 30000] [--dtype bfloat16] [--device cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from agentrl.errors import AgentRLError
from agentrl.models.resolve import DEFAULT_MODEL
from agentrl.serving.server_args import ServerArgs


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command is cmd_train:
        args.args = rest  # the training flags are parsed by agentrl.config
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.WARNING, format="[agentrl] %(levelname)s %(name)s: %(message)s")
    try:
        return args.command(args)
    except AgentRLError as e:  # expected failures: one clear line, no traceback
        print(f"agentrl: error: {e}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentrl", description="Reinforcement learning for LLM agents.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a policy with GRPO-family RL (agentrl train --help)", add_help=False)
    train.set_defaults(command=cmd_train)

    envs = sub.add_parser("envs", help="list registered environment ids")
    envs.set_defaults(command=cmd_envs)

    check = sub.add_parser("check-env", help="check an environment against the Env contract")
    check.add_argument("env_id", metavar="ID")
    check.add_argument("--hf-checkpoint", default=None, help="model spec whose tokenizer checks chat-template conformance")
    check.set_defaults(command=cmd_check_env)

    rollout = sub.add_parser("rollout", help="play episodes of an env against a model; write trajectories")
    rollout.add_argument("--env", required=True, help="env id, e.g. agentrl/Math-v0")
    rollout.add_argument("--prompt-data", required=True, type=Path, help="tasks as .jsonl or .parquet")
    rollout.add_argument("--input-key", default="input")
    rollout.add_argument("--label-key", default="label")
    rollout.add_argument("--metadata-key", default="metadata")
    rollout.add_argument("--num-prompts", type=int, default=None, help="use only the first N tasks")
    rollout.add_argument("--hf-checkpoint", default=DEFAULT_MODEL, help="HF model directory or built-in name")
    rollout.add_argument("--n-samples-per-prompt", type=int, default=1)
    rollout.add_argument("--rollout-max-response-len", type=int, default=256, help="token budget per turn")
    rollout.add_argument("--rollout-max-context-len", type=int, default=None)
    rollout.add_argument("--rollout-temperature", type=float, default=1.0)
    rollout.add_argument("--rollout-top-p", type=float, default=1.0)
    rollout.add_argument("--rollout-top-k", type=int, default=-1)
    rollout.add_argument("--rollout-stop", nargs="+", default=[], help="strings that end a turn")
    rollout.add_argument("--rollout-stop-token-ids", nargs="+", type=int, default=[], help="token ids that end a turn")
    rollout.add_argument("--max-turns", type=int, default=None)
    rollout.add_argument("--concurrency", type=int, default=256, help="episodes in flight")
    rollout.add_argument("--seed", type=int, default=None)
    rollout.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    rollout.add_argument("--device", default="cpu")
    rollout.add_argument("--output", required=True, type=Path, help="trajectories, one JSON record per line")
    rollout.set_defaults(command=cmd_rollout)

    serve = sub.add_parser("serve", help="serve a model over SGLang's native HTTP API (generation, weight updates)")
    ServerArgs.add_cli_args(serve)
    serve.set_defaults(command=cmd_serve)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from agentrl.config import load_config
    from agentrl.train import train

    metrics = train(load_config(args.args))
    print(json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))}))
    return 0


def cmd_envs(args: argparse.Namespace) -> int:
    from agentrl.envs import registry

    for env_id in registry.ids():
        print(env_id)
    return 0


def cmd_check_env(args: argparse.Namespace) -> int:
    from agentrl.envs import check_env, make, spec

    spec(args.env_id)  # an unknown id fails here, with suggestions
    tokenizer = _tokenizer(args.hf_checkpoint) if args.hf_checkpoint else None
    report = asyncio.run(check_env(lambda: make(args.env_id), tokenizer=tokenizer, raise_on_failure=False))
    print(report)
    return 0 if report.ok else 1


def cmd_rollout(args: argparse.Namespace) -> int:
    from agentrl.data import TaskKeys, load_tasks
    from agentrl.envs import make, spec
    from agentrl.policies.embedded import EmbeddedEngine
    from agentrl.rollout import ChatRenderer, RolloutConfig, RolloutRunner, summarize

    spec(args.env)  # fail fast on an unknown id, before loading the model
    tasks = load_tasks(args.prompt_data, TaskKeys(args.input_key, args.label_key, args.metadata_key))
    tasks = tasks[: args.num_prompts] if args.num_prompts else tasks
    config = RolloutConfig(
        n_samples_per_prompt=args.n_samples_per_prompt,
        max_new_tokens=args.rollout_max_response_len,
        max_context_len=args.rollout_max_context_len,
        max_turns=args.max_turns,
        temperature=args.rollout_temperature,
        top_p=args.rollout_top_p,
        top_k=args.rollout_top_k,
        stop=tuple(args.rollout_stop),
        stop_token_ids=tuple(args.rollout_stop_token_ids),
        concurrency=args.concurrency,
        seed=args.seed,
    )
    engine = EmbeddedEngine.from_pretrained(args.hf_checkpoint, dtype=args.dtype, device=args.device)
    runner = RolloutRunner(engine, ChatRenderer(engine.tokenizer), lambda: make(args.env), config)

    async def play() -> list:
        async with engine:
            return await runner.run(tasks)

    started = time.perf_counter()
    trajectories = asyncio.run(play())
    summary = summarize(trajectories, elapsed_s=time.perf_counter() - started)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w") as f:
        f.writelines(json.dumps(t.to_dict()) + "\n" for t in trajectories)
    print(f"wrote {len(trajectories)} trajectories to {args.output}")
    print(json.dumps(summary))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from agentrl.serving.launch import serve

    return serve(ServerArgs.from_cli_args(args))


def _tokenizer(spec: str):  # noqa: ANN202 - a transformers tokenizer
    from transformers import AutoTokenizer

    from agentrl.models.resolve import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(spec))


if __name__ == "__main__":
    sys.exit(main())
