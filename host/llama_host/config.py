"""``llama-host --config FILE``: a YAML file of option values, in llama-host's own keys (any
command-line option, ``ctx-size`` or ``ctx_size``) or in the keys of llm-api's config.yaml, so an
llm-api deployment moves over with its file. Precedence: command line, then environment
(``LLAMA_HOST_<OPTION>``; ``LLM_API_<KEY>`` for llm-api's keys, as llm-api read them), then the
file, then the defaults.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

LLM_API_KEYS = ("models_dir", "model_family", "model_name", "setup_params", "model_params", "host", "port",
                "log_level")
# llm-api's model_params -> our options
_MODEL_PARAMS = {"ctx_size": "ctx_size", "n_ctx": "ctx_size", "n_threads": "threads", "num_threads": "threads",
                 "batch_size": "batch_size", "n_batch": "batch_size", "seed": "seed"}


MAX_BYTES = 1 << 20  # a config file is a few lines; refuse to parse a large file given by mistake


class ConfigError(ValueError):
    pass


def load(path: Path, options: set[str], environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The option defaults the file gives (``options``: the command's parameter names)."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ConfigError(f"{path} is larger than {MAX_BYTES} bytes: not a config file")
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.start}): not a YAML config file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"{path} nests too deeply to be a config file") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of option names to values")
    for key in LLM_API_KEYS:  # llm-api's environment overrides its file keys
        if (value := environ.get(f"LLM_API_{key.upper()}")) is not None:
            data[key] = yaml.safe_load(value)

    defaults: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in options and name not in LLM_API_KEYS or name == "log_level":
            defaults[name] = value
        elif name not in LLM_API_KEYS:
            raise ConfigError(f"{path}: unknown option {key!r}")
    _from_llm_api(data, defaults, path)
    if isinstance(defaults.get("nn_preload"), str):
        defaults["nn_preload"] = [defaults["nn_preload"]]
    return defaults


def _from_llm_api(data: dict, defaults: dict, path: Path) -> None:
    family = data.get("model_family")
    if family is not None and family != "llama":
        log.warning("%s: model_family %r: llama-host serves GGUF models through llama.cpp", path, family)
    setup = data.get("setup_params") or {}
    if not isinstance(setup, dict):
        raise ConfigError(f"{path}: setup_params must be a mapping")
    if "filename" in setup:
        models_dir = Path(str(data.get("models_dir", "./models")))
        if not models_dir.is_absolute() and not (Path.cwd() / models_dir).is_dir():
            models_dir = path.parent / models_dir  # relative to the file when not to the working folder
        name = str(data.get("model_name") or "default").replace(":", "-")
        local = models_dir / str(setup["filename"])
        # llm-api downloaded repo_id's file into models_dir: one there is served as it is; else it is taken
        # from the Hugging Face cache (shared with other tools, verified) or downloaded there.
        repo_id = setup.get("repo_id")
        source = f"hf://{repo_id}/{setup['filename']}" if repo_id and not local.exists() else str(local)
        defaults.setdefault("nn_preload", [f"{name}:GGML:AUTO:{source}"])
        defaults.setdefault("model_alias", name)
    params = data.get("model_params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: model_params must be a mapping")
    for key, value in params.items():
        if key in _MODEL_PARAMS:
            defaults.setdefault(_MODEL_PARAMS[key], value)
        else:
            log.warning("%s: model_params.%s is not used by llama-host", path, key)
    if "host" in data or "port" in data:
        defaults.setdefault("socket_addr", f"{data.get('host', '0.0.0.0')}:{data.get('port', 8000)}")
    given = data.get("models_dir", data.get("models-dir"))
    if given is not None and "filename" not in setup:  # (no llm-api model in it: llama-host's --models-dir)
        folder = Path(str(given)).expanduser()
        defaults.setdefault("models_dir", folder if folder.is_absolute() else path.parent / folder)
