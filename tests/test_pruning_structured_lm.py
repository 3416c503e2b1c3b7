"""Structured pruning of causal LMs: KV groups, MLP channels and whole decoder layers sliced out of tiny Llama,
Qwen2 and Gemma folders (random weights, built here) and the embedded lm_reference; the smaller model's config,
its save_pretrained folder in plain transformers, healing and evaluation against the dense blocks it kept."""

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from starfish_cli.artifacts.load import rebuild  # noqa: E402
from starfish_cli.healing import HEALERS  # noqa: E402
from starfish_cli.healing.states import collect_states, select_blocks  # noqa: E402
from starfish_cli.models import build_model, structure_of  # noqa: E402
from starfish_cli.models.causal_lm import REFERENCE_DIR  # noqa: E402
from starfish_cli.pruning import PRUNERS  # noqa: E402
from starfish_cli.pruning.masks import measure_sparsity  # noqa: E402
from starfish_cli.runtime.errors import StarfishError  # noqa: E402

CPU = torch.device("cpu")
SMALL = dict(hidden_size=48, intermediate_size=48, num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=3,
             head_dim=8, max_position_embeddings=64)
CONFIGS = {
    "llama": lambda vocab: transformers.LlamaConfig(vocab_size=vocab, **SMALL),
    "qwen2": lambda vocab: transformers.Qwen2Config(vocab_size=vocab, **SMALL),  # q/k/v biases
    "gemma": lambda vocab: transformers.GemmaConfig(vocab_size=vocab, **SMALL),  # scaled embeddings, GELU gate
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def tiny_folder(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    tokenizer = transformers.AutoTokenizer.from_pretrained(REFERENCE_DIR)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(CONFIGS[request.param](len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tokens(count=2, length=24, seed=0):
    return torch.randint(0, 1000, (count, length), generator=torch.Generator().manual_seed(seed))


def zero_units(model, removed: dict[str, list[int]]):
    """The same units' weights set to zero in every layer: what slicing them out must compute."""
    structure, modules = structure_of(model), dict(model.named_modules())
    with torch.no_grad():
        for index in range(len(structure.blocks)):
            for kind, units in structure.units(index).items():
                for name, rows in units.rows.items():
                    modules[name].weight[rows[removed[kind]].reshape(-1)] = 0
                    if modules[name].bias is not None:
                        modules[name].bias[rows[removed[kind]].reshape(-1)] = 0
                for name, columns in units.columns.items():
                    modules[name].weight[:, columns[removed[kind]].reshape(-1)] = 0


def test_sliced_kv_groups_and_channels_compute_what_their_zeroed_weights_do(tiny_folder):
    model = build_model({"family": "causal_lm", "name": str(tiny_folder)})
    structure = structure_of(model)
    units = structure.units(0)
    assert units["heads"].count == 3 and units["neurons"].count == 48  # a unit of heads: a KV head and its 2 queries
    removed = {"heads": [1], "neurons": list(range(0, 48, 3))}
    zeroed = copy.deepcopy(model)
    zero_units(zeroed, removed)
    for index in range(len(structure.blocks)):
        structure.remove_units(index, **{"heads": removed["heads"], "neurons": removed["neurons"]})
    config = model.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size, config.head_dim) == \
        (4, 2, 32, 8)
    with torch.no_grad():
        torch.testing.assert_close(structure.outputs(tokens()), structure_of(zeroed).outputs(tokens()),
                                   atol=1e-5, rtol=1e-4)


def test_a_pruned_model_saves_as_a_smaller_config_plain_transformers_loads(tiny_folder, tmp_path):
    model = build_model({"family": "causal_lm", "name": str(tiny_folder)})
    pruner = PRUNERS.build({"name": "structured", "heads": 0.34, "mlp": 0.5, "layers": 1, "criterion": "activation"})
    assert pruner.prune(model, [tokens(seed=1), tokens(seed=2)]) == {}
    structure = structure_of(model)
    assert len(structure.blocks) == 3 and len(structure.block_sources()) == 3
    structure.save_for_hub(tmp_path, torch.float32)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    config = plain.config
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            config.intermediate_size) == (3, 4, 2, 24)
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(plain(tokens()).logits, structure.outputs(tokens()))
        prompt = tokens(1, 8)  # the KV cache is indexed by the layers' new numbers
        generated = plain.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False)
        assert torch.equal(generated, model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6,
                                                     do_sample=False))
        rebuilt = rebuild({"family": "causal_lm", "name": str(tiny_folder)}, structure.block_sizes())
        rebuilt.load_state_dict(model.state_dict())
        assert torch.equal(structure_of(rebuilt).outputs(tokens()), structure.outputs(tokens()))


def reference_with_an_idle_layer(idle: int = 2):
    """lm_reference with layer `idle` adding nothing to the residual stream: its influence is 0."""
    model = build_model({"family": "causal_lm", "name": "lm_reference"})
    layer = structure_of(model).blocks[idle]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    return model


def test_depth_removes_the_layer_that_changes_its_input_least_and_maps_the_rest():
    dense = reference_with_an_idle_layer(2)
    model = copy.deepcopy(dense)
    PRUNERS.build({"name": "structured", "heads": 0, "mlp": 0, "layers": 1}).prune(model, [tokens()])
    structure = structure_of(model)
    assert structure.block_sources() == [0, 1, 3] and model.config.num_hidden_layers == 3
    with torch.no_grad():  # the layer added nothing: the model computes what the dense one does
        torch.testing.assert_close(structure.outputs(tokens()), structure_of(dense).outputs(tokens()),
                                   atol=1e-5, rtol=1e-5)
    sparsity = measure_sparsity(model, structure.prunable_layers(), dense, structure.block_weights())
    assert sparsity["prunable"] == pytest.approx(0.25) and sparsity["block_weights"]["zero"] >= 0.25
    assert sparsity["per_layer"]["model.layers.2.mlp.up_proj"] == 1.0
    assert sparsity["per_layer"]["model.layers.3.mlp.up_proj"] == 0.0  # the layer now at 2, by its dense name


def test_a_teacher_gives_the_states_of_the_blocks_the_student_kept():
    dense = build_model({"family": "causal_lm", "name": "lm_reference"})
    with torch.no_grad():
        _, every = collect_states(dense, tokens(), ("blocks", "mlp"), with_outputs=False)
        _, kept = collect_states(dense, tokens(), ("blocks", "mlp"), with_outputs=False, blocks=[0, 3])
    assert [torch.equal(a, b) for a, b in zip(kept, [every[0], every[3], every[4], every[7]], strict=True)] == [True] * 4
    assert select_blocks(every, ("blocks", "mlp"), None, 4) is every


@pytest.mark.parametrize("mode", ["blockwise", "end_to_end"])
def test_healing_a_shallower_model_aligns_it_with_the_dense_blocks_it_kept(mode):
    dense = build_model({"family": "causal_lm", "name": "lm_reference"})
    model = copy.deepcopy(dense)
    calibration = [tokens(4, 32, seed) for seed in range(2)]
    PRUNERS.build({"name": "structured", "heads": 0.5, "mlp": 0.5, "layers": 1}).prune(model, calibration)
    sources = structure_of(model).block_sources()
    items = torch.utils.data.TensorDataset(torch.arange(8), torch.cat(calibration))

    def distance():
        with torch.no_grad():
            _, student = collect_states(model, torch.cat(calibration), with_outputs=False)
            _, teacher = collect_states(dense, torch.cat(calibration), with_outputs=False, blocks=sources)
        return [float((1 - torch.cosine_similarity(s, t, dim=-1)).mean()) for s, t in zip(student, teacher, strict=True)]

    before = distance()
    healer = HEALERS.build({"name": "starfish", "mode": mode, "epochs": 4, "batch_size": 4, "lr": 1e-3})
    healer.heal(model, dense, {}, items, CPU)
    after = distance()
    assert len(after) == 3 and all(a < b for a, b in zip(after, before))


def test_evaluation_compares_a_shallower_model_block_by_block_with_dense():
    from starfish_cli.evaluation.compare import evaluate

    dense = reference_with_an_idle_layer(1)
    model = copy.deepcopy(dense)
    PRUNERS.build({"name": "structured", "heads": 0, "mlp": 0, "layers": 1}).prune(model, [tokens()])
    items = torch.utils.data.TensorDataset(torch.arange(4), tokens(4, 32), tokens(4, 32))
    results = evaluate({"dense": dense, "pruned": model, "healed": model}, items, CPU, batch_size=4)
    cosines = results["models"]["pruned"]["block_cosine"]
    assert len(cosines) == 4 and min(cosines) > 0.9999  # the removed layer passed its input on, as it did itself
    assert results["models"]["pruned"]["perplexity"] == pytest.approx(results["models"]["dense"]["perplexity"],
                                                                      rel=1e-4)


def test_what_cannot_be_sliced_is_refused_in_one_line(tmp_path):
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=2048, n_embd=16, n_layer=2, n_head=2,
                                                                n_positions=32))
    gpt2.save_pretrained(tmp_path)
    model = build_model({"family": "causal_lm", "name": str(tmp_path)})
    assert structure_of(model).block_sizes() is None  # unstructured pruning of it records no sizes
    reference = build_model({"family": "causal_lm", "name": "lm_reference"})
    for options, target, message in [
        ({"heads": 0.5, "mlp": 0.5, "criterion": "magnitude"}, model, "slices Llama-style decoder layers"),
        ({"heads": 0.5, "mlp": 0.5, "scope": "global", "criterion": "magnitude"}, reference, "use pruner.scope=block"),
        ({"heads": 0, "mlp": 0, "layers": 4}, reference, "removes 4 of the model's 4 blocks"),
    ]:
        with pytest.raises(StarfishError, match=message) as error:
            PRUNERS.build({"name": "structured", **options}).prune(target, [tokens()])
        assert "\n" not in str(error.value)
    for layers in (1.5, -1, True):
        with pytest.raises(StarfishError, match="pruner.layers"):
            PRUNERS.build({"name": "structured", "layers": layers})
