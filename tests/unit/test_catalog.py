from __future__ import annotations

from pathlib import Path

import pytest

from models.catalog import CatalogError, load_catalog


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "models.toml").write_text(text)
    return tmp_path


def test_builtin_models_are_listed_and_resolve_offline(tmp_path: Path) -> None:
    catalog = load_catalog(tmp_path)
    ids = {spec.id: spec for spec in catalog.list()}
    assert ids["smollm2-135m-instruct"].role == "chat"
    assert ids["all-minilm-l6-v2"].backend == "sentence-transformers"
    chat = catalog.resolve("smollm2-135m-instruct")
    assert chat is not None and chat.suffix == ".gguf"


def test_operator_file_adds_and_overrides(tmp_path: Path) -> None:
    weights = tmp_path / "mine.gguf"
    weights.write_bytes(b"GGUF")
    catalog = load_catalog(
        write(
            tmp_path,
            f"""
[models.mine]
role = "chat"
backend = "llamacpp"
source = "path:{weights}"
context_length = 4096
notes = "kept as extra"

[models.far]
role = "chat"
backend = "llamacpp"
source = "url:http://127.0.0.1:9/far.gguf"
sha256 = "00"
""",
        )
    )
    assert catalog.resolve("mine") == weights
    assert catalog.get("mine").extra == {"notes": "kept as extra"}
    assert catalog.resolve("far") is None  # not pulled: nothing downloads by itself
    with pytest.raises(CatalogError, match="unknown model"):
        catalog.get("nope")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('role = "chat"\nbackend = "llamacpp"', "lacks source"),
        ('role = "poet"\nbackend = "llamacpp"\nsource = "path:/x"', "role must be"),
        ('role = "chat"\nbackend = "magic"\nsource = "path:/x"', "backend must be"),
        ('role = "chat"\nbackend = "llamacpp"\nsource = "ftp:/x"', "source must start"),
        ('role = "chat"\nbackend = "llamacpp"\nsource = "url:http://x/y"', "need a sha256"),
        ('role = "chat"\nbackend = "llamacpp"\nsource = "hf:o/r/f.gguf"', "need a sha256"),
        ('role = "chat"\nbackend = "llamacpp"\nsource = "hf:o/f.gguf"\nsha256 = "0"', "OWNER"),
        ('role = "chat"\nbackend = "llamacpp"\nsource = "remote:m"', "go with backend"),
        ('role = "chat"\nbackend = "remote"\nsource = "path:/x"', "go with backend"),
        (
            'role = "chat"\nbackend = "llamacpp"\nsource = "path:/x"\nformats = ["hf"]',
            "cannot load",
        ),
        ('role = "chat"\nbackend = "vllm"\nsource = "path:/x"\nformats = ["gguf"]', "cannot load"),
        ('role = "chat"\nbackend = "auto"\nsource = "path:/x"', "needs formats"),
        ('role = "chat"\nbackend = "auto"\nsource = "path:/x.gguf"\nformats = "gguf"', "a list"),
        ('role = "chat"\nbackend = "auto"\nsource = "path:/x.gguf"\nformats = ["onnx"]', "a list"),
        ('role = "embedding"\nbackend = "auto"\nsource = "path:/x.gguf"', "for chat models"),
    ],
)
def test_invalid_entries_are_refused_with_reasons(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        load_catalog(write(tmp_path, f"[models.bad]\n{table}\n"))


def test_remote_models_become_remote_engines_with_no_memory(tmp_path: Path) -> None:
    from server.models_setup import model_options
    from server.settings import load_settings

    write(
        tmp_path,
        """
[models.big]
role = "chat"
backend = "remote"
source = "remote:meta-llama/Llama-3.1-70B-Instruct"
urls = ["http://gpu1:8000/v1/", "http://gpu2:8000/v1"]
flavor = "vllm"

[models.nowhere]
role = "chat"
backend = "remote"
source = "remote:x"
""",
    )
    settings = load_settings({"COMPANION_DATA_DIR": str(tmp_path)})
    options = {o.model_id: o for o in model_options(settings, load_catalog(tmp_path))}
    big = options["big"]
    assert big.config.backend == "remote" and big.memory_bytes == 0 and not big.pinned
    assert big.config.remote.base_urls == ("http://gpu1:8000/v1", "http://gpu2:8000/v1")
    assert big.config.remote.upstream_model == "meta-llama/Llama-3.1-70B-Instruct"
    assert big.config.remote.flavor == "vllm"
    assert "nowhere" not in options  # no urls: cannot be served
    assert options["smollm2-135m-instruct"].pinned  # the default model


def test_vllm_models_load_on_vllm_within_the_memory_budget(tmp_path: Path) -> None:
    from server.models_setup import model_options
    from server.settings import load_settings

    model_dir = tmp_path / "qwen"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(b"\0" * 4096)
    write(
        tmp_path,
        f"""
[models.qwen]
role = "chat"
backend = "vllm"
source = "path:{model_dir}"
context_length = 2048

[models.absent]
role = "chat"
backend = "vllm"
source = "path:{tmp_path / "nowhere"}"
""",
    )
    settings = load_settings(
        {"COMPANION_DATA_DIR": str(tmp_path), "COMPANION_VLLM_KV_CACHE_MB": "64"}
    )
    options = {o.model_id: o for o in model_options(settings, load_catalog(tmp_path))}
    qwen = options["qwen"]
    assert qwen.config.backend == "vllm" and qwen.config.model_path == model_dir
    assert qwen.config.n_ctx == 2048  # capped by the spec's context_length
    assert qwen.memory_bytes == (64 << 20) + 4096  # its KV cache plus its weights
    assert "absent" not in options  # weights not on disk: cannot be served


def test_formats_say_which_engines_serve_a_model(tmp_path: Path) -> None:
    catalog = load_catalog(
        write(
            tmp_path,
            """
[models.either]
role = "chat"
backend = "auto"
source = "path:/m/either.gguf"
formats = ["gguf", "hf"]

[models.gguf-only]
role = "chat"
backend = "auto"
source = "path:/m/only.gguf"

[models.directory]
role = "chat"
backend = "auto"
source = "path:/m/directory"
formats = ["hf"]

[models.converted]
role = "chat"
backend = "vllm"
source = "path:/m/converted.gguf"

[models.pinned]
role = "chat"
backend = "llamacpp"
source = "path:/m/pinned.gguf"
""",
        )
    )
    builtin = catalog.get("smollm2-135m-instruct")
    assert (builtin.backend, builtin.weight_formats) == ("auto", ("gguf", "hf"))
    # the machine's choice where the formats allow it, else the engine that can load it
    for chosen in ("llamacpp", "vllm"):
        assert builtin.serving_backend(chosen) == chosen
        assert catalog.get("either").serving_backend(chosen) == chosen
        assert catalog.get("gguf-only").serving_backend(chosen) == "llamacpp"
        assert catalog.get("directory").serving_backend(chosen) == "vllm"
        assert catalog.get("pinned").serving_backend(chosen) == "llamacpp"  # as declared
    assert catalog.get("either").serving_backend("remote") == "llamacpp"  # its first format
    # a GGUF declared for vLLM is converted: both formats, without listing them
    assert catalog.get("converted").weight_formats == ("gguf", "hf")
    assert catalog.get("gguf-only").engines() == ("llamacpp",)


def test_the_judges_own_model_is_pinned_and_may_be_a_guard(tmp_path: Path) -> None:
    from inference.manager import ModelOption
    from server.models_setup import judge_model_id, model_options
    from server.settings import load_settings

    write(
        tmp_path,
        """
[models.guard]
role = "guard"
backend = "remote"
source = "remote:meta-llama/Llama-Guard-3-8B"
urls = ["http://gpu1:8000/v1"]

[models.big]
role = "chat"
backend = "remote"
source = "remote:big"
urls = ["http://gpu1:8000/v1"]
""",
    )
    catalog = load_catalog(tmp_path)

    def options(judge: str) -> dict[str, ModelOption]:
        env = {"COMPANION_DATA_DIR": str(tmp_path), "COMPANION_CONTENT_JUDGE": judge}
        return {o.model_id: o for o in model_options(load_settings(env), catalog)}

    assert "guard" not in options("off")  # a guard model is no chat model
    assert options("guard")["guard"].pinned and not options("guard")["big"].pinned
    assert options("big")["big"].pinned
    # the default chat model judging is the chat engine itself: no model of its own
    default = load_settings({"COMPANION_CONTENT_JUDGE": "smollm2-135m-instruct"})
    assert judge_model_id(default) is None
    assert judge_model_id(load_settings({"COMPANION_CONTENT_JUDGE": "chat"})) is None
