"""The ``agentrl`` command line. Flag names follow slime wherever slime has the concept.

    agentrl train [--config FILE.yaml] [--flag value ...]
    agentrl rollout [--config FILE.yaml] --prompt-data FILE --output FILE.jsonl [--flag value ...]
    agentrl envs
    agentrl check-env ID [--hf-checkpoint SPEC] [--max-turns N] [--env-kwargs JSON]
    agentrl serve --model-path SPEC [--host 127.0.0.1] [--port 30000] [--dtype bfloat16] [--device cpu] [--enable-openai-api]
    agentrl new-env NAME [--output DIR]

Exit codes: 0 done; 1 the work failed (every rollout episode failed, a training step had nothing
to train on, a contract check failed); 2 a bad flag, config or data file (one line on stderr);
128 + N stopped by signal N (130 Ctrl-C, 143 SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from agentrl.errors import AgentRLError, ConfigError
from agentrl.serving.server_args import ServerArgs

if TYPE_CHECKING:  # the commands import these when they run: agentrl.config loads torch
    from agentrl.config import RolloutCommandConfig
    from agentrl.envs import Task
    from agentrl.rollout import Trajectory

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in (cmd_train, cmd_rollout):
        args.args = rest  # their flags are parsed by agentrl.config
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.WARNING, format="[agentrl] %(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.command(args)
        return code
    except AgentRLError as e:  # expected failures: one clear message, no traceback of agentrl's own
        print(f"agentrl: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # Ctrl-C before a command installed its own handling
        print("agentrl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentrl", description="Reinforcement learning for LLM agents.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a policy with GRPO-family RL (agentrl train --help)", add_help=False)
    train.set_defaults(command=cmd_train)

    rollout = sub.add_parser("rollout", help="play episodes of an env against a model; write trajectories (agentrl rollout --help)", add_help=False)
    rollout.set_defaults(command=cmd_rollout)

    envs = sub.add_parser("envs", help="list registered environment ids")
    envs.set_defaults(command=cmd_envs)

    convert = sub.add_parser("convert", help="convert a Hugging Face model to a Megatron checkpoint or back (needs agentrl[megatron])")
    convert.add_argument("--to", required=True, choices=["megatron", "hf"], help="megatron: from a Hugging Face directory; hf: from a Megatron checkpoint")
    convert.add_argument("--input", required=True, type=Path, help="the directory to convert")
    convert.add_argument("--output", required=True, type=Path, help="a new (or empty) directory to write")
    convert.set_defaults(command=cmd_convert)

    check = sub.add_parser("check-env", help="check an environment against the Env contract")
    check.add_argument("env_id", metavar="ID")
    check.add_argument("--hf-checkpoint", default=None, help="model spec whose tokenizer checks chat-template conformance")
    check.add_argument("--max-turns", type=int, default=None, help="turn limit over the registered one (MaxTurns)")
    check.add_argument("--env-kwargs", type=_json_object, default={}, help="keyword arguments for the env, a JSON object")
    check.set_defaults(command=cmd_check_env)

    serve = sub.add_parser("serve", help="serve a model over SGLang's native HTTP API (generation, weight updates)")
    ServerArgs.add_cli_args(serve)
    serve.set_defaults(command=cmd_serve)

    new_env = sub.add_parser("new-env", help="write an installable package with one new env, its entry point, a test and a README")
    new_env.add_argument("name", metavar="NAME", help="the distribution's name, e.g. my-env (package my_env, env my_env/MyEnv-v0)")
    new_env.add_argument("--output", type=Path, default=Path("."), help="directory to write NAME/ in (default: here)")
    new_env.set_defaults(command=cmd_new_env)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from agentrl.config import load_config
    from agentrl.train import train

    metrics = train(load_config(args.args))
    print(_strict_json({k: v for k, v in metrics.items() if isinstance(v, (int, float))}))
    return 0


def cmd_envs(args: argparse.Namespace) -> int:
    from agentrl.envs import registry

    for env_id in registry.ids():
        print(env_id)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    try:
        from agentrl.trainers.megatron.checkpoint import convert
    except ImportError as e:
        raise ConfigError(f"agentrl convert needs Megatron-Core ({e}): pip install 'agentrl[megatron]'") from e
    convert(args.input, args.output, to=args.to)
    print(f"wrote {args.output}")
    return 0


def cmd_check_env(args: argparse.Namespace) -> int:
    from agentrl.config.checks import check_env as check_env_arguments
    from agentrl.envs import check_env, spec

    env_spec = spec(args.env_id)  # an unknown id fails here, with suggestions
    check_env_arguments(args.env_id, args.env_kwargs, "--env-kwargs")  # kwargs its entry point does not take fail here
    if args.max_turns is not None:
        env_spec = dataclasses.replace(env_spec, max_turns=args.max_turns)
    tokenizer = _tokenizer(args.hf_checkpoint) if args.hf_checkpoint else None
    report = asyncio.run(check_env(lambda: env_spec.make(**args.env_kwargs), tokenizer=tokenizer, raise_on_failure=False))
    print(report)
    return 0 if report.ok else EXIT_FAILED


def cmd_rollout(args: argparse.Namespace) -> int:
    """Play the episodes, writing each trajectory as its episode ends; print a summary. Exits
    non-zero when every episode failed (showing the first error) or on Ctrl-C (keeping the file)."""
    from agentrl.config import load_rollout_config
    from agentrl.data import TaskKeys, load_tasks
    from agentrl.rollout import summarize

    cfg = load_rollout_config(args.args)
    tasks = load_tasks(cfg.prompt_data, TaskKeys(cfg.input_key, cfg.label_key, cfg.metadata_key))[: cfg.num_prompts]  # type: ignore[arg-type]
    with _open_output(Path(cfg.output)) as out:  # type: ignore[arg-type]
        written = _RecordWriter(out)
        try:
            trajectories, elapsed_s = _play(cfg, tasks, written)
        except KeyboardInterrupt:
            print(f"agentrl: interrupted: kept the {written.count} episodes that had finished in {cfg.output}", file=sys.stderr)
            return EXIT_INTERRUPTED
    print(f"wrote {len(trajectories)} trajectories to {cfg.output}")
    print(_strict_json(summarize(trajectories, elapsed_s=elapsed_s)))
    return _all_failed(trajectories)


class _RecordWriter:
    """Writes each trajectory as one JSON line, flushed at once, and counts them."""

    def __init__(self, out: IO[str]) -> None:
        self.out, self.count = out, 0

    def __call__(self, trajectory: Trajectory) -> None:
        self.out.write(json.dumps(trajectory.to_dict()) + "\n")
        self.out.flush()
        self.count += 1


def _open_output(path: Path) -> IO[str]:
    """``--output`` opened for writing (its directory made), before anything slow starts."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "w")
    except OSError as e:
        raise ConfigError(f"--output {path}: cannot write there ({type(e).__name__}: {e.strerror or e})") from None


def _play(cfg: RolloutCommandConfig, tasks: list[Task], on_trajectory: Callable[[Trajectory], None]) -> tuple[list[Trajectory], float]:
    """Load the model and play every episode of ``tasks``, streaming each to ``on_trajectory``.
    Returns the trajectories, ordered by (task, sample), and the seconds the episodes took."""
    from agentrl.envs import make
    from agentrl.policies.embedded import EmbeddedEngine
    from agentrl.rollout import ChatRenderer, RolloutRunner

    engine = EmbeddedEngine.from_pretrained(cfg.hf_checkpoint, dtype="bfloat16" if cfg.bf16 else "float32", device=cfg.device)
    runner = RolloutRunner(engine, ChatRenderer(engine.tokenizer), lambda: make(cfg.env, **cfg.env_kwargs), cfg.rollout())

    async def play() -> tuple[list[Trajectory], float]:
        async with engine:
            started = time.perf_counter()
            trajectories = await runner.run(tasks, on_trajectory=on_trajectory)
            return trajectories, time.perf_counter() - started

    return asyncio.run(play())


def _all_failed(trajectories: list[Trajectory]) -> int:
    """``EXIT_FAILED`` with the first episode's error on stderr when every episode failed
    (env error, timeout or abort), else 0."""
    if not trajectories or not all(t.excluded for t in trajectories):
        return 0
    first = trajectories[0]
    print(f"agentrl: error: every episode failed ({len(trajectories)} of {len(trajectories)}); the first (task {first.task_index}, "
          f"sample {first.sample_index}) ended as {first.termination.value}: {first.error}", file=sys.stderr)
    return EXIT_FAILED


def _strict_json(record: dict[str, Any]) -> str:
    """``record`` as strict JSON: a non-finite number (an undefined mean) becomes null."""
    return json.dumps({k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}, allow_nan=False)


def cmd_serve(args: argparse.Namespace) -> int:
    from agentrl.serving.launch import serve

    return serve(ServerArgs.from_cli_args(args))


def cmd_new_env(args: argparse.Namespace) -> int:
    from agentrl.scaffold import new_env

    root = new_env(args.name, args.output)
    print(f"wrote {root}: pip install -e '{root}[test]', then agentrl envs lists it and pytest {root} runs its tests")
    return 0


def _json_object(text: str) -> dict[str, Any]:
    from agentrl.config import json_object  # imported only when the flag is given: agentrl.config loads torch

    return json_object(text)


def _tokenizer(spec: str) -> Any:  # a transformers tokenizer
    from transformers import AutoTokenizer

    from agentrl.models.resolve import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(spec))


if __name__ == "__main__":
    sys.exit(main())
