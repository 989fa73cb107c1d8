"""core/gl.py: a GL platform that cannot make a context is one line saying what to install."""

import pytest

from core.gl import GLUnavailable, gl_unavailable, import_physics, install_hint


@pytest.mark.parametrize(
    "platform, words",
    [
        ("egl", ["apt install libegl1 libegl-mesa0 libgl1-mesa-dri", "apt install libosmesa6"]),
        ("osmesa", ["apt install libosmesa6", "MUJOCO_GL=egl"]),
        ("glfw", ["needs a display", "MUJOCO_GL=egl", "xvfb-run (apt install xvfb)"]),
    ],
)
def test_each_platform_names_its_packages(monkeypatch, platform, words):
    monkeypatch.setenv("MUJOCO_GL", platform)
    error = gl_unavailable(ImportError("Cannot initialize a headless EGL display.\nmore"))
    message = str(error)
    assert "\n" not in message and f"MUJOCO_GL={platform}: Cannot initialize" in message
    assert all(w in message for w in words) and all(w in install_hint() for w in words)


def test_unset_means_glfw(monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    assert "glfw needs a display" in str(gl_unavailable(RuntimeError("no")))


def test_a_broken_platform_at_dm_control_import_is_one_gl_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "dm_control.mujoco":
            raise ImportError("Cannot initialize a headless EGL display.")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    monkeypatch.setenv("MUJOCO_GL", "egl")
    with pytest.raises(GLUnavailable, match="apt install libegl1"):
        import_physics()
    monkeypatch.delenv("MUJOCO_GL")  # unset: dm_control's own error is left as it is
    with pytest.raises(ImportError, match="headless EGL"):
        import_physics()


def test_ctrl_c_during_the_probe_is_an_interruption_not_a_gl_error(monkeypatch):
    """Ctrl-C inside mujoco's import comes out as ``ImportError: initialization failed``
    caused by it: not a missing library."""
    import builtins
    import sys

    from core.gl import check_gl

    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "mujoco":
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as e:
                raise ImportError("initialization failed") from e
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "mujoco", raising=False)
    monkeypatch.setattr(builtins, "__import__", interrupted)
    with pytest.raises(ImportError, match="initialization failed"):
        check_gl()
