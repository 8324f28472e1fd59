"""Mesh degrees: -1 fill, errors, spec strings, ICI x DCN meshes on fake devices."""
import jax
import numpy as np
import pytest

from plug_jax.partitioning import MeshError, create_mesh, mesh_shape, parse_mesh_spec, resolve_degrees
from plug_jax.partitioning.axes import MESH_AXES


def test_eight_fake_devices():
    assert len(jax.devices()) == 8


@pytest.mark.parametrize("degrees, expected", [
    ((1, -1, 1, 1), (1, 8, 1, 1)),
    ((2, -1, 1, 2), (2, 2, 1, 2)),
    ((-1, 1, 1, 4), (2, 1, 1, 4)),
    ((2, 2, 1, 2), (2, 2, 1, 2)),
    ({"model": 4, "data": -1}, (2, 1, 1, 4)),
    ({"fsdp": 8}, (1, 8, 1, 1)),
    ("data:2,fsdp:-1,model:2", (2, 2, 1, 2)),
])
def test_resolve_degrees(degrees, expected):
    assert resolve_degrees(degrees, 8) == expected


@pytest.mark.parametrize("degrees, fragment", [
    ((1, -1, -1, 1), "more than one -1"),
    ((0, -1, 1, 1), "not positive"),
    ((-2, 1, 1, 4), "not positive"),
    ((3, -1, 1, 1), "does not divide the 8 devices"),
    ((2, 2, 1, 1), "multiply to 4 but there are 8 devices"),
    ((2, 2, 1), "exactly 4"),
    ({"tensor": 2}, "unknown mesh axes"),
])
def test_resolve_degrees_errors(degrees, fragment):
    with pytest.raises(MeshError) as info:
        resolve_degrees(degrees, 8)
    msg = str(info.value)
    assert fragment in msg
    assert "\n" not in msg
    assert "fix" in msg or "exactly" in msg or "unknown" in msg
    assert isinstance(info.value, ValueError)


def test_error_names_degrees_and_count():
    with pytest.raises(MeshError) as info:
        resolve_degrees((3, -1, 1, 1), 8)
    msg = str(info.value)
    assert "data=3" in msg and "fsdp=-1" in msg and "8 devices" in msg and "fix:" in msg


def test_parse_mesh_spec():
    assert parse_mesh_spec("data:2,fsdp:-1,model:4") == (2, -1, 1, 4)
    assert parse_mesh_spec(" expert : 2 , model:4 ") == (1, 1, 2, 4)
    assert parse_mesh_spec("") == (1, 1, 1, 1)


@pytest.mark.parametrize("spec, token", [
    ("data:2,tensor:4", "'tensor:4'"),
    ("data=2", "'data=2'"),
    ("data:two", "'data:two'"),
    ("data:2,data:4", "'data:4'"),
    ("model:0", "'model:0'"),
])
def test_parse_mesh_spec_errors(spec, token):
    with pytest.raises(MeshError) as info:
        parse_mesh_spec(spec)
    assert token in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("ici, shape", [
    ((1, -1, 1, 1), (1, 8, 1, 1)),
    ((8, 1, 1, 1), (8, 1, 1, 1)),
    ((1, 1, 1, 8), (1, 1, 1, 8)),
    ((1, 2, 1, -1), (1, 2, 1, 4)),
    ((2, 2, 1, 2), (2, 2, 1, 2)),
    ("data:2,fsdp:-1", (2, 4, 1, 1)),
])
def test_create_mesh(ici, shape):
    mesh = create_mesh(ici)
    assert mesh.axis_names == MESH_AXES
    assert mesh_shape(mesh) == shape
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())


def test_create_mesh_default_is_full_fsdp():
    assert mesh_shape(create_mesh()) == (1, 8, 1, 1)


def test_create_mesh_hybrid_dcn():
    # Fake CPU devices have no slices; mesh_utils refuses and the plain reshape is used.
    mesh = create_mesh(ici=(1, 2, 1, 2), dcn=(2, 1, 1, 1))
    assert mesh_shape(mesh) == (2, 2, 1, 2)
    ids = np.vectorize(lambda d: d.id)(mesh.devices)
    # DCN is the outer part of 'data': each half of the data axis is one "slice"
    # holding a contiguous block of 4 devices.
    assert sorted(ids[0].ravel().tolist()) == [0, 1, 2, 3]
    assert sorted(ids[1].ravel().tolist()) == [4, 5, 6, 7]


def test_create_mesh_dcn_ici_interleave():
    mesh = create_mesh(ici=(2, 1, 1, 2), dcn=(1, 1, 1, 2))
    assert mesh_shape(mesh) == (2, 1, 1, 4)
    ids = np.vectorize(lambda d: d.id)(mesh.devices)[:, 0, 0, :]
    # Along 'model' the DCN part is outer: the first two columns are slice 0.
    assert sorted(ids[:, :2].ravel().tolist()) == [0, 1, 2, 3]


def test_create_mesh_subset_of_devices():
    mesh = create_mesh((1, 1, 1, -1), devices=jax.devices()[:4])
    assert mesh_shape(mesh) == (1, 1, 1, 4)


def test_create_mesh_errors():
    with pytest.raises(MeshError, match="multiply to 4 but there are 8 devices"):
        create_mesh((2, 2, 1, 1))
    with pytest.raises(MeshError, match="3 slices"):
        create_mesh((1, -1, 1, 1), dcn=(3, 1, 1, 1))
    with pytest.raises(MeshError, match="more than one -1"):
        create_mesh((1, -1, 1, -1))
