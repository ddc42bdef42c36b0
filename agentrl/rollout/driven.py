"""Episodes an env drives itself: the rollout runner's extension point for agent programs.

An ordinary env is driven by the runner's turn loop (``reset``, then ``generate`` and ``step`` per
turn). An env whose episode is driven by something else, an agent program talking to an OpenAI
endpoint, say (:class:`~agentrl.envs.agent_program.AgentProgramEnv`), implements
:class:`DrivenEnv` instead: the runner calls its ``play_episode`` once with an :class:`EpisodeContext`
and records the :class:`PlayedEpisode` it returns as the episode's trajectory. Everything around
the episode stays the runner's: one env per episode and ``close`` in ``finally``, the episode
timeout (``TIMEOUT``), ``EnvError`` (``ENV_ERROR``, with the traceback) and ``PolicyError``
(``ABORT``) classification, concurrency, groups, seeds and an interrupt's abort.

The runner recognises a driven env by ``env.unwrapped``; wrappers around it (``MaxTurns``,
``OrderEnforcing``, reward overrides) act on ``step`` and do not apply: the run's limits arrive
in the context's ``config`` and the env applies them. Such an episode is never suspended by
partial rollout: an interrupt ends it as ``abort``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from agentrl.envs.core import Task
from agentrl.policies.base import Generation, SamplingParams
from agentrl.rollout.conversation import ChatRenderer, TokenConversation
from agentrl.rollout.trajectory import Termination

if TYPE_CHECKING:
    from agentrl.rollout.runner import RolloutConfig

EpisodeGenerate = Callable[[Sequence[int], SamplingParams, str], Coroutine[Any, Any, Generation]]
"""``generate(input_ids, sampling, rid)``: the run's policy, through the episode's interrupt (an
aborted request answers ``finish_reason="abort"``), its time counted in ``generate_s``. ``rid``
must be unique among requests in flight and end in ``:<turn>``."""


@dataclass(frozen=True)
class EpisodeContext:
    """What the runner hands :meth:`DrivenEnv.play_episode`.

    Attributes:
        task: the episode's task.
        seed: the env's reset seed (shared by the task's group unless ``reset_seed="sample"``).
        sampling_seed: the episode's sampling seed (a turn's is ``derive_seed(sampling_seed,
            turn)``, as the runner's); ``None`` when the run is unseeded.
        episode_id: unique among the episodes in flight; a prefix for request ids.
        config: the run's settings (sampling, ``max_turns``, ``max_context_len``,
            ``bridge_mode``, ``tool_parser``, ``end_on_length``), for the env to apply.
        renderer: the run's chat template.
        generate: the policy (see :data:`EpisodeGenerate`).
    """

    task: Task
    seed: int
    sampling_seed: int | None
    episode_id: str
    config: RolloutConfig
    renderer: ChatRenderer
    generate: EpisodeGenerate


@dataclass
class PlayedEpisode:
    """What :meth:`DrivenEnv.play_episode` returns; the runner turns it into the trajectory.

    Attributes:
        conversation: the episode's tokens (its segments, messages and prefix mismatches);
            ``None`` when nothing was generated.
        rewards: the episode's rewards (finite); their sum is its return.
        termination: why it ended (``done``, a limit, ``env_error``, ``timeout``, ``abort``).
        info: JSON-serialisable diagnostics.
        error: the reason for a failed episode (with a traceback where there is one).
        turns: the policy turns played.
        weight_versions: the weight version of each turn.
    """

    conversation: TokenConversation | None
    rewards: list[float]
    termination: Termination
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    turns: int = 0
    weight_versions: list[int] = field(default_factory=list)


@runtime_checkable
class DrivenEnv(Protocol):
    """An env that plays its own episode. See the module docstring."""

    async def play_episode(self, context: EpisodeContext) -> PlayedEpisode:
        """Play one whole episode with ``context.generate`` and return what it recorded.

        Raises:
            agentrl.errors.EnvError: an infrastructure failure; the episode ends as
                ``env_error`` (any other exception is wrapped in one).
            agentrl.errors.PolicyError: the engine failed; the episode ends as ``abort``.
        """
        ...
