"""A model's outputs a chunk of rows at a time: the same values as its forward, never more rows at once."""

import pytest
import torch

from starfish_cli.models import outputs, structure_of
from starfish_cli.models.outputs import last_block_output, outputs_by_chunks, values_per_row


@pytest.fixture(scope="module")
def lm():
    pytest.importorskip("transformers")
    from starfish_cli.models.causal_lm import build_model

    return build_model("lm_reference")


@torch.no_grad()
def test_a_causal_lms_logits_by_chunks_of_tokens_are_its_forwards(lm, monkeypatch):
    structure = structure_of(lm)
    tokens = torch.randint(0, 2048, (3, 20), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(outputs, "rows_per_chunk", lambda values: 7)
    rows_seen = []
    handle = lm.lm_head.register_forward_hook(lambda _m, args, _o: rows_seen.append(args[0].shape[0]))
    try:
        chunks = list(outputs_by_chunks(structure, tokens))
        assert rows_seen == [7] * 8 + [4]  # 60 tokens, 7 at a time
        rows_seen.clear()
        last = last_block_output(structure, tokens)
        assert not rows_seen  # the head does not run
    finally:
        handle.remove()
    expected_logits, states = structure.forward_with_states(tokens)
    assert values_per_row(structure) == 2048 and torch.equal(last, states[-1])
    torch.testing.assert_close(torch.cat(chunks), expected_logits.flatten(0, 1), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_a_classifiers_rows_are_its_images(reference_model, calibration_batches):
    structure = structure_of(reference_model)
    images = calibration_batches[0][:6]
    assert values_per_row(structure) == 10
    chunks = list(outputs_by_chunks(structure, images))
    assert len(chunks) == 1 and torch.equal(chunks[0], reference_model(images))
