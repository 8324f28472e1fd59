"""Multi-process start-up: ``jax.distributed`` from flags or the cluster's environment.

One call, :func:`initialize`, made by ``plug_jax.main`` before anything touches a JAX
device. Where the settings come from, first match wins per value:

1. explicit arguments (``--coordinator_address``, ``--num_processes``, ``--process_id``,
   ``--local_device_ids``) -- also the way to run several processes on one machine
   (``launch/local_multiprocess.sh``);
2. ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` (the process
   id falls back to ``JOB_COMPLETION_INDEX``, which a Kubernetes indexed Job sets);
3. SLURM (``SLURM_NTASKS``, ``SLURM_PROCID``, the first host of ``SLURM_STEP_NODELIST`` /
   ``SLURM_JOB_NODELIST`` as coordinator, port ``JAX_COORDINATOR_PORT`` or one derived
   from ``SLURM_JOB_ID``);
4. Open MPI (``OMPI_COMM_WORLD_SIZE`` / ``OMPI_COMM_WORLD_RANK``, coordinator from
   ``JAX_COORDINATOR_ADDRESS`` or the ``mpirun`` head node in ``OMPI_MCA_orte_hnp_uri``);
5. a Cloud TPU VM (libtpu installed and TPU chips present): ``jax.distributed.initialize()``
   with no arguments, so JAX asks the TPU metadata server;
6. none of these: one process, nothing is initialised.

:func:`detect` is pure Python (it reads a mapping you pass, never the network), so the
detection is unit-tested from fake environments.

Failures give one line (:class:`DistributedError`): a process id out of range, a
coordinator that does not answer within ``timeout`` seconds, processes that never all
join, a coordinator port already taken. Once running, a process that dies is noticed by
the others through the coordination service: they abort (exit status 134, the log says
"Terminating process because the JAX distributed service detected fatal errors") within
about ``heartbeat_timeout`` seconds, or at once when process 0 (the coordinator) dies.
See docs/launch.md.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import socket
import sys
import threading
import time
from typing import Mapping, Sequence

DEFAULT_TIMEOUT = 300  # seconds for every process to join
DEFAULT_HEARTBEAT_TIMEOUT = 60  # seconds without heartbeats before a peer counts as dead
DEFAULT_PORT = 8476  # coordinator port where the cluster gives none and no job id exists
SOURCES = ("single", "flags", "env", "slurm", "ompi", "tpu")
MODES = ("auto", "off", "tpu")


class DistributedError(RuntimeError):
    """A multi-process start-up problem (one-line message naming the fix)."""


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """What :func:`detect` found: how this process joins (or does not join) a cluster.

    ``source`` is one of :data:`SOURCES`. For ``'tpu'`` the other fields may be ``None``
    (JAX fills them from the TPU metadata server). ``local_device_ids`` restricts the
    accelerators this process uses (one GPU per process); ``None`` means all.
    """

    source: str = "single"
    coordinator_address: str | None = None
    num_processes: int = 1
    process_id: int = 0
    local_device_ids: tuple[int, ...] | None = None

    @property
    def multi_process(self) -> bool:
        return self.source == "tpu" or self.num_processes > 1


# ------------------------------------------------------------------ detection
def _int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or str(value).strip() == "":
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        raise DistributedError(f"environment variable {name}={value!r} is not an integer; "
                               f"fix: set it to a whole number or unset it") from None


def first_slurm_host(node_list: str) -> str:
    """The first host name of a SLURM node list (``'gpu[003-005,9],cpu1'`` -> ``'gpu003'``)."""
    node_list = node_list.strip()
    m = re.match(r"([^,\[]*)(\[([^\]]*)\])?", node_list)
    if not m or not (m.group(1) or m.group(3)):
        raise DistributedError(f"cannot read a host from the SLURM node list {node_list!r}; "
                               f"fix: pass --coordinator_address=HOST:PORT")
    prefix, ranges = m.group(1), m.group(3)
    if ranges is None:
        return prefix
    first = re.split(r"[,-]", ranges, maxsplit=1)[0]
    return prefix + first


def _ompi_head(uri: str) -> str | None:
    m = re.search(r"tcp://([^,:;/]+)|tcp6://\[([^,\]]+)", uri)
    return next((g for g in m.groups() if g), None) if m else None


def _with_port(host: str, port: int | str) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _slurm_port(env: Mapping[str, str]) -> int:
    job = _int(env, "SLURM_JOB_ID")
    # Like JAX: a port in the top 4096 of the ephemeral range, fixed per job.
    return DEFAULT_PORT if job is None else job % 4096 + 65535 - 4096 + 1


def _tpu_vm_present() -> bool:
    """libtpu installed and a TPU chip device file present (no network access)."""
    if importlib.util.find_spec("libtpu") is None:
        return False
    return any(os.path.exists(p) for p in ("/dev/accel0", "/dev/vfio/0"))


def detect(env: Mapping[str, str] | None = None, *, coordinator_address: str | None = None,
           num_processes: int | None = None, process_id: int | None = None,
           local_device_ids: Sequence[int] | str | None = None, mode: str = "auto",
           tpu_vm: bool | None = None) -> ClusterSpec:
    """How this process should start, from arguments and ``env`` (default ``os.environ``).

    ``mode``: ``'auto'`` (detect), ``'off'`` (always one process; explicit arguments are
    an error), ``'tpu'`` (leave everything to JAX's Cloud TPU detection).
    ``tpu_vm``: whether this is a Cloud TPU VM (``None``: look for libtpu and a chip).
    Nothing is initialised and no network is used.
    """
    env = os.environ if env is None else env
    if mode not in MODES:
        raise DistributedError(f"--distributed={mode!r} is not one of {list(MODES)}")
    if isinstance(local_device_ids, str):
        try:
            local_device_ids = [int(x) for x in local_device_ids.split(",") if x.strip()]
        except ValueError:
            raise DistributedError(f"--local_device_ids={local_device_ids!r} is not a comma-"
                                   f"separated list of integers; fix: e.g. "
                                   f"--local_device_ids=0,1") from None
    ids = tuple(int(i) for i in local_device_ids) if local_device_ids else None
    explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
    if mode == "off":
        if explicit:
            raise DistributedError("--distributed=off contradicts --coordinator_address / "
                                   "--num_processes / --process_id; fix: drop one of them")
        return ClusterSpec()
    if mode == "tpu":
        return ClusterSpec("tpu", coordinator_address, num_processes or 1, process_id or 0,
                           ids)

    source, addr, count, pid, found_ids = "single", None, None, None, None
    env_count = _int(env, "JAX_NUM_PROCESSES")
    env_pid = _int(env, "JAX_PROCESS_ID")
    if env_pid is None:
        env_pid = _int(env, "JOB_COMPLETION_INDEX") if env_count is not None else None
    if env_count is not None or env.get("JAX_COORDINATOR_ADDRESS") and env_pid is not None:
        source, addr, count, pid = "env", env.get("JAX_COORDINATOR_ADDRESS"), env_count, env_pid
    elif _int(env, "SLURM_NTASKS") is not None and _int(env, "SLURM_PROCID") is not None:
        count, pid = _int(env, "SLURM_NTASKS"), _int(env, "SLURM_PROCID")
        if count > 1:
            source = "slurm"
            nodes = (env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
                     or env.get("SLURM_NODELIST"))
            port = env.get("JAX_COORDINATOR_PORT") or _slurm_port(env)
            addr = env.get("JAX_COORDINATOR_ADDRESS") or (
                _with_port(first_slurm_host(nodes), port) if nodes else None)
            num_nodes = (_int(env, "SLURM_STEP_NUM_NODES") or _int(env, "SLURM_JOB_NUM_NODES")
                         or _int(env, "SLURM_NNODES") or 1)
            local = _int(env, "SLURM_LOCALID")
            if count > num_nodes and local is not None:  # several tasks per node: 1 GPU each
                found_ids = (local,)
    elif _int(env, "OMPI_COMM_WORLD_SIZE") is not None:
        count, pid = _int(env, "OMPI_COMM_WORLD_SIZE"), _int(env, "OMPI_COMM_WORLD_RANK")
        if count > 1:
            source = "ompi"
            addr = env.get("JAX_COORDINATOR_ADDRESS")
            if addr is None and env.get("OMPI_MCA_orte_hnp_uri"):
                head = _ompi_head(env["OMPI_MCA_orte_hnp_uri"])
                port = env.get("JAX_COORDINATOR_PORT") or DEFAULT_PORT
                addr = _with_port(head, port) if head else None
            local = _int(env, "OMPI_COMM_WORLD_LOCAL_RANK")
            local_size = _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE")
            if local is not None and local_size is not None and local_size > 1:
                found_ids = (local,)
    elif not explicit and (_tpu_vm_present() if tpu_vm is None else tpu_vm):
        return ClusterSpec("tpu", local_device_ids=ids)

    if explicit:
        source = "flags"
    addr = coordinator_address or addr or env.get("JAX_COORDINATOR_ADDRESS")
    count = num_processes if num_processes is not None else count
    pid = process_id if process_id is not None else pid
    count = 1 if count is None else int(count)
    if count < 1:
        raise DistributedError(f"num_processes={count} must be >= 1; fix: pass the number "
                               f"of processes (--num_processes=N)")
    if count == 1:
        if pid not in (None, 0):
            raise DistributedError(f"process_id={pid} is out of range for 1 process; fix: "
                                   f"set --num_processes to the number of processes")
        return ClusterSpec()
    if pid is None:
        raise DistributedError(f"{count} processes but no process id ({source}); fix: pass "
                               f"--process_id=0..{count - 1} (a different one per process)")
    if not 0 <= pid < count:
        raise DistributedError(f"process_id={pid} is out of range for {count} processes; fix: "
                               f"use 0..{count - 1}, a different one per process")
    if not addr:
        hint = {"ompi": " (e.g. mpirun -x JAX_COORDINATOR_ADDRESS=$(hostname):8476)"}
        raise DistributedError(f"{count} processes but no coordinator address ({source}); fix: "
                               f"pass --coordinator_address=HOST:PORT of process 0 or set "
                               f"JAX_COORDINATOR_ADDRESS{hint.get(source, '')}")
    _split_address(addr)
    return ClusterSpec(source, addr, count, int(pid), ids or found_ids)


def _split_address(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"coordinator address {addr!r} is not HOST:PORT; fix: e.g. "
                               f"--coordinator_address=10.0.0.2:8476")
    return host.strip("[]"), int(port)


# ------------------------------------------------------------- initialisation
_STATE: dict = {}


def _wait_for_coordinator(addr: str, deadline: float) -> None:
    """Polls a TCP connection to process 0's coordinator until ``deadline``."""
    host, port = _split_address(addr)
    while True:
        try:
            with socket.create_connection((host, port), timeout=2):
                return
        except OSError as e:
            last = e
        if time.time() >= deadline:
            raise DistributedError(
                f"coordinator {addr} did not answer within the timeout ({last.strerror or last}); "
                f"fix: start process 0 with the same --coordinator_address, check that this "
                f"host reaches {host} on port {port} (firewall), or raise "
                f"--distributed_timeout")
        time.sleep(0.5)


def _join_watchdog(spec: ClusterSpec, timeout: float) -> threading.Timer:
    """Exits with one line if ``jax.distributed.initialize`` is still waiting at ``timeout``.

    (JAX 0.10 aborts with a C++ stack trace when its own initialisation timeout runs out;
    ours fires first.)
    """
    def fire():
        print(f"plug_jax: error: process {spec.process_id}: not all {spec.num_processes} "
              f"processes joined coordinator {spec.coordinator_address} within {timeout:.0f}s; "
              f"fix: start every process with the same --coordinator_address and "
              f"--num_processes and a distinct --process_id 0..{spec.num_processes - 1} (or "
              f"raise --distributed_timeout)", file=sys.stderr, flush=True)
        os._exit(2)

    timer = threading.Timer(max(timeout, 1.0), fire)
    timer.daemon = True
    timer.start()
    return timer


def initialize(spec: ClusterSpec | None = None, *, timeout: float = DEFAULT_TIMEOUT,
               heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT,
               num_cpu_devices: int | None = None, cpu_collectives: str = "gloo",
               **detect_kwargs) -> ClusterSpec:
    """Joins the cluster described by ``spec`` (default: :func:`detect` ``(**detect_kwargs)``).

    Must run before JAX creates its backends (before any ``jax.devices()``). A single
    process (``spec.multi_process`` false) initialises nothing. Returns the spec.

    Args:
      timeout: seconds for every process to reach the coordinator and join.
      heartbeat_timeout: seconds without heartbeats after which the coordination service
        declares a process dead and every other process aborts.
      num_cpu_devices: fake CPU devices of this process (``jax_num_cpu_devices``).
      cpu_collectives: cross-process collectives of the CPU backend (``'gloo'`` or
        ``'mpi'``).
    """
    import jax
    spec = detect(**detect_kwargs) if spec is None else spec
    if num_cpu_devices:
        jax.config.update("jax_num_cpu_devices", int(num_cpu_devices))
    if not spec.multi_process:
        return spec
    if jax.distributed.is_initialized():
        return _STATE.setdefault("spec", spec)
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    deadline = time.time() + float(timeout)
    kwargs = dict(heartbeat_timeout_seconds=int(heartbeat_timeout),
                  # JAX's own limit comes later than ours, so the one-line error wins.
                  initialization_timeout=int(timeout) + 60)
    if spec.source == "tpu":
        args = {k: v for k, v in (("coordinator_address", spec.coordinator_address),
                                  ("local_device_ids", spec.local_device_ids)) if v is not None}
        if spec.num_processes > 1:
            args.update(num_processes=spec.num_processes, process_id=spec.process_id)
        watchdog = None
    else:
        if spec.process_id != 0:
            _wait_for_coordinator(spec.coordinator_address, deadline)
        args = dict(coordinator_address=spec.coordinator_address,
                    num_processes=spec.num_processes, process_id=spec.process_id,
                    local_device_ids=list(spec.local_device_ids) if spec.local_device_ids
                    else None, cluster_detection_method="deactivate")
        watchdog = _join_watchdog(spec, deadline - time.time())
    try:
        jax.distributed.initialize(**args, **kwargs)
    except (RuntimeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        where = spec.coordinator_address or "the TPU coordinator"
        fix = (f"fix: free port {where.rpartition(':')[2]} or choose another "
               f"--coordinator_address port" if "RPC server" in first or "port" in first
               else "fix: check the --coordinator_address / --num_processes / --process_id")
        raise DistributedError(f"jax.distributed.initialize({where}) failed: {first}; "
                               f"{fix}") from None
    finally:
        if watchdog is not None:
            watchdog.cancel()
    if spec.source == "tpu":
        spec = dataclasses.replace(spec, num_processes=jax.process_count(),
                                   process_id=jax.process_index(),
                                   coordinator_address=jax.distributed.global_state
                                   .coordinator_address)
    _STATE["spec"] = spec
    return spec


def summary(spec: ClusterSpec | None = None) -> str:
    """``process 1/2 on host X: 4 local devices (cpu), 8 global, coordinator H:P``."""
    import jax
    spec = spec or _STATE.get("spec") or ClusterSpec()
    local = jax.local_devices()
    kinds = ",".join(sorted({d.platform for d in local}))
    return (f"process {jax.process_index()}/{jax.process_count()} on host "
            f"{socket.gethostname()}: {len(local)} local devices ({kinds}), "
            f"{jax.device_count()} global, coordinator {spec.coordinator_address} "
            f"[{spec.source}]")


def print_summary(spec: ClusterSpec | None = None) -> None:
    """Every process prints its :func:`summary` line (multi-process runs only)."""
    spec = spec or _STATE.get("spec")
    if spec is not None and spec.multi_process:
        print(summary(spec), flush=True)


def exit_now_if_multi_process(code: int, print_traceback: bool = False) -> int:
    """Ends a failing process of a multi-process run at once; returns ``code`` otherwise.

    A normal interpreter exit waits in JAX's shutdown barrier for the other processes,
    which may be blocked in a collective with this one: that would only end after the
    barrier's timeout. ``os._exit`` instead drops this process from the cluster, so the
    others abort within ``--heartbeat_timeout`` seconds (at once if this is process 0).
    """
    spec = _STATE.get("spec")
    if spec is None or not spec.multi_process:
        return code
    if print_traceback:
        import traceback
        traceback.print_exc()
    try:
        import jax
        who = f"process {jax.process_index()}/{jax.process_count()}"
    except Exception:  # noqa: BLE001
        who = f"process {spec.process_id}/{spec.num_processes}"
    print(f"plug_jax: {who} exits with status {code} without waiting for the other "
          f"processes (they stop within the heartbeat timeout)", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)


def add_flags(parser) -> None:
    """The distributed flags of ``plug-train`` / ``plug-eval`` / ``plug-infer``."""
    g = parser.add_argument_group("multi-process (docs/launch.md)")
    g.add_argument("--distributed", choices=MODES, default="auto",
                   help="auto: flags, then JAX_* / SLURM / Open MPI env, then Cloud TPU VM; "
                        "off: one process; tpu: JAX's Cloud TPU detection")
    g.add_argument("--coordinator_address", default=None,
                   help="HOST:PORT of process 0's coordinator (every process passes the same)")
    g.add_argument("--num_processes", type=int, default=None, help="number of processes")
    g.add_argument("--process_id", type=int, default=None, help="this process, 0..N-1")
    g.add_argument("--local_device_ids", default=None,
                   help="comma-separated accelerator ids this process uses (default all)")
    g.add_argument("--distributed_timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="seconds for all processes to join (default %(default)s)")
    g.add_argument("--heartbeat_timeout", type=int, default=DEFAULT_HEARTBEAT_TIMEOUT,
                   help="seconds after which a silent process counts as dead and the others "
                        "abort (default %(default)s)")
    g.add_argument("--num_cpu_devices", type=int, default=None,
                   help="fake CPU devices per process (overrides hw.hardware.num_cpu_devices)")


def initialize_from_args(args) -> ClusterSpec:
    """:func:`initialize` with the values of :func:`add_flags`' flags."""
    spec = detect(coordinator_address=args.coordinator_address,
                  num_processes=args.num_processes, process_id=args.process_id,
                  local_device_ids=args.local_device_ids, mode=args.distributed)
    return initialize(spec, timeout=args.distributed_timeout,
                      heartbeat_timeout=args.heartbeat_timeout,
                      num_cpu_devices=args.num_cpu_devices)


__all__ = ["ClusterSpec", "DistributedError", "detect", "initialize", "initialize_from_args",
           "summary", "print_summary", "add_flags", "first_slurm_host",
           "exit_now_if_multi_process"]
