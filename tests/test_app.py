"""app.py, the web demo: drawing, refusals shown in the page, and the server called through gradio_client.

Skipped when gradio (requirements-app.txt, not part of the core install) is not installed.
"""
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from dataset import encode_labels, load_objects
from grid import as_uint8
from model import load_checkpoint, model_from_checkpoint, to_64
from sampling import load_sampler, sample

pytest.importorskip("gradio", reason="the web demo's gradio is not installed (pip install -r requirements-app.txt)")
gradio_client = pytest.importorskip("gradio_client", reason="gradio_client is not installed")
import app  # noqa: E402

OBJECTS = str(ROOT / "objects.json")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt):
    return tiny_ckpt


def test_drawer_draws_what_generate_draws_and_refuses_in_the_page(ckpt):
    drawer = app.Drawer(load_sampler(ckpt, device="cpu"), OBJECTS)
    image, path, strip, message = drawer.draw("red sphere", "cyan cube", app.NONE, 3, 5, 2)
    assert image.size == (app.VIEW, app.VIEW) and "drawn in" in message and "epoch 1" in message
    model, config = model_from_checkpoint(load_checkpoint(ckpt))
    cond = encode_labels(["red sphere", "cyan cube"], load_objects(OBJECTS))[None]
    expected = as_uint8(to_64(sample(model, config, cond, steps=5, guidance=2, seed=3)))[0].permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(Image.open(path)), expected)  # the 64x64 download is generate.py's image 0
    assert strip.width > 6 * 96  # the starting noise and 5 steps, two rows
    for bad, words in [(("red sphere", "red sphere", app.NONE), "appears twice"),
                       ((app.NONE, app.NONE, app.NONE), "empty label list")]:
        out = drawer.draw(*bad, 0, 5, 2)
        assert out[:3] == (None, None, None) and "Cannot draw" in out[3] and words in out[3]


def test_server_answers_on_localhost_through_gradio_client(ckpt):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = app.build_app(app.Drawer(load_sampler(ckpt, device="cpu"), OBJECTS))
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        image, path, strip, message = client.predict("red sphere", "cyan cube", app.NONE, 0, 5, 2, api_name="/draw")
        assert Image.open(path).size == (64, 64) and Path(image).is_file() and Path(strip).is_file()
        assert "drawn in" in message
        *nothing, message = client.predict("gray cube", "gray cube", app.NONE, 0, 5, 2, api_name="/draw")
        assert nothing == [None, None, None] and "appears twice" in message
    finally:
        demo.close()


def test_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        app.main(["--ckpt", str(tmp_path / "none.pt"), "--objects", OBJECTS])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "none.pt: no such checkpoint" in err[0]
