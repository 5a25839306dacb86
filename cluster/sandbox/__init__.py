"""Sandboxes: every experiment in its own isolation, killed at its wall limit, nothing left behind."""

from __future__ import annotations

from cluster.execution.spec import ExperimentSpec, KubernetesSettings
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
    if kind == "kubernetes":  # options: settings=KubernetesSettings (farm.yaml's kubernetes:)
        from cluster.sandbox.kubernetes import KubernetesSandbox

        return KubernetesSandbox(**options)
    if ":" in kind:  # "package.module:Class": a backend of your own (benchmarks use a stand-in trainer)
        import importlib

        module, _, attr = kind.partition(":")
        return getattr(importlib.import_module(module), attr)(**options)
    raise ValueError(f"unknown sandbox {kind!r}: choose one of {', '.join(BACKENDS)} (or module:Class)")


def resolve_sandbox(kind: str, image: str | None = None, kubernetes: KubernetesSettings | None = None) -> str:
    """'auto' becomes docker where the engine and image are usable, else process; others are checked."""
    options = {"image": image} if image else {}
    if kind == "auto":
        try:
            make_sandbox("docker", **options)
            return "docker"
        except (SandboxError, ImportError):
            return "process"
    extra = options if kind == "docker" else {"settings": kubernetes} if kind == "kubernetes" else {}
    make_sandbox(kind, **extra)  # fail now, with the fix, not mid-run
    return kind


def sandbox_for(spec: ExperimentSpec, kind: str) -> Sandbox:
    """The backend that runs ``spec``, built with the settings the spec carries (a Ray task's only input)."""
    return make_sandbox(kind, settings=spec.kubernetes) if kind == "kubernetes" else make_sandbox(kind)


__all__ = ["BACKENDS", "Sandbox", "SandboxError", "make_sandbox", "resolve_sandbox", "sandbox_for"]
