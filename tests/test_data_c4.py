"""data=c4: the SparseGPT/Wanda calibration and evaluation protocol, on local shards of C4's layout (gzipped
JSON lines under en/), never the hub."""

import gzip
import json
import random
from pathlib import Path

import pytest
import torch


transformers = pytest.importorskip("transformers")

import starfish_cli.configs  # noqa: E402
from starfish_cli.data import DATASETS  # noqa: E402
from starfish_cli.data.calibration import CalibrationSampler  # noqa: E402
from starfish_cli.models.causal_lm import REFERENCE_DIR  # noqa: E402
from starfish_cli.runtime.errors import StarfishError  # noqa: E402

WORDS = "the cat sat on a warm mat while the dog ran after a red ball in the green park".split()


def document(i: int) -> str:
    """Documents of very different lengths: some shorter than a calibration window, most longer."""
    return " ".join(WORDS[(i * 5 + k) % len(WORDS)] for k in range(3 + (i * 37) % 90))


@pytest.fixture(scope="module")
def c4_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("c4")
    (folder / "en").mkdir()
    for name, count in (("c4-train.00000-of-01024.json.gz", 60), ("c4-validation.00000-of-00008.json.gz", 30)):
        with gzip.open(folder / "en" / name, "wt") as handle:
            for i in range(count):
                handle.write(json.dumps({"text": document(i + (0 if "train" in name else 1000)),
                                         "timestamp": "2019-04-25T12:57:54Z", "url": f"https://example.org/{i}"}) + "\n")
    return folder


def test_calibration_windows_follow_the_papers_draw(c4_folder):
    from omegaconf import OmegaConf

    tokenizer = transformers.AutoTokenizer.from_pretrained(REFERENCE_DIR)
    config = OmegaConf.load(Path(starfish_cli.configs.__file__).parent / "data" / "c4.yaml")  # as data=c4 gives it
    c4 = DATASETS.build({**OmegaConf.to_container(config), "hub_id": str(c4_folder)})
    windows, indices, described = c4.calibration_items(CalibrationSampler(count=6, seq_len=32), 0, None,
                                                       tokenizer, 128, 128)
    assert described["seq_len"] == 32 and len(windows) == 6
    # the papers' loop, written out: a random document until one is longer than the window, a random offset in it
    draw, documents = random.Random(0), [document(i) for i in range(60)]
    for position in range(6):
        while True:
            chosen = draw.randint(0, 59)
            ids = tokenizer(documents[chosen])["input_ids"]
            if len(ids) > 32:
                break
        start = draw.randint(0, len(ids) - 33)
        assert indices[position] == [chosen, start]
        assert torch.equal(windows[position][1], torch.tensor(ids[start:start + 32]))
    with pytest.raises(StarfishError, match="set calib.count"):
        c4.calibration_items(CalibrationSampler(fraction=0.1, seq_len=32), 0, None, tokenizer, 128, 128)
    with pytest.raises(StarfishError, match="no document .* longer than calib.seq_len=100000"):
        c4.calibration_items(CalibrationSampler(count=1, seq_len=100000), 0, None, tokenizer, None, 128)


def test_evaluation_is_the_first_windows_of_the_first_documents_joined(c4_folder):
    tokenizer = transformers.AutoTokenizer.from_pretrained(REFERENCE_DIR)
    c4 = DATASETS.build({"name": "c4", "hub_id": str(c4_folder), "eval_documents": 20, "eval_windows": 3})
    windows, _ = c4.evaluation_items(None, tokenizer, 128, 128, seq_len=16)
    joined = torch.tensor(tokenizer(" ".join(document(1000 + i) for i in range(20)))["input_ids"])
    assert len(windows) == 3 and torch.equal(torch.cat([windows[i][1] for i in range(3)]), joined[:48])
    assert len(c4.evaluation_items(2, tokenizer, 128, 128, seq_len=16)[0]) == 2
