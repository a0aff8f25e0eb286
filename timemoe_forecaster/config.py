"""Model configuration: the official Time-MoE ``config.json`` as a dataclass, plus named presets.

Field names are the official config.json keys, so one object reads and writes checkpoints that other
Time-MoE implementations produce. Keys we do not know (``auto_map``…) are kept in ``extra`` and written back
unchanged; nothing in them is ever imported or executed. Keys that describe the file rather than the model
(``architectures``, ``torch_dtype``, ``transformers_version``) are written afresh on save.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MODEL_TYPE = "time_moe"
# Our own description of a checkpoint in its config.json (name, status, training, default context); other tools
# keep it as an unknown key.
OUR_SECTION = "timemoe_forecaster"
_ACTIVATIONS = ("silu", "swish", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _is_whole(value) -> bool:
    return _is_number(value) and float(value).is_integer()


# A config.json (or shard index) larger than this is refused unread: a real one takes a few KB.
MAX_JSON_BYTES = 16 << 20


def read_json(path: Path) -> Any:
    """The JSON value of a small file (a config or a shard index), with one-line errors that name it."""
    if path.exists() and not path.is_file():  # a FIFO blocked the read forever, /dev/zero filled the memory
        raise ValueError(f"{path} is not a regular file")
    with path.open("rb") as f:
        raw = f.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise ValueError(f"{path} is over {MAX_JSON_BYTES >> 20} MiB: not a model config or index")
    try:
        return json.loads(raw.decode("utf-8"))
    # ValueError too: an integer of 5,000 digits is Python's "Exceeds the limit", naming no file.
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is not valid JSON (UTF-8): {str(err)[:200]}") from None


def _misspelt(unknown_keys, known: set[str], given=()) -> dict[str, str]:
    """Unknown keys that look like a misspelt model key ("hidden_sizes", "Num_Experts"), mapped to that key.

    Such a key lands in ``extra`` and the real one takes its default, which then fails as a shape error naming
    the default; the cut-off keeps the keys other tools write (``auto_map``, ``_name_or_path``) quiet. A model key
    in ``given`` (the real key was there too) is no one's misspelling: it does not take its default."""
    lowered = {name.lower(): name for name in known}
    found = {}
    for key in unknown_keys:
        if not isinstance(key, str) or key in known:
            continue
        match = difflib.get_close_matches(key.lower(), lowered, n=1, cutoff=0.85)
        if match and lowered[match[0]] not in given:
            found[key] = lowered[match[0]]
    return found


def _default(field_name: str):
    spec = TimeMoEConfig.__dataclass_fields__[field_name]
    return spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default


def misspelt_key_hint(config: TimeMoEConfig) -> str:
    """A sentence for errors that a config's misspelt key may explain, or ''."""
    known = {f.name for f in dataclasses.fields(TimeMoEConfig)} - {"extra"}
    # A field holding other than its default was given: a look-alike key beside it explains nothing.
    found = _misspelt(config.extra, known, {name for name in known if getattr(config, name) != _default(name)})
    if not found:
        return ""
    pairs = ", ".join(f"{key!r} (for {name!r}?)" for key, name in found.items())
    return f"; the config has unknown key(s) {pairs}, so those settings took their defaults"


@dataclass
class TimeMoEConfig:
    """Hyper-parameters of a Time-MoE model.

    Defaults follow the official config class, so a config.json that omits a key means what it
    means elsewhere. Use :meth:`from_preset` for the sizes of the paper.
    """

    input_size: int = 1
    hidden_size: int = 4096
    intermediate_size: int = 22016
    horizon_lengths: list[int] = field(default_factory=lambda: [1])
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    hidden_act: str = "silu"
    num_experts: int = 1
    num_experts_per_tok: int = 2
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_dense: bool = False
    rope_theta: float = 10000.0
    attention_dropout: float = 0.0
    # None: the official pairing, on for routed experts and off for dense (the official loader refuses others).
    apply_aux_loss: bool | None = None
    router_aux_loss_factor: float = 0.02
    tie_word_embeddings: bool = False
    use_cache: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.horizon_lengths is None or isinstance(self.horizon_lengths, (str, bytes)):
            raise ValueError(
                f"TimeMoEConfig.horizon_lengths must be a list of positive integers, got {self.horizon_lengths!r}"
            )
        if isinstance(self.horizon_lengths, int):
            self.horizon_lengths = [self.horizon_lengths]
        if any(not _is_whole(h) for h in self.horizon_lengths):  # int() would read 8.9 as 8
            raise ValueError(
                f"TimeMoEConfig.horizon_lengths must be a list of positive integers, got {self.horizon_lengths!r}"
            )
        self.horizon_lengths = [int(h) for h in self.horizon_lengths]
        # Checked first: the string "false" is truthy, so use_dense="false" would build a dense model.
        for name in ("use_dense", "tie_word_embeddings", "use_cache") + (
            () if self.apply_aux_loss is None else ("apply_aux_loss",)
        ):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"TimeMoEConfig.{name} must be true or false, got {value!r}")
            setattr(self, name, bool(value))
        if not isinstance(self.extra, dict):
            raise ValueError(f"TimeMoEConfig.extra must be a dict, got {type(self.extra).__name__}")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.apply_aux_loss is None or self.use_dense:
            # A dense model has no router, so no balance loss: an explicit True there means nothing.
            self.apply_aux_loss = not self.use_dense
        self._validate()

    def _validate(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < 1:
                raise ValueError(f"TimeMoEConfig.{name} must be a positive integer, got {value!r}")
            setattr(self, name, int(value))  # numpy integers (a grid search's values) do not write to JSON

        for name in (
            "input_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "num_experts",
            "num_experts_per_tok",
            "max_position_embeddings",
        ):
            positive(name)
        if not self.horizon_lengths or any(h < 1 for h in self.horizon_lengths):
            raise ValueError(f"TimeMoEConfig.horizon_lengths must be positive, got {self.horizon_lengths}")
        if sorted(set(self.horizon_lengths)) != self.horizon_lengths:
            raise ValueError(
                "TimeMoEConfig.horizon_lengths must be strictly increasing (the greedy head schedule "
                f"relies on it), got {self.horizon_lengths}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"TimeMoEConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError("TimeMoEConfig: the head dimension must be even for rotary embeddings")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"TimeMoEConfig.num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if not self.use_dense and self.intermediate_size // self.num_experts_per_tok < 1:
            raise ValueError("TimeMoEConfig.intermediate_size must be at least num_experts_per_tok")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"TimeMoEConfig.hidden_act must be one of {_ACTIVATIONS}, got {self.hidden_act!r}")
        for name in ("rms_norm_eps", "rope_theta", "initializer_range"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 < value < float("inf"):
                raise ValueError(f"TimeMoEConfig.{name} must be a positive number, got {value!r}")
            setattr(self, name, value if isinstance(value, int) else float(value))
        if not _is_number(self.attention_dropout) or not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"TimeMoEConfig.attention_dropout must be in [0, 1), got {self.attention_dropout!r}")
        self.attention_dropout = float(self.attention_dropout)
        factor = self.router_aux_loss_factor
        if not _is_number(factor) or not 0.0 <= factor < float("inf"):
            raise ValueError(f"TimeMoEConfig.router_aux_loss_factor must be a non-negative number, got {factor!r}")
        self.router_aux_loss_factor = float(factor)

    # Derived sizes ---------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def expert_size(self) -> int:
        """Width of one routed expert: the official code splits intermediate_size over the top-k."""
        return self.intermediate_size // self.num_experts_per_tok

    # What our training records -----------------------------------------------------------------
    @property
    def default_context_length(self) -> int | None:
        """The context the model forecasts from when none is asked for, where its config.json records one under
        ``"timemoe_forecaster"``: our trainer and fine-tuning write the longest window they trained on, since the
        model forecasts worse from longer contexts than it was trained on (fine-tuned on 256-point windows, MSE 0.71
        from 4,096 points against 0.08 from 256, helper-measured); the embedded default's records the length that
        forecast best on validation data (docs/model_card.md). None where not recorded (official checkpoints:
        their full window)."""
        meta = self.extra.get(OUR_SECTION)
        value = meta.get("default_context_length") if isinstance(meta, dict) else None
        # Read on every forecast, so quiet here: from_dict warns of a value that is no positive integer, once.
        return int(value) if _is_whole(value) and value >= 1 else None

    def record_default_context_length(self, length: int) -> None:
        """Sets :attr:`default_context_length` (a new section dict: the loaded one may be shared with a cache)."""
        meta = self.extra.get(OUR_SECTION)
        meta = dict(meta) if isinstance(meta, dict) else {}
        meta["default_context_length"] = int(length)
        self.extra = {**self.extra, OUR_SECTION: meta}

    # I/O ---------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TimeMoEConfig:
        values = dict(values)
        model_type = values.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f"config.json has model_type {model_type!r}, expected {MODEL_TYPE!r}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: values.pop(k) for k in list(values) if k in known}
        extra = values.pop("extra", None) or {}
        if not isinstance(extra, dict):
            raise ValueError(f"config key 'extra' must be a mapping, got {type(extra).__name__}")
        extra = dict(extra)
        # Keys that describe the file rather than the model; written afresh on save.
        for key in ("model_type", "transformers_version", "torch_dtype", "architectures"):
            values.pop(key, None)
        extra.update(values)  # auto_map, … kept verbatim, never executed
        for key, field_name in _misspelt(values, known, set(kwargs)).items():
            log.warning(
                "config key %r is not a Time-MoE key, so %r takes its default (%r); is %r misspelt?",
                key,
                field_name,
                _default(field_name),
                key,
            )
        if (
            not kwargs.get("use_dense", False)
            and kwargs.get("apply_aux_loss") is True
            and kwargs.get("router_aux_loss_factor") == 0
        ):
            kwargs["apply_aux_loss"] = False  # how to_dict writes "no balance loss": read back, it computes none
        meta = extra.get(OUR_SECTION)
        recorded = meta.get("default_context_length") if isinstance(meta, dict) else None
        if recorded is not None and not (_is_whole(recorded) and recorded >= 1):
            log.warning(
                "config key %s.default_context_length is %r, not a positive integer: ignored", OUR_SECTION, recorded
            )
        return cls(**kwargs, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_type": MODEL_TYPE, "architectures": ["TimeMoeForPrediction"]}
        out.update(copy.deepcopy(self.extra))
        for f in dataclasses.fields(self):
            if f.name != "extra":
                out[f.name] = copy.deepcopy(getattr(self, f.name))
        if not self.use_dense and not self.apply_aux_loss:
            # The official loader requires the balance loss on routed experts; a zero factor means the same.
            out.update(apply_aux_loss=True, router_aux_loss_factor=0.0)
        return out

    @classmethod
    def from_json_file(cls, path: str | Path) -> TimeMoEConfig:
        path = Path(path)
        try:
            values = read_json(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"config file not found: {path}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a JSON object")
        return cls.from_dict(values)

    def to_json_file(self, path: str | Path, torch_dtype: str | None = None) -> None:
        values = self.to_dict()
        if torch_dtype is not None:
            values["torch_dtype"] = torch_dtype
        Path(path).write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TimeMoEConfig:
        """The config of a named size (``PRESETS``: "tiny" for tests, the paper's "base", "large" and "ultra",
        …), with ``overrides`` of any field (``from_preset("base", max_position_embeddings=2048)``)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def replace(self, **changes: Any) -> TimeMoEConfig:
        """A copy with ``changes``. New attention heads keep full multi-head attention (key/value heads follow
        them) unless the config had grouped-query attention or ``num_key_value_heads`` is changed too; a new
        ``use_dense`` brings the balance loss's official setting with it unless ``apply_aux_loss`` is given."""
        if (
            "num_attention_heads" in changes
            and "num_key_value_heads" not in changes
            and self.num_key_value_heads == self.num_attention_heads
        ):
            changes["num_key_value_heads"] = None  # derived again in __post_init__
        if "use_dense" in changes and "apply_aux_loss" not in changes and self.apply_aux_loss != self.use_dense:
            changes["apply_aux_loss"] = None  # it followed use_dense (the official pairing): let it follow again
        # dataclasses.replace copies shallowly: the copy's extra (and head list) were the original's objects.
        changes.setdefault("extra", copy.deepcopy(self.extra))
        changes.setdefault("horizon_lengths", list(self.horizon_lengths))
        copied = dataclasses.replace(self, **changes)
        if hasattr(self, "code_source"):  # where auto_map's code files are (checkpoint._copy_code_files): not a field
            copied.code_source = self.code_source
        return copied


_PAPER_COMMON: dict[str, Any] = dict(
    input_size=1,
    horizon_lengths=[1, 8, 32, 64],
    num_experts=8,
    num_experts_per_tok=2,
    max_position_embeddings=4096,
    hidden_act="silu",
    use_dense=False,
)

# Name -> config values. `tiny` comes first: it is the test model (3,840 parameters).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        _PAPER_COMMON,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_experts=4,
    ),
    "small": dict(_PAPER_COMMON, hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4),
    "base": dict(_PAPER_COMMON, hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=12),
    "large": dict(_PAPER_COMMON, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    "ultra": dict(
        _PAPER_COMMON, hidden_size=1024, intermediate_size=4096, num_hidden_layers=36, num_attention_heads=16
    ),
}


def resolve_config(spec: str | Path | dict | TimeMoEConfig, **overrides: Any) -> TimeMoEConfig:
    """Turn a preset name, a config.json path, a dict or a config into a config (with overrides)."""
    if isinstance(spec, TimeMoEConfig):
        config = spec
    elif isinstance(spec, dict):
        config = TimeMoEConfig.from_dict(spec)
    elif isinstance(spec, str) and spec in PRESETS:
        config = TimeMoEConfig.from_preset(spec)
    else:
        path = Path(spec)
        if path.is_dir():
            path = path / "config.json"
        if not path.exists():
            raise ValueError(f"{spec!r} is neither a preset ({sorted(PRESETS)}) nor an existing config.json")
        config = TimeMoEConfig.from_json_file(path)
    return config.replace(**overrides) if overrides else config
