"""Training: TrainState, train/eval steps, the loop, checkpointing (the only orbax importer).

Submodules are imported explicitly (``from plug_jax.trainer import checkpointing``) so that
importing this package stays cheap.
"""
