"""A sandbox for model-written Python (:class:`PythonSandbox`) and a math env that uses it
(``contrib/PythonMath-v0``)."""

from envs_contrib.sandbox.math_env import PythonMathEnv, python_tool
from envs_contrib.sandbox.sandbox import PythonSandbox, SandboxError, SandboxLimits, SandboxResult

__all__ = ["PythonMathEnv", "PythonSandbox", "SandboxError", "SandboxLimits", "SandboxResult", "python_tool"]
