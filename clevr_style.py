"""Domain randomization of CLEVR-like scenes: the ranges render_iclevr.py --randomize and --set draw a
scene's `Style` and its objects' color shades from (docs/data.md, "Domain randomization").

    from clevr_style import draw_albedo, draw_style, randomization
    ranges = randomization(0.5)                  # {name: (lo, hi)} at half strength
    style, metal_share = draw_style(ranges, rng)  # a clevr_scene.Style, from a numpy Generator
"""
import colorsys
import math

import numpy as np

from clevr_scene import CAMERA, DEFAULT_STYLE, PALETTE, SUN_DIR, SUN_IRRADIANCE, TAN_HALF_FOV, Style

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
