"""Sandboxes: every experiment in its own isolation, killed at its wall limit, nothing left behind."""

from __future__ import annotations

from cluster.sandbox.base import Sandbox, SandboxError

BACKENDS = ("process", "docker", "kubernetes")


def make_sandbox(kind: str, **options: object) -> Sandbox:
    """The named backend; a ValueError lists the valid names."""
    if kind == "process":
        from cluster.sandbox.process import ProcessSandbox

        return ProcessSandbox(**options)
    if kind == "docker":
        from cluster.sandbox.docker_engine import DockerSandbox

        return DockerSandbox(**options)
    if kind == "kubernetes":  # settings from FARM_KUBERNETES__* (see cluster/sandbox/kube_pod.py)
        from cluster.sandbox.kubernetes import KubernetesSandbox

        return KubernetesSandbox(**options)
    if ":" in kind:  # "package.module:Class": a backend of your own (benchmarks use a stand-in trainer)
        import importlib

        module, _, attr = kind.partition(":")
        return getattr(importlib.import_module(module), attr)(**options)
    raise ValueError(f"unknown sandbox {kind!r}: choose one of {', '.join(BACKENDS)} (or module:Class)")


def resolve_sandbox(kind: str, image: str | None = None) -> str:
    """'auto' becomes docker where the engine and image are usable, else process; others are checked."""
    options = {"image": image} if image else {}
    if kind == "auto":
        try:
            make_sandbox("docker", **options)
            return "docker"
        except (SandboxError, ImportError):
            return "process"
    make_sandbox(kind, **(options if kind == "docker" else {}))  # fail now, with the fix, not mid-run
    return kind


__all__ = ["BACKENDS", "Sandbox", "SandboxError", "make_sandbox", "resolve_sandbox"]
