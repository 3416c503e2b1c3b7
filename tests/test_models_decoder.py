"""Any decoder-only transformer: tiny random-init OPT, GPT-NeoX, BLOOM, Mixtral and Qwen2-MoE folders (built
here, never downloaded) are found, run block by block, pruned over every decoder weight (MoE experts each a
layer, routers dense) and written back in transformers' own layout; a Mamba folder is refused."""

import pytest
import torch

from conftest import read_json, run_in_process

transformers = pytest.importorskip("transformers")

from starfish_cli.models import build_model, structure_of  # noqa: E402
from starfish_cli.models.causal_lm import REFERENCE_DIR  # noqa: E402
from starfish_cli.models.experts import ExpertLinears, fused_state_dict  # noqa: E402
from starfish_cli.runtime.errors import StarfishError  # noqa: E402

SIZES = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2}
MOE = {"intermediate_size": 32, "num_key_value_heads": 1, "num_experts_per_tok": 2, "max_position_embeddings": 64}
CONFIGS = {
    "opt": lambda: transformers.OPTConfig(**SIZES, ffn_dim=32, word_embed_proj_dim=16, max_position_embeddings=64),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(**SIZES, intermediate_size=32, max_position_embeddings=64),
    "bloom": lambda: transformers.BloomConfig(hidden_size=16, n_layer=2, n_head=2),  # ALiBi: no context limit
    "mixtral": lambda: transformers.MixtralConfig(**SIZES, **MOE, num_local_experts=4),
    "qwen2_moe": lambda: transformers.Qwen2MoeConfig(**SIZES, **MOE, num_experts=4, moe_intermediate_size=16,
                                                     shared_expert_intermediate_size=32),
    "mamba": lambda: transformers.MambaConfig(hidden_size=16, num_hidden_layers=2, state_size=4),
}
LAYERS = {"opt": "model.decoder.layers", "gpt_neox": "gpt_neox.layers", "bloom": "transformer.h",
          "mixtral": "model.layers", "qwen2_moe": "model.layers"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tokenizer = transformers.AutoTokenizer.from_pretrained(REFERENCE_DIR)
    made = {}
    for kind, config in CONFIGS.items():
        made[kind] = tmp_path_factory.mktemp(kind)
        torch.manual_seed(0)
        settings = config()
        settings.vocab_size = len(tokenizer)
        transformers.AutoModelForCausalLM.from_config(settings).save_pretrained(made[kind])
        tokenizer.save_pretrained(made[kind])
    return made


def tokens(count: int = 3, length: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 200, (count, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", list(LAYERS))
def test_every_decoder_is_found_and_runs_block_by_block(folders, kind):
    model = build_model({"family": "causal_lm", "name": str(folders[kind])})
    plain = transformers.AutoModelForCausalLM.from_pretrained(folders[kind]).eval()
    structure = structure_of(model)
    assert structure.block_name(1) == f"{LAYERS[kind]}.1" and len(structure.blocks) == 2
    assert structure.window() == (2048 if kind == "bloom" else 64)
    inputs = tokens()
    with torch.no_grad():
        logits, states = structure.forward_with_states(inputs)
        torch.testing.assert_close(logits, plain(inputs).logits)  # unfused experts compute what fused ones do
        hidden = structure.embed(inputs)
        for index, state in enumerate(states):
            hidden = structure.run_block(index, hidden)
            torch.testing.assert_close(hidden, state, rtol=0, atol=0)
        torch.testing.assert_close(structure.head(hidden), logits)
    # every weight matrix of the decoder layers is prunable, except an MoE's routers
    matrices = structure.block_weights()
    prunable = {f"{name}.weight" for name in structure.prunable_layers()}
    dense = {name.rsplit(".", 2)[-2] for name in set(matrices) - prunable}
    assert prunable <= set(matrices) and dense <= {"gate", "shared_expert_gate"}
    assert (kind in ("mixtral", "qwen2_moe")) == bool(dense)


@pytest.mark.parametrize("pruner", ["wanda", "sparsegpt"])
def test_moe_experts_are_pruned_each_as_a_layer_on_their_routed_tokens(folders, pruner):
    import starfish_cli

    model = build_model({"family": "causal_lm", "name": str(folders["mixtral"])})
    experts = model.model.layers[0].mlp.experts
    assert isinstance(experts, ExpertLinears) and experts.num_experts == 4
    seen = {}
    handles = [layer.register_forward_hook(lambda _m, args, _o, e=e: seen.setdefault(e, []).append(args[0].shape[0]))
               for e, layer in enumerate(experts.gate_up)]
    with torch.no_grad():
        model(tokens())
    for handle in handles:
        handle.remove()
    assert sum(sum(counts) for counts in seen.values()) == 3 * 24 * 2  # each token reaches its top-2 experts only

    pruning = starfish_cli.prune(model, pruner, tokens(), sparsity=0.75)
    blocks = pruning.sparsity["block_weights"]
    assert blocks["prunable"] >= 0.95 and blocks["zero"] == pytest.approx(0.75 * blocks["prunable"], abs=0.01)
    layers = structure_of(pruning.model).prunable_layers()
    assert "model.layers.1.mlp.experts.down.3" in layers and "model.layers.1.mlp.gate" not in layers
    assert all(layer.weight.any() for layer in layers.values())  # no expert zeroed whole, routed to or not
    router = pruning.model.model.layers[0].mlp.gate.weight
    assert torch.equal(router, model.model.layers[0].mlp.gate.weight) and router.all()


def test_the_hub_folder_has_transformers_own_fused_layout(folders, tmp_path):
    import starfish_cli

    model = build_model({"family": "causal_lm", "name": str(folders["qwen2_moe"])})
    pruned = starfish_cli.prune(model, "magnitude", sparsity=0.5).model
    fused = fused_state_dict(pruned)
    assert fused["model.layers.0.mlp.experts.gate_up_proj"].shape == (4, 32, 16)
    assert not any(".experts.gate_up." in name for name in fused)
    structure_of(pruned).save_for_hub(tmp_path, torch.float32)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(tokens()).logits, pruned(tokens()).logits)
    # the shared expert's gate (a linear layer) stays dense; model.prune_router=true prunes it
    assert "model.layers.0.mlp.shared_expert_gate" not in structure_of(model).prunable_layers()
    routed = build_model({"family": "causal_lm", "name": str(folders["qwen2_moe"]), "prune_router": True})
    assert "model.layers.0.mlp.shared_expert_gate" in structure_of(routed).prunable_layers()
    with pytest.raises(StarfishError, match="no router of MixtralForCausalLM is a linear layer"):
        build_model({"family": "causal_lm", "name": str(folders["mixtral"]), "prune_router": True})


def test_a_model_without_attention_layers_is_refused(folders):
    with pytest.raises(StarfishError, match="MambaForCausalLM .* has no attention decoder layers"):
        build_model({"family": "causal_lm", "name": str(folders["mamba"])})


def test_an_unknown_fused_layout_is_refused_not_left_dense(folders, monkeypatch):
    def transposed(self, hidden_states, top_k_index, top_k_weights):  # computes something else
        return hidden_states.flip(-1)

    experts_class = type(transformers.AutoModelForCausalLM.from_pretrained(folders["mixtral"]).model.layers[0].mlp.experts)
    monkeypatch.setattr(experts_class, "forward", transposed)
    with pytest.raises(StarfishError, match="keeps its experts .* in a layout starfish cannot prune yet"):
        build_model({"family": "causal_lm", "name": str(folders["mixtral"])})


@pytest.mark.slow
def test_every_architecture_runs_through_the_cli(folders, tmp_path):
    names = ",".join(str(folders[kind]) for kind in ("opt", "gpt_neox", "bloom", "mixtral"))
    run_in_process("run", "-m", "model=hf_causal_lm", f"model.name={names}", "calib.count=4", "calib.seq_len=32",
                   "healer.epochs=1", "healer.batch_size=2", "eval.max_images=4", "eval.seq_len=48", "eval.speed=false",
                   "pruner.sparsity=0.75", cwd=tmp_path)
    reports = {read_json(path)["model"]["name"]: read_json(path) for path in tmp_path.rglob("report.json")}
    assert len(reports) == 4
    for report in reports.values():
        blocks = report["sparsity"]["block_weights"]
        assert blocks["prunable"] >= 0.95 and blocks["zero"] == pytest.approx(0.75 * blocks["prunable"], abs=0.01)
        assert all(report["accuracy"][model]["perplexity"] > 1 for model in ("dense", "pruned", "healed"))
        assert report["accuracy"]["images"] == 4 and report["calibration"]["seq_len"] == 32
    mixtral = reports[str(folders["mixtral"])]
    assert any(".experts.down." in name for name in mixtral["sparsity"]["per_layer"])

