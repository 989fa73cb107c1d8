"""MuJoCo's renderer alone: the most frames it gives on this machine, the baseline the
viewer and demo benchmarks (``benchmarks/viewer.py``, ``benchmarks/demo.py``) divide by."""

from __future__ import annotations

import resource
import threading
import time


def cpu_seconds() -> float:
    """CPU seconds used by this process so far (every thread, Mesa's included)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def raw_fps(model, physics, settings, camera, seconds: float) -> tuple[float, float]:
    """``(fps, CPU ms per frame)`` of ``mujoco.Renderer`` alone, on a thread of its own."""
    import mujoco
    import numpy as np

    from core.envs import ensure_offscreen_buffer

    result: dict[str, float | BaseException] = {}

    def loop() -> None:
        try:
            ensure_offscreen_buffer(model, settings.width, settings.height)
            model.vis.quality.offsamples = settings.offsamples
            data = mujoco.MjData(model)
            mujoco.mj_setState(model, data, physics, mujoco.mjtState.mjSTATE_INTEGRATION)
            mujoco.mj_forward(model, data)
            out = np.empty((settings.height, settings.width, 3), np.uint8)
            with mujoco.Renderer(model, settings.height, settings.width) as r:
                flags = r.scene.flags
                n, start, cpu0 = 0, None, 0.0
                while True:
                    r.update_scene(data, camera)
                    flags[mujoco.mjtRndFlag.mjRND_SHADOW] = settings.shadows
                    flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = settings.skybox
                    flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = settings.reflection
                    r.render(out=out)
                    now = time.perf_counter()
                    if start is None:  # the first frame uploads meshes: not counted
                        start, cpu0 = now, cpu_seconds()
                        continue
                    n += 1
                    if now - start >= seconds:
                        result["fps"] = n / (now - start)
                        result["cpu"] = 1000 * (cpu_seconds() - cpu0) / n
                        return
        except BaseException as e:  # reported on the caller's thread
            result["error"] = e

    t = threading.Thread(target=loop, name="bench-raw-render")
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return float(result["fps"]), float(result["cpu"])
