"""HTTP serving: SGLang's native API over agentrl's policies."""

from agentrl.serving.sglang_api import SGLangAPI, SGLangServer

__all__ = ["SGLangAPI", "SGLangServer"]
