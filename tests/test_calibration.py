from collections import Counter

import numpy as np
import pytest

from starfish_cli.data.calibration import CalibrationSampler
from starfish_cli.runtime.errors import StarfishError

LABELS = np.repeat(np.arange(10), 100)  # 1,000 images, 100 per class


def test_balanced_sample_has_equal_share_per_class():
    indices = CalibrationSampler(count=240).sample(len(LABELS), LABELS, seed=0)
    assert len(indices) == len(set(indices)) == 240
    assert set(Counter(LABELS[indices]).values()) == {24}


def test_remainder_is_spread_one_per_class():
    counts = Counter(LABELS[CalibrationSampler(count=53).sample(len(LABELS), LABELS, seed=1)])
    assert sum(counts.values()) == 53 and set(counts.values()) == {5, 6}


def test_fraction_default_gives_0_4_percent():
    assert CalibrationSampler().size(60_000) == 240


def test_sampling_is_seeded():
    sampler = CalibrationSampler(count=50)
    assert sampler.sample(1000, LABELS, seed=7) == sampler.sample(1000, LABELS, seed=7)
    assert sampler.sample(1000, LABELS, seed=7) != sampler.sample(1000, LABELS, seed=8)


def test_small_class_gives_its_share_to_others():
    labels = np.array([0] * 2 + [1] * 50 + [2] * 50)
    indices = CalibrationSampler(count=30).sample(len(labels), labels, seed=0)
    counts = Counter(labels[indices])
    assert len(indices) == len(set(indices)) == 30 and counts[0] == 2


def test_unlabeled_split_samples_uniformly():
    indices = CalibrationSampler(count=20).sample(500, None, seed=0)
    assert len(set(indices)) == 20 and max(indices) < 500


@pytest.mark.parametrize("kwargs", [{"count": 0}, {"count": -3}, {"fraction": 0.0}, {"count": 2.5}])
def test_zero_or_invalid_size_is_an_error(kwargs):
    with pytest.raises(StarfishError, match="calib"):
        CalibrationSampler(**kwargs).size(1000)


def test_fraction_that_rounds_to_zero_is_an_error():
    with pytest.raises(StarfishError, match="0 images"):
        CalibrationSampler(fraction=0.0001).size(1000)
