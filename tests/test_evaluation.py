import copy

import pytest
import torch

from starfish_cli.evaluation.compare import evaluate
from starfish_cli.evaluation.metrics import topk_correct
from starfish_cli.pruning import PRUNERS


def test_topk_correct_by_hand():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 1, 0])
    assert topk_correct(logits, labels, 1) == 1
    assert topk_correct(logits, labels, 2) == 2
    assert topk_correct(logits, labels, 5) == 3  # k beyond the class count means every class


@pytest.mark.slow
def test_evaluate_reference_against_itself_and_a_pruned_copy(reference_model, test_images):
    pruned = copy.deepcopy(reference_model)
    PRUNERS.build({"name": "magnitude", "sparsity": 0.9}).prune(pruned)
    results = evaluate({"dense": reference_model, "same": copy.deepcopy(reference_model), "pruned": pruned},
                       test_images, torch.device("cpu"), batch_size=100)
    models = results["models"]
    assert results["images"] == len(test_images)
    assert models["same"]["agreement"] == 100.0 and models["same"]["top1"] == models["dense"]["top1"]
    assert models["same"]["block_cosine"] == pytest.approx([1.0] * 6, abs=1e-5)
    assert models["dense"]["top1"] > 80.0  # the reference model is trained
    assert models["pruned"]["agreement"] < 100.0 and min(models["pruned"]["block_cosine"]) < 0.99


@pytest.mark.slow
def test_sweep_cache_gives_identical_numbers(reference_model, test_images):
    from starfish_cli.evaluation.cache import SweepCache

    pruned = copy.deepcopy(reference_model)
    PRUNERS.build({"name": "magnitude", "sparsity": 0.5}).prune(pruned)
    models = {"dense": reference_model, "pruned": pruned, "healed": pruned}
    cache = SweepCache()
    fresh = evaluate(models, test_images, torch.device("cpu"), batch_size=64)
    keys = {"dense": "k", "pruned": "p"}
    single = evaluate(models, test_images, torch.device("cpu"), batch_size=64, cache_keys=keys, cache=cache)
    assert cache.key is None  # one run records nothing: its memory does not grow with the images
    first = evaluate(models, test_images, torch.device("cpu"), batch_size=64, cache_keys=keys, cache=cache,
                     record_reference=True)
    assert cache.key == "k" and len(cache.batches) == 4
    assert single["models"]["dense"]["top1"] == fresh["models"]["dense"]["top1"]
    again = evaluate(models, test_images, torch.device("cpu"), batch_size=64, cache_keys=keys, cache=cache)
    for results in (first, again):
        for name in models:
            for metric in ("top1", "top5", "agreement", "block_cosine"):
                assert results["models"][name][metric] == fresh["models"][name][metric], (name, metric)


@pytest.mark.slow
def test_models_under_one_key_run_once_and_share_results(reference_model, test_images):
    from starfish_cli.evaluation.cache import SweepCache

    pruned = copy.deepcopy(reference_model)
    PRUNERS.build({"name": "magnitude", "sparsity": 0.5}).prune(pruned)
    unhealed = copy.deepcopy(pruned)  # what healer=none leaves: the pruned weights
    calls = {"pruned": 0, "healed": 0}
    for name, model in (("pruned", pruned), ("healed", unhealed)):
        model.patch_embed.register_forward_hook(lambda *_a, name=name: calls.__setitem__(name, calls[name] + 1))
    models = {"dense": reference_model, "pruned": pruned, "healed": unhealed}
    shared = evaluate(models, test_images, torch.device("cpu"), batch_size=64,
                      cache_keys={"pruned": "p", "healed": "p"}, cache=SweepCache())
    assert calls == {"pruned": 4, "healed": 0}
    assert shared["models"]["healed"] == shared["models"]["pruned"]
    fresh = evaluate(models, test_images, torch.device("cpu"), batch_size=64)
    assert shared["models"]["healed"]["top1"] == fresh["models"]["healed"]["top1"]


def test_no_evaluation_images_is_a_clear_error(reference_model, test_images):
    from starfish_cli.runtime.errors import StarfishError

    empty = torch.utils.data.Subset(test_images, [])
    with pytest.raises(StarfishError, match="no images"):
        evaluate({"dense": reference_model, "pruned": reference_model}, empty, torch.device("cpu"))


def test_a_sweep_stops_recording_when_the_cap_would_be_exceeded(reference_model, test_images):
    from starfish_cli.evaluation.cache import SweepCache

    per_batch = 64 * 6 * 50 * 128 * 4  # six block states of 64 images, fp32 (the head runs again on the last)
    cache = SweepCache(max_bytes=2 * per_batch + 1)  # room for 2 of the 4 batches
    results = evaluate({"dense": reference_model}, test_images, torch.device("cpu"), batch_size=64,
                       cache_keys={"dense": "k"}, cache=cache, record_reference=True)
    assert cache.key is None and cache.batches is None and results["images"] == 256
    roomy = SweepCache(max_bytes=4 * per_batch)
    evaluate({"dense": reference_model}, test_images, torch.device("cpu"), batch_size=64,
             cache_keys={"dense": "k"}, cache=roomy, record_reference=True)
    assert roomy.key == "k" and len(roomy.batches) == 4


@pytest.mark.slow
def test_side_by_side_evaluation_equals_each_model_run_whole(reference_model, test_images):
    """The models go through the blocks together (one block's states held at a time): the numbers are
    those of running each model whole and comparing all its states at once."""
    from starfish_cli.healing.states import collect_states, per_block_cosine

    pruned = copy.deepcopy(reference_model)
    PRUNERS.build({"name": "magnitude", "sparsity": 0.8}).prune(pruned)
    images = torch.stack([test_images[i][1] for i in range(len(test_images))])
    labels = torch.tensor([test_images[i][2] for i in range(len(test_images))])
    dense_logits, dense_states = collect_states(reference_model, images)
    pruned_logits, pruned_states = collect_states(pruned, images)
    results = evaluate({"dense": reference_model, "pruned": pruned}, test_images, torch.device("cpu"),
                       batch_size=len(test_images))["models"]["pruned"]
    assert results["top1"] == 100.0 * topk_correct(pruned_logits, labels, 1) / len(labels)
    assert results["agreement"] == 100.0 * float((pruned_logits.argmax(-1) == dense_logits.argmax(-1)).float().mean())
    assert results["block_cosine"] == pytest.approx(per_block_cosine(pruned_states, dense_states).tolist(), abs=1e-6)


def test_evaluation_pixels_finish_to_the_full_transform(reference_model, fmnist):
    from starfish_cli.data.images import evaluation_pixels, evaluation_tensors
    from starfish_cli.models.vision import model_transform

    split = fmnist.evaluation_split(16)
    transform = model_transform(reference_model)
    pixels, finish = evaluation_pixels(split, transform, 1)
    full = evaluation_tensors(split, transform, 1)
    assert finish is not None and pixels[0][1].dtype == torch.uint8  # a quarter of the bytes through the loader
    batch = torch.stack([pixels[i][1] for i in range(16)])
    assert torch.equal(finish(batch), torch.stack([full[i][1] for i in range(16)]))  # bit-identical


def test_plan_runs_each_key_once_and_reuses_finished_results():
    from starfish_cli.evaluation.cache import SweepCache
    from starfish_cli.evaluation.compare import plan

    cache = SweepCache()
    cache.results["q"] = {"top1": 1.0}
    models = {name: torch.nn.Identity() for name in ("dense", "pruned", "healed", "other")}
    chosen = plan(models, "dense", {"dense": "k", "pruned": "p", "healed": "p", "other": "q"}, cache)
    assert list(chosen.to_run) == ["dense", "pruned"] and chosen.reference_key == "k"
    own = {"dense": {"top1": 3.0}, "pruned": {"top1": 2.0}}
    assert chosen.results(own) == {"dense": {"top1": 3.0}, "pruned": {"top1": 2.0}, "healed": {"top1": 2.0},
                                   "other": {"top1": 1.0}}
    cache.store_results(chosen.keys, own)
    assert cache.results == {"q": {"top1": 1.0}, "p": {"top1": 2.0}}  # the reference's key holds its outputs only


@pytest.fixture(scope="module")
def dense_and_pruned_lm():
    pytest.importorskip("transformers")
    from starfish_cli.models.causal_lm import build_model

    dense = build_model("lm_reference")
    pruned = copy.deepcopy(dense)
    PRUNERS.build({"name": "magnitude", "sparsity": 0.5}).prune(pruned)
    return dense, pruned


def token_windows(count: int = 10, length: int = 32):
    from starfish_cli.data.text import TokenWindows

    return TokenWindows(torch.randint(0, 2048, (count, length), generator=torch.Generator().manual_seed(0)),
                        with_targets=True)


def test_perplexity_by_batches_and_chunks_of_tokens_equals_all_windows_at_once(dense_and_pruned_lm, monkeypatch):
    """The logits are made 7 tokens at a time, in batches of 3 windows: perplexity, top-1 and agreement are
    those of every window's logits at once."""
    from starfish_cli.evaluation import side_by_side
    from starfish_cli.evaluation.metrics import next_token_nll

    dense, pruned = dense_and_pruned_lm
    items = token_windows()
    with torch.no_grad():
        whole = {name: model(input_ids=items.windows).logits for name, model in (("dense", dense), ("pruned", pruned))}
    rows_seen = []
    handles = [model.lm_head.register_forward_hook(lambda _m, args, _o: rows_seen.append(args[0].shape[0]))
               for model in (dense, pruned)]
    monkeypatch.setattr(side_by_side, "rows_per_chunk", lambda values: 7)
    try:
        results = evaluate({"dense": dense, "pruned": pruned}, items, torch.device("cpu"), batch_size=3)["models"]
    finally:
        for handle in handles:
            handle.remove()
    assert max(rows_seen) == 7 and results["dense"]["tokens"] == 10 * 31  # never a batch's logits at once
    predicted = {name: logits[:, :-1].argmax(-1) for name, logits in whole.items()}
    for name, logits in whole.items():
        nll = next_token_nll(logits, items.windows).double()
        assert results[name]["perplexity"] == pytest.approx(float(nll.mean().exp()), rel=1e-6)
        assert results[name]["top1"] == pytest.approx(100 * float((predicted[name] == items.windows[:, 1:]).double().mean()))
        assert results[name]["agreement"] == pytest.approx(100 * float((predicted[name] == predicted["dense"]).double().mean()))
    assert results["pruned"]["agreement"] < 95.0  # two models that the numbers tell apart


def test_a_sweep_reuses_a_causal_lms_states_not_its_logits(dense_and_pruned_lm):
    from starfish_cli.evaluation.cache import SweepCache

    dense, pruned = dense_and_pruned_lm
    items, cache, keys = token_windows(), SweepCache(), {"dense": "k"}
    models = {"dense": dense, "pruned": pruned}
    first = evaluate(models, items, torch.device("cpu"), batch_size=4, cache_keys=keys, cache=cache, record_reference=True)
    # three batches of the 4 blocks' states (windows × 32 tokens × 128 wide): no vocabulary-wide logits
    assert [len(states) for states in cache.batches] == [4, 4, 4]
    assert all(state.shape[1:] == (32, 128) for states in cache.batches for state in states)
    again = evaluate(models, items, torch.device("cpu"), batch_size=4, cache_keys=keys, cache=cache)
    for name in models:
        for metric in ("perplexity", "top1", "agreement", "tokens", "block_cosine"):
            assert again["models"][name][metric] == first["models"][name][metric], (name, metric)
