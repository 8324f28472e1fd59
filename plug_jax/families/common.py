"""What every family config shares: MoE fields, dtypes, ``replace`` and basic checks."""
from __future__ import annotations

import dataclasses

from plug_jax.layers.config_base import ConfigBase
from plug_jax.layers.moe.config import MoeFields


@dataclasses.dataclass(frozen=True)
class FamilyConfig(MoeFields, ConfigBase):
    """Base of the family config dataclasses (which define ``dtype``, ``param_dtype``,
    ``activation``, ``remat_policy`` and the sizes); dtypes, ``replace`` and
    ``check_basics`` come from :class:`plug_jax.layers.config_base.ConfigBase`."""
