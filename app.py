"""A small web demo: choose 1-3 objects, a seed, sampler steps and guidance; see the image and how it formed.

Usage:
    pip install -r requirements-app.txt     # gradio, kept out of the core install
    python app.py                           # http://127.0.0.1:7860: newest checkpoint, else the shipped generator
    python app.py --ckpt checkpoints/model_epoch_012.pt --port 8000
    python app.py --help

The image is the one generate.py would draw for these labels and seed (image index 0), shown
upscaled for viewing, with its 64x64 PNG to download and the denoising strip of denoise.py under
it. A bad choice (no object, the same object twice) is a message in the page. The server listens
on 127.0.0.1 unless --host says otherwise.
"""
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from dataset import check_labels, encode_labels, load_objects
from denoise import denoising_frames, frame_steps, resize
from grid import as_uint8, grid_image
from model import to_64
from sampling import add_checkpoint_args, load_sampler, resolve_settings
from utils import ArgumentParser, ICLEVRError, exit_on_user_error

NONE = "(none)"
VIEW = 256  # pixels of the image shown in the page
FRAMES = 8  # frames of the denoising strip after the starting noise


class Drawer:
    """A model loaded once, drawing one image and its denoising strip per request."""

    def __init__(self, sampler, objects="objects.json"):
        self.sampler, self.config = sampler, sampler.config
        self.label2idx = load_objects(objects)
        self.files = Path(tempfile.mkdtemp(prefix="iclevr_app_"))

    def draw(self, first, second, third, seed, steps, guidance):
        """(image for viewing, path of its 64x64 PNG, denoising strip, message); a bad choice only sets the message."""
        labels = [x for x in (first, second, third) if x and x != NONE]
        try:
            check_labels(labels, self.label2idx, "objects")
            seed = int(seed)
            sampler = replace(self.sampler, steps=int(steps), guidance=float(guidance))
            resolve_settings(self.config, sampler.sampler, sampler.steps, sampler.guidance)
        except (ICLEVRError, TypeError, ValueError) as e:
            return None, None, None, f"**Cannot draw this:** {e}"
        start = time.time()
        with torch.no_grad():
            every, clean = denoising_frames(sampler, encode_labels(labels, self.label2idx), seed)
        image = Image.fromarray(as_uint8(to_64(every[-1:]))[0].permute(1, 2, 0).numpy())
        path = self.files / f"{'+'.join(x.replace(' ', '_') for x in labels)}_seed{seed}.png"
        image.save(path)
        picked = [0] + [i + 1 for i in frame_steps(sampler.steps, min(FRAMES, sampler.steps))]
        strip = grid_image(torch.cat([resize(every[picked], 96), resize(clean[picked], 96)]), nrow=len(picked))
        message = f"{', '.join(labels)}: seed {seed}, drawn in {time.time() - start:.1f} s by {sampler.describe()}"
        return image.resize((VIEW, VIEW), Image.BICUBIC), str(path), strip, message


def build_app(drawer):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves this machine
    import gradio as gr
    choices = [NONE, *drawer.label2idx]
    with gr.Blocks(title="i-CLEVR diffusion") as app:
        gr.Markdown("# i-CLEVR conditional diffusion\nChoose 1 to 3 objects; the model draws a CLEVR-like scene.")
        with gr.Row():
            first = gr.Dropdown(choices, value="red sphere", label="object 1")
            second = gr.Dropdown(choices, value="cyan cylinder", label="object 2")
            third = gr.Dropdown(choices, value=NONE, label="object 3")
        with gr.Row():
            seed = gr.Number(value=0, precision=0, label="seed")
            steps = gr.Slider(5, 100, value=drawer.sampler.steps, step=1, label="sampler steps")
            guidance = gr.Slider(1, 8, value=drawer.sampler.guidance, step=0.5, label="guidance")
        button = gr.Button("Draw", variant="primary")
        message = gr.Markdown()
        with gr.Row():
            image = gr.Image(label="the image (upscaled for viewing)", type="pil", height=VIEW, width=VIEW)
            download = gr.File(label="64x64 PNG")
        strip = gr.Image(label="how it formed: top, noise to image; bottom, the model's guess of the finished image",
                         type="pil")
        inputs, outputs = [first, second, third, seed, steps, guidance], [image, download, strip, message]
        button.click(drawer.draw, inputs, outputs, api_name="draw")
        app.load(drawer.draw, inputs, outputs, api_name=False)  # the page opens with the default scene drawn
    return app


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n")[0])
    add_checkpoint_args(p)
    p.add_argument("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0 opens it to the network).")
    p.add_argument("--port", type=int, default=7860, help="Port to listen on.")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N].")
    p.add_argument("--objects", default="objects.json", help="The 24 labels and their indices.")
    return p


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ICLEVRError("app.py needs gradio: pip install -r requirements-app.txt") from None
    drawer = Drawer(load_sampler(args.ckpt, args.checkpoints_dir, device=args.device), args.objects)
    print(f"drawing with {drawer.sampler.describe()}")
    build_app(drawer).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
