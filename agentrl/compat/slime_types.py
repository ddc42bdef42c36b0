"""slime's ``Sample`` (``slime/utils/types.py`` at slime 624b824): the record a slime generate
function fills and a slime reward function reads, with slime's field names, defaults and methods.

Differences from slime, each a superset of its behaviour:

* ``Sample.Status`` is a string enum: ``Sample.Status.COMPLETED == "completed"``, and a plain
  string assigned to ``sample.status`` (``"completed"``, any case) becomes the enum member; an
  unknown string raises ``ValueError`` at the assignment, naming the allowed ones.
* SGLang's top-p token replay and routed-expert arrays in ``meta_info`` are not decoded (the
  engines agentrl serves never send them); ``append_response_tokens`` refuses a ``meta_info``
  that carries them instead of dropping them.

Like slime's, a ``Sample`` takes attributes it does not declare (``sample.tool_calls = 3`` in a
generate function reaches the reward function on the same object).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

TERMINAL_META_KEYS = ("top_p_token_ids", "top_p_kept_token_ids", "top_p_token_offsets", "top_p_kept_token_offsets", "routed_experts")
"""``meta_info`` keys of SGLang features agentrl does not replay (see the module docstring)."""


class SampleStatus(enum.StrEnum):
    """How a sample's generation ended (slime's values)."""

    PENDING = "pending"
    COMPLETED = "completed"
    TRUNCATED = "truncated"
    ABORTED = "aborted"
    FAILED = "failed"  # a recoverable failure (tool error, parse error); slime keeps the partial output

    @classmethod
    def parse(cls, value: Any) -> SampleStatus:
        """``value`` as a member: a member, another enum with one of the values (slime's own
        ``Sample.Status``), or a string (any case).

        Raises:
            ValueError: anything else, naming the allowed values.
        """
        if isinstance(value, cls):
            return value
        raw = value.value if isinstance(value, enum.Enum) else value
        if isinstance(raw, str) and raw.lower() in cls._value2member_map_:
            return cls(raw.lower())
        raise ValueError(f"sample.status {value!r} is not one of {', '.join(m.value for m in cls)}")


@dataclass
class SampleSpecInfo:
    """Speculative-decoding counters summed over a sample's turns (slime's ``Sample.SpecInfo``)."""

    spec_accept_token_num: int = 0
    spec_draft_token_num: int = 0
    spec_verify_ct: int = 0
    completion_token_num: int = 0

    @property
    def spec_accept_rate(self) -> float:
        return self.spec_accept_token_num / self.spec_draft_token_num if self.spec_draft_token_num > 0 else 0.0

    @property
    def spec_accept_length(self) -> float:
        return self.completion_token_num / self.spec_verify_ct if self.spec_verify_ct > 0 else 0.0

    def add(self, meta_info: Mapping[str, Any]) -> None:
        self.spec_accept_token_num += meta_info.get("spec_accept_token_num", 0)
        self.spec_draft_token_num += meta_info.get("spec_draft_token_num", 0)
        self.spec_verify_ct += meta_info.get("spec_verify_ct", 0)
        self.completion_token_num += meta_info.get("completion_tokens", 0)

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> SampleSpecInfo:
        return SampleSpecInfo(**{k: int(data.get(k, 0)) for k in ("spec_accept_token_num", "spec_draft_token_num", "spec_verify_ct", "completion_token_num")})


@dataclass
class SamplePrefixCacheInfo:
    """Prefix-cache counters summed over a sample's turns (slime's ``Sample.PrefixCacheInfo``)."""

    cached_tokens: int = 0
    total_prompt_tokens: int = 0

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.cached_tokens / self.total_prompt_tokens if self.total_prompt_tokens > 0 else 0.0

    def add(self, meta_info: Mapping[str, Any]) -> None:
        self.cached_tokens += meta_info.get("cached_tokens", 0)
        self.total_prompt_tokens += meta_info.get("prompt_tokens", 0)

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> SamplePrefixCacheInfo:
        return SamplePrefixCacheInfo(int(data.get("cached_tokens", 0)), int(data.get("total_prompt_tokens", 0)))


@dataclass
class Sample:
    """One generated sample, as slime's generate and reward functions see it.

    Token fields: ``tokens`` is prompt then response, ``[P + R]``; ``response_length`` is ``R``;
    ``loss_mask`` and ``rollout_log_probs`` are ``[R]`` (1 / the engine's log-prob on tokens the
    policy sampled, 0 / 0.0 on tool output). ``loss_mask`` ``None`` means all ones.
    """

    Status = SampleStatus
    SpecInfo = SampleSpecInfo
    PrefixCacheInfo = SamplePrefixCacheInfo

    group_index: int | None = None  # the prompt's index: the samples of one prompt share it
    index: int | None = None  # this sample's index in the rollout
    rollout_id: int | None = None  # siblings of one rollout (a list[Sample] return) share it; None: index
    prompt: str | list[dict[str, Any]] = ""  # rendered text with --apply-chat-template, else the row's input
    tokens: list[int] = field(default_factory=list)
    multimodal_inputs: dict[str, Any] | None = None
    multimodal_train_inputs: dict[str, Any] | None = None
    multimodal_train_input_id: str | None = None
    apply_chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    response: str = ""
    response_length: int = 0
    label: Any = None
    reward: float | dict[str, Any] | None = None  # a dict is read through --reward-key
    loss_mask: list[int] | None = None
    weight_versions: list[str] = field(default_factory=list)  # one per engine turn, from meta_info
    rollout_log_probs: list[float] | None = None
    rollout_top_p_token_ids: list[int] | None = None
    rollout_top_p_token_offsets: list[int] | None = None
    rollout_routed_experts: list[list[int]] | None = None
    remove_sample: bool = False  # kept for its group's baseline, but every loss-mask entry becomes 0
    teacher_log_probs: list[float] | None = None
    status: SampleStatus = SampleStatus.PENDING
    metadata: dict[str, Any] = field(default_factory=dict)
    generate_function_path: str | None = None
    custom_rm_path: str | None = None
    train_metadata: dict[str, Any] | None = None
    session_id: str | None = None
    non_generation_time: float = 0.0
    spec_info: SampleSpecInfo = field(default_factory=SampleSpecInfo)
    prefix_cache_info: SamplePrefixCacheInfo = field(default_factory=SamplePrefixCacheInfo)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "status":
            value = SampleStatus.parse(value)
        object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ slime's methods
    def get_reward_value(self, args: Any) -> Any:
        """The reward to train on: ``reward[args.reward_key]`` when ``--reward-key`` is set, else
        ``reward`` itself."""
        key = getattr(args, "reward_key", None)
        return self.reward if not key else self.reward[key]  # type: ignore[index]  # a dict when a key is set

    @property
    def effective_response_length(self) -> int:
        """Trained response tokens: the loss mask's sum, or ``response_length`` without one."""
        return sum(self.loss_mask) if self.loss_mask is not None else self.response_length

    def append_response_tokens(
        self, args: Any = None, *, tokens: Iterable[Any] | None = None, log_probs: Iterable[Any] | None = None, trainable: bool = True,
        meta_info: Mapping[str, Any] | None = None, text: str | None = None, update_terminal_info: bool = True,
    ) -> None:
        """Append response tokens, keeping ``tokens``, ``loss_mask`` and ``rollout_log_probs``
        aligned (slime's contract).

        Sampled tokens pass ``trainable=True`` with their log-probs (and SGLang's ``meta_info``);
        tool or env output passes ``trainable=False`` and no log-probs: mask 0, log-prob 0.0.
        With ``meta_info`` holding a ``finish_reason`` (and ``update_terminal_info``), the
        turn's ``weight_version`` is recorded and ``status`` follows the finish reason (length:
        truncated, abort: aborted, stop: completed).

        Raises:
            ValueError: log-probs and tokens of different lengths; trainable tokens without
                log-probs; log-probs for tokens that are not trainable; trainable log-probs
                appended to a response that has tokens but no log-probs; ``meta_info`` with
                top-p replay or routed experts.
        """
        new = _ints(tokens)
        probs = _floats(log_probs)
        _check_append(new, probs, trainable, self.response_length, self.rollout_log_probs is None)
        if new and not trainable:
            probs = [0.0] * len(new)
        if text is not None:
            self.response += text
        previous = self.response_length
        if new:
            self.tokens = [*self.tokens, *new]
            self.response_length += len(new)
            self.loss_mask = ([1] * previous if self.loss_mask is None else self.loss_mask) + [int(trainable)] * len(new)
        if probs is not None:
            self.rollout_log_probs = ([0.0] * previous if self.rollout_log_probs is None else self.rollout_log_probs) + probs
        if meta_info is not None:
            self._apply_meta_info(args, meta_info, update_terminal_info=update_terminal_info)
        self._check_lengths()

    def _apply_meta_info(self, args: Any, meta_info: Mapping[str, Any], *, update_terminal_info: bool) -> None:
        unsupported = [k for k in TERMINAL_META_KEYS if meta_info.get(k) is not None]
        if unsupported:
            raise ValueError(f"meta_info carries {', '.join(unsupported)}: agentrl does not replay SGLang's top-p tokens or routed experts")
        if not update_terminal_info or "finish_reason" not in meta_info:
            return
        if getattr(args, "sglang_speculative_algorithm", None):
            self.spec_info.add(meta_info)
        self.prefix_cache_info.add(meta_info)
        if "weight_version" in meta_info:
            self.weight_versions.append(meta_info["weight_version"])
        status = {"length": SampleStatus.TRUNCATED, "abort": SampleStatus.ABORTED, "stop": SampleStatus.COMPLETED}.get(meta_info["finish_reason"]["type"])
        if status is not None:
            self.status = status

    def _check_lengths(self) -> None:
        for name in ("loss_mask", "rollout_log_probs"):
            value = getattr(self, name)
            if value is not None and len(value) != self.response_length:
                raise ValueError(f"{name} length {len(value)} != response_length {self.response_length}")

    # ------------------------------------------------------------------ records
    def to_dict(self) -> dict[str, Any]:
        """Every attribute (undeclared ones too), with ``status`` as its string and the two
        counters as dicts (slime's dump format)."""
        value = dict(vars(self))
        value["status"] = self.status.value
        value["spec_info"] = self.spec_info.to_dict()
        value["prefix_cache_info"] = self.prefix_cache_info.to_dict()
        return value

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Sample:
        """The inverse of :meth:`to_dict` (keys that are not fields become attributes, as in slime)."""
        data = dict(data)
        data["spec_info"] = SampleSpecInfo.from_dict(data.get("spec_info", {}))
        data["prefix_cache_info"] = SamplePrefixCacheInfo.from_dict(data.get("prefix_cache_info", {}))
        fields = set(Sample.__dataclass_fields__)
        sample = Sample(**{k: v for k, v in data.items() if k in fields})
        for key, value in data.items():
            if key not in fields:
                setattr(sample, key, value)
        return sample


def _ints(values: Iterable[Any] | None) -> list[int]:
    if values is None:
        return []
    items = values.tolist() if hasattr(values, "tolist") else values  # a torch tensor or numpy array
    return [int(v) for v in items]


def _floats(values: Iterable[Any] | None) -> list[float] | None:
    if values is None:
        return None
    items = values.tolist() if hasattr(values, "tolist") else values
    return [float(v) for v in items]


def _check_append(tokens: list[int], log_probs: list[float] | None, trainable: bool, previous: int, no_log_probs_yet: bool) -> None:
    if log_probs is not None and len(log_probs) != len(tokens):
        raise ValueError(f"log_probs length {len(log_probs)} != tokens length {len(tokens)}")
    if tokens and trainable and log_probs is None:
        raise ValueError("trainable response tokens require rollout log probabilities")
    if tokens and not trainable and log_probs is not None:
        raise ValueError("non-trainable response tokens should not pass rollout log probabilities")
    if log_probs is not None and trainable and previous and no_log_probs_yet:
        raise ValueError("cannot append trainable rollout log probabilities to a sample with existing response tokens but no rollout_log_probs")
