"""Headless MuJoCo scene rendering with denoising overlays.

``SceneRenderer`` owns a ``mujoco.Renderer`` (and with it a GL context: EGL, OSMesa or glfw,
whatever ``MUJOCO_GL`` picks) and draws one frame of a model/data pair, with the overlays of
the current step appended to the scene after ``update_scene``. It imports no GUI, so the
viewer, the video recorder and tests share it.

A renderer's GL context is bound to the thread that created it: create, use and close a
``SceneRenderer`` on one thread (the viewer gives it a thread of its own, because MuJoCo's
context and Dear PyGui's must not share one).

Overlay input is a plain dataclass of world-space points (``Overlay``), so whoever maps
actions to end-effector targets (``core.envs``) is decoupled from whoever draws them::

    denoise [T, N, H, 3]   a_hat at denoising step k of candidate n, chunk point h
    final   [N, H, 3]      each candidate's final action
    ghost   [N, H, 3]      the unguided (w = 0, same noise) candidates' final actions
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import mujoco
import numpy as np

from core.gl import gl_unavailable

# Overlay look. Widths are in metres: the manipulation workspace is ~0.7 m across.
_DENOISE_WIDTH = 0.0022
_FINAL_WIDTH = 0.0035
_EXECUTED_WIDTH = 0.0065
_GHOST_WIDTH = 0.0030
_POINT_RADIUS = 0.0045
_EXECUTED_RADIUS = 0.009
_GRIPPER_RADIUS = 0.012

# Denoising time t = 0 (noise) .. 1 (clean action) runs from deep blue to bright yellow
# through magenta and orange: every stop stays visible on the dark floor and none is the
# executed white, the ghost grey or the off-manifold red.
_TIME_STOPS = np.array(
    [
        [0.20, 0.35, 1.00],
        [0.70, 0.25, 0.95],
        [1.00, 0.45, 0.35],
        [1.00, 0.90, 0.10],
    ],
    dtype=np.float64,
)
EXECUTED_RGBA = (1.0, 1.0, 1.0, 1.0)
GHOST_RGBA = (0.55, 0.60, 0.68, 0.9)
OFF_MANIFOLD_RGBA = (1.0, 0.05, 0.05, 1.0)
NONFINITE_RGBA = (1.0, 0.0, 1.0, 1.0)
GRIPPER_OPEN_RGBA = (0.1, 0.95, 0.35, 0.9)
GRIPPER_CLOSE_RGBA = (1.0, 0.55, 0.0, 0.9)

# One colour (``[4]``, a tuple like the constants above or an array) or one per geom
# (``[K, 4]`` array).
Rgba = tuple[float, float, float, float] | np.ndarray

_FAST_SLICES, _FAST_STACKS = 8, 4

CAMERA_PRESETS = ("front", "side", "top", "follow")
# Free-camera poses (azimuth deg, elevation deg, distance m) around the workspace centre.
# "front" looks from where OGBench's own front camera does, a little higher; "top" is tilted
# so that the arm does not hide the gripper; "follow" tracks the effector from close by.
_PRESET_POSES = {
    "front": (180.0, -25.0, 1.05),
    "side": (90.0, -22.0, 1.1),
    "top": (180.0, -70.0, 1.15),
    "follow": (150.0, -25.0, 0.55),
}
_WORKSPACE_CENTRE = np.array([0.38, 0.0, 0.18])
EFFECTOR_SITE = "ur5e/robotiq/pinch"


def time_color(t: float | np.ndarray, alpha: float | np.ndarray = 1.0) -> np.ndarray:
    """RGBA colour of denoising time ``t`` in [0, 1] (scalar -> ``[4]``, ``[K]`` -> ``[K, 4]``)."""
    t = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0)
    x = t * (len(_TIME_STOPS) - 1)
    i = np.minimum(np.floor(x).astype(int), len(_TIME_STOPS) - 2)
    f = (x - i)[..., None]
    rgb = _TIME_STOPS[i] * (1.0 - f) + _TIME_STOPS[i + 1] * f
    a = np.broadcast_to(np.asarray(alpha, dtype=np.float64), rgb.shape[:-1])[..., None]
    return np.concatenate([rgb, a], axis=-1)


@dataclass
class RenderSettings:
    """How a frame is rendered.

    Attributes:
        width, height: image size in pixels.
        offsamples: multisample anti-aliasing samples (0 = off; MuJoCo's default is 4).
        shadows, skybox, reflection: MuJoCo scene flags.
        slices, stacks: tessellation of spheres and capsules (None: the model's own, MuJoCo's
            default 28 x 16). Software GL is geometry-bound: a step's ~200-600 overlay
            spheres and capsules at the default cost about as much as the whole robot; at
            8 x 4 they are nearly free and look the same at overlay sizes.
    """

    width: int = 640
    height: int = 480
    offsamples: int = 0
    shadows: bool = False
    skybox: bool = False
    reflection: bool = False
    slices: int | None = None
    stacks: int | None = None

    @classmethod
    def for_gl(cls, software: bool, width: int = 640, height: int = 480) -> RenderSettings:
        """Fast defaults on software GL (llvmpipe is geometry-bound: MSAA and shadows cost
        ~5x, default tessellation ~2x), MuJoCo's own quality defaults on a GPU."""
        if software:
            return cls(width, height, offsamples=0, slices=_FAST_SLICES, stacks=_FAST_STACKS)
        return cls(width, height, offsamples=4, shadows=True, skybox=True, reflection=True)


@dataclass
class OverlayLayers:
    """Which overlay layers are drawn (each can be toggled on its own)."""

    denoise: bool = True
    final: bool = True
    executed: bool = True
    ghost: bool = True
    gripper: bool = True
    off_manifold: bool = True
    branches: bool = True


@dataclass
class Polyline:
    """An extra path to draw (e.g. a timeline branch): ``points [K, 3]`` joined in order.

    ``layer`` names the ``OverlayLayers`` flag that hides it (None: always drawn).
    """

    points: np.ndarray
    rgba: tuple[float, float, float, float] = GHOST_RGBA
    width: float = _GHOST_WIDTH
    layer: str | None = None


@dataclass
class Overlay:
    """The overlays of one step, in world coordinates (metres).

    Attributes:
        origin: ``[3]`` end-effector position every path starts from.
        denoise: ``[T, N, H, 3]`` targets of the one-step clean estimate a_hat at each
            denoising step k (time k / T) of each of N candidates; a chunk of H actions is
            a path of H points.
        final: ``[N, H, 3]`` targets of each candidate's final action.
        executed: index in 0..N-1 of the executed candidate, or -1 for none.
        ghost: ``[N, H, 3]`` targets of the unguided (w = 0, same noise) candidates' final
            actions, or None.
        gripper: ``[H]`` target gripper closure of the executed chunk after each action, in
            [0, 1] (0 open, 1 closed; ``core.envs.EETargets.gripper``), or None.
        off_manifold: ``[N]`` bool, candidates flagged off the data manifold (drawn red).
        nonfinite: ``[N]`` bool, candidates whose denoising went NaN/inf (drawn magenta).
        polylines: extra paths (branches and the like), drawn as they are.
    """

    origin: np.ndarray
    denoise: np.ndarray
    final: np.ndarray
    executed: int = -1
    ghost: np.ndarray | None = None
    gripper: np.ndarray | None = None
    off_manifold: np.ndarray | None = None
    nonfinite: np.ndarray | None = None
    polylines: list[Polyline] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.origin = np.asarray(self.origin, dtype=np.float64).reshape(3)
        self.denoise = np.asarray(self.denoise, dtype=np.float64)
        self.final = np.asarray(self.final, dtype=np.float64)
        if self.denoise.ndim != 4 or self.denoise.shape[-1] != 3:
            raise ValueError(f"denoise must be [T, N, H, 3], got {list(self.denoise.shape)}")
        if self.final.shape != self.denoise.shape[1:]:
            raise ValueError(
                f"final must be [N, H, 3] = {list(self.denoise.shape[1:])}, "
                f"got {list(self.final.shape)}"
            )
        if self.ghost is not None:
            self.ghost = np.asarray(self.ghost, dtype=np.float64)
            if self.ghost.shape != self.final.shape:
                raise ValueError(
                    f"ghost must be shaped like final {list(self.final.shape)}, "
                    f"got {list(self.ghost.shape)}"
                )
        n = self.final.shape[0]
        for name in ("off_manifold", "nonfinite"):
            flags = getattr(self, name)
            if flags is not None:
                flags = np.asarray(flags, dtype=bool).reshape(-1)
                if flags.shape != (n,):
                    raise ValueError(f"{name} must be [N] = [{n}], got {list(flags.shape)}")
                setattr(self, name, flags)
        if not -1 <= self.executed < n:
            raise ValueError(f"executed must be -1 or in 0..{n - 1}, got {self.executed}")

    @property
    def candidates(self) -> int:
        return self.final.shape[0]

    @property
    def steps(self) -> int:
        return self.denoise.shape[0]


# Overlay geoms are drawn with emission 1 and the scene's lights on top, which brightens a
# colour up to about 2.2x where lit, clipped per channel: a saturated colour changes hue
# (orange 1, 0.52, 0.10 came out yellow 255, 255, 56; cyan and green both went pale cyan).
# Drawn at this fraction of its value, a colour keeps its hue, lit between about 0.45x and
# 1x. The candidate colours predate this and rely on the brightening (white, yellow).
SCENE_GAIN = 0.45


def scene_rgba(rgba, alpha: float | None = None) -> tuple[float, float, float, float]:
    """The colour to give an overlay geom so that it shows as ``rgba`` in the scene (the
    same colour a plot or table shows for it)."""
    r, g, b, a = (float(c) for c in rgba)
    return (SCENE_GAIN * r, SCENE_GAIN * g, SCENE_GAIN * b, a if alpha is None else alpha)


class _GeomWriter:
    """Appends flat-coloured decor geoms to an ``MjvScene`` until ``maxgeom`` is reached.

    Works on batches: validity (finite, non-degenerate) is checked with one numpy call per
    batch, and the per-geom loop only calls MuJoCo (~2 us a geom; numpy per geom is 10x that).
    A batch takes one colour ``[4]`` or one per geom ``[K, 4]``, so a layer whose colour
    varies (the denoising steps) is still one batch: the ~25 us of numpy per call otherwise
    adds up to ~0.5 ms a frame.
    """

    def __init__(self, scene: mujoco.MjvScene) -> None:
        self.scene = scene
        self.geoms = scene.geoms
        self.dropped = 0
        self._eye = np.eye(3).reshape(-1)
        self._zero = np.zeros(3)

    def _take(self, count: int) -> int:
        """Reserve up to ``count`` geoms; returns how many fit."""
        room = self.scene.maxgeom - self.scene.ngeom
        fit = max(0, min(count, room))
        self.dropped += count - fit
        return fit

    def _finish(self, geom: mujoco.MjvGeom) -> None:
        # Emissive, so overlays stay bright from every angle; the scene's lights still add on
        # top (MuJoCo has no unlit geoms), which is why ``scene_rgba`` exists.
        geom.emission = 1.0
        geom.specular = 0.0
        geom.castshadow = 0
        geom.category = mujoco.mjtCatBit.mjCAT_DECOR
        geom.segid = -1

    def _colours(self, rgba: Rgba, count: int) -> np.ndarray:
        """``[count, 4]`` float32: one colour repeated, or one per geom as given."""
        rgba = np.asarray(rgba, dtype=np.float32)
        return np.broadcast_to(rgba, (count, 4)) if rgba.ndim == 1 else rgba.reshape(count, 4)

    def segments(self, a: np.ndarray, b: np.ndarray, width: float, rgba: Rgba) -> None:
        """Capsules from ``a [K, 3]`` to ``b [K, 3]``, skipping non-finite or zero-length ones;
        ``rgba`` is ``[4]`` or ``[K, 4]``."""
        a = np.ascontiguousarray(a, dtype=np.float64).reshape(-1, 3)
        b = np.ascontiguousarray(b, dtype=np.float64).reshape(-1, 3)
        rgba = self._colours(rgba, len(a))
        ok = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
        ok &= np.einsum("kd,kd->k", b - a, b - a) > 1e-12
        idx = np.flatnonzero(ok)
        start = self.scene.ngeom
        fit = self._take(len(idx))
        capsule = mujoco.mjtGeom.mjGEOM_CAPSULE
        for i, j in enumerate(idx[:fit]):
            geom = self.geoms[start + i]
            mujoco.mjv_initGeom(geom, capsule, self._zero, self._zero, self._eye, rgba[j])
            mujoco.mjv_connector(geom, capsule, width, a[j], b[j])
            self._finish(geom)
        self.scene.ngeom = start + fit

    def spheres(self, p: np.ndarray, radius: float, rgba: Rgba) -> None:
        """Spheres at ``p [K, 3]``, non-finite ones skipped; ``rgba`` is ``[4]`` or ``[K, 4]``."""
        p = np.ascontiguousarray(p, dtype=np.float64).reshape(-1, 3)
        rgba = self._colours(rgba, len(p))
        idx = np.flatnonzero(np.isfinite(p).all(axis=1))
        start = self.scene.ngeom
        fit = self._take(len(idx))
        size = np.full(3, radius)
        sphere = mujoco.mjtGeom.mjGEOM_SPHERE
        for i, j in enumerate(idx[:fit]):
            geom = self.geoms[start + i]
            mujoco.mjv_initGeom(geom, sphere, size, p[j], self._eye, rgba[j])
            self._finish(geom)
        self.scene.ngeom = start + fit

    def paths(self, origin: np.ndarray, points: np.ndarray, width: float, rgba: Rgba) -> None:
        """Per path ``origin -> points[i, 0] -> .. -> points[i, H-1]`` (``points [K, H, 3]``);
        ``rgba`` is ``[4]`` or one per path ``[K, 4]``."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, *np.shape(points)[-2:])
        k, h = points.shape[:2]
        starts = np.concatenate([np.broadcast_to(origin, (k, 1, 3)), points[:, :-1]], axis=1)
        if np.ndim(rgba) > 1:  # one colour per path: the same on each of its segments
            rgba = np.repeat(self._colours(rgba, k), h, axis=0)
        self.segments(starts, points, width, rgba)


def _scaled(overlay: Overlay, k: float) -> Overlay:
    """The overlay with every path point moved to ``origin + k * (point - origin)``."""
    o = overlay.origin

    def grow(p: np.ndarray) -> np.ndarray:
        return o + k * (p - o)

    return replace(
        overlay,
        denoise=grow(overlay.denoise),
        final=grow(overlay.final),
        ghost=None if overlay.ghost is None else grow(overlay.ghost),
        polylines=list(overlay.polylines),
    )


def draw_overlay(
    scene: mujoco.MjvScene,
    overlay: Overlay,
    layers: OverlayLayers | None = None,
    path_scale: float = 1.0,
    thickness: float = 1.0,
) -> int:
    """Append the overlay's geoms to ``scene`` (call after ``update_scene``).

    Draw order is back to front in importance: extra polylines, ghost, denoising steps,
    final candidates, executed, gripper marker, so the executed path is never hidden.

    Args:
        path_scale: magnify every candidate path about the effector (1 = true size). One
            action moves the effector at most 5 cm, so a display aid is sometimes needed;
            whoever shows a scaled view must say so (the viewer labels it in its legend).
        thickness: multiplies every line width and marker radius (the live demo draws
            thicker paths, to be seen from the back of a room).

    Returns:
        The number of geoms that did not fit in ``scene.maxgeom`` (0 when all fit).
    """
    layers = layers or OverlayLayers()
    if path_scale != 1.0:
        overlay = _scaled(overlay, path_scale)
    w = _GeomWriter(scene)
    o = overlay.origin
    n = overlay.candidates
    flagged = np.zeros(n, dtype=bool)
    if layers.off_manifold and overlay.off_manifold is not None:
        flagged = overlay.off_manifold.copy()
    broken = overlay.nonfinite if overlay.nonfinite is not None else np.zeros(n, dtype=bool)
    executed = overlay.executed if layers.executed else -1

    for line in overlay.polylines:
        if line.layer is not None and not getattr(layers, line.layer, True):
            continue
        pts = np.asarray(line.points, dtype=np.float64).reshape(-1, 3)
        w.segments(pts[:-1], pts[1:], thickness * line.width, line.rgba)

    if layers.ghost and overlay.ghost is not None:
        w.paths(o, overlay.ghost, thickness * _GHOST_WIDTH, GHOST_RGBA)
        w.spheres(overlay.ghost[:, -1], thickness * _POINT_RADIUS, GHOST_RGBA)

    if layers.denoise:
        steps = overlay.steps
        live = ~broken
        # Early steps are noisy guesses: fainter, so the converged estimate reads first.
        t = np.arange(steps) / steps
        rgba: Rgba = np.repeat(time_color(t, alpha=0.35 + 0.6 * t), int(live.sum()), axis=0)
        points = overlay.denoise[:, live]  # [T, live, H, 3]
        w.paths(o, points, thickness * _DENOISE_WIDTH, rgba)
        w.spheres(points[:, :, -1], thickness * _POINT_RADIUS * 0.8, rgba)

    if layers.final:
        groups: tuple[tuple[np.ndarray, Rgba], ...] = (
            (~flagged & ~broken, time_color(1.0)),
            (flagged & ~broken, OFF_MANIFOLD_RGBA),
            (broken, NONFINITE_RGBA),
        )
        for mask, rgba in groups:
            mask = mask.copy()
            if executed >= 0:
                mask[executed] = False
            w.paths(o, overlay.final[mask], thickness * _FINAL_WIDTH, rgba)
            w.spheres(overlay.final[mask, -1], thickness * _POINT_RADIUS, rgba)

    if executed >= 0:
        path = overlay.final[executed]
        rgba = OFF_MANIFOLD_RGBA if flagged[executed] else EXECUTED_RGBA
        w.paths(o, path[None], thickness * _EXECUTED_WIDTH, rgba)
        w.spheres(path[:-1], thickness * _EXECUTED_RADIUS * 0.6, rgba)
        w.spheres(path[-1:], thickness * _EXECUTED_RADIUS, rgba)

    if layers.gripper and overlay.gripper is not None:
        # Target opening after the first action: 0 open .. 1 closed (core.envs.EETargets).
        g = float(np.asarray(overlay.gripper, dtype=np.float64).reshape(-1)[0])
        if np.isfinite(g):
            rgba = GRIPPER_CLOSE_RGBA if g >= 0.5 else GRIPPER_OPEN_RGBA
            # At the executed first target (the effector itself hides a marker at its own
            # position); it grows as the commanded grip closes.
            at = overlay.final[overlay.executed, 0] if overlay.executed >= 0 else o
            radius = thickness * _GRIPPER_RADIUS * (0.6 + 0.4 * min(max(g, 0.0), 1.0))
            w.spheres(at[None], radius, rgba)
    return w.dropped


def preset_camera(name: str, camera: mujoco.MjvCamera | None = None) -> mujoco.MjvCamera:
    """A free camera (``camera`` updated in place, or a new one) at a preset pose: front,
    side, top, or follow (follow's look-at point is the effector's, set when rendering)."""
    if name not in _PRESET_POSES:
        raise ValueError(f"unknown camera preset {name!r}; choose from {CAMERA_PRESETS}")
    cam = camera if camera is not None else mujoco.MjvCamera()
    azimuth, elevation, distance = _PRESET_POSES[name]
    cam.type = mujoco.mjtCamera.mjCAMERA_FREE
    cam.fixedcamid = -1
    cam.trackbodyid = -1
    cam.azimuth, cam.elevation, cam.distance = azimuth, elevation, distance
    cam.lookat[:] = _WORKSPACE_CENTRE
    return cam


class SceneRenderer:
    """Renders a model's scene from a free camera, with overlays.

    Owns a ``mujoco.Renderer``; ``close()`` releases it. ``render(data, overlay, out=...)``
    writes into the caller's ``[H, W, 3]`` uint8 buffer when given one.

    Args:
        model: the ``MjModel`` to render. Its offscreen buffer is enlarged to fit
            ``settings`` when needed.
        settings: resolution and quality; None picks ``RenderSettings.for_gl`` (of size
            ``size``) after probing whether GL is a software renderer.
        effector_site: site the "follow" camera tracks.
        size: ``(width, height)`` when ``settings`` is None (default 640 x 480).

    Raises:
        core.gl.GLUnavailable: no GL context can be made (the message says what to install).
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        settings: RenderSettings | None = None,
        effector_site: str = EFFECTOR_SITE,
        size: tuple[int, int] | None = None,
    ) -> None:
        self.model = model
        self._renderer: mujoco.Renderer | None = None
        self.gl_vendor = ""
        probe = settings or RenderSettings(*(size or (640, 480)))
        self._open(probe)
        self.software_gl = _is_software(self.gl_vendor)
        if settings is None:
            settings = RenderSettings.for_gl(self.software_gl, probe.width, probe.height)
            if settings != probe:
                self._open(settings)
        self.settings = settings
        self.option = mujoco.MjvOption()
        self.camera = mujoco.MjvCamera()
        self.preset = "front"
        self._effector_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, effector_site)
        self.set_preset("front")
        self.dropped_geoms = 0
        self.path_scale = 1.0  # see draw_overlay
        self.thickness = 1.0  # see draw_overlay

    # --- lifetime ---------------------------------------------------------------------
    def _open(self, settings: RenderSettings) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        vis = self.model.vis
        vis.global_.offwidth = max(vis.global_.offwidth, settings.width)
        vis.global_.offheight = max(vis.global_.offheight, settings.height)
        vis.quality.offsamples = settings.offsamples
        if settings.slices is not None:
            vis.quality.numslices = settings.slices
        if settings.stacks is not None:
            vis.quality.numstacks = settings.stacks
        try:
            self._renderer = mujoco.Renderer(
                self.model, height=settings.height, width=settings.width
            )
        except Exception as e:
            raise gl_unavailable(e) from e
        self.gl_vendor = _gl_renderer_string()

    def close(self) -> None:
        """Release the GL context (call on the thread that created the renderer)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> SceneRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def configure(self, settings: RenderSettings) -> None:
        """Apply new settings; size, anti-aliasing and tessellation need a new GL context
        (they are baked into it), scene flags do not."""
        old = self.settings
        context = ("width", "height", "offsamples", "slices", "stacks")
        if any(getattr(settings, k) != getattr(old, k) for k in context):
            self._open(settings)
        self.settings = replace(settings)

    @property
    def scene(self) -> mujoco.MjvScene:
        return self._live().scene

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(height, width, 3)`` of the frames ``render`` returns."""
        return (self.settings.height, self.settings.width, 3)

    def _live(self) -> mujoco.Renderer:
        if self._renderer is None:
            raise RuntimeError("SceneRenderer is closed")
        return self._renderer

    # --- camera -----------------------------------------------------------------------
    def set_preset(self, name: str, data: mujoco.MjData | None = None) -> None:
        """Move the free camera to a preset: front, side, top, or follow (the effector)."""
        preset_camera(name, self.camera)
        if name == "follow" and data is not None and self._effector_id >= 0:
            self.camera.lookat[:] = data.site_xpos[self._effector_id]
        self.preset = name

    def move_camera(self, kind: str, dx: float, dy: float) -> None:
        """Orbit, pan or zoom the camera as MuJoCo's viewer does.

        Args:
            kind: "orbit", "pan" or "zoom".
            dx, dy: mouse motion as a fraction of the image height (right and down > 0).
        """
        actions = {
            "orbit": (mujoco.mjtMouse.mjMOUSE_ROTATE_H, mujoco.mjtMouse.mjMOUSE_ROTATE_V),
            "pan": (mujoco.mjtMouse.mjMOUSE_MOVE_H, mujoco.mjtMouse.mjMOUSE_MOVE_V),
        }
        if kind == "zoom":
            self._move(mujoco.mjtMouse.mjMOUSE_ZOOM, 0.0, dy)
        elif kind in actions:
            horizontal, vertical = actions[kind]
            if dx:
                self._move(horizontal, dx, 0.0)
            if dy:
                self._move(vertical, 0.0, dy)
        else:
            raise ValueError(f"camera motion must be orbit, pan or zoom, got {kind!r}")
        if self.preset != "follow":
            self.preset = "free"

    def _move(self, action: int, dx: float, dy: float) -> None:
        # MuJoCo 4 dropped the scene argument of mjv_moveCamera; 3.x needs it.
        try:
            mujoco.mjv_moveCamera(self.model, action, dx, dy, self.camera)
        except TypeError:
            mujoco.mjv_moveCamera(self.model, action, dx, dy, self.scene, self.camera)

    # --- drawing ----------------------------------------------------------------------
    def update(
        self,
        data: mujoco.MjData,
        overlay: Overlay | None = None,
        layers: OverlayLayers | None = None,
    ) -> None:
        """Build the scene from ``data`` and append the overlay (no GL work)."""
        renderer = self._live()
        if self.preset == "follow" and self._effector_id >= 0:
            self.camera.lookat[:] = data.site_xpos[self._effector_id]
        renderer.update_scene(data, self.camera, self.option)
        flags = renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = self.settings.shadows
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = self.settings.skybox
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = self.settings.reflection
        self.dropped_geoms = 0
        if overlay is not None:
            self.dropped_geoms = draw_overlay(
                renderer.scene, overlay, layers, self.path_scale, self.thickness
            )

    def render(
        self,
        data: mujoco.MjData,
        overlay: Overlay | None = None,
        layers: OverlayLayers | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Render one frame.

        Args:
            data: simulation state (its kinematics must be current, e.g. after mj_forward).
            overlay: what to draw over the scene, or None.
            layers: which overlay layers to draw (default: all).
            out: optional ``[H, W, 3]`` uint8 buffer to write into.

        Returns:
            ``[H, W, 3]`` uint8 RGB image (``out`` when given).
        """
        self.update(data, overlay, layers)
        return self._live().render(out=out)

    def render_scene(self, out: np.ndarray | None = None) -> np.ndarray:
        """Render the scene as last built by ``update`` (GL work only)."""
        return self._live().render(out=out)


def _gl_renderer_string() -> str:
    """GL_RENDERER of the current context ("" when it cannot be read)."""
    try:
        from OpenGL import GL

        value = GL.glGetString(GL.GL_RENDERER)
    except Exception:  # a context without PyOpenGL support still renders fine
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")


def _is_software(gl_renderer: str) -> bool:
    name = gl_renderer.lower()
    return any(s in name for s in ("llvmpipe", "softpipe", "swiftshader", "software", "swrast"))
