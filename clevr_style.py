"""The look of CLEVR-like scenes: palette, camera, lights and the scene-level `Style` (CLEVR's by
default), the degradations of the finished image, and the domain randomization that render_iclevr.py
--randomize and --set draw a scene's `Style` and its objects' color shades from (docs/data.md,
"Domain randomization"). clevr_scene.py traces the rays; this module says what they see.

    from clevr_style import draw_albedo, draw_style, randomization
    ranges = randomization(0.5)                  # {name: (lo, hi)} at half strength
    style, metal_share = draw_style(ranges, rng)  # a Style, from a numpy Generator
"""
import colorsys
import math
from dataclasses import dataclass

import numpy as np

PALETTE = {  # CLEVR properties.json, 0-255; used as LINEAR albedo (value / 255), as CLEVR does
    "gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215), "green": (29, 105, 20),
    "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
CAMERA = np.array([7.4811, -6.5076, 5.3437])
TAN_HALF_FOV = (16 / 35, 12 / 35)  # 35 mm lens on a 32 x 24 mm (4:3) sensor
GROUND_ALBEDO = 0.8
SUN_DIR = np.array([0.4145, -0.1946, 0.8890]) / np.linalg.norm([0.4145, -0.1946, 0.8890])
SUN_IRRADIANCE = 0.45


def srgb_to_linear(c):
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c):
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.power(c, 1 / 2.4) - 0.055)


def _hex(h):
    return srgb_to_linear([int(h[i:i + 2], 16) / 255 for i in (0, 2, 4)])  # Blender hex is sRGB


# Area lights of CLEVR's base scene, all aimed at the origin: position, square size, colour, watts.
AREA_LIGHTS = [
    (np.array([6.4467, -2.9052, 4.2584]), 0.5, _hex("FFEDD0"), 100.0),  # key
    (np.array([-4.6711, -4.0136, 3.0112]), 0.5, _hex("C2D0FF"), 30.0),  # fill
    (np.array([-1.1685, 2.6460, 5.8157]), 1.0, np.ones(3), 50.0),  # back
]


@dataclass(frozen=True)
class Style:
    """Scene-level settings, CLEVR's by default (hashable: frames are cached per style)."""
    camera: tuple = tuple(map(float, CAMERA))
    look_at: tuple = (0.0, 0.0, 0.0)
    tan_half_fov: tuple = TAN_HALF_FOV
    ground: object = GROUND_ALBEDO  # gray albedo, or (r, g, b)
    lights: tuple = tuple((tuple(map(float, p)), s, tuple(map(float, c)), w) for p, s, c, w in AREA_LIGHTS)
    sun_dir: tuple = tuple(map(float, SUN_DIR))
    sun: float = SUN_IRRADIANCE
    lowres: float = 1.0  # degradations of the sRGB image: a down- and up-sample by this factor,
    blur: float = 0.0  # then a Gaussian blur of this sigma (pixels),
    noise: float = 0.0  # then Gaussian noise of this standard deviation (0-255), drawn from noise_seed
    noise_seed: int = 0


DEFAULT_STYLE = Style()


def _filter(n_in, n_out, sigma=0.0):
    """(n_out, n_in) weights: an antialiased bilinear resize, or (sigma > 0) a Gaussian blur."""
    scale = n_in / n_out
    dist = np.arange(n_in)[None] - ((np.arange(n_out) + 0.5) * scale - 0.5)[:, None]
    w = np.exp(-0.5 * (dist / sigma) ** 2) if sigma else np.maximum(0.0, 1 - np.abs(dist) / max(scale, 1.0))
    return w / w.sum(1, keepdims=True)


def degrade(image, style):
    """An sRGB image (H, W, 3), floats in 0-255, with the style's down/up-sample, blur and noise."""
    h, w = image.shape[:2]
    rows, cols = np.eye(h), np.eye(w)
    if style.lowres < 1:
        sh, sw = max(1, round(h * style.lowres)), max(1, round(w * style.lowres))
        rows, cols = _filter(sh, h) @ _filter(h, sh), _filter(sw, w) @ _filter(w, sw)
    if style.blur > 0:
        rows, cols = _filter(h, h, style.blur) @ rows, _filter(w, w, style.blur) @ cols
    image = (rows @ image.transpose(2, 0, 1) @ cols.T).transpose(1, 2, 0)
    if style.noise > 0:
        image = image + np.random.default_rng(style.noise_seed).normal(0.0, style.noise, image.shape)
    return np.clip(image, 0, 255)



# What render_iclevr.py --randomize S draws per scene: name -> (value when off, spread below and above it at
# S = 1, the bounds --set accepts, meaning). Each value is drawn uniformly from [off - S * below, off + S * above],
# or from the range given with --set. The colour bounds keep every name (docs/data.md).
RANDOMIZABLE = {
    "camera_azimuth": (0.0, 10, 10, (-45, 45), "degrees added to the camera's azimuth about the origin"),
    "camera_elevation": (0.0, 6, 6, (-16, 30), "degrees added to the camera's elevation (CLEVR: 28.3)"),
    "camera_distance": (1.0, 0.1, 0.1, (0.7, 1.5), "factor on the camera's distance from the origin (11.26)"),
    "look_at": (0.0, 0.3, 0.3, (-1, 1), "shift of the point the camera aims at, drawn for x and for y"),
    "fov": (1.0, 0.1, 0.1, (0.7, 1.5), "factor on the tangent of half the field of view (49.1 x 37.8 deg)"),
    "object_size": (0.7, 0.35, 0, (0.25, 1), "radius of each object (CLEVR: small 0.35, large 0.7)"),
    "metal": (0.0, 0, 1, (0, 1), "share of metal objects, drawn per scene (the rest are rubber)"),
    "hue": (0.0, 5, 5, (-5, 5), "degrees added to each object's hue"),
    "saturation": (1.0, 0.1, 0.1, (0.9, 1.1), "factor on each object's saturation"),
    "value": (1.0, 0.1, 0.1, (0.9, 1.1), "factor on each object's value (brightness)"),
    "ground": (0.8, 0.32, 0.2, (0.05, 1.5), "albedo of the ground and backdrop"),
    "ground_tint": (1.0, 0.08, 0.08, (0.8, 1.2), "factor on each channel of the ground's albedo"),
    "light_position": (0.0, 1, 1, (-2, 2), "move of each area light along each axis (CLEVR's jitter: 1)"),
    "sun_azimuth": (0.0, 30, 30, (-180, 180), "degrees the sun turns about the vertical"),
    "key_light": (1.0, 0.3, 0.3, (0, 3), "factor on the key light's strength"),
    "fill_light": (1.0, 0.3, 0.3, (0, 3), "factor on the fill light's strength"),
    "back_light": (1.0, 0.3, 0.3, (0, 3), "factor on the back light's strength"),
    "sun": (1.0, 0.3, 0.3, (0, 3), "factor on the sun's strength"),
    "lowres": (1.0, 0.5, 0, (0.125, 1), "down- and up-sample by this factor, 0.5: 64 -> 32 -> 64 pixels"),
    "blur": (0.0, 0, 1, (0, 4), "sigma of a Gaussian blur, in output pixels"),
    "noise": (0.0, 0, 4, (0, 32), "standard deviation of Gaussian noise, in 0-255 steps"),
}


def randomization(strength, fixed=None):
    """{name: (lo, hi)}: the ranges --randomize `strength` draws from, `fixed` ({name: (lo, hi)}) overriding."""
    ranges = {k: (off - strength * below, off + strength * above)
              for k, (off, below, above, _, _) in RANDOMIZABLE.items()}
    return {**ranges, **(fixed or {})}


def draw_style(ranges, rng):
    """A random Style from `ranges` (see randomization) and the scene's share of metal objects."""
    u = lambda name, n=None: rng.uniform(*ranges[name], n)  # noqa: E731
    dist = float(np.linalg.norm(CAMERA))
    az = math.atan2(CAMERA[1], CAMERA[0]) + math.radians(u("camera_azimuth"))
    el = math.asin(CAMERA[2] / dist) + math.radians(u("camera_elevation"))
    dist *= u("camera_distance")
    camera = (dist * math.cos(el) * math.cos(az), dist * math.cos(el) * math.sin(az), dist * math.sin(el))
    look_at, fov = (*map(float, u("look_at", 2)), 0.0), u("fov")
    ground = tuple(map(float, u("ground") * u("ground_tint", 3)))
    lights = tuple((tuple(map(float, np.array(pos) + u("light_position", 3))), size, color, watts * u(name))
                   for (pos, size, color, watts), name in zip(DEFAULT_STYLE.lights, ("key_light", "fill_light",
                                                                                    "back_light")))
    turn = math.radians(u("sun_azimuth"))
    (x, y, z), c, s = SUN_DIR, math.cos(turn), math.sin(turn)
    style = Style(camera, look_at, (TAN_HALF_FOV[0] * fov, TAN_HALF_FOV[1] * fov), ground, lights,
                  (float(c * x - s * y), float(s * x + c * y), float(z)), SUN_IRRADIANCE * u("sun"),
                  u("lowres"), u("blur"), u("noise"), int(rng.integers(2**62)))
    return style, u("metal")


def draw_albedo(color, ranges, rng):
    """The linear albedo of one object of `color`: the palette's, hue, saturation and value jittered within `ranges`."""
    h, s, v = colorsys.rgb_to_hsv(*(np.array(PALETTE[color]) / 255))
    h = (h + rng.uniform(*ranges["hue"]) / 360) % 1
    s, v = min(1.0, s * rng.uniform(*ranges["saturation"])), min(1.0, v * rng.uniform(*ranges["value"]))
    return tuple(map(float, colorsys.hsv_to_rgb(h, s, v)))
