"""Token bookkeeping for one episode: the engine's tokens kept verbatim, observations bridged.

The runner never re-encodes text the policy wrote. Each turn it

1. appends the engine's sampled ids as they came (loss mask 1, with their log-probs);
2. after the env answers, renders the whole conversation with the chat template and checks the
   *prefix property*: the text of the tokens so far must be a prefix of that rendering;
3. if it holds, appends only the tokens of the rest of the rendering (the *bridge*: the end of
   the assistant turn, the new observation messages, the next generation prompt) with mask 0;
4. if it does not (the template rewrote an earlier turn, e.g. it strips earlier ``<think>``
   blocks), it counts a mismatch and, in ``auto`` mode, starts a new segment whose prompt is the
   canonical rendering, so every segment is exactly what the model saw.

An observation (or the opening messages) may end with an assistant message: a *prefill*. The
policy's next turn continues it (Hugging Face's ``continue_final_message``), its tokens are
masked like any observation, and the action the env sees is the prefill plus what was sampled.

Modes: ``auto`` (default; bridge when the prefix property holds, else a new segment),
``append`` (always bridge; a mismatch raises), ``segment`` (a new segment every turn).
"""

from __future__ import annotations

from typing import Any, Literal

from agentrl.envs.core import Message
from agentrl.errors import AgentRLError
from agentrl.policies.base import Generation
from agentrl.rollout.trajectory import Segment

BridgeMode = Literal["auto", "append", "segment"]


class PrefixMismatchError(AgentRLError):
    """In ``append`` mode, the chat template rewrote an earlier part of the conversation."""


class ChatRenderer:
    """Renders conversations with one tokenizer's chat template and fixed template kwargs.

    The same kwargs (``enable_thinking`` and the like) are used for every render of a run, so the
    prompt and every bridge agree.

    Args:
        tokenizer: a Hugging Face tokenizer with a chat template (or pass ``chat_template``).
        chat_template: a Jinja template overriding the tokenizer's.
        template_kwargs: extra variables for the template.
    """

    def __init__(self, tokenizer: Any, *, chat_template: str | None = None, template_kwargs: dict[str, Any] | None = None) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.template_kwargs = dict(template_kwargs or {})

    def render(self, messages: list[Message], *, tools: list[dict[str, Any]] | None = None, add_generation_prompt: bool) -> str:
        """The conversation as text; with ``add_generation_prompt`` it ends where the policy writes
        next: after the generation prompt, or inside a trailing assistant message (a prefill)."""
        prefill = add_generation_prompt and bool(messages) and messages[-1]["role"] == "assistant"
        return self.tokenizer.apply_chat_template(
            messages,
            tools=tools,
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt and not prefill,
            continue_final_message=prefill,
            tokenize=False,
            **self.template_kwargs,
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added (the template wrote them)."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, token_ids: list[int]) -> str:
        """Text of ``token_ids`` with special tokens kept, as the template would write them."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=False)

    def decode_action(self, token_ids: list[int]) -> str:
        """The text the env sees: special tokens (eos, turn markers) removed."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)


class TokenConversation:
    """The growing token sequence of one episode. See the module docstring.

    Args:
        renderer: the chat template.
        messages: the opening messages from ``env.reset``.
        tools: the env's tool schemas, rendered by the template.
        mode: how to handle templates that are not append-only.
    """

    def __init__(self, renderer: ChatRenderer, messages: list[Message], *, tools: list[dict[str, Any]] | None = None, mode: BridgeMode = "auto") -> None:
        self.renderer = renderer
        self.tools = tools
        self.mode = mode
        self.messages: list[Message] = list(messages)
        self.prefix_mismatches = 0
        self.segments: list[Segment] = []
        self._prefill = _prefill(self.messages)
        self._start_segment()

    @property
    def segment(self) -> Segment:
        """The segment being extended."""
        return self.segments[-1]

    @property
    def context_ids(self) -> list[int]:
        """What the policy conditions on next: the current segment's whole sequence."""
        return self.segment.token_ids

    def add_generation(self, generation: Generation) -> str:
        """Append the engine's tokens verbatim; return the action text the env will see."""
        self.segment.append(generation.token_ids, sampled=True, logprobs=generation.logprobs)
        self._text += self.renderer.decode(generation.token_ids)
        text = self._prefill + self.renderer.decode_action(generation.token_ids)
        if self._prefill:
            self.messages[-1] = {"role": "assistant", "content": text}
        else:
            self.messages.append({"role": "assistant", "content": text})
        self._prefill = ""
        return text

    def bridge_ids(self, observation: list[Message]) -> tuple[list[int], bool]:
        """The tokens that would append ``observation`` and the next generation prompt.

        Returns:
            ``(ids, in_place)``: when ``in_place`` the ids continue the current segment; else
            they are the prompt of a new segment (the full canonical rendering).
        """
        full = self.renderer.render(self.messages + observation, tools=self.tools, add_generation_prompt=True)
        if self.mode != "segment" and full.startswith(self._text):
            return self.renderer.encode(full[len(self._text):]), True
        return self.renderer.encode(full), False

    def add_observation(self, observation: list[Message], bridge: tuple[list[int], bool]) -> None:
        """Append ``observation`` with the ids :meth:`bridge_ids` computed for it."""
        ids, in_place = bridge
        self.messages.extend(observation)
        self._prefill = _prefill(observation)
        if in_place:
            self.segment.append(ids, sampled=False)
            self._text += self.renderer.decode(ids)
            return
        if self.mode == "append":
            raise PrefixMismatchError(
                "the chat template is not append-only for this conversation (it rewrote an earlier "
                "turn); use bridge mode 'auto' or 'segment'"
            )
        if self.mode == "auto":
            self.prefix_mismatches += 1
        self.segments.append(Segment(prompt_ids=ids))
        self._text = self.renderer.decode(ids)

    def _start_segment(self) -> None:
        text = self.renderer.render(self.messages, tools=self.tools, add_generation_prompt=True)
        self.segments.append(Segment(prompt_ids=self.renderer.encode(text)))
        self._text = self.renderer.decode(self.segment.prompt_ids)


def _prefill(messages: list[Message]) -> str:
    """The text of a trailing assistant message the policy will continue, or ``""``."""
    return messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else ""
