"""The rollout runner: many episodes at once, one env instance each, token-exact trajectories.

``RolloutRunner.run(tasks)`` plays ``n_samples_per_prompt`` episodes per task concurrently
(bounded by ``concurrency``) against a :class:`~agentrl.policies.Policy`. Each episode:

* gets a fresh env from the factory, ``reset`` with a seed derived from (seed, task, sample);
* alternates ``policy.generate`` on the exact token context and ``env.step`` on the decoded
  action, with the tokens kept by :class:`~agentrl.rollout.conversation.TokenConversation`;
* ends with one :class:`~agentrl.rollout.trajectory.Termination` reason, and always closes its
  env. An env that raises or hangs ends only its own episode (``env_error`` / ``timeout``);
  an engine failure ends it as ``abort``. A bug in the runner itself is not swallowed.

An env that drives its own episode (an agent program: :class:`~agentrl.rollout.driven.DrivenEnv`)
gets the episode handed over instead of the turn loop; the rest (timeouts, failure
classification, close, the record) is the same.

Partial rollout (slime's ``--partial-rollout``): an episode played with an
:class:`~agentrl.rollout.interrupt.Interrupt` that keeps partial work is not ended by the
interrupt's abort but *suspended*: :meth:`RolloutRunner.resume_episode` gets back a
:class:`SuspendedEpisode` whose env is still open and whose tokens (a turn cut short included,
with its log-probs) are kept exactly; resuming it continues that turn on exactly those tokens.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import random
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from tqdm.auto import tqdm

from agentrl.envs.core import Action, Env, Message, StepResult, Task, is_message
from agentrl.envs.tool_calls import get_tool_parser
from agentrl.errors import ChatTemplateError, EnvError, EnvTimeoutError, PolicyError
from agentrl.policies.base import Generation, Policy, SamplingParams
from agentrl.rollout.conversation import BridgeMode, ChatRenderer, TokenConversation
from agentrl.rollout.driven import DrivenEnv, EpisodeContext
from agentrl.rollout.interrupt import Interrupt
from agentrl.rollout.trajectory import Termination, Trajectory

log = logging.getLogger(__name__)
T = TypeVar("T")

CLOSE_TIMEOUT_S = 60.0  # env.close is cleanup: one that takes longer is abandoned with a warning
INTERRUPTED = "interrupted: the rollout step had all the groups it needed"
"""The error of an episode an :class:`Interrupt` ended (without partial rollout)."""

EnvFactory = Callable[[], Env]
"""Makes a fresh env for one episode, e.g. ``lambda: agentrl.envs.make("agentrl/Math-v0")``."""


@dataclass(frozen=True)
class RolloutConfig:
    """How episodes are played.

    Attributes:
        n_samples_per_prompt: episodes per task; they form the task's group.
        max_new_tokens: token budget of one turn (slime's ``--rollout-max-response-len``).
        max_context_len: bound on prompt + all turns of a segment; ``None`` leaves it to the engine.
        max_turns: policy turns per episode before it ends as ``max_turns``; ``None`` for no limit.
        temperature, top_p, top_k, stop, stop_token_ids: sampling (SGLang's meanings).
        concurrency: episodes in flight at once.
        step_timeout_s: limit on one ``env.reset``/``env.step`` call; ``None`` for none.
        episode_timeout_s: limit on a whole episode, generation included; ``None`` for none.
        bridge_mode: see :mod:`agentrl.rollout.conversation`.
        tool_parser: a name in ``agentrl.envs.tool_calls.TOOL_PARSERS`` or ``pkg.module:function``.
        end_on_length: a turn cut by its token budget ends the episode (``length``); ``False``
            hands the cut turn to the env as an action (``finish_reason == "length"``) and the
            episode goes on.
        reset_seed: ``"group"`` (default): every sample of a task resets its env with the same
            seed, so a game that draws a secret in ``reset`` plays the same game in the whole
            GRPO group and the group baseline compares like with like. ``"sample"``: each sample
            gets its own seed (e.g. to vary the task instance within a group on purpose).
        seed: derives every env seed and sampling seed from (seed, task index, sample index,
            turn), so a run can be reproduced; ``None`` for unseeded sampling (env seeds are then
            drawn once per runner, still shared within a group).
    """

    n_samples_per_prompt: int = 1
    max_new_tokens: int = 512
    max_context_len: int | None = None
    max_turns: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    concurrency: int = 256
    step_timeout_s: float | None = None
    episode_timeout_s: float | None = None
    bridge_mode: BridgeMode = "auto"
    tool_parser: str = "hermes"
    end_on_length: bool = True
    reset_seed: Literal["group", "sample"] = "group"
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("n_samples_per_prompt", "max_new_tokens", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"RolloutConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_turns is not None and self.max_turns < 1:
            raise ValueError(f"RolloutConfig.max_turns must be >= 1 or None, got {self.max_turns}")
        if self.reset_seed not in ("group", "sample"):
            raise ValueError(f"RolloutConfig.reset_seed must be 'group' or 'sample', got {self.reset_seed!r}")


async def play_groups(
    tasks: Iterable[Task], config: RolloutConfig, play: Callable[[Task, int], Awaitable[Trajectory]], *, progress: bool = True,
    desc: str = "rollout", on_trajectory: Callable[[Trajectory], None] | None = None,
) -> list[Trajectory]:
    """``config.n_samples_per_prompt`` episodes of each task through ``play(task, sample_index)``,
    at most ``config.concurrency`` at once, with a progress bar of the running mean reward;
    ordered by (task, sample). ``on_trajectory`` sees each trajectory as soon as its episode
    ends (in the order they end), e.g. to stream records to a file."""
    jobs = [(t, k) for t in tasks for k in range(config.n_samples_per_prompt)]
    limit = asyncio.Semaphore(config.concurrency)
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, dynamic_ncols=True)
    total_reward, done = 0.0, 0

    async def one(task: Task, k: int) -> Trajectory:
        nonlocal total_reward, done
        async with limit:
            trajectory = await play(task, k)
        if on_trajectory is not None:
            on_trajectory(trajectory)
        total_reward, done = total_reward + trajectory.reward, done + 1
        bar.set_postfix(reward=f"{total_reward / done:.3f}", refresh=False)
        bar.update(1)
        return trajectory

    try:
        async with asyncio.TaskGroup() as group:  # a bug in one episode's machinery stops them all
            running = [group.create_task(one(t, k)) for t, k in jobs]
        return [task.result() for task in running]
    finally:
        bar.close()


def derive_seed(seed: int, *parts: int) -> int:
    """A 31-bit seed determined by ``seed`` and ``parts`` (task index, sample index, turn)."""
    return random.Random("/".join(map(str, (seed, *parts)))).getrandbits(31)


@dataclass
class _Episode:
    """Mutable state of one episode while it runs."""

    task: Task
    sample_index: int
    conversation: TokenConversation | None = None
    rewards: list[float] = field(default_factory=list)
    weight_versions: list[int] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    termination: Termination | None = None
    error: str | None = None
    turns: int = 0
    generate_s: float = 0.0
    env_s: float = 0.0
    env: Env | None = None  # made when the episode starts; open while it is suspended
    partial: Generation | None = None  # a turn cut short by an interrupt, continued on resume
    suspended: bool = False
    offpolicy: dict[int, int] = field(default_factory=dict)  # segment -> response tokens [0:n) to mask
    rollout_steps: list[int] = field(default_factory=list)

    def end(self, termination: Termination, error: str | None = None) -> None:
        self.termination, self.error = termination, error


class SuspendedEpisode:
    """An episode that has not ended: not started yet, or stopped mid-way by an
    :class:`~agentrl.rollout.interrupt.Interrupt` that keeps partial work.

    ``SuspendedEpisode(task, sample_index)`` is a new episode; the runner returns the others.
    While suspended, a started episode keeps its env open and its tokens exactly as sampled.
    Continue it with :meth:`RolloutRunner.resume_episode`, or drop it with :meth:`aclose`.
    """

    def __init__(self, task: Task, sample_index: int = 0) -> None:
        self._episode = _Episode(task, sample_index)

    @classmethod
    def _of(cls, episode: _Episode) -> SuspendedEpisode:
        suspended = cls.__new__(cls)
        suspended._episode = episode
        return suspended

    @property
    def task(self) -> Task:
        return self._episode.task

    @property
    def sample_index(self) -> int:
        return self._episode.sample_index

    @property
    def started(self) -> bool:
        """Whether the episode has an env (it was reset)."""
        return self._episode.env is not None

    @property
    def turns(self) -> int:
        """Turns completed so far (a turn cut short is not counted)."""
        return self._episode.turns

    @property
    def partial_ids(self) -> list[int]:
        """The tokens of the turn cut short, ``[K]``; resuming continues after them."""
        return list(self._episode.partial.token_ids) if self._episode.partial else []

    @property
    def context_ids(self) -> list[int]:
        """Exactly what the policy will condition on when resumed: the current segment's tokens
        followed by :attr:`partial_ids`. Empty before the episode started."""
        conversation = self._episode.conversation
        return conversation.context_ids + self.partial_ids if conversation else []

    @property
    def rollout_steps(self) -> list[int]:
        """The steps it was played in so far (see :attr:`Trajectory.rollout_steps`)."""
        return list(self._episode.rollout_steps)

    async def aclose(self) -> None:
        """Close its env (if started); the episode cannot be resumed afterwards. Safe twice."""
        await _close_env(self._episode)


class RolloutRunner:
    """Plays episodes of one env against one policy. See the module docstring.

    Args:
        policy: the inference backend.
        renderer: the chat template (owns the tokenizer).
        env_factory: makes one env per episode.
        config: how to play.
    """

    def __init__(self, policy: Policy, renderer: ChatRenderer, env_factory: EnvFactory, config: RolloutConfig = RolloutConfig()) -> None:
        self.policy = policy
        self.renderer = renderer
        self.env_factory = env_factory
        self.config = config
        self.parse_tool_calls = get_tool_parser(config.tool_parser)
        self._env_seed_base = config.seed if config.seed is not None else random.SystemRandom().getrandbits(31)

    async def run(self, tasks: Iterable[Task], *, progress: bool = True, desc: str = "rollout",
                  on_trajectory: Callable[[Trajectory], None] | None = None) -> list[Trajectory]:
        """Play ``n_samples_per_prompt`` episodes per task; trajectories come back ordered by
        (task, sample), so consecutive runs of ``n_samples_per_prompt`` form the groups.
        ``on_trajectory`` sees each one as soon as its episode ends."""
        return await play_groups(tasks, self.config, self.run_episode, progress=progress, desc=desc, on_trajectory=on_trajectory)

    async def run_episode(self, task: Task, sample_index: int = 0) -> Trajectory:
        """Play one episode to its end; never raises for env or engine failures."""
        trajectory = await self._drive(_Episode(task, sample_index), None)
        assert isinstance(trajectory, Trajectory)  # only an interrupt suspends
        return trajectory

    async def resume_episode(
        self, episode: SuspendedEpisode, interrupt: Interrupt, *, step: int | None = None, mask_offpolicy: bool = False,
    ) -> Trajectory | SuspendedEpisode:
        """Start or continue ``episode`` and play it until it ends or ``interrupt`` stops it.

        A turn cut short is continued token-exact: the request's context is
        :attr:`SuspendedEpisode.context_ids` and its budget is what the turn had left.

        Args:
            episode: a new or suspended episode; its state moves on in place (after the call,
                only its :meth:`~SuspendedEpisode.aclose` is still meaningful).
            interrupt: stops the episode; it is then suspended (and returned) when the interrupt
                keeps partial work, else it ends as ``abort``.
            step: the training step, recorded in :attr:`Trajectory.rollout_steps`.
            mask_offpolicy: leave every token sampled before this call out of the loss (slime's
                ``--mask-offpolicy-in-partial-rollout``).

        Returns:
            The trajectory, or the episode again when it was suspended.
        """
        state = episode._episode
        if mask_offpolicy and state.conversation is not None:
            segments = state.conversation.segments
            state.offpolicy = {i: len(s.response_ids) for i, s in enumerate(segments)}
            state.offpolicy[len(segments) - 1] += len(episode.partial_ids)
        return await self._drive(state, interrupt, step)

    async def _drive(self, episode: _Episode, interrupt: Interrupt | None, step: int | None = None) -> Trajectory | SuspendedEpisode:
        """Play ``episode`` from wherever it is; classify its failures; close its env unless suspended."""
        if interrupt is not None and interrupt.aborted:
            return await self._stopped(episode, interrupt)
        if step is not None:
            episode.rollout_steps.append(step)
        episode.suspended = False
        try:
            if episode.env is None:
                episode.env = self._make_env()
            async with asyncio.timeout(self.config.episode_timeout_s):
                if isinstance(episode.env.unwrapped, DrivenEnv):
                    await self._play_driven(episode.env.unwrapped, episode, interrupt)
                else:
                    if episode.conversation is None:
                        await self._start(episode.env, episode)
                    await self._turns(episode.env, episode, interrupt)
        except TimeoutError:
            episode.end(Termination.TIMEOUT, f"episode exceeded episode_timeout_s={self.config.episode_timeout_s}")
        except EnvTimeoutError as e:
            episode.end(Termination.TIMEOUT, str(e))
        except (EnvError, ChatTemplateError) as e:  # the template refusing the env's messages ends only this episode
            log.warning("episode (task %d, sample %d) ended by an env error: %s", episode.task.index, episode.sample_index, e)
            episode.end(Termination.ENV_ERROR, _with_traceback(e))
        except PolicyError as e:
            episode.end(Termination.ABORT, str(e))
        finally:
            if not episode.suspended:
                await _close_env(episode)
        return SuspendedEpisode._of(episode) if episode.suspended else self._trajectory(episode)

    async def _stopped(self, episode: _Episode, interrupt: Interrupt) -> Trajectory | SuspendedEpisode:
        """An episode the interrupt reached before it (re)started."""
        if interrupt.keep_partial:
            episode.suspended = True
            return SuspendedEpisode._of(episode)
        episode.end(Termination.ABORT, INTERRUPTED)
        await _close_env(episode)
        return self._trajectory(episode)

    def _make_env(self) -> Env:
        """A fresh env from the factory; a factory that raises ends only this episode."""
        try:
            return self.env_factory()
        except Exception as e:
            raise EnvError(f"the env factory raised {type(e).__name__}: {e}") from e

    def _episode_seed(self, episode: _Episode) -> int | None:
        """The seed of this episode's sampling (``None`` when the config has no seed)."""
        cfg = self.config
        return None if cfg.seed is None else derive_seed(cfg.seed, episode.task.index, episode.sample_index)

    def _reset_seed(self, episode: _Episode) -> int:
        """The env's reset seed: shared by the task's group unless ``reset_seed == "sample"``."""
        parts = (episode.task.index,) if self.config.reset_seed == "group" else (episode.task.index, episode.sample_index)
        return derive_seed(self._env_seed_base, 1, *parts)

    async def _start(self, env: Env, episode: _Episode) -> None:
        """Reset the env and open the episode's conversation."""
        reset = env.reset(episode.task, seed=self._reset_seed(episode))
        messages = _reset_messages(await self._env_call(reset, "reset", episode))
        episode.conversation = TokenConversation(self.renderer, messages, tools=env.tools, mode=self.config.bridge_mode)

    async def _play_driven(self, env: DrivenEnv, episode: _Episode, interrupt: Interrupt | None) -> None:
        """Hand the episode to an env that plays it itself (:mod:`agentrl.rollout.driven`) and
        record what it returns; its generation goes through ``interrupt`` and is timed."""
        async def generate(input_ids: Sequence[int], sampling: SamplingParams, rid: str) -> Generation:
            started = time.perf_counter()
            try:
                if interrupt is None:
                    return await self.policy.generate(input_ids, sampling, rid=rid)
                return await interrupt.generate(self.policy, input_ids, sampling, rid=rid)
            finally:
                episode.generate_s += time.perf_counter() - started

        context = EpisodeContext(episode.task, self._reset_seed(episode), self._episode_seed(episode),
                                 f"{episode.task.index}-{episode.sample_index}-{id(episode):x}", self.config, self.renderer, generate)
        try:
            played = await env.play_episode(context)
        except (EnvError, PolicyError):
            raise
        except Exception as e:
            raise EnvError(f"env.play_episode raised {type(e).__name__}: {e}") from e
        if not all(isinstance(r, (int, float)) and math.isfinite(r) for r in played.rewards):
            raise EnvError(f"env.play_episode returned rewards {played.rewards!r:.200}; expected finite floats")
        _check_info(played.info, "env.play_episode")
        episode.conversation, episode.rewards, episode.info = played.conversation, list(played.rewards), played.info
        episode.turns, episode.weight_versions = played.turns, list(played.weight_versions)
        episode.end(played.termination, played.error)

    async def _turns(self, env: Env, episode: _Episode, interrupt: Interrupt | None) -> None:
        """Play turns until the episode ends (or is suspended by ``interrupt``)."""
        cfg, conversation = self.config, episode.conversation
        assert conversation is not None
        for turn in itertools.count(episode.turns):
            if cfg.max_turns is not None and turn >= cfg.max_turns:
                return episode.end(Termination.MAX_TURNS)
            budget = cfg.max_new_tokens
            if cfg.max_context_len is not None:
                budget = min(budget, cfg.max_context_len - len(conversation.context_ids))
                if budget <= 0:
                    return episode.end(Termination.CONTEXT_LIMIT)
            generation = await self._generate(episode, budget, turn, interrupt)
            if generation.finish_reason == "abort":  # a partial turn is never trained on as complete
                return _stop_aborted(episode, generation, interrupt)
            text = conversation.add_generation(generation)
            episode.weight_versions.append(generation.weight_version)
            episode.turns += 1
            action = Action(text, self.parse_tool_calls(text), generation.finish_reason)
            result = _as_step_result(await self._env_call(env.step(action), "step", episode))
            episode.rewards.append(result.reward)
            episode.info = result.info
            if result.terminated:
                return episode.end(Termination.DONE)
            if result.truncated:
                by_turns = result.info.get("truncated_by") == "max_turns"
                return episode.end(Termination.MAX_TURNS if by_turns else Termination.TRUNCATED)
            if generation.finish_reason == "length" and (cfg.end_on_length or budget < cfg.max_new_tokens):
                return episode.end(Termination.LENGTH if budget == cfg.max_new_tokens else Termination.CONTEXT_LIMIT)
            bridge = conversation.bridge_ids(result.observation)
            new_len = len(bridge[0]) + (len(conversation.context_ids) if bridge[1] else 0)
            if cfg.max_context_len is not None and new_len >= cfg.max_context_len:
                return episode.end(Termination.CONTEXT_LIMIT)
            conversation.add_observation(result.observation, bridge)
        return None

    async def _generate(self, episode: _Episode, budget: int, turn: int, interrupt: Interrupt | None) -> Generation:
        """The policy's turn within ``budget`` tokens. A turn an interrupt cut short is continued
        on its exact tokens and joined with them (its weight version is the first part's)."""
        cfg, conversation = self.config, episode.conversation
        assert conversation is not None
        done, episode.partial = episode.partial, None
        done_ids = list(done.token_ids) if done else []
        if done and len(done_ids) >= budget:
            return Generation(done_ids, list(done.logprobs), "length", done.weight_version)
        seed = self._episode_seed(episode)
        sampling = SamplingParams(
            max_new_tokens=budget - len(done_ids), temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
            stop=cfg.stop, stop_token_ids=cfg.stop_token_ids, seed=None if seed is None else derive_seed(seed, turn),
        )
        rid = f"{episode.task.index}-{episode.sample_index}-{id(episode):x}:{turn}"
        started = time.perf_counter()
        if interrupt is None:
            generation = await self.policy.generate(conversation.context_ids + done_ids, sampling, rid=rid)
        else:
            generation = await interrupt.generate(self.policy, conversation.context_ids + done_ids, sampling, rid=rid)
        episode.generate_s += time.perf_counter() - started
        if done is None:
            return generation
        return Generation(done_ids + generation.token_ids, list(done.logprobs) + generation.logprobs,
                          generation.finish_reason, done.weight_version, generation.matched_stop)

    async def _env_call(self, awaitable: Awaitable[T], what: str, episode: _Episode) -> T:
        """Await an env call under the step timeout, classifying its failures as env errors."""
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(awaitable, self.config.step_timeout_s)
        except EnvError:
            raise
        except TimeoutError:
            raise EnvTimeoutError(f"env.{what} took longer than step_timeout_s={self.config.step_timeout_s}") from None
        except Exception as e:
            raise EnvError(f"env.{what} raised {type(e).__name__}: {e}") from e
        finally:
            episode.env_s += time.perf_counter() - started

    def _trajectory(self, episode: _Episode) -> Trajectory:
        conversation = episode.conversation
        segments = conversation.segments if conversation else []
        masked = sum(segments[i].mask(min(n, len(segments[i].response_ids))) for i, n in episode.offpolicy.items())
        return Trajectory(
            task_index=episode.task.index,
            sample_index=episode.sample_index,
            segments=segments,
            messages=conversation.messages if conversation else [],
            rewards=episode.rewards,
            termination=episode.termination or Termination.ABORT,
            weight_versions=episode.weight_versions,
            label=episode.task.label,
            metrics={
                "turns": episode.turns,
                "segments": len(segments),
                "prefix_mismatches": conversation.prefix_mismatches if conversation else 0,
                "sampled_tokens": sum(sum(s.loss_mask) for s in segments),
                "response_tokens": sum(len(s.response_ids) for s in segments),
                "generate_s": round(episode.generate_s, 6),
                "env_s": round(episode.env_s, 6),
                "offpolicy_masked_tokens": masked,
            },
            info=episode.info,
            error=episode.error,
            rollout_steps=list(episode.rollout_steps),
        )


async def _close_env(episode: _Episode) -> None:
    """Close the episode's env, once, within :data:`CLOSE_TIMEOUT_S`; a close that fails or hangs
    is logged and noted in its info (a hung close must not hold up the step's other episodes)."""
    env, episode.env = episode.env, None
    if env is None:
        return
    try:
        await asyncio.wait_for(env.close(), CLOSE_TIMEOUT_S)
    except Exception as e:  # a failing close must not lose the episode
        error = f"did not return within {CLOSE_TIMEOUT_S:g} s" if isinstance(e, TimeoutError) else f"raised {type(e).__name__}: {e}"
        log.warning("env.close of task %d, sample %d %s", episode.task.index, episode.sample_index, error)
        episode.info = {**episode.info, "close_error": f"env.close {error}"}


def _stop_aborted(episode: _Episode, generation: Generation, interrupt: Interrupt | None) -> None:
    """End an episode whose turn was aborted, or suspend it (keeping the partial turn) when an
    interrupt that keeps partial work did it."""
    if interrupt is None or not interrupt.aborted:
        return episode.end(Termination.ABORT, "the engine aborted the request")
    if not interrupt.keep_partial:
        return episode.end(Termination.ABORT, INTERRUPTED)
    episode.partial = generation if generation.token_ids else None
    episode.suspended = True
    return None


def _as_step_result(result: Any) -> StepResult:
    if not isinstance(result, tuple) or len(result) != 5:
        raise EnvError(f"env.step must return StepResult(observation, reward, terminated, truncated, info), got {result!r:.200}")
    observation, reward, terminated, truncated, info = result
    _check_messages(observation, "env.step")
    if not isinstance(reward, (int, float)) or isinstance(reward, bool) or not math.isfinite(reward):
        raise EnvError(f"env.step returned reward {reward!r}; expected a finite float")
    _check_info(info, "env.step")
    return StepResult(list(observation), float(reward), bool(terminated), bool(truncated), info)


def _reset_messages(result: Any) -> list[Message]:
    if not isinstance(result, tuple) or len(result) != 2:
        raise EnvError(f"env.reset must return (messages, info), got {result!r:.200}")
    if not isinstance(result[1], dict):
        raise EnvError(f"env.reset returned info of type {type(result[1]).__name__}; expected a dict")
    _check_messages(result[0], "env.reset")
    return list(result[0])


def _check_info(info: Any, where: str) -> None:
    """A step's ``info`` goes into the trajectory record: it must be a dict that is strict JSON."""
    if not isinstance(info, dict):
        raise EnvError(f"{where} returned info of type {type(info).__name__}; expected a dict")
    try:
        json.dumps(info, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise EnvError(f"{where} returned an info that is not strict JSON ({e}); keep it to str, finite numbers, bools, None, lists and dicts") from None


def _with_traceback(error: BaseException) -> str:
    """The error's message, followed by the traceback of the exception that caused it (if any)."""
    cause = error.__cause__
    if cause is None or cause.__traceback__ is None:
        return str(error)
    return f"{error}\n" + "".join(traceback.format_exception(cause)).rstrip()


def _check_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list) or not all(map(is_message, messages)):
        raise EnvError(f"{where} must return a list of messages {{'role': str, 'content': str}}, got {messages!r:.200}")
