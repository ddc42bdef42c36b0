"""The Python sandbox, for real (namespaces, rlimits, setpriv): each escape or blow-up is stopped
with a clear tool message; the math env runs model code in it through the rollout runner."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import pytest

from agentrl.policies import ScriptedPolicy
from agentrl.rollout import ChatRenderer, RolloutConfig, RolloutRunner, Termination
from envs_contrib.sandbox import PythonMathEnv, PythonSandbox, SandboxLimits

FAST = SandboxLimits(cpu_s=2, wall_s=15, memory_mb=256, processes=16, output_bytes=2048)


async def run(code: str, limits: SandboxLimits = FAST):
    return await PythonSandbox(limits).run(code)


async def test_code_runs_and_may_write_its_own_directory():
    result = await run("open('out.txt', 'w').write('data')\nprint(open('out.txt').read(), 6 * 7)")
    assert (result.exit_code, result.limit, result.stdout) == (0, None, "data 42\n")
    assert result.message() == "exit code 0\nstdout:\ndata 42"


async def test_network_is_denied():
    result = await run("import socket\nsocket.create_connection(('127.0.0.1', 80), timeout=2)")
    assert result.exit_code == 1 and "Network is unreachable" in result.message()


SHARED_MEMORY = Path("/dev/shm")
"""Linux's shared-memory tmpfs, writable by everyone on the host: the sandbox must not let code write there."""
OUTSIDE = {"temp dir": Path(tempfile.gettempdir()), "this checkout": Path(__file__).resolve().parent, "shared memory": SHARED_MEMORY}


@pytest.mark.parametrize("where", list(OUTSIDE))
async def test_writes_outside_its_directory_are_denied(where):
    target = str(OUTSIDE[where] / "agentrl-sandbox-escape")
    result = await run(f"open({target!r}, 'w').write('x')")
    assert result.exit_code == 1 and "Read-only file system" in result.message()
    assert not await asyncio.to_thread(os.path.exists, target)


@pytest.mark.skipif(os.geteuid() != 0, reason="as root only: the code runs as its own uid with /root hidden")
async def test_as_root_the_code_is_an_unprivileged_uid_that_sees_no_host_secrets():
    result = await run("import os\nprint(os.getuid(), os.listdir('/root'), os.getpid() < 100)")
    uid, listing, own_pids = result.stdout.split(" ", 1)[0], result.stdout.split(" ", 1)[1].rsplit(" ", 1)[0], result.stdout.split()[-1]
    assert int(uid) >= 620000 and listing == "['.pyenv']" and own_pids == "True"


async def test_a_fork_bomb_is_contained():
    started = time.perf_counter()
    result = await run("import os\nwhile True:\n    os.fork()", SandboxLimits(wall_s=15, processes=16, output_bytes=2**20))
    assert result.limit == "processes" and result.message().startswith("Error: the code hit the sandbox's process limit")
    assert time.perf_counter() - started < FAST.wall_s


async def test_a_memory_blow_up_is_stopped():
    result = await run("x = bytearray(4 * 1024**3)\nprint('allocated')")
    assert result.limit == "memory" and result.message().startswith("Error: the code ran out of memory") and "allocated" not in result.stdout


async def test_cpu_time_and_wall_clock_limits_are_enforced():
    spin = await run("while True:\n    pass", SandboxLimits(cpu_s=1, wall_s=30))
    assert spin.limit == "cpu_time" and spin.message().startswith("Error: the code used up its CPU time limit")
    sleep = await run("import time\ntime.sleep(60)", SandboxLimits(wall_s=1.5))
    assert sleep.limit == "wall_time" and sleep.exit_code is None and sleep.elapsed_s < 10
    assert sleep.message() == "Error: the code ran past its wall-clock limit and was stopped.\nkilled"


async def test_output_is_cut_and_the_code_stopped():
    result = await run("while True:\n    print('x' * 1000)")
    assert result.limit == "output" and result.stdout.endswith("[... output cut at 2048 bytes]")


async def test_math_env_runs_the_models_code_in_the_sandbox(tokenizer):
    script = ['<tool_call>{"name": "python", "arguments": {"code": "print(2**20 - 12345)"}}</tool_call>', "The answer is \\boxed{1036231}."]
    runner = RolloutRunner(ScriptedPolicy(tokenizer, script), ChatRenderer(tokenizer), lambda: PythonMathEnv(FAST), RolloutConfig(max_turns=4))
    [played] = await runner.run([PythonMathEnv(FAST).example_tasks()[0]], progress=False)
    assert (played.termination, played.reward) == (Termination.DONE, 1.0)
    assert played.messages[3] == {"role": "tool", "content": "exit code 0\nstdout:\n1036231"}
    assert played.info == {"tool_calls": 1, "tool_errors": 0}
