"""API-server credentials from one source, shared by the operator's REST client and by kopf.

Built on the Kubernetes client's own configuration loaders (``kubernetes_asyncio.config``), so what works
for kubectl users works here: in-cluster ServiceAccount config (the projected token is re-read as the
kubelet rotates it), kubeconfig files (``KUBECONFIG`` lists merged, contexts, client certificates,
``token``/``tokenFile``, username/password) and ``exec`` credential plugins (``aws eks get-token``,
``gke-gcloud-auth-plugin``, ``kubelogin``), whose tokens are renewed before they expire. kopf logs in
through a handler that asks the same :class:`KubeAuth` (handlers/startup.py), so the watch streams and the
REST client always present the same identity.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.config import ConfigException, load_incluster_config, load_kube_config
from kubernetes_asyncio.config.kube_config import KubeConfigLoader

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeAuthError(Exception):
    """No usable credentials: no kubeconfig and not in a cluster, a broken kubeconfig, a failing plugin."""


@dataclass(frozen=True)
class Credentials:
    """One snapshot of what a request to the API server needs."""

    server: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    scheme: str = "Bearer"  # or Basic, from a kubeconfig username/password
    insecure: bool = False
    impersonate: str | None = None
    #: When an exec plugin's token expires (UTC); None when it does not say.
    expires_at: datetime.datetime | None = None

    @property
    def authorization(self) -> str | None:
        return f"{self.scheme} {self.token}" if self.token else None

    @property
    def tls_key(self) -> tuple[str | None, str | None, str | None, bool]:
        """What the TLS context is built from: a change needs a new connection pool."""
        return self.ca_file, self.cert_file, self.key_file, self.insecure


def in_cluster() -> bool:
    """In a pod with a ServiceAccount token and no explicit KUBECONFIG (which wins, as for kubectl)."""
    return (
        "KUBERNETES_SERVICE_HOST" in os.environ
        and (SA_DIR / "token").exists()
        and not os.environ.get("KUBECONFIG")
    )


class KubeAuth:
    """Credentials for one cluster, loaded lazily and kept fresh.

    ``credentials()`` re-runs the loader at most every ``recheck_s`` seconds: that re-reads a kubeconfig
    ``tokenFile`` and runs an exec plugin again once its token is within the loader's skew of expiry (the
    loader caches it until then). ``credentials(fresh=True)``, after the API server answered 401, starts
    over with a new loader, so an exec plugin runs again even when its token claimed to be valid.
    """

    def __init__(
        self,
        kubeconfig: str | os.PathLike[str] | None = None,
        context: str | None = None,
        *,
        recheck_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.context = context
        self.recheck_s = recheck_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._config: Configuration | None = None
        self._loader: KubeConfigLoader | None = None
        self._creds: Credentials | None = None
        self._checked = -math.inf

    def _kubeconfig_path(self) -> str:
        # Read at call time (the library's default is fixed at import); a KUBECONFIG list is merged.
        return str(self.kubeconfig or os.environ.get("KUBECONFIG") or Path.home() / ".kube" / "config")

    async def credentials(self, *, fresh: bool = False) -> Credentials:
        async with self._lock:
            if fresh:
                self._config = self._loader = self._creds = None
            now = self._clock()
            if self._creds is None or now - self._checked >= self.recheck_s:
                self._creds = await self._load()
                self._checked = now
            return self._creds

    async def _load(self) -> Credentials:
        try:
            if self._config is None:
                config = Configuration()
                if self.kubeconfig is None and in_cluster():
                    load_incluster_config(  # type: ignore[no-untyped-call]
                        client_configuration=config,
                        try_refresh_token=True,
                        token_filename=str(SA_DIR / "token"),
                        cert_filename=str(SA_DIR / "ca.crt"),
                    )
                    self._loader = None
                else:
                    self._loader = await load_kube_config(
                        config_file=self._kubeconfig_path(),
                        context=self.context,
                        client_configuration=config,
                        persist_config=False,  # never rewrite the user's kubeconfig
                    )
                self._config = config
            elif self._loader is not None and not self._exec_without_expiry():
                await self._loader.load_and_set(self._config)
            # Runs the in-cluster refresh hook (re-reads the rotated token file every minute).
            header = await self._config.get_api_key_with_prefix("BearerToken")
        except (ConfigException, OSError, ValueError, KeyError, TypeError) as exc:
            self._config = self._loader = None
            raise KubeAuthError(f"Kubernetes credentials: {type(exc).__name__}: {exc}") from exc
        # Token files end in a newline, which the loaders keep (client-go trims it).
        scheme, _, token = (header or "").strip().partition(" ")
        if not token:  # a bare token without a scheme
            scheme, token = "Bearer", scheme
        token = token.strip()
        config = self._config
        return Credentials(
            server=str(config.host).rstrip("/"),
            ca_file=config.ssl_ca_cert or None,
            cert_file=config.cert_file or None,
            key_file=config.key_file or None,
            token=token or None,
            scheme=scheme,
            insecure=not config.verify_ssl,
            expires_at=self._expiry(),
        )

    def _exec_user(self) -> bool:
        user = getattr(self._loader, "_user", None)
        return user is not None and "exec" in user

    def _expiry(self) -> datetime.datetime | None:
        expiry = getattr(self._loader, "exec_plugin_expiry", None) if self._exec_user() else None
        return expiry if isinstance(expiry, datetime.datetime) else None

    def _exec_without_expiry(self) -> bool:
        """A plugin token with no expiry is kept until the API server rejects it (as client-go does),
        instead of running the plugin every `recheck_s`."""
        return self._exec_user() and self._expiry() is None
