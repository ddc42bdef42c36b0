"""The sandbox's inside: run by ``python -I jail.py SPEC`` as root of fresh mount, network, pid,
IPC and UTS namespaces (made by ``unshare``), it locks the filesystem down and execs the code.

Steps, each fatal when it fails (the code never runs half-isolated):

1. mounts become private; ``/root`` is covered by an empty tmpfs when the sandbox drops to an
   unprivileged uid (so the Python installation under it, put back read-only, is the only part
   of it left visible);
2. every mount is remounted read-only; the working directory alone is bound back writable;
3. resource limits are set (CPU seconds, address space, processes, file size, open files, no core
   files);
4. ``setpriv`` starts the code's Python with no capabilities (empty bounding set, no new
   privileges), as the given uid when there is one; its exit status (negative: the signal that
   killed it) is written to the file descriptor ``status_fd``, since ``unshare`` cannot report
   a signal death.

SPEC is a JSON object: ``workdir``, ``uid`` (``null``: keep the namespace's root, used in a user
namespace), ``python``, ``limits`` (``cpu_s``, ``memory_mb``, ``processes``, ``file_size_mb``),
``keep`` (paths under ``/root`` to put back), ``status_fd``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys


def sh(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"agentrl sandbox: setup failed: {' '.join(argv)}: {done.stderr.strip()}")


def hide_root(keep: list[str], stage: str) -> None:
    """Cover /root with an empty tmpfs, keeping ``keep`` (moved through mounts under ``stage``)."""
    staged = []
    for k, path in enumerate(keep):
        os.makedirs(f"{stage}/{k}")
        sh("mount", "--rbind", path, f"{stage}/{k}")
        staged.append((f"{stage}/{k}", path))
    sh("mount", "-t", "tmpfs", "-o", "size=1m,mode=755", "tmpfs", "/root")
    for source, path in staged:
        os.makedirs(path, exist_ok=True)
        sh("mount", "--move", source, path)


def lock_filesystem(workdir: str) -> None:
    with open("/proc/self/mountinfo") as f:
        points = sorted({line.split()[4] for line in f}, key=len)
    for point in points:
        sh("mount", "-o", "remount,bind,ro", point)
    sh("mount", "--bind", workdir, workdir)
    sh("mount", "-o", "remount,bind,rw", workdir)


def set_limits(limits: dict[str, int]) -> None:
    mb = 2**20
    for name, value in ((resource.RLIMIT_CPU, limits["cpu_s"]), (resource.RLIMIT_AS, limits["memory_mb"] * mb),
                        (resource.RLIMIT_NPROC, limits["processes"]), (resource.RLIMIT_FSIZE, limits["file_size_mb"] * mb),
                        (resource.RLIMIT_NOFILE, 256), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(name, (value, value))


def main() -> None:
    spec = json.loads(sys.argv[1])
    sh("mount", "--make-rprivate", "/")
    if spec["uid"] is not None:
        hide_root(spec["keep"], os.path.join(spec["workdir"], ".stage"))
    lock_filesystem(spec["workdir"])
    os.chdir(spec["workdir"])
    set_limits(spec["limits"])
    ids = [] if spec["uid"] is None else ["--reuid", str(spec["uid"]), "--regid", str(spec["uid"]), "--clear-groups"]
    env = {"PATH": "/usr/bin:/bin", "HOME": spec["workdir"], "TMPDIR": spec["workdir"], "LANG": "C.UTF-8"}
    argv = ["setpriv", *ids, "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", spec["python"], "-I", "-B", "main.py"]
    status = subprocess.run(argv, env=env).returncode
    os.write(spec["status_fd"], str(status).encode())


if __name__ == "__main__":
    main()
