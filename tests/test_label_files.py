"""The course's label files ship unchanged, with the facts the rest of the code relies on."""
import hashlib
import json

import pytest

from conftest import ROOT

SHA256 = {
    "objects.json": "c2597380e60866a15e03bfc829eba051725191f097d6c6ec5508a47f4673b785",
    "train.json": "ea00721abb5e0743ea61ca36857b1d2a14b336457b8c6c9c7a0cd6a555075978",
    "test.json": "5bd1c81070a84e2f550c4b4add0f0186ee75d46c54606879548e32a11cf894fd",
    "new_test.json": "d1ab2f4a98518a802c663f8e92751e9e6de6becff5dfd1a5ac375c6d2880aa15",
}


@pytest.mark.parametrize("name", sorted(SHA256))
def test_label_file_is_byte_identical_to_the_course(name):
    assert hashlib.sha256((ROOT / name).read_bytes()).hexdigest() == SHA256[name]


def test_label_file_sizes():
    load = lambda name: json.loads((ROOT / name).read_text())  # noqa: E731
    assert len(load("objects.json")) == 24
    assert len(load("train.json")) == 18009
    assert [len(load(name)) for name in ("test.json", "new_test.json")] == [32, 32]
