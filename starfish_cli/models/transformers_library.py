"""transformers, imported only where a causal LM or a GGUF file needs it: one refusal when the `lm` extra is missing."""

from starfish_cli.runtime.errors import StarfishError


def import_transformers():
    try:
        import transformers
    except ImportError as error:
        raise StarfishError("causal language models and GGUF files need transformers: "
                            "pip install 'starfish-cli[lm]'") from error
    return transformers
