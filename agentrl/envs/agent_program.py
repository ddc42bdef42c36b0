"""Any agent program as an env: ``async def run(client: openai.AsyncOpenAI, task) -> float | dict``.

The program is one episode. :class:`AgentProgramEnv` opens a recorded session of the OpenAI
endpoint (:mod:`agentrl.serving.openai_api`) on a localhost port of its own, hands the program an
``openai.AsyncOpenAI`` client whose ``base_url`` is that session, and lets it run unchanged: the
``openai`` SDK, the OpenAI Agents SDK through its Chat Completions model, or anything given
``str(client.base_url)``. Every request is answered by the run's policy and recorded token-exact
(the sampled ids verbatim with mask 1, everything else mask 0; a client that edits its history
starts a counted new segment), so the trajectory is what the env path records for the same
conversation.

It plugs into the rollout runner as a :class:`~agentrl.rollout.driven.DrivenEnv`, so ``agentrl
rollout``, ``agentrl train`` and evaluation play it like any env (``--env agentrl/AgentProgram-v0
--env-kwargs '{"program": "pkg.module:run"}'``), with the run's settings:

* sampling is the run's (temperature, top_p, top_k, stop, seeds): a request's ``temperature``,
  ``top_p`` and ``seed`` are ignored, its ``max_tokens`` may only lower the turn budget
  (``--rollout-max-response-len``), its ``stop`` strings are added;
* ``--max-turns`` bounds the requests: the one past it gets a 400 (code ``max_turns_exceeded``)
  and the episode ends as ``max_turns``; likewise ``--max-context-len``
  (``context_length_exceeded``, ``context_limit``) and a turn cut by its budget (``length``,
  unless ``--no-end-on-length``). A program that returns anyway keeps its reward; one that raises
  after such an end gets 0;
* a program that raises ends its episode as ``env_error`` with the traceback (logged, and in the
  trajectory's ``error``); ``timeout_s`` or ``--rollout-episode-timeout`` ends it as ``timeout``;
  an engine failure or an interrupt's abort as ``abort``; the episodes beside it go on;
  ``--rollout-concurrency`` bounds the programs running at once.

The program's return value is its reward, or a dict with ``"reward"`` (a finite number) whose
other keys join the episode's ``info`` (strict JSON). ``info`` also gets ``requests`` and
``history_edits``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentrl.envs.core import Action, Env, Message, StepResult, Task
from agentrl.envs.tool_calls import get_tool_parser
from agentrl.errors import ConfigError, EnvError
from agentrl.plugins import load_function
from agentrl.policies.base import SamplingParams
from agentrl.rollout.driven import EpisodeContext, PlayedEpisode
from agentrl.rollout.trajectory import Termination
from agentrl.serving.openai_api import OpenAIAPI, OpenAIServer
from agentrl.serving.openai_session import Session, SessionConfig

if TYPE_CHECKING:
    import openai

log = logging.getLogger(__name__)

AgentProgram = Callable[["openai.AsyncOpenAI", Task], Awaitable[float | dict[str, Any]]]
"""``async def run(client, task) -> reward | {"reward": r, **info}``."""

NOT_STEPPED = ("AgentProgramEnv is played by its program, not by reset/step: run it with RolloutRunner "
               "(agentrl rollout / agentrl train), which calls play_episode")


@dataclass(frozen=True)
class _Returned:
    reward: float
    info: dict[str, Any]


@dataclass(frozen=True)
class _Raised:
    error: BaseException
    timed_out: bool = False


class AgentProgramEnv(Env):
    """An agent program as an env. See the module docstring.

    Args:
        program: the program, or its path ``pkg.module:function``.
        tool_parser: reads tool calls from sampled text; ``None``: the run's ``--tool-parser``.
        timeout_s: wall-clock limit of one program run; ``None``: the run's episode timeout only.
        request_timeout_s: the client's limit on one request.
        model_name: what ``/v1/models`` lists (requests may name any model).

    Raises:
        ConfigError: ``program`` cannot be loaded or is not an async function; a limit is not > 0.
    """

    def __init__(self, program: AgentProgram | str, *, tool_parser: str | None = None, timeout_s: float | None = None,
                 request_timeout_s: float = 600.0, model_name: str = "agentrl") -> None:
        self.program: AgentProgram = load_function(program, flag="program") if isinstance(program, str) else program
        if not asyncio.iscoroutinefunction(self.program):
            raise ConfigError(f"program {program!r:.100} must be an async function (client, task) -> float | dict")
        for name, value in (("timeout_s", timeout_s), ("request_timeout_s", request_timeout_s)):
            if value is not None and not value > 0:
                raise ConfigError(f"AgentProgramEnv {name} must be > 0, got {value!r}")
        self.tool_parser, self.timeout_s, self.request_timeout_s, self.model_name = tool_parser, timeout_s, request_timeout_s, model_name

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict[str, Any]]:
        """Not used: the program drives the episode (:meth:`play_episode`).

        Raises:
            EnvError: always, saying how to play it.
        """
        raise EnvError(NOT_STEPPED)

    async def step(self, action: Action) -> StepResult:
        """Not used (see :meth:`reset`).

        Raises:
            EnvError: always.
        """
        raise EnvError(NOT_STEPPED)

    async def play_episode(self, context: EpisodeContext) -> PlayedEpisode:
        """Run the program against a recorded session and return what it recorded."""
        parser = get_tool_parser(self.tool_parser or context.config.tool_parser)
        api = OpenAIAPI(context.generate, context.renderer, model_name=self.model_name, parser=parser, config=session_config(context))
        session = api.open_session(context.episode_id)
        async with OpenAIServer(api) as server:
            outcome = await self._run(server.base_url(session), context.task)
        return self._played(session, outcome, context.task)

    async def _run(self, base_url: str, task: Task) -> _Returned | _Raised:
        """The program's outcome: its reward and info, or what it raised (or its timeout)."""
        import openai

        client = openai.AsyncOpenAI(base_url=base_url, api_key="agentrl", max_retries=0, timeout=self.request_timeout_s)
        try:
            async with asyncio.timeout(self.timeout_s) as scope:
                return _returned(await self.program(client, task))
        except Exception as e:
            return _Raised(e, timed_out=scope.expired())
        finally:
            await client.close()

    def _played(self, session: Session, outcome: _Returned | _Raised, task: Task) -> PlayedEpisode:
        info: dict[str, Any] = {"requests": session.turns, "history_edits": session.history_edits}
        played = PlayedEpisode(session.conversation, [0.0], Termination.DONE, info, turns=session.turns, weight_versions=session.weight_versions)
        if isinstance(outcome, _Returned):
            played.rewards, played.info = [outcome.reward], {**outcome.info, **info}
            if session.ended is not None:
                played.termination, played.error = session.ended, session.error
            elif session.conversation is None:
                played.termination, played.error = Termination.ENV_ERROR, "the program returned without a chat completion request through its client"
        elif outcome.timed_out:
            played.termination, played.error = Termination.TIMEOUT, f"the program ran longer than timeout_s={self.timeout_s}"
        elif session.ended is not None:  # it raised because the session refused it: a limit or an abort
            played.termination, played.error = session.ended, f"{session.error} (then the program raised {type(outcome.error).__name__}: {outcome.error})"
        else:
            log.warning("agent program raised on task %d", task.index, exc_info=outcome.error)
            played.termination, played.error = Termination.ENV_ERROR, "".join(traceback.format_exception(outcome.error)).rstrip()
        return played


def _returned(value: Any) -> _Returned:
    """The program's return value as reward and info.

    Raises:
        EnvError: it is not a finite number or a dict with a finite ``"reward"``.
    """
    extra: dict[str, Any] = {}
    if isinstance(value, dict):
        extra = {k: v for k, v in value.items() if k != "reward"}
        value = value.get("reward")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise EnvError(f"the program returned {value!r:.100}; expected a finite reward or a dict with a finite 'reward'")
    return _Returned(float(value), extra)


def session_config(context: EpisodeContext) -> SessionConfig:
    """The run's settings as a session's: its sampling fixed, its limits applied."""
    cfg = context.config
    sampling = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                              stop=cfg.stop, stop_token_ids=cfg.stop_token_ids, seed=context.sampling_seed)
    return SessionConfig(max_new_tokens=cfg.max_new_tokens, max_context_len=cfg.max_context_len, max_turns=cfg.max_turns,
                         end_on_length=cfg.end_on_length, bridge_mode=cfg.bridge_mode, fixed_sampling=sampling)
