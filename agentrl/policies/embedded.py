"""The embedded engine: an in-process :class:`~agentrl.policies.base.Policy` over a HF causal LM.

Many concurrent callers (one asyncio task per episode) share one batch by *continuous batching*:
a background loop, started lazily on the running event loop and owned by the engine, repeats

1. admit waiting requests into free batch rows and prefill their prompts,
2. run one decode step for every running row,
3. resolve the requests that finished; their rows leave the batch at once.

All model work runs on one worker thread (the engine's executor), so the event loop stays free
for environment steps while the model computes. The forward pass is :class:`LeanDecoder`
(Llama-family architectures); ``model.generate`` is never called.

Guarantees:

* Sampling and log-probs follow :mod:`agentrl.policies.sampling` (SGLang's log-prob convention);
  a request with a ``seed`` gets the same tokens whatever else is batched with it.
* :meth:`EmbeddedEngine.update_weights` stops admitting, lets running requests finish, then loads
  the tensors, so every request runs on one weight version (``Generation.weight_version``).
* A cancelled caller's row is dropped from the batch; :meth:`EmbeddedEngine.abort` ends a request
  early with ``finish_reason="abort"`` and its partial tokens.
* A failure that depends on one request's input (its prefill, its stop check) fails that request
  alone with :class:`PolicyError`; a failure of the shared decode step fails the requests in the
  batch (none hang). Either way the engine keeps serving new requests.
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import cast

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from agentrl.errors import PolicyError
from agentrl.models.resolve import resolve_model
from agentrl.policies.base import Generation, Policy, SamplingParams
from agentrl.policies.batch import DecodeBatch, Finished, Request, RowSampler, StopRule
from agentrl.policies.decoder import LeanDecoder

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""Names accepted by :meth:`EmbeddedEngine.from_pretrained`."""


class EngineState(enum.Enum):
    """``OPEN`` serves requests (its loop starts on the first one); ``CLOSED`` is final."""

    OPEN = "open"
    CLOSED = "closed"


@dataclass(eq=False, kw_only=True)
class _Request(Request):
    """A request as the engine's loop tracks it."""

    future: asyncio.Future[Generation]
    rid: str | None
    admitted: bool = False  # handed to the batch


@dataclass(eq=False)
class _WeightUpdate:
    """One ``update_weights`` call waiting for the batch to drain."""

    named_tensors: Iterable[tuple[str, torch.Tensor]]
    version: int
    future: asyncio.Future[None]


class EmbeddedEngine(Policy):
    """Serve a HF causal LM in-process with continuous batching (see the module docstring).

    The engine takes ownership of ``model``: it moves and casts it in place and freezes it; in
    bf16 on a CPU it also keeps packed copies of the projection weights (see
    :mod:`agentrl.policies.decoder`). Don't train the same module object; push new weights with
    :meth:`update_weights`.

    Use it as ``async with EmbeddedEngine.from_pretrained("smollm2-135m") as engine: ...``, or
    call :meth:`aclose` when done. It serves one event loop at a time.

    CPU performance: the worker uses torch's intra-op threads (``torch.get_num_threads()``, all
    cores by default). Other CPU-heavy work in the process while it decodes (env steps doing
    real computation, a trainer step in another thread) competes for the same cores, and torch
    work on *other* threads slows its parallel ops further (see :func:`_release_openmp_threads`).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_batch_size: int = 64,
        max_prefill_tokens: int = 4096,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        seed: int | None = None,
    ) -> None:
        """
        Args:
            model: a ``*ForCausalLM`` of an architecture in ``decoder.ARCHITECTURES``.
            tokenizer: its tokenizer (for stop strings and its eos token).
            max_batch_size: most requests decoded together; more wait for a free row.
            max_prefill_tokens: most prompt tokens (padded) run in one prefill forward.
            device: where to run; ``None`` keeps the model where it is.
            dtype: weight and KV-cache dtype; ``None`` keeps the model's.
            seed: seeds the engine's stream of per-request seeds (requests without a seed).

        Raises:
            ModelError: the architecture is not supported; the message lists those that are.
        """
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        model.to(device=device, dtype=dtype)  # type: ignore[call-arg]  # transformers types .to's self oddly
        model.eval().requires_grad_(False)
        self._decoder = LeanDecoder(model)
        self._tokenizer = tokenizer
        self._eos_token_ids = _eos_token_ids(model, tokenizer)
        self._max_batch_size = max_batch_size
        self._batch = DecodeBatch(self._decoder, tokenizer, max_prefill_tokens)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentrl-engine")
        self._seeds = random.Random(seed)
        self._state = EngineState.OPEN
        self._weight_version = 0
        self._waiting: deque[_Request] = deque()
        self._updates: deque[_WeightUpdate] = deque()
        self._pending: set[_Request] = set()  # every request not yet returned to its caller
        self._rids: dict[str, _Request] = {}
        self._running = 0  # rows in the batch after the last step
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None

    @classmethod
    def from_pretrained(
        cls,
        spec: str,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        max_batch_size: int = 64,
        seed: int | None = None,
    ) -> EmbeddedEngine:
        """Load a model spec (see :func:`agentrl.models.resolve.resolve_model`) and serve it.

        Args:
            spec: a HF model directory or a built-in name such as ``"smollm2-135m"``.
            dtype: ``"float32"`` or ``"bfloat16"``.
            device: ``"cpu"``, ``"cuda"``, ...
        """
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        path = resolve_model(spec)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(model, tokenizer, max_batch_size=max_batch_size, device=device, seed=seed)

    @property
    def model(self) -> PreTrainedModel:
        """The served HF module (shares its parameters with the engine)."""
        return self._decoder.model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._tokenizer

    @property
    def weight_version(self) -> int:
        return self._weight_version

    @property
    def context_length(self) -> int:
        """The model's ``max_position_embeddings``: prompt and output tokens of one request."""
        return self._decoder.max_positions

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def num_running(self) -> int:
        """Rows in the batch after the last step."""
        return self._running

    @property
    def num_waiting(self) -> int:
        """Requests waiting for a row."""
        return len(self._waiting)

    async def generate(
        self, input_ids: Sequence[int], sampling: SamplingParams, *, rid: str | None = None
    ) -> Generation:
        """Continue ``input_ids`` by one turn (see :meth:`Policy.generate`).

        ``max_new_tokens`` is clamped so that prompt and output fit the model's context.

        Raises:
            RuntimeError: the engine is closed.
            PolicyError: the prompt is empty or longer than the model's context, ``rid`` is
                already in flight, or the engine failed while serving the request.
        """
        request = self._new_request(input_ids, sampling, rid)
        if request.rule.max_new_tokens == 0:
            return Generation([], [], "length", self._weight_version)
        self._pending.add(request)
        if rid is not None:
            self._rids[rid] = request
        self._waiting.append(request)
        self._ensure_loop().set()
        try:
            return await request.future
        except asyncio.CancelledError:
            request.cancelled = True
            if self._wakeup is not None:
                self._wakeup.set()
            raise
        finally:
            self._pending.discard(request)
            if rid is not None:
                self._rids.pop(rid, None)

    async def abort(self, rid: str) -> bool:
        """End request ``rid`` now (see :meth:`Policy.abort`): a running request returns
        ``finish_reason="abort"`` with the tokens sampled so far, a waiting one with none.
        Returns whether such a request was in flight."""
        request = self._rids.get(rid)
        if request is None or request.future.done():
            return False
        if request.admitted:
            request.abort = True
            if self._wakeup is not None:
                self._wakeup.set()
        else:
            self._waiting.remove(request)
            request.future.set_result(Generation([], [], "abort", self._weight_version))
        return True

    async def update_weights(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]], *, weight_version: int
    ) -> None:
        """Load tensors by HF parameter name and set the weight version.

        New requests wait; requests already running finish on the old weights first. The tensors
        are read on the engine's worker thread (a generator is consumed there).

        Raises:
            RuntimeError: the engine is closed.
            PolicyError: a name is unknown or a shape differs; the tensors before it are loaded
                and the version is left as it was.
        """
        self._check_open()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._updates.append(_WeightUpdate(named_tensors, weight_version, future))
        self._ensure_loop().set()
        await future

    async def aclose(self) -> None:
        """Stop the loop: running requests return ``"abort"`` with their partial tokens, waiting
        ones ``"abort"`` with none, pending weight updates fail. Returns once the worker thread
        has finished what it was given, without blocking the event loop. Safe to call twice."""
        if self._state is EngineState.CLOSED:
            return
        self._state = EngineState.CLOSED
        task = self._loop_task
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            assert self._wakeup is not None
            self._wakeup.set()
            await task
        await asyncio.wrap_future(self._executor.submit(lambda: None))  # after any step still running
        self._executor.shutdown(wait=False)

    def _new_request(
        self, input_ids: Sequence[int], sampling: SamplingParams, rid: str | None
    ) -> _Request:
        self._check_open()
        context = self._decoder.max_positions
        if not input_ids:
            raise PolicyError("generate: input_ids is empty; give at least one prompt token")
        if len(input_ids) > context:
            raise PolicyError(
                f"generate: the prompt has {len(input_ids)} tokens but the model's context is "
                f"{context} (max_position_embeddings); shorten the conversation"
            )
        if min(input_ids) < 0 or max(input_ids) >= self._decoder.vocab_size:
            raise PolicyError(
                f"generate: token ids must lie in [0, {self._decoder.vocab_size}), got "
                f"{min(input_ids)}..{max(input_ids)}; was the prompt encoded by another tokenizer?"
            )
        if rid is not None and rid in self._rids:
            raise PolicyError(f"generate: request id {rid!r} is already in flight")
        max_new = min(sampling.max_new_tokens, context - len(input_ids))
        seed = sampling.seed if sampling.seed is not None else self._seeds.getrandbits(63)
        return _Request(
            input_ids=list(input_ids),
            rule=StopRule.from_params(sampling, self._eos_token_ids, max_new),
            sampler=RowSampler.from_params(sampling, seed),
            future=asyncio.get_running_loop().create_future(),
            rid=rid,
        )

    def _check_open(self) -> None:
        if self._state is EngineState.CLOSED:
            raise RuntimeError("EmbeddedEngine is closed; create a new engine to generate again")

    def _ensure_loop(self) -> asyncio.Event:
        """The loop's wake-up event, starting the loop on the running event loop if needed."""
        loop = asyncio.get_running_loop()
        task = self._loop_task
        if task is not None and not task.done():
            if task.get_loop() is not loop:
                raise RuntimeError("EmbeddedEngine is serving another event loop; use one loop")
            assert self._wakeup is not None
            return self._wakeup
        self._wakeup = asyncio.Event()
        self._loop_task = loop.create_task(self._run(), name="agentrl-embedded-engine")
        return self._wakeup

    async def _run(self) -> None:
        """The background loop; whatever ends it, no request is left hanging."""
        try:
            await self._serve()
        except asyncio.CancelledError:
            self._fail_all("the embedded engine's loop was cancelled", None)
            raise
        except Exception as e:  # a bug in the loop itself: fail everyone, restart on next call
            log.exception("embedded engine loop crashed")
            self._fail_all(f"the embedded engine's loop crashed: {e!r}", e)

    async def _serve(self) -> None:
        assert self._wakeup is not None
        while self._state is EngineState.OPEN:
            if self._updates and self._running == 0:
                update = self._updates.popleft()
                if not update.future.done():  # its caller may have given up waiting
                    await self._apply_update(update)
                continue
            admitted = [] if self._updates else self._admit()
            if self._running == 0 and not admitted:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._step(admitted)
        await self._shut_down()

    def _admit(self) -> list[_Request]:
        admitted: list[_Request] = []
        while self._waiting and self._running + len(admitted) < self._max_batch_size:
            request = self._waiting.popleft()
            if not request.cancelled:
                request.admitted = True
                admitted.append(request)
        return admitted

    async def _step(self, admitted: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        _release_openmp_threads()
        try:
            done, self._running = await loop.run_in_executor(
                self._executor, self._batch.step, admitted, self._weight_version
            )
        except Exception as e:
            log.exception("embedded engine step failed")
            await loop.run_in_executor(self._executor, self._batch.reset)
            self._running = 0
            self._fail_requests(f"the embedded engine failed during a step: {e!r}", e, admitted_only=True)
            return
        _resolve(done)

    async def _apply_update(self, update: _WeightUpdate) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._decoder.load_weights, update.named_tensors)
        except PolicyError as e:  # a bad name or shape: the caller's mistake, said plainly
            _settle(update.future, error=e)
            return
        except Exception as e:
            log.exception("update_weights failed")
            error = PolicyError(f"update_weights failed: {e!r}")
            error.__cause__ = e
            _settle(update.future, error=error)
            return
        self._weight_version = update.version
        _settle(update.future)

    async def _shut_down(self) -> None:
        loop = asyncio.get_running_loop()
        _resolve(await loop.run_in_executor(self._executor, self._batch.abort_all))
        self._running = 0
        while self._waiting:
            request = self._waiting.popleft()
            if not request.future.done():
                request.future.set_result(Generation([], [], "abort", self._weight_version))
        self._fail_updates(PolicyError("the embedded engine was closed before the update ran"))

    def _fail_all(self, message: str, cause: BaseException | None) -> None:
        """After the loop ended abnormally: fail every request and update, forget the batch."""
        self._fail_requests(message, cause, admitted_only=False)
        self._waiting.clear()
        self._running = 0
        self._fail_updates(PolicyError(message))
        if self._state is EngineState.OPEN:
            self._executor.submit(self._batch.reset)  # runs after any step still in the worker

    def _fail_requests(self, message: str, cause: BaseException | None, *, admitted_only: bool) -> None:
        for request in self._pending:
            if request.future.done() or (admitted_only and not request.admitted):
                continue
            error = PolicyError(message)
            error.__cause__ = cause
            request.future.set_exception(error)

    def _fail_updates(self, error: PolicyError) -> None:
        while self._updates:
            update = self._updates.popleft()
            if not update.future.done():
                update.future.set_exception(error)


def _release_openmp_threads() -> None:
    """Free the OpenMP thread pool of the calling (event-loop) thread, if it has one.

    libgomp, the OpenMP runtime of PyTorch's Linux wheels, gives every thread that runs parallel
    torch ops its own pool, and once pools hold more threads than there are CPUs it stops
    spin-waiting between parallel regions: each of the ~200 regions of a decode step then pays
    a sleep/wake-up (measured: decode steps 20-50% slower on 2 cores). Torch work on the event
    loop thread (loading the model, a trainer step) leaves such a pool behind;
    ``omp_pause_resource_all(omp_pause_hard)`` (OpenMP 5.0) frees it, and the runtime makes a new
    one if that thread runs parallel ops again. A no-op where the runtime lacks the call.
    """
    if _OMP_PAUSE_RESOURCE_ALL is not None:
        _OMP_PAUSE_RESOURCE_ALL(_OMP_PAUSE_HARD)


def _find_omp_pause() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).omp_pause_resource_all  # the runtime torch loaded, if global
    except (AttributeError, OSError):
        return None


_OMP_PAUSE_HARD = 2
_OMP_PAUSE_RESOURCE_ALL = _find_omp_pause()


def _settle(future: asyncio.Future[None], error: BaseException | None = None) -> None:
    """Complete ``future`` unless its waiter already gave up (cancelled it)."""
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _resolve(done: Finished) -> None:
    for request, outcome in done:
        future = cast(_Request, request).future
        if future.done():
            continue
        if isinstance(outcome, PolicyError):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """The model's end-of-sequence ids: generation config's ``eos_token_id`` (int or list) and
    the tokenizer's."""
    ids: set[int] = set()
    config_eos = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(config_eos, int):
        ids.add(config_eos)
    elif config_eos is not None:
        ids.update(config_eos)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)
