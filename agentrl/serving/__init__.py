"""HTTP serving: SGLang's native API over agentrl's policies (``agentrl serve``).

The server classes load lazily, so that reading :class:`~agentrl.serving.server_args.ServerArgs`
(the CLI does, to build its parser) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentrl.serving.sglang_api import SGLangAPI, SGLangServer

__all__ = ["SGLangAPI", "SGLangServer"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from agentrl.serving import sglang_api

        return getattr(sglang_api, name)
    raise AttributeError(f"module 'agentrl.serving' has no attribute {name!r}")
