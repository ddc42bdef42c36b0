"""The top-level package: the env API one attribute away, without importing torch."""

import subprocess
import sys

import agentrl
import agentrl.envs


def test_the_env_api_is_reachable_from_the_top_level_package():
    for name in ("Env", "EnvSpec", "StepResult", "Task", "ToolCall", "Wrapper", "check_env", "make", "register", "spec"):
        assert getattr(agentrl, name) is getattr(agentrl.envs, name)
        assert name in dir(agentrl)


def test_an_unknown_attribute_is_an_attribute_error():
    assert not hasattr(agentrl, "mkae")


def test_import_agentrl_and_make_an_env_import_neither_torch_nor_transformers():
    code = ("import sys, agentrl\nagentrl.make\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
