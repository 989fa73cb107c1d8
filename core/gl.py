"""What to install when MuJoCo cannot make an OpenGL context.

MuJoCo renders through the platform that ``MUJOCO_GL`` names: ``egl`` (headless, GPU or
Mesa), ``osmesa`` (headless, software) or ``glfw`` (a window on a display, the default when
unset). When the platform's library is missing or broken, MuJoCo, PyOpenGL and dm_control
(which OGBench's envs import, and which opens its EGL display at import time) each fail in
their own words: an ``ImportError`` about a headless display, a ``RuntimeError`` about an
EGL device, a ``FatalError`` about a missing platform library, or an ``AttributeError`` deep
in PyOpenGL. ``gl_unavailable`` turns any of them into one ``GLUnavailable`` line that names
the platform, the reason and the Debian/Ubuntu packages that provide it; ``check_gl`` makes
and drops a tiny context, so a command that renders can find out before its work starts.
"""

from __future__ import annotations

import os
import warnings

from core.interrupts import interruption

EGL_PACKAGES = "libegl1 libegl-mesa0 libgl1-mesa-dri"
OSMESA_PACKAGES = "libosmesa6"
XVFB_PACKAGE = "xvfb"


class GLUnavailable(RuntimeError):
    """No OpenGL context can be made here; the message says what to install."""


def platform() -> str:
    """The GL platform MuJoCo uses: ``MUJOCO_GL``, or ``glfw`` when it is unset."""
    return os.environ.get("MUJOCO_GL", "").strip().lower() or "glfw"


def install_hint(name: str | None = None) -> str:
    """What to install (or set) to render with the platform ``name`` (default: this one)."""
    name = name or platform()
    egl = f"apt install {EGL_PACKAGES}"
    osmesa = f"MUJOCO_GL=osmesa with apt install {OSMESA_PACKAGES}"
    if name == "egl":
        return f"install EGL ({egl}), or render in software: {osmesa}"
    if name == "osmesa":
        return f"install OSMesa (apt install {OSMESA_PACKAGES}), or use MUJOCO_GL=egl ({egl})"
    return (
        f"{name} needs a display: render headless with MUJOCO_GL=egl ({egl}), or run under "
        f"xvfb-run (apt install {XVFB_PACKAGE})"
    )


def gl_unavailable(error: BaseException) -> GLUnavailable:
    """``error``, raised while making a GL context, as one line with the install hint."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[0] if lines else type(error).__name__
    name = platform()
    return GLUnavailable(
        f"cannot make an OpenGL context for MuJoCo (MUJOCO_GL={name}: {reason}); "
        + install_hint(name)
    )


def check_gl() -> None:
    """Make and close a tiny MuJoCo renderer on this thread.

    Raises:
        GLUnavailable: the platform cannot make a context (the message says what to install).
    """
    try:
        with warnings.catch_warnings():  # glfw warns before it fails: the error says it all
            warnings.simplefilter("ignore")
            import mujoco

            model = mujoco.MjModel.from_xml_string("<mujoco/>")
            mujoco.Renderer(model, height=8, width=8).close()
    except Exception as e:
        if interruption(e) is not None:  # Ctrl-C during mujoco's import: not a GL problem
            raise
        raise gl_unavailable(e) from e


def import_physics() -> None:
    """Import dm_control's MuJoCo bindings, which OGBench's envs use and which open the
    ``MUJOCO_GL`` platform at import time.

    Raises:
        GLUnavailable: that platform is broken (with ``MUJOCO_GL`` unset, dm_control quietly
            goes without rendering, and only rendering would fail).
    """
    try:
        import dm_control.mujoco  # noqa: F401
    except ModuleNotFoundError:
        raise
    except (ImportError, RuntimeError, AttributeError) as e:
        if "MUJOCO_GL" in os.environ:
            raise gl_unavailable(e) from e
        raise
