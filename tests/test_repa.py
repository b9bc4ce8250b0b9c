"""REPA (repa.py, train.py --repa-encoder): the alignment loss, its run state, exact resume, and refusals."""
import pytest
import torch

from evaluator import build_network
from model import build_model, preset_config
from repa import Alignment, encoder_channels, encoder_features, load_encoder
from test_train import assert_same, load, log_rows, one_line_error, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def encoder(feature_encoder):
    return feature_encoder


@pytest.fixture(scope="module")
def reference(run, encoder, tmp_path_factory):
    """An uninterrupted 2-epoch REPA run (2 steps per epoch)."""
    out = tmp_path_factory.mktemp("repa_reference")
    run(out, "--epochs", 2, "--batch-size", 4, "--repa-encoder", encoder)
    return out


def test_alignment_loss_teaches_the_middle_block_and_sampling_keeps_nothing(encoder):
    net = build_model(preset_config("tiny"))
    enc = load_encoder(encoder)
    align = Alignment(net.unet, encoder_channels(enc))
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    targets = encoder_features(enc, images, align.size, show=False)
    assert targets.shape == (2, 256, align.size, align.size) == (2, 256, 8, 8)
    net(torch.randn(2, 3, 16, 16), torch.tensor([3, 50]), torch.zeros(2, 24))
    loss = align(targets)
    assert -1 <= loss.item() <= 1
    loss.backward()
    mid = [p.grad for p in net.unet.mid_block.parameters() if p.grad is not None]
    assert mid and any(g.abs().sum() > 0 for g in mid)  # the gradient reaches the UNet, not only the projector
    assert all(p.grad is None for p in net.unet.up_blocks.parameters())  # nothing after the middle block
    with pytest.raises(RuntimeError):
        align(targets)  # the kept output is used once
    net.eval()
    net(torch.randn(2, 3, 16, 16), torch.tensor([3, 50]), torch.zeros(2, 24))
    assert align.hidden is None  # sampling keeps no activations


def test_a_repa_run_logs_the_alignment_keeps_its_encoder_and_resumes_exactly(run, reference, encoder, tmp_path):
    ckpt = load(reference / "model_epoch_002.pt")
    assert ckpt["repa"]["encoder"] == str(encoder) and len(ckpt["repa"]["sha256"]) == 64
    assert ckpt["settings"]["repa_weight"] == 0.5 and "projector.0.weight" in ckpt["repa"]["projector"]
    assert all(-1 <= float(r["align_loss"]) <= 1 for r in log_rows(reference))
    split = tmp_path / "split"
    run(split, "--epochs", 1, "--batch-size", 4, "--repa-encoder", encoder)
    run(split, "--epochs", 2, "--resume")  # the encoder comes from the checkpoint
    resumed = load(split / "model_epoch_002.pt")
    for key in ("model", "ema_model", "optimizer", "settings", "repa"):
        assert_same(ckpt[key], resumed[key], key)
    plain = tmp_path / "plain"  # the same run without alignment learns other weights
    run(plain, "--epochs", 1, "--batch-size", 4)
    assert log_rows(plain)[0]["align_loss"] == ""
    assert not torch.equal(load(plain / "model_epoch_001.pt")["model"]["unet.conv_in.weight"],
                           load(split / "model_epoch_001.pt")["model"]["unet.conv_in.weight"])


def test_repa_refusals_are_one_line_and_write_nothing(run, reference, encoder, tmp_path, capsys):
    other = tmp_path / "other.pth"
    torch.manual_seed(8)
    torch.save({"model": build_network().state_dict()}, other)
    foreign = tmp_path / "foreign.pth"
    torch.save({"weights": 1}, foreign)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(encoder.read_bytes()[:1000])
    plain = tmp_path / "plain"
    run(plain, "--epochs", 1, "--batch-size", 4)
    capsys.readouterr()
    cases = [(tmp_path / "a", ["--repa-encoder", tmp_path / "none.pth"], "none.pth"),
             (tmp_path / "b", ["--repa-encoder", foreign], "not an evaluator checkpoint"),
             (tmp_path / "c", ["--repa-encoder", truncated], "truncated.pth"),
             (tmp_path / "d", ["--repa-encoder", encoder, "--judge", encoder], "is the judge that scores"),
             (tmp_path / "e", ["--repa-encoder", encoder, "--repa-weight", -1], "--repa-weight -1.0 is out of range"),
             (reference, ["--epochs", 3, "--resume", "--repa-encoder", other], "is not the encoder this run"),
             (plain, ["--epochs", 2, "--resume", "--repa-encoder", encoder], "was trained without --repa-encoder")]
    for out, args, words in cases:
        before = snapshot(out) if out.exists() else None
        with pytest.raises(SystemExit) as e:
            run(out, "--epochs", 1, "--batch-size", 4, *args)
        assert e.value.code == 2, words
        one_line_error(capsys, words)
        assert (snapshot(out) if out.exists() else None) == before, words
