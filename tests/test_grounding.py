"""grounding.py: label tokens' cross-attention pulled onto their objects' masks, and train.py --masks."""
import csv

import pytest
import torch

import render_iclevr
import train
from conftest import ROOT
from grounding import Grounding, token_masks, token_positions
from model import build_model, load_checkpoint, preset_config

pytestmark = pytest.mark.usefixtures("one_thread")
OBJECTS = str(ROOT / "objects.json")
SCENE = ["--set", "scene_token=true"]  # the tiny preset with the token the ground attends to


@pytest.fixture(scope="module")
def masks_dir(tiny_iclevr):
    root, labels = tiny_iclevr
    out = root.parent / "masks"
    render_iclevr.main(["--json", str(labels), "--objects", OBJECTS, "--out", str(root), "--masks", str(out),
                        "--workers", "1"])
    return out


def test_tokens_follow_the_sorted_label_order_and_masks_pool_to_shares(label2idx):
    labels = ["yellow cylinder", "gray cube"]  # label indices sorted: gray cube comes first
    assert label2idx["gray cube"] < label2idx["yellow cylinder"]
    assert token_positions(labels, label2idx) == [1, 0]
    masks = torch.zeros(1, 8, 8, dtype=torch.uint8)
    masks[0, :4, :4] = 1  # object 1 (yellow cylinder) fills the top-left quarter
    masks[0, 4:, 4:2 + 4] = 2  # object 2 (gray cube): half of the bottom-right quarter
    shares = token_masks(masks, [labels], label2idx, 2).float()
    assert shares[0, 1].tolist() == [[1, 0], [0, 0]]  # token 1 = the yellow cylinder
    assert shares[0, 0].tolist() == [[0, 0], [0, 0.5]]
    assert shares[0, 2].sum() == 0  # no third object


def test_loss_is_low_when_attention_sits_on_the_object_and_its_gradient_moves_it_there(masks_dir, tiny_iclevr,
                                                                                      label2idx):
    from dataset import ICLEVRDataset, load_masks
    root, labels = tiny_iclevr
    data = ICLEVRDataset(root, labels, OBJECTS, image_size=16)
    config = preset_config("tiny", ["scene_token=true"])
    torch.manual_seed(0)
    net = build_model(config)
    grounding = Grounding(net, load_masks(masks_dir, data.names, labels, size=16), data.labels, label2idx)
    idx = torch.arange(len(data))
    x, t = torch.randn(len(idx), 3, 16, 16), torch.full((len(idx),), 50)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        with grounding.recording(idx):
            net(x, t, data.multi_hot)
        loss = grounding.loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert 0 <= losses[-1] < 0.75 * losses[0], losses  # the attention moved onto the objects
    with grounding.recording(idx):  # dropped labels (null condition) take no part
        net(x, t, torch.zeros_like(data.multi_hot))
    assert grounding.loss().item() == 0
    with torch.no_grad(), grounding.recording(idx):  # nothing recorded without gradient: one clear error
        net(x, t, data.multi_hot)
    with pytest.raises(ValueError, match="no cross-attention was recorded"):
        grounding.loss()


def run_train(tiny_iclevr, out, *extra):
    root, labels = tiny_iclevr
    train.main(["--preset", "tiny", "--data-root", str(root), "--json", str(labels), "--objects", OBJECTS,
                "--num-workers", "1", "--batch-size", "4", "--out", str(out), *map(str, extra)])


def test_train_with_masks_logs_the_grounding_loss_and_resumes_with_them(tiny_iclevr, masks_dir, tmp_path):
    out = tmp_path / "run"
    run_train(tiny_iclevr, out, "--epochs", 1, "--masks", masks_dir, *SCENE)
    ckpt = load_checkpoint(out / "model_epoch_001.pt")
    assert ckpt["masks"] == str(masks_dir) and ckpt["settings"]["grounding_weight"] == 0.1
    run_train(tiny_iclevr, out, "--epochs", 2, "--resume")  # the run's own masks, without the flag
    rows = list(csv.DictReader((out / "train_log.csv").read_text().splitlines()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(float(r["align_loss"]) > 0 for r in rows)
    assert load_checkpoint(out / "model_epoch_002.pt")["masks"] == str(masks_dir)


@pytest.mark.parametrize("extra, words", [
    ([], "scene token"),  # the tiny preset has none
    (SCENE + ["--grounding-weight", "-1"], "--grounding-weight"),
])
def test_masks_refusals_are_one_line(tiny_iclevr, masks_dir, tmp_path, extra, words, capsys):
    with pytest.raises(SystemExit) as e:
        run_train(tiny_iclevr, tmp_path / "run", "--epochs", 1, "--masks", masks_dir, *extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and words in err[0], err
    assert not list((tmp_path / "run").glob("model_epoch_*.pt"))


def test_a_mask_folder_for_another_label_file_is_refused(tiny_iclevr, masks_dir, tmp_path, capsys):
    root, labels = tiny_iclevr
    other = tmp_path / "other.json"
    other.write_text(labels.read_text().replace("]", " ]", 1))  # the same entries, other bytes
    with pytest.raises(SystemExit) as e:
        train.main(["--preset", "tiny", "--data-root", str(root), "--json", str(other), "--objects", OBJECTS,
                    "--num-workers", "1", "--batch-size", "4", "--out", str(tmp_path / "run"), "--epochs", "1",
                    "--masks", str(masks_dir), *SCENE])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "masks made for" in err and str(masks_dir) in err
