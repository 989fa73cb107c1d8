"""core/render.py: overlays appended to a MuJoCo scene, and SceneRenderer frames (EGL)."""

from __future__ import annotations

from dataclasses import fields

import mujoco
import numpy as np
import pytest

from core.render import (
    EXECUTED_RGBA,
    GHOST_RGBA,
    OFF_MANIFOLD_RGBA,
    Overlay,
    OverlayLayers,
    Polyline,
    RenderSettings,
    SceneRenderer,
    draw_overlay,
    time_color,
)

# A small scene: floor, a box, and a site for the "follow" camera.
XML = """
<mujoco>
  <visual><global offwidth="320" offheight="240"/></visual>
  <worldbody>
    <light pos="0 0 2" directional="true"/>
    <geom type="plane" size="1 1 0.01" rgba="0.2 0.25 0.3 1"/>
    <body name="box" pos="0.4 0 0.2">
      <freejoint/>
      <geom type="box" size="0.03 0.03 0.03" rgba="0.3 0.3 0.8 1"/>
      <site name="tip" pos="0 0 0.05"/>
    </body>
  </worldbody>
</mujoco>
"""


@pytest.fixture(scope="module")
def model() -> mujoco.MjModel:
    return mujoco.MjModel.from_xml_string(XML)


@pytest.fixture()
def data(model) -> mujoco.MjData:
    d = mujoco.MjData(model)
    mujoco.mj_forward(model, d)
    return d


@pytest.fixture(scope="module")
def renderer(model):
    r = SceneRenderer(model, RenderSettings(320, 240), effector_site="tip")
    yield r
    r.close()


def make_overlay(t=4, n=3, h=2, seed=0, executed=1) -> Overlay:
    rng = np.random.default_rng(seed)
    origin = np.array([0.4, 0.0, 0.25])
    final = origin + np.cumsum(rng.normal(0.0, 0.04, size=(n, h, 3)), axis=1)
    denoise = np.stack([final + (1 - k / t) * rng.normal(0, 0.05, (n, h, 3)) for k in range(t)])
    ghost = final + 0.03
    gripper = np.full(h, 0.9)
    return Overlay(origin, denoise, final, executed=executed, ghost=ghost, gripper=gripper)


def only(*names: str) -> OverlayLayers:
    return OverlayLayers(**{f.name: f.name in names for f in fields(OverlayLayers)})


def _scene_after_update(renderer, data) -> int:
    renderer.update(data, None)
    return renderer.scene.ngeom


def test_time_color_runs_blue_to_yellow():
    start, end = time_color(0.0), time_color(1.0)
    assert start.shape == (4,) and end.shape == (4,)
    assert start[2] > start[0] and end[0] > 0.9 and end[1] > 0.8 and end[2] < 0.2
    many = time_color(np.linspace(0, 1, 7), alpha=0.5)
    assert many.shape == (7, 4) and np.allclose(many[:, 3], 0.5)
    assert np.allclose(time_color(-1.0), start) and np.allclose(time_color(2.0), end)


def test_overlay_checks_shapes():
    ov = make_overlay()
    with pytest.raises(ValueError, match="denoise"):
        Overlay(ov.origin, ov.final, ov.final)
    with pytest.raises(ValueError, match="final"):
        Overlay(ov.origin, ov.denoise, ov.final[:2])
    with pytest.raises(ValueError, match="ghost"):
        Overlay(ov.origin, ov.denoise, ov.final, ghost=ov.final[:, :1])
    with pytest.raises(ValueError, match="off_manifold"):
        Overlay(ov.origin, ov.denoise, ov.final, off_manifold=np.zeros(5, bool))
    with pytest.raises(ValueError, match="executed"):
        Overlay(ov.origin, ov.denoise, ov.final, executed=3)


def test_draw_overlay_geom_counts_per_layer(renderer, data):
    base = _scene_after_update(renderer, data)
    ov = make_overlay(t=4, n=3, h=2)
    scene = renderer.scene
    # Each path of H points is H capsules; spheres mark path ends.
    per_layer = {
        "ghost": 3 * 2 + 3,
        "denoise": 4 * (3 * 2 + 3),
        "final": 3 * 2 + 3,
        "executed": 2 + 1 + 1,
        "gripper": 1,
    }
    for name, count in per_layer.items():
        scene.ngeom = base
        assert draw_overlay(scene, ov, only(name)) == 0
        assert scene.ngeom - base == count, name
    scene.ngeom = base
    draw_overlay(scene, ov, OverlayLayers())
    # With the executed layer on, the executed candidate is not drawn twice.
    assert scene.ngeom - base == sum(per_layer.values()) - (2 + 1)
    scene.ngeom = base
    draw_overlay(scene, ov, only())
    assert scene.ngeom == base


def test_overlay_geoms_are_flat_decor_with_layer_colors(renderer, data):
    base = _scene_after_update(renderer, data)
    ov = make_overlay(n=3)
    ov.off_manifold = np.array([True, False, False])
    scene = renderer.scene
    draw_overlay(scene, ov, OverlayLayers(denoise=False, ghost=True, gripper=False))
    added = [scene.geoms[i] for i in range(base, scene.ngeom)]
    assert all(g.emission == 1.0 and g.category == mujoco.mjtCatBit.mjCAT_DECOR for g in added)
    colors = {tuple(np.round(g.rgba, 3)) for g in added}
    assert tuple(np.round(np.float32(GHOST_RGBA), 3)) in colors
    assert tuple(np.round(np.float32(EXECUTED_RGBA), 3)) in colors
    assert tuple(np.round(np.float32(OFF_MANIFOLD_RGBA), 3)) in colors
    # Flagged candidate 0 is drawn red only while its layer is on.
    scene.ngeom = base
    draw_overlay(scene, ov, OverlayLayers(denoise=False, ghost=False, off_manifold=False))
    colors = {tuple(np.round(scene.geoms[i].rgba, 3)) for i in range(base, scene.ngeom)}
    assert tuple(np.round(np.float32(OFF_MANIFOLD_RGBA), 3)) not in colors


def test_nonfinite_points_are_skipped_not_drawn(renderer, data):
    base = _scene_after_update(renderer, data)
    ov = make_overlay(t=2, n=2, h=1)
    clean = OverlayLayers(ghost=False, gripper=False)
    draw_overlay(renderer.scene, ov, clean)
    full = renderer.scene.ngeom - base
    renderer.scene.ngeom = base
    ov.final[0, 0] = np.nan
    ov.denoise[1, 1, 0] = np.inf
    draw_overlay(renderer.scene, ov, clean)
    drawn = renderer.scene.ngeom - base
    assert drawn == full - 2 - 2  # one capsule and one sphere each
    for i in range(base, renderer.scene.ngeom):
        assert np.isfinite(renderer.scene.geoms[i].pos).all()


def test_overflow_reports_dropped_geoms(model, data):
    r = SceneRenderer(model, RenderSettings(160, 120), effector_site="tip")
    try:
        r.update(data, None)
        scene = r.scene
        scene.ngeom = scene.maxgeom - 5
        dropped = draw_overlay(scene, make_overlay(t=4, n=3, h=2))
        assert scene.ngeom == scene.maxgeom
        assert dropped == 56 - 5
    finally:
        r.close()


def test_polylines_drawn(renderer, data):
    base = _scene_after_update(renderer, data)
    ov = make_overlay()
    ov.polylines = [Polyline(np.array([[0.3, 0, 0.1], [0.4, 0, 0.1], [0.5, 0.1, 0.1]]))]
    draw_overlay(renderer.scene, ov, only())
    assert renderer.scene.ngeom - base == 2


def test_path_scale_magnifies_about_the_origin(renderer, data):
    base = _scene_after_update(renderer, data)
    ov = make_overlay(t=1, n=1, h=1, executed=-1)
    draw_overlay(renderer.scene, ov, only("final"), path_scale=3.0)
    sphere = renderer.scene.geoms[renderer.scene.ngeom - 1]
    assert np.allclose(sphere.pos, ov.origin + 3.0 * (ov.final[0, -1] - ov.origin), atol=1e-6)
    assert renderer.scene.ngeom - base == 2


def _has_color(img: np.ndarray, rgb, tol: int = 40) -> int:
    return int((np.abs(img.astype(int) - np.array(rgb)).max(axis=-1) < tol).sum())


def test_render_shows_overlay_colors(renderer, data):
    renderer.set_preset("front")
    ov = make_overlay(n=4)
    plain = renderer.render(data)
    drawn = renderer.render(data, ov).copy()
    assert plain.shape == drawn.shape == (240, 320, 3) and plain.dtype == np.uint8
    assert plain.std() > 5  # the scene itself is not blank
    yellow = (np.array(time_color(1.0)[:3]) * 255).astype(int)
    assert _has_color(plain, yellow) == 0
    assert _has_color(drawn, yellow) > 20
    assert _has_color(drawn, (255, 255, 255), tol=10) > 20  # the executed path


def test_render_into_out_buffer(renderer, data):
    out = np.zeros((240, 320, 3), np.uint8)
    got = renderer.render(data, make_overlay(), out=out)
    assert got is out and out.any()


def test_camera_presets_and_mouse_motion(renderer, data):
    renderer.set_preset("top")
    assert renderer.camera.elevation <= -60
    top = renderer.render(data).copy()
    renderer.set_preset("front")
    front = renderer.render(data).copy()
    assert np.abs(top.astype(int) - front.astype(int)).mean() > 2
    az = renderer.camera.azimuth
    renderer.move_camera("orbit", 0.2, 0.0)
    assert renderer.camera.azimuth != az and renderer.preset == "free"
    dist = renderer.camera.distance
    renderer.move_camera("zoom", 0.0, 0.2)
    assert renderer.camera.distance != dist
    look = renderer.camera.lookat.copy()
    renderer.move_camera("pan", 0.1, 0.1)
    assert not np.allclose(renderer.camera.lookat, look)
    with pytest.raises(ValueError, match="preset"):
        renderer.set_preset("nowhere")
    with pytest.raises(ValueError, match="orbit"):
        renderer.move_camera("spin", 1, 1)


def test_follow_preset_tracks_the_site(renderer, model, data):
    renderer.set_preset("follow", data)
    site = model.site("tip").id
    renderer.update(data)
    assert np.allclose(renderer.camera.lookat, data.site_xpos[site])
    data.qpos[:3] += [0.1, 0.05, 0.0]
    mujoco.mj_forward(model, data)
    renderer.update(data)
    assert np.allclose(renderer.camera.lookat, data.site_xpos[site])
    renderer.set_preset("front")


def test_configure_resolution_and_flags(model, data):
    r = SceneRenderer(model, RenderSettings(160, 120), effector_site="tip")
    try:
        assert r.render(data).shape == (120, 160, 3)
        r.configure(RenderSettings(200, 150, shadows=True))
        assert r.render(data).shape == (150, 200, 3)
        assert r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW]
        # The offscreen buffer grew to fit a frame larger than the model asked for.
        r.configure(RenderSettings(400, 300))
        assert r.render(data).shape == (300, 400, 3)
    finally:
        r.close()
    with pytest.raises(RuntimeError, match="closed"):
        r.render(data)


def test_default_settings_follow_the_gl(model):
    r = SceneRenderer(model, effector_site="tip")
    try:
        if r.software_gl:
            s = r.settings
            assert (s.offsamples, s.shadows, s.skybox) == (0, False, False)
        else:
            assert r.settings.offsamples == 4
        assert r.gl_vendor  # the GL renderer string was read
    finally:
        r.close()
