"""Logical axis names, rule presets, meshes and the partitioner."""
from plug_jax.partitioning import axes
from plug_jax.partitioning.constraints import activate, with_logical_constraint
from plug_jax.partitioning.rules import PRESETS, get_rules, logical_to_mesh_axes
from plug_jax.partitioning.mesh import MeshError, create_mesh, mesh_shape, parse_mesh_spec, resolve_degrees
from plug_jax.partitioning.partitioner import Partitioner, PartitioningError
