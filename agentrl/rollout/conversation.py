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

Some chat templates (SmolLM2's) never read ``tools``: :class:`ChatRenderer` checks the first
render with tools and logs a warning once per renderer when the schemas are not in the prompt.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import jinja2

from agentrl.envs.core import Message
from agentrl.errors import AgentRLError, ChatTemplateError
from agentrl.policies.base import Generation
from agentrl.rollout.trajectory import Segment

BridgeMode = Literal["auto", "append", "segment"]

log = logging.getLogger(__name__)


class PrefixMismatchError(AgentRLError):
    """In ``append`` mode, the chat template rewrote an earlier part of the conversation."""


class ChatRenderer:
    """Renders conversations with one tokenizer's chat template and fixed template kwargs.

    The same kwargs (``enable_thinking`` and the like) are used for every render of a run, so the
    prompt and every bridge agree. The first render with ``tools`` is checked once: if the text
    equals the render without them, or a tool's name is missing from it, the template ignores
    tools and a warning says so (at most once per renderer).

    Args:
        tokenizer: a Hugging Face tokenizer with a chat template (or pass ``chat_template``).
        chat_template: a Jinja template overriding the tokenizer's.
        template_kwargs: extra variables for the template.
    """

    def __init__(self, tokenizer: Any, *, chat_template: str | None = None, template_kwargs: dict[str, Any] | None = None) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.template_kwargs = dict(template_kwargs or {})
        self._tools_checked = False

    def render(self, messages: list[Message], *, tools: list[dict[str, Any]] | None = None, add_generation_prompt: bool) -> str:
        """The conversation as text; with ``add_generation_prompt`` it ends where the policy writes
        next: after the generation prompt, or inside a trailing assistant message (a prefill)."""
        text = self._apply(messages, tools, add_generation_prompt)
        if tools and not self._tools_checked:
            self._tools_checked = True
            self._warn_if_tools_ignored(text, self._apply(messages, None, add_generation_prompt), tools)
        return text

    def _apply(self, messages: list[Message], tools: list[dict[str, Any]] | None, add_generation_prompt: bool) -> str:
        prefill = add_generation_prompt and bool(messages) and messages[-1]["role"] == "assistant"
        try:
            return str(self.tokenizer.apply_chat_template(
                messages,
                tools=tools,
                chat_template=self.chat_template,
                add_generation_prompt=add_generation_prompt and not prefill,
                continue_final_message=prefill,
                tokenize=False,
                **self.template_kwargs,
            ))
        except (jinja2.TemplateError, ValueError) as e:
            roles = ", ".join(str(m.get("role")) for m in messages)
            raise ChatTemplateError(f"{self._template_name()} refused a conversation with roles [{roles}]: {e}") from e

    def _warn_if_tools_ignored(self, with_tools: str, without_tools: str, tools: list[dict[str, Any]]) -> None:
        names = [str(t.get("function", t).get("name")) for t in tools]
        missing = [n for n in names if n not in with_tools]
        if with_tools == without_tools:
            why = f"rendering with the schemas of {', '.join(names)} gives the same text as without them"
        elif missing:
            why = f"{', '.join(missing)} not in the text it renders"
        else:
            return
        log.warning("%s ignores `tools` (%s), so the model sees the schemas only if the env's messages carry them; put the "
                    "schemas in the system prompt, or use a chat template that renders tools (ChatRenderer(chat_template=...))",
                    self._template_name(), why)

    def _template_name(self) -> str:
        if self.chat_template:
            return "the chat_template passed to ChatRenderer"
        return f"the chat template of {getattr(self.tokenizer, 'name_or_path', '') or type(self.tokenizer).__name__}"

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added (the template wrote them)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, token_ids: list[int]) -> str:
        """Text of ``token_ids`` with special tokens kept, as the template would write them."""
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=False))

    def decode_action(self, token_ids: list[int]) -> str:
        """The text the env sees: special tokens (eos, turn markers) removed."""
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=True))


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
        self._text = ""  # the current segment's text so far (set by _start_segment)
        self._start_segment(self.renderer.render(self.messages, tools=self.tools, add_generation_prompt=True))

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
        if not in_place and self.mode == "append":  # raised before anything changes
            raise PrefixMismatchError(
                "the chat template is not append-only for this conversation (it rewrote an earlier "
                "turn); use bridge mode 'auto' or 'segment'"
            )
        self.messages.extend(observation)
        self._prefill = _prefill(observation)
        if in_place:
            self.segment.append(ids, sampled=False)
            self._text += self.renderer.decode(ids)
            return
        if self.mode == "auto":
            self.prefix_mismatches += 1
        self.segments.append(Segment(prompt_ids=ids))
        self._text = self.renderer.decode(ids)

    def restart(self, messages: list[Message], *, tools: list[dict[str, Any]] | None = None) -> None:
        """Continue from ``messages`` in a new segment whose prompt is their canonical rendering.

        For a client that rewrote its own history (truncated, edited or reordered it, or changed
        its tools), as the OpenAI endpoint's sessions see: the tokens recorded so far stay in
        their segments and the rewrite is counted in ``prefix_mismatches``, in every mode (it is
        the client's doing, not the template's, so ``append`` mode does not raise).
        """
        text = self.renderer.render(list(messages), tools=tools, add_generation_prompt=True)  # a refusal changes nothing
        self.messages, self.tools = list(messages), tools
        self._prefill = _prefill(self.messages)
        self.prefix_mismatches += 1
        self._start_segment(text)

    def _start_segment(self, text: str) -> None:
        self.segments.append(Segment(prompt_ids=self.renderer.encode(text)))
        self._text = self.renderer.decode(self.segment.prompt_ids)


def _prefill(messages: list[Message]) -> str:
    """The text of a trailing assistant message the policy will continue, or ``""``."""
    return messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else ""
