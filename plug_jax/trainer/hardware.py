"""Device settings bound from ``gin_configs/hardware/*.gin``, applied before JAX starts."""
from __future__ import annotations


def hardware(platform: str | None = None, num_cpu_devices: int | None = None,
             peak_flops_per_device: float | None = None) -> float | None:
    """Applies the platform choice and fake-CPU device count; returns the total peak FLOP/s.

    ``platform``: ``'cpu'``, ``'gpu'`` or ``'tpu'`` (None: JAX's default choice).
    ``num_cpu_devices``: fake CPU devices (e.g. 8 to exercise a mesh on one CPU); takes
    effect only if JAX has not created its CPU backend yet in this process.
    ``peak_flops_per_device``: dense bf16/fp32 peak used for MFU; None on CPU, where the
    trainer measures the float32 matmul rate at start.
    """
    import jax
    if platform:
        jax.config.update("jax_platforms", platform)
    if num_cpu_devices:
        try:
            jax.config.update("jax_num_cpu_devices", int(num_cpu_devices))
        except RuntimeError:  # JAX already started in this process (a notebook, a driver)
            have = len(jax.devices("cpu"))
            if have != int(num_cpu_devices):
                print(f"note: num_cpu_devices={num_cpu_devices} not applied: JAX already "
                      f"started with {have} CPU device(s) in this process; start a new "
                      f"process for another count", flush=True)
    if peak_flops_per_device is None:
        return None
    return float(peak_flops_per_device) * jax.device_count()
