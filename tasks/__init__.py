"""seqio Task and Mixture registrations, one module per family.

Installed as ``plug_jax.tasks`` (setup.py maps this folder there), so the name cannot
collide with another installed ``tasks`` package. Importing it imports every module of this
folder, which registers every task; registration is idempotent. A new family adds its own
module here and nothing else (modules that need another's tasks import it themselves).
"""
import importlib
import os

__all__ = sorted(f[:-3] for f in os.listdir(os.path.dirname(os.path.abspath(__file__)))
                 if f.endswith(".py") and not f.startswith("_"))
for _name in __all__:
    importlib.import_module(f"{__name__}.{_name}")
