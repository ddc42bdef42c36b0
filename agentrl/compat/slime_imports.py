"""``import slime...`` without slime: the modules slime plug-ins import, served by agentrl.

Where the real slime is not installed, :func:`install` adds an import finder that answers for
these module names only (any other ``slime.*`` import fails as it would without slime):

=========================================  ===================================================
module                                     what it holds
=========================================  ===================================================
``slime.utils.types``                      ``Sample``
``slime.utils.http_utils``                 ``post``, ``get``
``slime.rollout.sglang_rollout``           ``GenerateState``, ``generate``
``slime.rollout.rm_hub``                   ``async_rm``, ``batched_async_rm``
``slime.rollout.rm_hub.math_dapo_utils``   ``compute_score``, ``normalize_final_answer``, ``last_boxed_only_string``
``slime.rollout.rm_hub.math_utils``        ``extract_answer``, ``grade_answer_verl``, ``grade_answer_mathd``, ``grade_answer_sympy``
``slime.rollout.rm_hub.deepscaler``        ``get_deepscaler_rule_based_reward``
``slime.rollout.rm_hub.f1``                ``f1_score``
``slime.rollout.filter_hub.*``             ``DynamicFilterOutput``, ``check_reward_nonzero_std`` (over agentrl trajectories)
=========================================  ===================================================

So a plug-in written for slime (``from slime.utils.types import Sample``) runs unchanged. The
finder is installed when :mod:`agentrl.compat` is imported, which every path that loads a
plug-in does; ``AGENTRL_SLIME_SHIM=0`` turns it off.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from collections.abc import Sequence

PACKAGES = ("slime", "slime.utils", "slime.rollout", "slime.rollout.filter_hub")
MODULES: dict[str, tuple[str, dict[str, str]]] = {
    "slime.utils.types": ("agentrl.compat.slime_types", {"Sample": "Sample"}),
    "slime.utils.http_utils": ("agentrl.compat.slime", {"post": "post", "get": "get"}),
    "slime.rollout.sglang_rollout": ("agentrl.compat.slime", {"GenerateState": "GenerateState", "generate": "generate"}),
    "slime.rollout.rm_hub": ("agentrl.rewards.slime_rm", {"async_rm": "async_rm", "batched_async_rm": "batched_async_rm"}),
    "slime.rollout.rm_hub.math_dapo_utils": ("agentrl.rewards.dapo", {"compute_score": "dapo_score", "normalize_final_answer": "normalize_final_answer",
                                                                      "last_boxed_only_string": "last_boxed_only"}),
    "slime.rollout.rm_hub.math_utils": ("agentrl.rewards.hendrycks", {"extract_answer": "extract_answer", "grade_answer_verl": "grade_answer_verl",
                                                                      "grade_answer_mathd": "grade_mathd", "grade_answer_sympy": "grade_sympy"}),
    "slime.rollout.rm_hub.deepscaler": ("agentrl.rewards.hendrycks", {"get_deepscaler_rule_based_reward": "deepscaler_reward"}),
    "slime.rollout.rm_hub.f1": ("agentrl.rewards.slime_rm", {"f1_score": "slime_f1"}),
    "slime.rollout.filter_hub.base_types": ("agentrl.rollout.filters", {"DynamicFilterOutput": "DynamicFilterOutput"}),
    "slime.rollout.filter_hub.dynamic_sampling_filters": ("agentrl.rollout.filters", {
        "check_reward_nonzero_std": "check_reward_nonzero_std", "check_reward_nonzero_std_with_fallback": "check_reward_nonzero_std_with_fallback"}),
}
"""Each served module: the agentrl module its names come from, and slime's name -> agentrl's."""


class SlimeShim(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and builds the modules of :data:`PACKAGES` and :data:`MODULES`."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname in PACKAGES or fullname == "slime.rollout.rm_hub":
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        if fullname in MODULES:
            return importlib.util.spec_from_loader(fullname, self, is_package=False)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None  # the default module object

    def exec_module(self, module: types.ModuleType) -> None:
        module.__doc__ = f"agentrl's stand-in for {module.__name__} (agentrl.compat.slime_imports)"
        if module.__name__ not in MODULES:
            return
        source, names = MODULES[module.__name__]
        target = importlib.import_module(source)
        for slime_name, agentrl_name in names.items():
            setattr(module, slime_name, getattr(target, agentrl_name))


def install() -> bool:
    """Add the finder unless slime itself is importable, the finder is already there, or
    ``AGENTRL_SLIME_SHIM=0``. Returns whether it is in place."""
    if any(isinstance(f, SlimeShim) for f in sys.meta_path):
        return True
    if os.environ.get("AGENTRL_SLIME_SHIM", "1") == "0" or importlib.util.find_spec("slime") is not None:
        return False
    sys.meta_path.append(SlimeShim())
    return True
