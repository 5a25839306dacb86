"""The policies, side by side, and the factory that picks one from the settings.

Each module here but ``core`` and ``judging`` is one policy: its settings model (the core settings plus its own
knobs) and its class, named in the module's ``POLICIES`` (policy name -> class). They are found by listing this
package, so a new policy is one new file; farm.yaml's ``tournament:`` section (``PolicySettings``) then accepts its
name and its knobs, and ``make_policy`` builds it from them.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from pydantic import create_model, field_validator

from cluster.decisions.policies.core import CoreSettings, PolicyClass
from cluster.decisions.policy import Policy, Strategies

SHARED_MODULES = ("core", "judging")  # what the policies call; not policies themselves


def _discover() -> dict[str, PolicyClass]:
    """Policy name -> class, from every policy module in this package (``POLICIES``), in module order."""
    found: dict[str, PolicyClass] = {}
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if module not in SHARED_MODULES:
            found.update(getattr(importlib.import_module(f"{__name__}.{module}"), "POLICIES", {}))
    return found


REGISTRY: dict[str, PolicyClass] = _discover()


def _check_policy(cls: type, value: str) -> str:
    if value not in REGISTRY:
        raise ValueError(f"unknown policy {value!r}: one of {', '.join(sorted(REGISTRY))}")
    return value


def _flat_settings() -> type[CoreSettings]:
    """Every policy's knobs in one model: what farm.yaml's ``tournament:`` section and FARM_TOURNAMENT__* set. Each
    policy model's own validators (a policy's defaults, its checks) run on it as well."""
    models = list(dict.fromkeys(cls.settings_model for cls in REGISTRY.values()))
    bases = tuple(m for m in models if not any(m is not o and issubclass(o, m) for o in models))
    policy: Any = (str, CoreSettings.model_fields["policy"])
    return create_model("PolicySettings", __base__=bases, __module__=__name__, policy=policy,
                        __validators__={"_known_policy": field_validator("policy")(_check_policy)})


PolicySettings = _flat_settings()


def make_policy(settings: CoreSettings, strategies: Strategies | None = None) -> Policy:
    """The policy ``settings.policy`` names, built from its own settings model (the fields it knows of these)."""
    cls = REGISTRY[settings.policy]
    model = cls.settings_model
    own = model.model_validate(settings.model_dump(include=set(model.model_fields)))
    return cls(own, strategies or Strategies())
