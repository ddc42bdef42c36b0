"""SGLang's flattened-bucket weight payload, as ``/update_weights_from_tensor`` carries it.

A bucket is one 1-D tensor, the concatenation of same-dtype tensors, and a metadata entry per
tensor (name, shape, dtype, start and end offsets, numel), as SGLang's
``sglang.srt.weight_sync.tensor_bucket`` has it. It travels pickled by
``multiprocessing.reduction.ForkingPickler`` and base64-encoded (SGLang's
``MultiprocessingSerializer.serialize(obj, output_str=True)``): a CUDA tensor pickles as a CUDA IPC
handle, a CPU one as a shared-memory file, so only metadata crosses HTTP and the receiving process
on the same node maps the sender's memory. The sender keeps the tensors alive until the receiver
has answered.

:func:`encode_bucket` uses SGLang's own classes when SGLang is installed (what an SGLang server
accepts) and this module's otherwise; :func:`decode` reads either, through an allowlist of the
globals a tensor payload needs, so a crafted payload cannot call anything else.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import io
import math
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from typing import Any

import torch
import torch.multiprocessing  # registers the reductions that share tensors between processes

SGLANG_METADATA = ("sglang.srt.weight_sync.tensor_bucket", "FlattenedTensorMetadata")
ALLOWED = {
    ("builtins", name) for name in ("list", "dict", "tuple", "set", "frozenset", "int", "float", "str", "bool", "bytes", "slice")
} | {
    ("collections", "OrderedDict"), ("torch", "Size"), ("torch", "Tensor"), ("torch", "UntypedStorage"), ("torch", "device"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch.storage", "UntypedStorage"), ("torch.storage", "TypedStorage"),
    ("torch.storage", "_load_from_bytes"),
    *(("torch.multiprocessing.reductions", name) for name in (
        "rebuild_cuda_tensor", "rebuild_tensor", "rebuild_storage_filename", "rebuild_storage_fd", "rebuild_storage_empty",
        "rebuild_typed_storage", "rebuild_typed_storage_child", "rebuild_event", "rebuild_nested_tensor")),
    ("agentrl.serving.tensor_bucket", "FlattenedTensorMetadata"), SGLANG_METADATA,
} | {("torch", str(dtype).removeprefix("torch.")) for dtype in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool)}
"""The globals a payload may name (module, name): containers, tensors, storages and their rebuild
functions, dtypes, and the metadata class (SGLang's or this module's)."""


@dataclass(frozen=True)
class FlattenedTensorMetadata:
    """Where one tensor lies in a bucket (SGLang's fields)."""

    name: str
    shape: torch.Size
    dtype: torch.dtype
    start_idx: int
    end_idx: int
    numel: int


class PayloadError(ValueError):
    """A payload that is not a tensor bucket, or names a global outside :data:`ALLOWED`."""


def flatten(named_tensors: Sequence[tuple[str, torch.Tensor]]) -> tuple[torch.Tensor, list[FlattenedTensorMetadata]]:
    """One bucket of same-dtype tensors: the flat tensor ``[sum numel]`` and each tensor's place."""
    dtypes = {t.dtype for _, t in named_tensors}
    if len(dtypes) != 1:
        raise ValueError(f"a bucket holds tensors of one dtype, got {sorted(map(str, dtypes))}")
    metadata, start = [], 0
    for name, tensor in named_tensors:
        metadata.append(FlattenedTensorMetadata(name, tensor.shape, tensor.dtype, start, start + tensor.numel(), tensor.numel()))
        start += tensor.numel()
    return torch.cat([t.reshape(-1) for _, t in named_tensors]), metadata


def unflatten(flat: torch.Tensor, metadata: Sequence[Any]) -> list[tuple[str, torch.Tensor]]:
    """The tensors of a bucket, as views of ``flat`` (metadata of SGLang's class or this module's)."""
    return [(m.name, flat[m.start_idx : m.end_idx].view(m.shape)) for m in metadata]


def encode_bucket(named_tensors: Sequence[tuple[str, torch.Tensor]]) -> str:
    """The ``serialized_named_tensors`` entry of one bucket, for ``load_format="flattened_bucket"``."""
    try:
        from sglang.srt.utils import MultiprocessingSerializer
        from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorBucket
    except ImportError:
        flat, metadata = flatten(named_tensors)
        return serialize({"flattened_tensor": flat, "metadata": metadata})
    bucket = FlattenedTensorBucket(named_tensors=list(named_tensors))
    encoded: str = MultiprocessingSerializer.serialize(
        {"flattened_tensor": bucket.get_flattened_tensor(), "metadata": bucket.get_metadata()}, output_str=True)
    return encoded


@contextlib.contextmanager
def sharing_by_file_name() -> Iterator[None]:
    """Within this block CPU tensors are shared by file name, which a process that this one did
    not start can open (torch's default, file descriptors, needs a connection back to here)."""
    strategy = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")
    try:
        yield
    finally:
        torch.multiprocessing.set_sharing_strategy(strategy)


def serialize(obj: Any) -> str:
    """``obj`` pickled as between processes (tensors as shared-memory or CUDA IPC handles), base64."""
    return base64.b64encode(bytes(ForkingPickler.dumps(obj))).decode()


def decode(text: str, load_format: str | None) -> list[tuple[str, torch.Tensor]]:
    """The named tensors of one ``serialized_named_tensors`` entry: a flattened bucket
    (``load_format="flattened_bucket"``) or a list of ``(name, tensor)`` (``None``).

    Raises:
        PayloadError: not base64, not a payload of that format, or a global outside :data:`ALLOWED`.
    """
    try:
        obj = _AllowlistUnpickler(io.BytesIO(base64.b64decode(text, validate=True))).load()
    except PayloadError:
        raise
    except Exception as e:
        raise PayloadError(f"not a serialized tensor payload: {type(e).__name__}: {e}") from None
    if load_format == "flattened_bucket":
        if not (isinstance(obj, dict) and isinstance(obj.get("flattened_tensor"), torch.Tensor) and isinstance(obj.get("metadata"), list)):
            raise PayloadError("a flattened bucket is {'flattened_tensor': tensor, 'metadata': [FlattenedTensorMetadata, ...]}")
        _check_metadata(obj["flattened_tensor"], obj["metadata"])
        return unflatten(obj["flattened_tensor"], obj["metadata"])
    if not (isinstance(obj, list) and all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[1], torch.Tensor) for p in obj)):
        raise PayloadError("without load_format the payload is a list of (name, tensor)")
    return [(str(name), tensor) for name, tensor in obj]


def _check_metadata(flat: torch.Tensor, metadata: list[Any]) -> None:
    """Each entry names a tensor and a slice of ``flat`` that holds exactly its shape."""
    for k, m in enumerate(metadata):
        try:
            name, shape, start, end = str(m.name), [int(n) for n in m.shape], int(m.start_idx), int(m.end_idx)
        except (AttributeError, TypeError, ValueError):
            raise PayloadError(f"metadata[{k}] is {m!r:.80}; expected FlattenedTensorMetadata (name, shape, start_idx, end_idx)") from None
        if not 0 <= start <= end <= flat.numel() or math.prod(shape) != end - start:
            raise PayloadError(f"metadata[{k}] ({name}): elements [{start}, {end}) of a {flat.numel()}-element bucket "
                               f"cannot hold shape {shape}")


class _AllowlistUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED:
            raise PayloadError(f"the payload names {module}.{name}, which a tensor payload never needs")
        return getattr(importlib.import_module(module), name)
