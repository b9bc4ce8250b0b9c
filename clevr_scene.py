"""A small CLEVR-like ray caster in numpy: CLEVR's camera, lights, palette and shapes.

Used by render_iclevr.py (see there for the command line). Hand-written because no library
renders CLEVR without Blender; the facts it follows (camera, lights, palette, sizes, spacing)
are CLEVR's own. Everything is vectorised over rays; per scene, each object is ray-cast once
and shadow-tested once, and the images of a scene (its first 1, 2 and 3 objects, as in
i-CLEVR's `_0/_1/_2`) are composited from those shared buffers, so `_1` is exactly `_0` plus
one object and its shadow.

    from clevr_scene import SceneObject, render_scene
    images, coverage = render_scene([SceneObject("sphere", "red", 0.0, 0.0)], size=(64, 64))

The look (palette, camera, lights, the scene-level `Style` and its randomization) lives in
clevr_style.py.
"""
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from clevr_style import CAMERA, DEFAULT_STYLE, PALETTE, degrade, linear_to_srgb

SHAPES = ("cube", "sphere", "cylinder")
SIZES = {"large": 0.7, "small": 0.35}
MATERIALS = ("rubber", "metal")

AMBIENT = 0.05  # stands in for the light a path tracer would gather from the room...
BOUNCE = 0.15  # ...and from the lit ground below: shaded sides reach CLEVR's ~0.2 x albedo
BACKDROP_START, BACKDROP_RADIUS = 10.0, 10.0  # the ground curves up this far behind the origin
EXPOSURE = 0.82  # matches the ground of CLEVR's renders: ~105 (top), ~145 (bottom) in sRGB
EPS = 1e-3


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    x: float
    y: float
    r: float = SIZES["large"]
    theta: float = 0.0  # rotation about the vertical axis, radians
    material: str = "rubber"
    albedo: tuple = None  # linear RGB albedo; None: the palette's (draw_albedo jitters it)

    @property
    def half(self):
        """Half-extent of the shape: CLEVR shrinks cubes by sqrt(2) so they fit the same footprint."""
        return self.r / np.sqrt(2) if self.shape == "cube" else self.r

    @property
    def footprint(self):
        """Radius of the circle around the object's base, used for the spacing rule."""
        return self.r

    @property
    def center(self):
        return np.array([self.x, self.y, self.half], dtype=np.float32)


def _normalize(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@lru_cache(maxsize=16)
def camera_basis(style):
    """The camera's position and its forward, right and up unit vectors."""
    forward = _normalize(np.array(style.look_at) - np.array(style.camera))
    right = _normalize(np.cross(forward, [0.0, 0.0, 1.0]))
    return np.array(style.camera), forward, right, np.cross(right, forward)


def project(points, width, height, style=DEFAULT_STYLE):
    """World points (..., 3) -> (column, row) in pixels of a width x height frame."""
    camera, forward, right, up = camera_basis(style)
    v = np.asarray(points, dtype=np.float64) - camera
    z = v @ forward
    col = (v @ right / z / style.tan_half_fov[0] + 1) / 2 * width
    row = (1 - v @ up / z / style.tan_half_fov[1]) / 2 * height
    return col, row


def bbox_corners(obj):
    """8 corners of an upright box that contains the object."""
    f, h = obj.footprint, 2 * obj.half
    return np.array([[obj.x + sx * f, obj.y + sy * f, z] for sx in (-1, 1) for sy in (-1, 1)
                     for z in (0.0, h)])


# ---------------------------------------------------------------- ray / shape intersection
def intersect(obj, origin, d):
    """Distance along unit rays `d` (n, 3) from `origin` ((3,) or (n, 3)) to `obj`; inf on a miss."""
    rel = (origin - obj.center).astype(np.float32)
    ox, oy, oz = rel[..., 0], rel[..., 1], rel[..., 2]
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    r, h = obj.r, obj.half
    with np.errstate(divide="ignore", invalid="ignore"):
        if obj.shape == "sphere":
            b = ox * dx + oy * dy + oz * dz
            disc = b * b - (ox * ox + oy * oy + oz * oz - r * r)
            t = -b - np.sqrt(disc)
        elif obj.shape == "cube":  # slab method in the cube's frame (rotate by -theta)
            c, s = np.float32(np.cos(obj.theta)), np.float32(np.sin(obj.theta))
            lo = (c * ox + s * oy, -s * ox + c * oy, oz)
            ld = (c * dx + s * dy, -s * dx + c * dy, dz)
            near, far = np.float32(-np.inf), np.float32(np.inf)
            for o_, d_ in zip(lo, ld):
                t1, t2 = (-h - o_) / d_, (h - o_) / d_
                near = np.maximum(near, np.minimum(t1, t2))
                far = np.minimum(far, np.maximum(t1, t2))
            t = np.where(near <= far, near, np.nan)
        else:  # vertical cylinder: side quadric, then the cap the ray can see
            a = dx * dx + dy * dy
            b = ox * dx + oy * dy
            disc = b * b - a * (ox * ox + oy * oy - r * r)
            t_side = (-b - np.sqrt(disc)) / a
            t_side = np.where(np.abs(oz + t_side * dz) <= h, t_side, np.nan)
            t_cap = (np.where(dz < 0, h, -h) - oz) / dz
            cx, cy = ox + t_cap * dx, oy + t_cap * dy
            t_cap = np.where(cx * cx + cy * cy <= r * r, t_cap, np.nan)
            t = np.fmin(t_side, t_cap)
    return np.where(t > EPS, t, np.inf).astype(np.float32)


def surface_normal(obj, p):
    """Outward unit normals of `obj` at surface points p (n, 3)."""
    rel = p - obj.center
    if obj.shape == "sphere":
        return rel / obj.r
    n = np.zeros_like(rel)
    if obj.shape == "cylinder":
        cap = np.abs(rel[:, 2]) >= obj.half - 1e-3
        n[:, :2] = rel[:, :2] / obj.r
        n[cap] = 0.0
        n[cap, 2] = np.sign(rel[cap, 2])
        return _normalize(n)
    c, s = np.cos(obj.theta), np.sin(obj.theta)
    local = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]], 1)
    axis = np.abs(local).argmax(1)
    sign = np.sign(local[np.arange(len(p)), axis])
    ln = np.zeros_like(local)
    ln[np.arange(len(p)), axis] = sign
    n[:, 0], n[:, 1], n[:, 2] = c * ln[:, 0] - s * ln[:, 1], s * ln[:, 0] + c * ln[:, 1], ln[:, 2]
    return n


# ---------------------------------------------------------------- lights and shading
@lru_cache(maxsize=4)
def _light_samples(lights, ss):
    """ss*ss stratified points on each area light's square, plus the (exact) sun."""
    grid = (np.arange(ss) + 0.5) / ss - 0.5
    gu, gv = [g.ravel() for g in np.meshgrid(grid, grid)]
    samples = []
    for pos, size, _, _ in lights:
        pos = np.array(pos)
        normal = _normalize(-pos)
        e1 = _normalize(np.cross(normal, [0.0, 0.0, 1.0]))
        e2 = np.cross(e1, normal)
        samples.append(pos + size * (gu[:, None] * e1 + gv[:, None] * e2))
    return samples


def light_terms(p, sample_ids, ss, style=DEFAULT_STYLE):
    """For each light: (direction to light (n, 3), distance (n,), irradiance colour (n, 3))."""
    out = []
    for (pos, _, color, watts), points in zip(style.lights, _light_samples(style.lights, ss)):
        v = points[sample_ids] - p
        dist = np.linalg.norm(v, axis=1)
        ldir = v / dist[:, None]
        emit = np.maximum(0.0, -ldir @ _normalize(-np.array(pos)))  # area lights emit with a cosine lobe
        out.append((ldir, dist, (watts / np.pi * emit / dist**2)[:, None] * np.array(color)))
    n = len(p)
    out.append((np.broadcast_to(np.array(style.sun_dir), (n, 3)), np.full(n, np.inf), np.full((n, 3), style.sun)))
    return out


def shade(p, normal, view, albedo, material, sample_ids, ss, style=DEFAULT_STYLE):
    """Unshadowed radiance of surface points: (ambient (n, 3), per-light terms [(n, 3)], lights)."""
    lights = light_terms(p, sample_ids, ss, style)
    albedo = np.asarray(albedo, dtype=np.float64)
    if material == "metal":  # tinted near-mirror: reflect the (unshadowed) room, sharp highlights
        refl = view - 2 * (view * normal).sum(1, keepdims=True) * normal
        bp, bn = background_hit(p + EPS * normal, refl)
        env_amb, env_terms, _ = shade(bp, bn, refl, style.ground, "rubber", sample_ids, ss, style)
        ambient = 0.85 * albedo * (env_amb + sum(env_terms))
        spec_k, spec_p, diffuse = 0.85 * albedo, 300.0, 0.05 * albedo / np.pi
    else:  # rubber: Lambert with a weak, broad highlight
        ambient = (AMBIENT + BOUNCE * (1 - normal[:, 2:]) / 2) * albedo
        spec_k, spec_p, diffuse = 0.04, 8.0, albedo / np.pi
    terms = []
    for ldir, _, irr in lights:
        cos = np.maximum(0.0, (normal * ldir).sum(1))[:, None]
        half = _normalize(ldir - view)
        spec = np.maximum(0.0, (normal * half).sum(1))[:, None] ** spec_p
        terms.append(irr * cos * (diffuse + spec_k * spec * (spec_p + 2) / (2 * np.pi)))
    return ambient, terms, lights


def background_hit(origin, d):
    """Hit points and normals on the ground, which curves up into a backdrop far behind."""
    ahead = _normalize(np.array([-CAMERA[0], -CAMERA[1], 0.0]))  # CLEVR's horizontal view direction
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(d[:, 2] < 0, -origin[..., 2] / d[:, 2], np.inf)
    p = origin + t[:, None] * d
    with np.errstate(invalid="ignore"):  # inf * 0 on rays that never reach the ground
        s = p @ ahead
    curve = ~(s <= BACKDROP_START)  # also rays that never reach the flat ground
    normal = np.tile([0.0, 0.0, 1.0], (len(d), 1))
    if curve.any():  # exit point of the quarter-pipe (a cylinder seen from inside)
        o = origin if origin.ndim == 1 else origin[curve]
        os_, oz = o @ ahead - BACKDROP_START, o[..., 2] - BACKDROP_RADIUS
        ds_, dz = d[curve] @ ahead, d[curve, 2]
        a, b = ds_**2 + dz**2, os_ * ds_ + oz * dz
        c = os_**2 + oz**2 - BACKDROP_RADIUS**2
        tc = (-b + np.sqrt(np.maximum(b * b - a * c, 0.0))) / a
        pc = o + tc[:, None] * d[curve]
        p[curve] = pc
        sc, zc = pc @ ahead - BACKDROP_START, pc[:, 2] - BACKDROP_RADIUS
        normal[curve] = -(sc[:, None] * ahead + zc[:, None] * np.array([0, 0, 1.0])) / BACKDROP_RADIUS
    return p, normal


# ---------------------------------------------------------------- the frame and its background
def frame(width, height, ss, style=None):
    """Rays of a supersampled frame and the background's unshadowed light (shared by all scenes of a style).

    The 4:3 CLEVR frustum is drawn straight into width x height pixels, so a square size gives
    the squashed frame users get by resizing 320x240 images to 64x64.
    """
    return _frame(width, height, ss, style or DEFAULT_STYLE)


@lru_cache(maxsize=4)
def _frame(width, height, ss, style):
    cols, rows = width * ss, height * ss
    x = ((np.arange(cols) + 0.5) / cols * 2 - 1) * style.tan_half_fov[0]
    y = (1 - (np.arange(rows) + 0.5) / rows * 2) * style.tan_half_fov[1]
    xx, yy = np.meshgrid(x, y)
    camera, forward, right, up = camera_basis(style)
    d = _normalize(forward + xx.reshape(-1, 1) * right + yy.reshape(-1, 1) * up)
    # Each subpixel of a pixel sees a different stratified light sample (shuffled per pixel, so the
    # penumbra does not line up with the subpixel grid): ss*ss shadow samples per light and pixel.
    rng = np.random.default_rng(0)
    ids = rng.permuted(np.tile(np.arange(ss * ss), (width * height, 1)), axis=1)
    sample_ids = ids.reshape(height, width, ss, ss).transpose(0, 2, 1, 3).reshape(-1)
    p, normal = background_hit(camera, d)
    ambient, terms, lights = shade(p, normal, d, style.ground, "rubber", sample_ids, ss, style)
    return dict(d=d.astype(np.float32), shadow_origin=p + EPS * normal, sample_ids=sample_ids, style=style,
                camera=camera,
                radiance=(EXPOSURE * (ambient + sum(terms))).astype(np.float32),
                terms=[(EXPOSURE * t).astype(np.float32) for t in terms],
                lights=[(ldir.astype(np.float32), dist) for ldir, dist, _ in lights],
                shape=(rows, cols), ss=ss)


def _rect_indices(points, fr, margin=1):
    """Flat indices of the subpixels inside the screen box around projected world points."""
    rows, cols = fr["shape"]
    ss = fr["ss"]
    c, r = project(points, cols, rows, fr["style"])
    c0, c1 = max(int(np.floor(c.min())) - margin * ss, 0), min(int(np.ceil(c.max())) + margin * ss, cols)
    r0, r1 = max(int(np.floor(r.min())) - margin * ss, 0), min(int(np.ceil(r.max())) + margin * ss, rows)
    if c0 >= c1 or r0 >= r1:
        return np.zeros(0, dtype=np.int64)
    return (np.arange(r0, r1)[:, None] * cols + np.arange(c0, c1)).ravel()


def _shadow_box(obj, light_index, style):
    """Ground points bounding the shadow `obj` casts from one light (its samples' extremes)."""
    corners = bbox_corners(obj)
    if light_index == len(style.lights):  # the sun
        sun = np.array(style.sun_dir)
        ground = corners - sun * (corners[:, 2:] / sun[2])
    else:
        pos, size, _, _ = style.lights[light_index]
        ground = []
        for q in np.array(pos) + np.array([[a, b, 0.0] for a in (-size, size) for b in (-size, size)]):
            k = q[2] / np.maximum(q[2] - corners[:, 2], 1e-3)
            ground.append(q + (corners - q) * k[:, None])
        ground = np.concatenate(ground)
    return np.concatenate([ground, corners])


def _primary_hits(obj, fr):
    """(subpixel indices, distances) where camera rays hit `obj`."""
    idx = _rect_indices(bbox_corners(obj), fr)
    t = intersect(obj, fr["camera"], fr["d"][idx])
    hit = np.isfinite(t)
    return idx[hit], t[hit]


def _nearest(hits, n_rays):
    """Index of the nearest object per subpixel (-1: background), from _primary_hits of each."""
    depth = np.full(n_rays, np.inf, dtype=np.float32)
    ids = np.full(n_rays, -1)
    for k, (idx, t) in enumerate(hits):
        closer = t < depth[idx]
        depth[idx[closer]], ids[idx[closer]] = t[closer], k
    return ids


def visible_pixels(objects, size=(64, 64), ss=3, style=None):
    """How many output pixels of each object the camera sees (primary rays only: cheap)."""
    fr = frame(*size, ss, style)
    ids = _nearest([_primary_hits(obj, fr) for obj in objects], len(fr["d"]))
    return np.bincount(ids[ids >= 0], minlength=len(objects)) / (ss * ss)


def in_frame(obj, size=(64, 64), style=DEFAULT_STYLE):
    """True when the object's bounding box projects inside the frame."""
    col, row = project(bbox_corners(obj), *size, style)
    return col.min() >= 0 and row.min() >= 0 and col.max() <= size[0] and row.max() <= size[1]


def trace(objects, fr):
    """Per-object buffers shared by every image of the scene (hits, shading, shadow tests)."""
    bufs = []
    for obj in objects:
        idx, t = _primary_hits(obj, fr)
        d = fr["d"][idx].astype(np.float64)
        p = fr["camera"] + t[:, None] * d
        normal = surface_normal(obj, p)
        sid = fr["sample_ids"][idx]
        albedo = np.array(PALETTE[obj.color]) / 255 if obj.albedo is None else np.array(obj.albedo)
        ambient, terms, lights = shade(p, normal, d, albedo, obj.material, sid, fr["ss"], fr["style"])
        ground_shadow = []  # per light: background subpixels this object shadows
        for li in range(len(fr["lights"])):
            gidx = _rect_indices(_shadow_box(obj, li, fr["style"]), fr)
            ldir, dist = fr["lights"][li]
            blocked = intersect(obj, fr["shadow_origin"][gidx], ldir[gidx]) < dist[gidx]
            ground_shadow.append(gidx[blocked])
        bufs.append(dict(obj=obj, idx=idx, t=t, p=p + EPS * normal, ambient=EXPOSURE * ambient,
                         terms=[EXPOSURE * term for term in terms], lights=lights,
                         ground_shadow=ground_shadow))
    for k, a in enumerate(bufs):  # object-on-object shadows
        a["shadow_from"] = {j: [intersect(b["obj"], a["p"], ldir.astype(np.float32)) < dist
                                for ldir, dist, _ in a["lights"]]
                            for j, b in enumerate(bufs) if j != k}
    return bufs


def composite(bufs, n, fr):
    """Linear radiance (rows*cols, 3) and object index per subpixel with the first n objects."""
    subset = range(n)
    radiance = fr["radiance"].copy()  # the unshadowed background, minus each light it loses
    for li, term in enumerate(fr["terms"]):
        shadowed = np.unique(np.concatenate([bufs[k]["ground_shadow"][li] for k in subset] + [[]])).astype(int)
        radiance[shadowed] -= term[shadowed]
    ids = _nearest([(bufs[k]["idx"], bufs[k]["t"]) for k in subset], len(radiance))
    for k in subset:
        b = bufs[k]
        mine = ids[b["idx"]] == k
        rad = b["ambient"][mine] + 0.0
        for li, term in enumerate(b["terms"]):
            lit = np.ones(int(mine.sum()), dtype=bool)
            for j in subset:
                if j != k:
                    lit &= ~b["shadow_from"][j][li][mine]
            rad += term[mine] * lit[:, None]
        radiance[b["idx"][mine]] = rad
    return radiance, ids


def _box_down(x, ss):
    """Average ss x ss blocks of a (H*ss, W*ss, ...) array (a sum of strided views: fast)."""
    return sum(x[i::ss, j::ss] for i in range(ss) for j in range(ss)) / (ss * ss)


def render_scene(objects, size=(64, 64), ss=3, counts=None, style=None):
    """Render the first n objects for each n in `counts` (default: all of them) in `style` (default CLEVR's).

    Returns (images, coverage): uint8 (H, W, 3) sRGB images and, per image, float arrays
    (n, H, W) holding the fraction of each pixel that each object covers (before any degradation).
    """
    width, height = size
    style = style or DEFAULT_STYLE
    fr = frame(width, height, ss, style)
    bufs = trace(objects, fr)
    images, coverage = [], []
    for n in counts or [len(objects)]:
        radiance, ids = composite(bufs, n, fr)
        lin = _box_down(radiance.reshape(height * ss, width * ss, 3), ss)
        srgb = linear_to_srgb(lin) * 255
        if style.lowres < 1 or style.blur > 0 or style.noise > 0:
            srgb = degrade(srgb, style)
        images.append((srgb + 0.5).astype(np.uint8))
        ids = ids.reshape(height * ss, width * ss)
        coverage.append(np.stack([_box_down((ids == k).astype(np.float32), ss) for k in range(n)])
                        if n else np.zeros((0, height, width), dtype=np.float32))
    return images, coverage


def object_mask(coverage):
    """render_scene's coverage (n, H, W) -> uint8 (H, W): 0 for the ground, k for the k-th object. A pixel
    goes to the object covering the most of its supersamples (the earlier one on a tie), and to the
    ground when objects cover less than half of it, so anti-aliased edges split as a 50% threshold does."""
    if not len(coverage):
        return np.zeros(coverage.shape[1:], dtype=np.uint8)
    return np.where(coverage.sum(0) >= 0.5, coverage.argmax(0) + 1, 0).astype(np.uint8)
