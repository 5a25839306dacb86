"""A small Kubernetes API client over plain HTTP (requests): only what the kubernetes sandbox needs.

In a pod it uses the in-cluster configuration (the service-account token and
CA under /var/run/secrets/kubernetes.io/serviceaccount, KUBERNETES_SERVICE_HOST
and _PORT); elsewhere an explicit server URL and token file (tests, a proxy).
The token file is re-read for every request: projected tokens rotate.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from cluster.execution.spec import KubernetesSettings
from cluster.sandbox.base import SandboxError

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TIMEOUT = (5.0, 30.0)  # connect, read


class KubeApiError(SandboxError):
    """The API answered with an error Status; ``code`` and ``reason`` as it said them."""

    def __init__(self, message: str, code: int, reason: str = "") -> None:
        super().__init__(message)
        self.code, self.reason = code, reason


class KubeClient:
    def __init__(
        self,
        server: str,
        namespace: str,
        *,
        token_file: Path | None = None,
        ca_file: Path | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.namespace = namespace
        self.token_file = token_file
        self.session = session or requests.Session()
        self.session.verify = str(ca_file) if ca_file else True

    @classmethod
    def from_settings(cls, settings: KubernetesSettings, env: dict[str, str] | None = None) -> KubeClient:
        """An explicit api_server, else the in-cluster configuration; a SandboxError says what is missing."""
        env = dict(os.environ if env is None else env)
        token_file, ca_file = settings.token_file, settings.ca_file
        if settings.api_server:
            server = settings.api_server
        else:
            host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
            if not host or not (SA_DIR / "token").is_file() and token_file is None:
                raise SandboxError(
                    "the kubernetes sandbox is not running inside a Kubernetes pod (no KUBERNETES_SERVICE_HOST or "
                    f"no service-account token in {SA_DIR}): deploy the farm with the Helm chart "
                    "(helm/autoresearch-farm), or set FARM_KUBERNETES__API_SERVER and FARM_KUBERNETES__TOKEN_FILE, "
                    "or use --sandbox docker/process"
                )
            server = f"https://{f'[{host}]' if ':' in host else host}:{port}"
            token_file = token_file or SA_DIR / "token"
            ca_file = ca_file or (SA_DIR / "ca.crt" if (SA_DIR / "ca.crt").is_file() else None)
        namespace = settings.namespace
        if not namespace:
            ns_file = SA_DIR / "namespace"
            namespace = ns_file.read_text().strip() if ns_file.is_file() else "default"
        return cls(server, namespace, token_file=token_file, ca_file=ca_file)

    # -- REST ------------------------------------------------------------------------------

    def _path(self, kind: str, name: str = "", sub: str = "") -> str:
        path = f"/api/v1/namespaces/{quote(self.namespace)}/{kind}"
        return path + (f"/{quote(name)}" if name else "") + (f"/{sub}" if sub else "")

    def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None, raw: bool = False):
        headers = {"Accept": "application/json"}
        if self.token_file:
            try:
                headers["Authorization"] = "Bearer " + Path(self.token_file).read_text().strip()
            except OSError as exc:
                raise SandboxError(f"cannot read the Kubernetes token {self.token_file}: {exc}") from exc
        try:
            response = self.session.request(
                method, self.server + path, json=json, params=params, headers=headers, timeout=TIMEOUT
            )
        except requests.RequestException as exc:
            raise SandboxError(
                f"cannot reach the Kubernetes API at {self.server}: {exc.__class__.__name__}: {exc}"
            ) from exc
        if response.status_code >= 400:
            raise self._error(method, path, response)
        if raw:
            return response.text
        return response.json() if response.content else {}

    def _error(self, method: str, path: str, response: requests.Response) -> KubeApiError:
        try:
            status = response.json()
        except ValueError:
            status = {}
        message = status.get("message") or response.text[:300] or response.reason
        reason, code = status.get("reason", ""), response.status_code
        what = f"{method} {path}"
        if code == 401:
            return KubeApiError(
                f"the Kubernetes API rejected the farm's credentials (401 Unauthorized) at {what}: {message}; "
                "check the service-account token (FARM_KUBERNETES__TOKEN_FILE)",
                code,
                reason,
            )
        if code == 403:
            return KubeApiError(
                f"the farm's service account may not do this (403 Forbidden) at {what}: {message}; its Role in the "
                f"experiments' namespace ({self.namespace}) needs pods (create, get, list, delete), pods/log (get) "
                "and configmaps (create, list, delete): the Helm chart's Role grants exactly these",
                code,
                reason,
            )
        return KubeApiError(f"the Kubernetes API refused {what} ({code} {reason}): {message}", code, reason)

    # -- objects ---------------------------------------------------------------------------

    def create(self, kind: str, manifest: dict) -> dict:
        return self.request("POST", self._path(kind), json=manifest)

    def get(self, kind: str, name: str) -> dict:
        return self.request("GET", self._path(kind, name))

    def delete(self, kind: str, name: str, grace_seconds: int = 0) -> bool:
        """True when it was there; a missing object is not an error."""
        try:
            self.request(
                "DELETE",
                self._path(kind, name),
                json={"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": grace_seconds,
                      "propagationPolicy": "Background"},
            )  # fmt: skip
            return True
        except KubeApiError as exc:
            if exc.code == 404:
                return False
            raise

    def list(self, kind: str, selector: str) -> list[dict]:
        return self.request("GET", self._path(kind), params={"labelSelector": selector}).get("items") or []

    def log(self, pod: str, container: str, *, tail_lines: int, limit_bytes: int) -> str:
        params = {"container": container, "tailLines": tail_lines, "limitBytes": limit_bytes}
        return self.request("GET", self._path("pods", pod, "log"), params=params, raw=True)
