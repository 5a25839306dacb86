"""Sandboxes: every experiment in its own isolation, killed at its wall limit, nothing left behind."""

from __future__ import annotations

from cluster.sandbox.base import Sandbox, SandboxError

BACKENDS = ("process", "docker")


def make_sandbox(kind: str, **options: object) -> Sandbox:
    """The named backend; a ValueError lists the valid names."""
    if kind == "process":
        from cluster.sandbox.process import ProcessSandbox

        return ProcessSandbox(**options)
    if kind == "docker":
        from cluster.sandbox.docker_engine import DockerSandbox

        return DockerSandbox(**options)
    raise ValueError(f"unknown sandbox {kind!r}: choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Sandbox", "SandboxError", "make_sandbox"]
