"""plug_jax.distributed: cluster detection from fake environments, and one-line errors."""
import os
import socket
import subprocess
import sys

import pytest

from plug_jax import distributed
from plug_jax.distributed import ClusterSpec, DistributedError, detect, first_slurm_host

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_nothing_means_one_process():
    spec = detect({}, tpu_vm=False)
    assert spec == ClusterSpec() and not spec.multi_process
    # One SLURM / MPI task is one process too.
    assert detect({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, tpu_vm=False) == ClusterSpec()
    assert detect({"OMPI_COMM_WORLD_SIZE": "1", "OMPI_COMM_WORLD_RANK": "0"},
                  tpu_vm=False) == ClusterSpec()


def test_explicit_flags():
    spec = detect({}, coordinator_address="10.0.0.2:1234", num_processes=4, process_id=3,
                  local_device_ids="0,1", tpu_vm=False)
    assert spec == ClusterSpec("flags", "10.0.0.2:1234", 4, 3, (0, 1))
    assert spec.multi_process
    # Flags win over a cluster's environment, value by value.
    env = {"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_JOB_NODELIST": "n[1-2]",
           "SLURM_JOB_ID": "77", "SLURM_JOB_NUM_NODES": "2"}
    spec = detect(env, coordinator_address="h:1")
    assert (spec.source, spec.coordinator_address, spec.num_processes, spec.process_id) == (
        "flags", "h:1", 8, 5)
    # JAX_COORDINATOR_ADDRESS completes the flags.
    spec = detect({"JAX_COORDINATOR_ADDRESS": "c:9"}, num_processes=2, process_id=1)
    assert spec.coordinator_address == "c:9"


@pytest.mark.parametrize("nodes,host", [
    ("node001", "node001"), ("node001,host2", "node001"), ("node[001-015],host2", "node001"),
    ("node[007,009-015]", "node007"), ("gpu-a[3]", "gpu-a3"), ("[12-13]", "12")])
def test_first_slurm_host(nodes, host):
    assert first_slurm_host(nodes) == host


def test_slurm():
    env = {"SLURM_JOB_ID": "4100", "SLURM_NTASKS": "4", "SLURM_PROCID": "2",
           "SLURM_JOB_NUM_NODES": "4", "SLURM_LOCALID": "0",
           "SLURM_STEP_NODELIST": "gpu[010-013]", "SLURM_JOB_NODELIST": "other"}
    spec = detect(env, tpu_vm=False)
    port = 4100 % 4096 + 65535 - 4096 + 1
    assert spec == ClusterSpec("slurm", f"gpu010:{port}", 4, 2, None)
    # JAX_COORDINATOR_PORT picks the port; several tasks per node get one GPU each.
    env.update(JAX_COORDINATOR_PORT="5555", SLURM_JOB_NUM_NODES="2", SLURM_LOCALID="1")
    spec = detect(env, tpu_vm=False)
    assert spec.coordinator_address == "gpu010:5555" and spec.local_device_ids == (1,)


def test_open_mpi():
    env = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1",
           "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "1",
           "JAX_COORDINATOR_ADDRESS": "head:7000"}
    assert detect(env, tpu_vm=False) == ClusterSpec("ompi", "head:7000", 2, 1, None)
    del env["JAX_COORDINATOR_ADDRESS"]
    env["OMPI_MCA_orte_hnp_uri"] = "1531576320.0;tcp://10.96.0.1,10.148.0.1:34911"
    assert detect(env, tpu_vm=False).coordinator_address == f"10.96.0.1:{distributed.DEFAULT_PORT}"
    del env["OMPI_MCA_orte_hnp_uri"]
    with pytest.raises(DistributedError, match="JAX_COORDINATOR_ADDRESS"):
        detect(env, tpu_vm=False)


def test_env_and_indexed_job():
    env = {"JAX_COORDINATOR_ADDRESS": "js-w-0-0.js:8476", "JAX_NUM_PROCESSES": "4",
           "JOB_COMPLETION_INDEX": "3"}
    assert detect(env, tpu_vm=False) == ClusterSpec("env", "js-w-0-0.js:8476", 4, 3, None)
    env["JAX_PROCESS_ID"] = "2"
    assert detect(env, tpu_vm=False).process_id == 2


def test_tpu_vm_and_modes():
    spec = detect({}, tpu_vm=True)
    assert spec.source == "tpu" and spec.multi_process
    assert detect({}, mode="tpu", tpu_vm=False).source == "tpu"
    env = {"SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_NODELIST": "a"}
    assert detect(env, mode="off") == ClusterSpec()
    with pytest.raises(DistributedError, match="contradicts"):
        detect({}, mode="off", num_processes=2)


@pytest.mark.parametrize("kwargs,match", [
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), "out of range"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=-1), "out of range"),
    (dict(coordinator_address="h:1", num_processes=2), "no process id"),
    (dict(num_processes=2, process_id=0), "no coordinator address"),
    (dict(coordinator_address="nohost", num_processes=2, process_id=0), "HOST:PORT"),
    (dict(coordinator_address="h:1", num_processes=0, process_id=0), ">= 1"),
    (dict(num_processes=1, process_id=1), "out of range"),
    (dict(local_device_ids="a,b"), "comma-separated"),
])
def test_bad_settings_are_one_line(kwargs, match):
    with pytest.raises(DistributedError, match=match) as e:
        detect({}, tpu_vm=False, **kwargs)
    assert "\n" not in str(e.value) and "fix" in str(e.value)


def test_bad_environment_value():
    with pytest.raises(DistributedError, match="SLURM_NTASKS"):
        detect({"SLURM_NTASKS": "many", "SLURM_PROCID": "0"}, tpu_vm=False)


def test_single_process_initialize_is_a_no_op():
    spec = distributed.initialize(ClusterSpec())
    assert spec == ClusterSpec()
    import jax
    assert not jax.distributed.is_initialized()


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_coordinator_is_one_error_line(tmp_path):
    env = dict(os.environ)
    env["XLA_FLAGS"] = os.environ["PLUG_JAX_TEST_XLA_FLAGS"]
    env["JAX_PLATFORMS"] = "cpu"
    addr = f"127.0.0.1:{_free_port()}"  # nobody listens there
    proc = subprocess.run(
        [sys.executable, "-m", "plug_jax.main", "--mode=train",
         "--gin_file=experiments/gpt3/shop_tiny.gin", f"--gin.MODEL_DIR='{tmp_path}'",
         f"--coordinator_address={addr}", "--num_processes=2", "--process_id=1",
         "--distributed_timeout=2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("plug_jax: error:")]
    assert len(lines) == 1 and addr in lines[0] and "fix:" in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not os.listdir(tmp_path)
