"""Weights as a directory of safetensors files: written by the trainer, read by ``agentrl serve``.

Only ``*.safetensors`` files are ever read: pickle-based checkpoints (``pytorch_model.bin``,
``*.pt`` ...) can run arbitrary code when loaded, so a directory that has no safetensors file is
refused, naming the pickle files it holds. Tensor names are Hugging Face parameter names.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

WEIGHTS_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def unique_tensors(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """``named_tensors`` without the ones that alias a tensor already seen: tied weights such as
    ``lm_head.weight`` (the same storage as ``model.embed_tokens.weight``) go once, under the
    first name, as ``save_pretrained`` does; loading that name updates both."""
    seen: set[tuple[object, ...]] = set()
    for name, tensor in named_tensors:
        key = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        yield name, tensor


def write_safetensors_dir(
    directory: Path, named_tensors: Iterable[tuple[str, torch.Tensor]], *, dtype: torch.dtype | None = None,
) -> int:
    """Write ``named_tensors`` (tied aliases dropped, cast to ``dtype`` if given) as
    ``directory/model.safetensors``, replacing it atomically; returns the bytes of tensor data."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to(device="cpu", dtype=dtype).contiguous() for name, t in unique_tensors(named_tensors)}
    partial = directory / f".{WEIGHTS_FILE}.partial"
    save_file(tensors, str(partial), metadata={"format": "pt"})
    os.replace(partial, directory / WEIGHTS_FILE)
    return sum(t.numel() * t.element_size() for t in tensors.values())


def safetensors_files(directory: Path) -> list[Path]:
    """The ``*.safetensors`` files of ``directory``, sorted. Nothing is opened: a FIFO or a
    device named ``*.safetensors`` (whose reading could block forever) is refused.

    Raises:
        ValueError: ``directory`` is not a directory, holds no safetensors file (the message
            names the pickle files it holds, which are never loaded), or one of them is not a
            regular file.
    """
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    files = sorted(directory.glob("*.safetensors"))
    irregular = [path for path in files if not path.is_file()]
    if irregular:
        raise ValueError(f"{irregular[0]} is not a regular file; only regular *.safetensors files are read")
    if files:
        return files
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    refused = f"; refusing {', '.join(pickles)}: pickle files can run code when loaded, save weights as safetensors" if pickles else ""
    raise ValueError(f"no *.safetensors file in {directory}{refused}")


def read_shapes(files: Iterable[Path]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in ``files``, from their headers (no tensor is read)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def iter_tensors(files: Iterable[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of ``files`` on the CPU, one at a time."""
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118
                yield name, f.get_tensor(name)
