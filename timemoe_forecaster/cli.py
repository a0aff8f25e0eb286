"""Command line: ``timemoe pretrain | finetune | forecast`` (also ``python -m timemoe_forecaster.cli``).

``pretrain`` and ``finetune`` map every flag one to one onto a :class:`TrainConfig` field
(``--max-steps`` -> ``max_steps``); run them under ``torchrun --nproc_per_node N`` for several GPUs.
``forecast`` prints a zero-shot forecast of one series. This module is the only place that sets up
logging handlers and global torch flags (TF32).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from .extras import install_hint

log = logging.getLogger(__name__)

AIRLINE_CSV = Path(__file__).parent / "assets" / "airline.csv"
# The exit status of a run that --time-limit stopped with a checkpoint: sysexits' EX_TEMPFAIL ("try again later"),
# so a job script can tell "resume me" from done (0), a signal (128 + its number) and an error (1, 2).
TIME_LIMIT_EXIT = 75

_HELP = {
    "config": "model preset (tiny, small, base, large, ultra) or a config.json path",
    "init_from": "checkpoint directory (or 'default', the embedded model) to start from instead of a fresh model "
    "(default: none, a fresh model)",
    "data": "training data: 'synthetic' and/or paths (several, or comma-separated; options after '#')",
    "data_weights": "mixture weight per data source (same order as --data) (default: each source's own or 1)",
    "eval_data": "held-out data for --eval-every (default: the training data with another seed)",
    "output_dir": "where checkpoints, metrics.jsonl and the final model go ('' = save nothing)",
    "batch_size": "rows per micro-batch per process",
    "grad_accum": "micro-batches per optimizer step",
    "max_length": "tokens (points) per row",
    "min_length": "shortest training window, in points",
    "pack": "pack several series per row (--no-pack: one window per row, padded)",
    "quality_filter": "drop mostly-zero or constant stretches of file data (Time-MoE's filter); "
    "--no-quality-filter keeps them, e.g. for intermittent demand",
    "data_prefetch": "draw the next batches in the background while the GPU trains (auto = a process on a GPU)",
    "min_lr_ratio": "final lr of the cosine schedule as a fraction of --lr",
    "betas": "AdamW betas",
    "grad_clip": "clip the global gradient norm (0 = no clipping)",
    "dtype": "auto = bf16 autocast on GPU, fp32 on CPU",
    "optim_dtype": "fp32, or bf16: bf16 weights and AdamW states with stochastic rounding (half the memory)",
    "fused": "fused AdamW kernel: true, false or auto (on a GPU only) (default: auto)",
    "compile": "torch.compile: blocks (what --compile alone means), model (whole model and losses), "
    "model-cudagraphs (the same replayed as CUDA graphs: --no-pack or --attn-backend flex), "
    "model-step-graph (each whole step, AdamW included, one CUDA graph: one GPU, same shape rules), off",
    "attn_backend": "sdpa, eager, varlen (packed rows on CUDA), flex (packed rows, static shapes) or flash_attn",
    "moe_dispatch": "auto (fused Triton kernels on CUDA; in training only for experts up to 1024 wide, as base's), "
    "grouped, loop or fused (the kernels at any width: slower for large's experts, docs/performance.md)",
    "fsdp": "FSDP2 sharding under torchrun: true, false or auto (>= 1B parameters)",
    "device": "cpu, cuda or cuda:N (default: this process's GPU if any)",
    "save_every": "checkpoint every N steps (0 = only at the end)",
    "keep_checkpoints": "newest checkpoints kept under output_dir/checkpoints (0 = all)",
    "save_dtype": "dtype of the final model.safetensors",
    "eval_every": "evaluate on held-out windows every N steps (0 = never)",
    "eval_batches": "held-out batches per evaluation, in all (split over the processes: the same on any number)",
    "resume": "continue from the latest checkpoint in --output-dir",
    "time_limit": "stop with a checkpoint after this many seconds of training and exit with status 75, so a job "
    "script can loop on --resume until the run finishes with 0 (0 = no limit)",
    "progress": "show a progress bar (rank 0)",
}


def _bool(text: str) -> bool:
    value = text.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def whole_number_at_least(minimum: int):
    """An argparse type for counts: a clear message for "x", and for values below ``minimum`` (0 or -1
    silently meant "all" or "one" in several flags)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {value}")
        return value

    return parse


_non_negative_int = whole_number_at_least(0)


def _bool_or_auto(text: str) -> bool | None:
    return None if text.lower() == "auto" else _bool(text)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_train_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per TrainConfig field, typed and defaulted from the dataclass."""
    from .train.config import COMPILE_MODES
    from .train.prefetch import PREFETCH_MODES
    from .train.trainer import TrainConfig

    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        kwargs: dict[str, Any] = {"default": default, "help": _HELP.get(f.name, "")}
        if f.name in ("data", "eval_data"):
            kwargs.update(nargs="+", metavar="SPEC")
        elif f.name == "data_weights":
            kwargs.update(nargs="+", type=_floats, metavar="W")
        elif f.name == "betas":
            kwargs.update(nargs=2, type=float, metavar=("BETA1", "BETA2"))
        elif f.name == "fsdp":
            kwargs.update(choices=["auto", "true", "false"], default="auto")
        elif f.name == "config":  # None: told apart from an explicit --config beside --init-from
            kwargs.update(default=None, help=kwargs["help"] + f" (default: {default}; with --init-from, its own)")
        elif f.name == "data_prefetch":
            kwargs.update(choices=list(PREFETCH_MODES))
        elif f.name == "compile":
            # TrainConfig reads "off" as False; the help shows it as one of the choices.
            kwargs.update(nargs="?", const="blocks", choices=[*COMPILE_MODES, "off"], default=default or "off")
        elif f.name == "fused":
            kwargs.update(type=_bool_or_auto, metavar="true|false|auto")
        elif isinstance(default, bool):
            kwargs.update(action=argparse.BooleanOptionalAction)
        elif isinstance(default, int):
            kwargs.update(type=int)
        elif isinstance(default, float):
            kwargs.update(type=float)
        if f.name in ("dtype", "optim_dtype", "save_dtype"):
            kwargs["choices"] = {"dtype": ["auto", "bf16", "fp32"]}.get(f.name, ["fp32", "bf16"])
        if "(default:" not in kwargs["help"]:  # some helps say what a None default means
            kwargs["help"] = (kwargs["help"] + " " if kwargs["help"] else "") + "(default: %(default)s)"
        parser.add_argument(flag, **kwargs)


def _version() -> str:
    from . import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="timemoe", description="Time-MoE pretraining, fine-tuning and forecasting")
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    talk.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="log warnings and errors only (with --no-progress, training prints only its summary line)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("pretrain", help="train a model from scratch (or from --init-from)")
    _add_train_flags(pre)
    fine = sub.add_parser("finetune", help="continue training a checkpoint on your data")
    fine.add_argument(
        "--model",
        required=True,
        help="checkpoint directory (config.json + safetensors), hub id (owner/name), or 'default' (the embedded "
        "model) to start from",
    )
    _add_train_flags(fine, skip=("config", "init_from"))
    fine.set_defaults(output_dir="runs/finetune", lr=1e-4, data=None)  # no synthetic default: your data or an error
    for action in fine._actions:  # its help showed "(default: None)" for a flag that cannot be left out
        if action.dest == "data":
            action.help = "your training data (required): paths, several or comma-separated, options after '#'"
    fc = sub.add_parser("forecast", help="zero-shot forecast of one series")
    fc.add_argument(
        "--model", default=None, help="checkpoint directory, hub id, or 'default' (the embedded model, also if omitted)"
    )
    fc.add_argument(
        "--dataset",
        default="airline",
        help="'airline' or a CSV, TSV or parquet file (other names are read as CSV); gaps are interpolated "
        "(default: %(default)s)",
    )
    fc.add_argument("--column", default=None, help="CSV column to forecast (default: the last numeric one)")
    fc.add_argument("--horizon", type=int, default=12, help="points to forecast (default: %(default)s)")
    fc.add_argument(
        "--context-length",
        type=int,
        default=None,
        help="at most this many last points as context (default: the model's default context where its config.json "
        "records one, 3072 for the embedded default, else all up to its limit, as the estimators)",
    )
    fc.add_argument(
        "--show", type=_non_negative_int, default=6, help="last observations to print, 0 = none (default: %(default)s)"
    )
    return parser


def _model_path(name: str | None) -> str | None:
    """``--model``: "default" (where no folder of that name exists) is the embedded model, by name; its path inside
    the installed package is no one's to know."""
    if name == "default" and not Path("default").exists():
        from .checkpoint import default_checkpoint

        return str(default_checkpoint())
    return name


def train_config_from_args(args: argparse.Namespace):
    from .train.trainer import TrainConfig

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    if args.command == "finetune":
        args.model = _model_path(args.model)
        if args.data is None:
            raise ValueError(
                "timemoe finetune needs your data: pass --data FILE (CSV, parquet, npy, ... : docs/data_formats.md); "
                "without it the model was fine-tuned on synthetic series"
            )
        values["init_from"] = args.model
        values["config"] = None  # the architecture is the checkpoint's; train_config.json recorded "tiny"
    elif values.get("init_from") is not None:  # as finetune --model: 'default' is the embedded model
        values["init_from"] = _model_path(values["init_from"])
    if values.get("config") is not None and values.get("init_from") is not None:  # finetune set config None
        raise ValueError(
            "--config and --init-from both choose the model: --init-from trains its checkpoint's own architecture "
            "(--config was ignored), so pass one of them"
        )
    elif values.get("config") is None and values.get("init_from") is None:
        del values["config"]  # TrainConfig's default preset
    if values.get("data_weights") is not None:
        values["data_weights"] = [w for group in values["data_weights"] for w in group]
    if values.get("fsdp") in ("true", "false"):
        values["fsdp"] = values["fsdp"] == "true"
    values["betas"] = tuple(values["betas"])
    return TrainConfig(**values)


# forecast ---------------------------------------------------------------------------------------
def load_series(dataset: str, column: str | None = None):
    """A pandas Series: sktime's airline data (or the bundled copy) or one column of a CSV, indexed by the
    CSV's date column when it has one."""
    import numpy as np
    import pandas as pd

    if dataset == "airline":
        try:
            from sktime.datasets import load_airline

            return load_airline()
        except ImportError:
            frame = pd.read_csv(AIRLINE_CSV)
            index = pd.PeriodIndex(frame["Period"], freq="M")
            return pd.Series(frame["Passengers"].to_numpy(float), index=index, name="Number of airline passengers")
    from .data.readers import read_frame
    from .data.sources import TABULAR_SUFFIXES, _suffixes

    path = Path(dataset).expanduser()
    if not path.is_file():
        raise ValueError(f"--dataset {dataset!r} is neither 'airline' nor an existing CSV, TSV or parquet file")
    fmt = _suffixes(path)[0]
    if fmt in _NOT_TABLES:
        raise ValueError(
            f"--dataset {dataset}: timemoe forecast reads CSV, TSV or parquet tables, not {fmt} files; convert it "
            "to a CSV with one column per series, or forecast it from Python (TimeMoEForecaster)"
        )
    frame = read_frame(path, fmt if fmt in TABULAR_SUFFIXES else ".csv")  # other names (.txt, none): CSV text
    frame, column = _one_series_of_long_table(frame, path, column)
    if column is None:
        # A numeric time column (yyyymmdd, epoch seconds, years) is no series: as the last numeric column it was
        # forecast itself. So are months written mm.yyyy (01.2020), text that reads as numbers.
        times = [name for name in frame.columns if _numeric_times(frame[name], name) is not None]
        times += [name for name in frame.columns if _written_months(frame[name])]
        column = _default_column(frame.drop(columns=times) if len(times) < frame.shape[1] else frame, path)
    if column not in frame.columns:
        raise ValueError(f"--column {column!r} not in {path}; columns: {list(frame.columns)}")
    values = _numbers(frame[column], path, column)
    if values.notna().sum() < 2:
        raise ValueError(f"column {column!r} of {path} has fewer than two numeric values")
    dated = None
    blank = frame.isna().all(axis=1).to_numpy()
    if frame.shape[1] > 1 and blank.any():
        # Lines of separators alone (",,", as spreadsheets export their formatted empty rows) hold no time and no
        # value: a date column with such holes left the whole file undated (a newest-first one forecast backwards).
        dated = _time_column(frame[~blank], exclude=column, path=path)
        if dated is not None:
            log.info("%s: %d empty row(s) (separators alone) left out", path, int(blank.sum()))
            frame, values = frame[~blank], values[~blank]
    if dated is None:
        dated = _time_column(frame, exclude=column, path=path)
    if dated is None:
        return values.rename(column)
    times, offsets = dated  # print the forecast against dates that continue the file's own
    order = np.argsort(times.to_numpy(), kind="stable")
    if offsets is _ORDER_ONLY:  # a repeated date: rows in time order, numbered (see _repeated_local_hour)
        series = pd.Series(values.to_numpy()[order]).rename(column)
        series.attrs[_FILE_ROWS] = frame.index.to_numpy()[order]  # the rows as read, for _line
        return series
    index = pd.DatetimeIndex(times.to_numpy()[order])
    written = None if offsets is None else pd.Series(offsets[order], index=index)
    series = _with_skipped_times(pd.Series(values.to_numpy()[order], index=index), path, written).rename(column)
    if written is not None:  # the index is a timeline (UTC, or the repeated hour counted twice): see _as_written
        series.attrs[_WRITTEN_OFFSETS] = written
    return series


# Where load_series leaves the offset at which the file wrote each time of a series' index, when it has one.
_WRITTEN_OFFSETS = "timemoe_written_offsets"
# ... and the file row of each point of a numbered series whose rows it put in time order.
_FILE_ROWS = "timemoe_file_rows"
# What _time_column gives for the offsets of times that order the rows but cannot date them.
_ORDER_ONLY = "order only"


def _as_written(times, offsets) -> list:
    """Times of a series' index, or of its forecast, as its file wrote them (``offsets``: what load_series recorded,
    None for times shown as they are). The index is then a timeline: UTC instants where the UTC offsets changed
    (they were printed in UTC), or local times counting twice the hour the clocks went back. Each time takes the
    offset of the latest row at or before it, a forecast the last row's: the file names no time zone, so a later
    daylight-saving change is not foreseen."""
    import datetime

    import pandas as pd

    if offsets is None:
        return list(times)
    shown = []
    for t in times:
        if isinstance(t, pd.Timestamp):  # not the +1, +2 of an undated forecast
            at = max(int(offsets.index.searchsorted(t, side="right")) - 1, 0)
            offset = offsets.iloc[at].to_pytimedelta()
            t = t.tz_convert(datetime.timezone(offset)) if t.tz is not None else t + offset
        shown.append(t)
    return shown


def _with_skipped_times(series, path: Path, written=None):
    """``series`` with a missing value at each time its regular index skips, as the estimators read it (``written``:
    the offsets of its times, for :func:`_as_written`).

    Rows left out of a dated file (60 hours of an hourly series) were joined as if adjacent, shifting a daily
    cycle's phase in the context without a word; only empty cells were counted as missing."""
    import pandas as pd

    from .frames import infer_series_freq

    freq = infer_series_freq(series.index)
    if freq is None:
        return series
    full = pd.date_range(series.index[0], series.index[-1], freq=freq)
    if len(full) == len(series):
        return series
    skipped = full[~full.isin(series.index)]
    log.warning(
        "%s skips %d time point(s) of its frequency %s (the first: %s); they are read as missing values",
        path,
        len(skipped),
        freq,
        _time_text(_as_written(skipped[:1], written)[0], dates_only=False),
    )
    return series.reindex(full)


def _default_column(frame, path: Path):
    """The last numeric column that holds a series: not empty (a trailing comma's "Unnamed: 2"), not constant (a
    store number). A text column of mostly numbers is a column whose formatting broke (thousands separators, a
    stray "abc"): with it left out, another column was forecast without a word, so it is an error naming it."""
    import pandas as pd

    def numeric(name) -> bool:  # bool columns (a promo flag) are no series to forecast
        column = frame[name]
        return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)

    def mostly_numbers(name) -> bool:
        column = frame[name]
        if not (pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)):
            return False
        given = column.dropna()
        digits = given.astype(str).str.replace(",", "", regex=False)  # 1,001.7 and 12,5 count as numbers here
        return bool(len(given)) and pd.to_numeric(digits, errors="coerce").notna().mean() >= 0.5

    candidates = [c for c in frame.columns if numeric(c) or mostly_numbers(c)]
    series = [c for c in candidates if not numeric(c) or (frame[c].notna().sum() >= 2 and frame[c].nunique() > 1)]
    if not candidates:
        raise ValueError(f"{path} has no numeric column; pass --column (columns: {list(frame.columns)})")
    chosen = (series or candidates)[-1]
    if not numeric(chosen):
        _numbers(frame[chosen], path, chosen)  # raises, naming the values that are no numbers
    others = [str(c) for c in series if c != chosen]
    if others:  # the choice was only shown in the header line
        also = ", ".join(repr(c) for c in others)
        log.info(
            "%s: forecasting its last numeric column %r (also numeric: %s); choose with --column",
            path.name,
            str(chosen),
            also,
        )
    return chosen


def _line(row) -> str:
    """The file line of row ``row`` of a table as read (after its header line)."""
    return str(row + 2)


_THOUSANDS = r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?"


def _numbers(column, path: Path, name):
    """``column`` as floats; values that are no numbers are an error naming them (they were read as missing
    values before, and the rows after the last number were dropped without a word)."""
    import pandas as pd

    values = pd.to_numeric(column, errors="coerce")
    text = column.astype(str).str.strip()
    bad = values.isna() & column.notna() & (text != "")
    if not bad.any():
        return values.astype(float)
    examples = ", ".join(repr(v) for v in text[bad].unique()[:3])
    where = column.index[bad][:3]
    if isinstance(column.index, pd.RangeIndex):
        rows = "lines " + ", ".join(_line(i) for i in where)
    else:
        rows = "rows " + ", ".join(str(i) for i in where)
    if text[bad].str.fullmatch(_THOUSANDS).all():
        hint = "they are written with thousands separators: save the file without them (1001.7, not 1,001.7)"
    else:
        hint = "fix them, or leave those cells empty to mark the values missing"
    raise ValueError(
        f"column {name!r} of {path} holds {int(bad.sum())} value(s) that are not numbers ({examples}; {rows}); {hint}"
    )


# Formats open_source reads that are no table; read as CSV text they gave confusing errors.
_NOT_TABLES = (".npy", ".npz", ".json", ".jsonl", ".bin", ".xlsx", ".xls", ".xlsm", ".ods")


def _one_series_of_long_table(frame, path: Path, column: str | None):
    """A long table (id, time and value columns, as frames detects it) holding one id, as a table of that series
    with its value column as the default ``column``. Several ids are an error: read as one table, their rows would be
    forecast as a single series that jumps from one id to the next."""
    from .data.frames import ID_NAMES, VALUE_NAMES, find_column, looks_long

    id_col = find_column(frame, ID_NAMES)
    if id_col is None or id_col == column:
        return frame, column
    ids = frame[id_col].unique()
    if not looks_long(frame) and not (1 < len(ids) < len(frame)):
        # An id column beside a value column of any name (unique_id, date, sales) holding several ids is a long
        # table too: its stores were forecast as one series. One id, or a different one in every row, is none.
        return frame, column
    if 2 < len(frame) == len(ids):  # a different id in every row: row labels (1, 2, 3, ...), not series ids
        return frame.drop(columns=[id_col]), column or find_column(frame, VALUE_NAMES)
    if len(ids) > 1:
        raise _long_table(path, id_col, ids)
    return frame.drop(columns=[id_col]), column or find_column(frame, VALUE_NAMES)


def _long_table(path: Path, id_col, ids) -> ValueError:
    """The error for a long table of several series (``ids``, the distinct values of its column ``id_col``)."""
    return ValueError(
        f"{path} is a long table of {len(ids)} series (column {id_col!r}: {', '.join(map(str, ids[:3]))}"
        f"{', ...' if len(ids) > 3 else ''}); "
        f"timemoe forecast forecasts one series: keep the rows of one {id_col} (filter the file), or forecast "
        "them all from Python (TimeMoEForecaster)"
    )


def _time_column(frame, exclude: str, path: Path):
    """The first text column whose every value reads as a date or time (with the time of day of a column beside it
    that holds only that): its times, and the offset at which the file wrote each (for :func:`_as_written`), None
    where they print as read, or ``_ORDER_ONLY`` where a repeated time leaves them fit to order the rows but not to
    date them; None if there is none. A column that tells apart the series of a long table is an error."""
    import pandas as pd

    from .data.frames import _holds_dates, parse_times

    def read(column, name, where=None):  # a text column's times
        # Times without their date (22:00, 23:00, 00:00; Nov, Dec, Jan) were dated today or in year 1 and sorted
        # into the wrong order: 00:00 before 22:00, January before the November of the year before.
        return parse_times(column, where=where) if _holds_dates(column) else None

    for name in frame.columns:
        column = frame[name]
        numeric = pd.api.types.is_numeric_dtype(column)
        # A numeric column's times, read once (they leave out its empty cells, as read(column.dropna()) would).
        if name == exclude or (numeric and (numeric_times := _numeric_times(column, name)) is None):
            continue
        if column.isna().any():
            holes_dated = numeric_times if numeric else read(column.dropna(), name)
            if holes_dated is not None:  # a date column with holes: say why nothing is dated
                log.warning(
                    "column %r reads as dates but %d row(s) have none (the first at line %s); the forecast is "
                    "numbered, not dated (fill in the dates to get dates)",
                    name,
                    int(column.isna().sum()),
                    _line(column.index[column.isna()][0]),
                )
            continue
        parsed = numeric_times if numeric else read(column, name, where=f"column {name!r}")
        if parsed is not None:
            parsed = _with_time_of_day(frame, name, parsed, exclude)
        if parsed is not None and parsed.is_unique:
            return parsed, _offsets_of(column, parsed)
        if parsed is not None:
            if parsed.duplicated(keep=False).mean() >= 0.5:
                key = _series_key(frame, name, parsed, exclude)
                if key is not None:  # date,store,sales sorted by date: forecast as one series, it zig-zagged
                    raise _long_table(path, key, frame[key].unique())
                # Put in time order, series stacked one after another (no id column, or one not named as such)
                # were interleaved row by row: a forecast of a series jumping between them at every step.
                log.warning(
                    "column %r reads as dates but most of them appear more than once (%s %d times): the file seems "
                    "to hold several series one after another; rows are kept in file order and the forecast is "
                    "numbered, not dated (keep the rows of one series)",
                    name,
                    parsed[parsed.duplicated()].iloc[0],
                    int(parsed.value_counts().max()),
                )
                return None  # undated, as a file without a date column
            dated = _repeated_local_hour(name, parsed)
            return dated if dated is not None else (parsed, _ORDER_ONLY)
    return None


# A time of day alone: 17:24, 17:24:00, 17:24:00.5.
_TIME_OF_DAY = r"\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?"


def _with_time_of_day(frame, name, dates, exclude):
    """``dates`` (the dates of column ``name``, all midnights) with the times of day of the first other column that
    holds only times of day (17:24:00): a date column and a time column (the UCI household power layout,
    ``Date;Time;...``) make one timestamp. The date column alone repeated once per time of day, so the file was
    read as stacked series, undated and in file order (a newest-first file forecast backwards). The dates keep the
    reading :func:`parse_times` chose (day-first or month-first); ``dates`` as they are when there is no such column."""
    import pandas as pd

    if dates.dt.tz is not None or not (dates == dates.dt.normalize()).all():
        return dates
    for other in frame.columns:
        column = frame[other]
        if other in (name, exclude) or pd.api.types.is_numeric_dtype(column) or column.isna().any():
            continue
        if not column.head(20).astype(str).str.strip().str.fullmatch(_TIME_OF_DAY).all():
            continue  # most columns tell at once: a file of millions of rows is not matched whole for each
        text = column.astype(str).str.strip()
        if not text.str.fullmatch(_TIME_OF_DAY).all():
            continue
        offsets = pd.to_timedelta(text.where(text.str.count(":") == 2, text + ":00"), errors="coerce")
        if offsets.isna().any() or (offsets >= pd.Timedelta(days=1)).any():
            continue
        log.info("columns %r and %r read as one timestamp (date and time of day)", name, other)
        return pd.Series(dates.to_numpy() + offsets.to_numpy(), index=dates.index)
    return dates


def _series_key(frame, name, times, exclude):
    """A column that tells apart the series of a long table whose id column has no id name (``date,store,sales``),
    or None: with the time column ``name`` (``times``, most of them repeated) it makes every row unique. Only text
    (not numbers written as text, not dates or times) or integers of few values (at most twice as many as the most
    rows of one time) are ids; date parts (hour, weekday) and row counters are not. Without such a column the rows
    are series stacked one after another, or repeated times, read as before."""
    import pandas as pd

    from .data.frames import DATE_PART_NAMES, INDEX_NAMES, TIME_NAMES, parse_times

    most = int(times.value_counts().max())
    for other in frame.columns:
        column = frame[other]
        lname = str(other).strip().lower()
        if other in (name, exclude) or lname in (*DATE_PART_NAMES, *INDEX_NAMES, *TIME_NAMES) or column.isna().any():
            continue
        distinct = column.nunique()
        if not 1 < distinct <= len(column) // 2:
            continue
        if pd.api.types.is_integer_dtype(column) and not pd.api.types.is_bool_dtype(column):
            if distinct > 2 * most:
                continue
        elif pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column):
            text = column.astype(str).str.strip()
            if pd.to_numeric(text, errors="coerce").notna().any() and distinct > 2 * most:
                continue  # numbers (some broken): values, not ids
            if parse_times(text.drop_duplicates()) is not None:
                continue
        else:
            continue
        if not pd.DataFrame({"t": times.to_numpy(), "k": column.to_numpy()}).duplicated().any():
            return other
    return None


# Names under which integers are times: epoch seconds (or milliseconds ...) or years.
_EPOCH_NAMES = ("epoch", "unix", "unix_time", "unixtime", "ts", "time_stamp")
# Epoch times by their size (the unit, and the first power of ten of its times from 1973 to 2286).
_EPOCH_UNITS = (("s", 1e8), ("ms", 1e11), ("us", 1e14), ("ns", 1e17))


def _numeric_times(column, name):
    """The times of a numeric column that holds them, else None: yyyymmdd integers (20240131) under any name;
    years (1990) under year, date, ds or period; epoch seconds, milliseconds, microseconds or nanoseconds (UTC,
    printed without an offset) under a time name (``timestamp``, ``time``, ``epoch``...). They were skipped as
    numbers: a newest-first file was forecast backwards, undated, and a last such column was forecast itself."""
    import numpy as np
    import pandas as pd

    from .data.frames import TIME_NAMES, _yyyymmdd

    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return None
    given = column.dropna()
    if len(given) < 3 or not np.isfinite(given.to_numpy(dtype=float)).all() or (given != np.round(given)).any():
        return None
    whole = given.astype("int64")
    dates = _yyyymmdd(whole)
    if dates is not None:
        return dates
    lname = str(name).strip().lower()
    if lname not in (*TIME_NAMES, "year", *_EPOCH_NAMES):
        return None
    if lname in ("year", "date", "ds", "period") and whole.between(1000, 2999).all():  # not "time": 1250 ms
        return pd.to_datetime(whole.astype(str), format="%Y")
    size = float(whole.abs().median())
    for unit, low in _EPOCH_UNITS:
        if low <= size < low * 100 and (whole > 0).all():
            return pd.to_datetime(whole, unit=unit)
    return None


def _written_months(column) -> bool:
    """Whether a text column holds months written mm.yyyy (01.2020), as read_frame keeps them."""
    import pandas as pd

    from .data.frames import dotted_months

    if not (pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)) or column.isna().any():
        return False
    return dotted_months(column.astype(str).str.strip()) is not None


def _offsets_of(column, parsed):
    """The UTC offset each time of ``column`` was written with, where they differ (pandas read them as UTC: local
    times across a daylight-saving change, +01:00 then +02:00); None otherwise."""
    from .data.local_time import written_offsets

    if str(parsed.dt.tz) != "UTC":  # no offsets, or the same one throughout: pandas kept it
        return None
    return written_offsets(column)


def _repeated_local_hour(name, parsed):
    """Dates of a column that repeats a time: the hour repeated when daylight saving time ends, in file order, as
    a timeline and offsets (:func:`_time_column`); else None, with a warning that says why nothing is dated."""
    from .data.local_time import fall_back_timeline, repeats_somewhere

    twice = parsed[parsed.duplicated()].iloc[0]
    read = fall_back_timeline(parsed)
    if read is not None:
        log.info("column %r repeats %s: read as the hour repeated when daylight saving time ends", name, twice)
        return read
    if parsed.dt.tz is None and repeats_somewhere(twice):
        # The rows are out of order, or not a step apart: which copy is summer time cannot be told.
        fix = (
            "if the clocks went back then, keep the rows in the order they were recorded, or write the times with "
            "their UTC offsets (02:00+02:00, then 02:00+01:00 in central Europe) or in UTC"
        )
    else:
        fix = "remove the duplicate rows to get dates"
    log.warning(
        "column %r reads as dates but %s appears more than once; rows are put in time order (rows of the same time "
        "in file order) and the forecast is numbered, not dated (%s)",
        name,
        twice,
        fix,
    )
    return None


def run_forecast(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd
    import torch

    from . import preprocess
    from .checkpoint import resolve_directory
    from .model import TimeMoEForPrediction
    from .preprocess import fill_missing, forecast_series

    if args.horizon < 1 or (args.context_length is not None and args.context_length < 2):
        raise ValueError("--horizon must be >= 1 and --context-length >= 2")
    directory = resolve_directory(_model_path(args.model))
    model = TimeMoEForPrediction.from_pretrained(directory, dtype=torch.float32)  # resolved once: a hub id asks once
    # Our own description of the checkpoint, where it has one of the expected shape (any other is no one's status).
    meta = model.config.extra.get("timemoe_forecaster")
    status = meta.get("status") if isinstance(meta, dict) else None
    status = status if isinstance(status, str) else ""
    series = load_series(args.dataset, args.column)
    values = series.to_numpy(dtype=float)
    given = np.flatnonzero(~np.isnan(values))  # not isfinite: a last value of inf is an error, not dropped
    trailing = len(values) - (given[-1] + 1) if given.size else 0
    values = values[: len(values) - trailing]
    infinite = np.flatnonzero(np.isinf(values))
    if infinite.size:
        if isinstance(series.index, pd.RangeIndex):  # no dates: points named by their file lines
            rows = series.attrs.get(_FILE_ROWS, series.index)
            where = "lines " + ", ".join(_line(int(rows[i])) for i in infinite[:3])
        else:
            written = series.attrs.get(_WRITTEN_OFFSETS)
            where = ", ".join(_time_text(t) for t in _as_written(series.index[infinite[:3]], written))
        raise ValueError(f"{args.dataset} holds {infinite.size} infinite values (at {where}); fix or remove them")
    limit = model.config.max_position_embeddings
    if args.context_length is not None and args.context_length > limit:
        log.warning(
            "--context-length %d exceeds the model's limit of %d points; using %d", args.context_length, limit, limit
        )
    asked = None if args.context_length is None else min(args.context_length, limit)
    preprocess.warn_if_past_default_context(asked, model.config, name="--context-length")
    length = preprocess.context_points(asked, model.config)  # None: the model's default context
    # Gaps are interpolated over the whole series (as the estimators do), then the context is cut: the model takes
    # left padding only, not holes in a row, and a gap at the window's start is bridged from the points before it.
    filled = fill_missing(values, name=f"{args.dataset}")  # leading missing values dropped, not interpolated
    context = filled[-length:]
    missing = int(np.isnan(values[-len(context) :]).sum())
    # The estimators' path: the same filling and cut, scaling safe at any magnitude, constants without the model.
    pred = forecast_series(model, [values], args.horizon, context_length=length, names=[str(args.dataset)])[0]

    name = series.name or "value"
    print(f"model: {directory}" + (f"  [{status}]" if status else ""))
    if "UNTRAINED" in status.upper():
        print("WARNING: this checkpoint is an UNTRAINED PLACEHOLDER with random weights: the forecast is meaningless.")
    print(f"series: {args.dataset} / {name}, {len(values)} points, context {len(context)}, horizon {args.horizon}")
    if missing:
        print(f"({missing} missing values in the context were interpolated)")
    if trailing:
        print(f"({trailing} rows after the last value hold none and were left out: the forecast starts after it)")
    index = series.index[: len(values)]
    future = _future_index(index, args.horizon)
    print(f"\n{'':>10} {'time':>20} {name[:24]:>24}")
    first_shown = len(values) - min(args.show, len(values))  # not values[-show:]: -0 would print them all
    shown = _as_written(list(index[first_shown:]) + list(future), series.attrs.get(_WRITTEN_OFFSETS))
    # Dates alone only when every time shown is a midnight: hourly output printed its midnights as bare dates.
    dates_only = all(not isinstance(t, pd.Timestamp) or t == t.normalize() for t in shown)
    observed = len(values) - first_shown
    for t, v in zip(shown[:observed], values[first_shown:]):
        print(f"{'observed':>10} {_time_text(t, dates_only):>20} {v:>24.4f}")
    for t, v in zip(shown[observed:], pred):
        print(f"{'forecast':>10} {_time_text(t, dates_only):>20} {v:>24.4f}")
    return 0


def _recent_freq(index):
    """The frequency of the latest rows: the longest recent stretch pandas can name, else the step most gaps take.

    The last three rows alone called business days daily (Friday, then Saturday and Sunday forecasts), and one
    missing day among them left the forecast undated."""
    import pandas as pd

    for size in sorted({len(index), 50, 10}, reverse=True):
        tail = index[-size:]
        if len(tail) >= 3 and tail.is_unique and tail.is_monotonic_increasing:
            freq = pd.infer_freq(tail)
            if freq is not None:
                return freq
    recent = index[-50:]
    if len(recent) >= 10 and (recent == recent.normalize()).all() and (recent.dayofweek < 5).all():
        return "B"  # weekdays only, with a holiday or a missing day among them
    if len(index) >= 3 and index[-3:].is_unique and (freq := pd.infer_freq(index[-3:])) is not None:
        return freq
    gaps = pd.Series(index[1:] - index[:-1])
    common = gaps.mode()
    # A step of fixed length only: the usual gap of month or year data (31 or 365 days) drifts off the calendar.
    if len(common) and pd.Timedelta(0) < common[0] <= pd.Timedelta(days=7) and (gaps == common[0]).mean() >= 0.5:
        return pd.tseries.frequencies.to_offset(common[0])
    return None


def _time_text(t, dates_only: bool = True) -> str:
    """Dates at midnight without their 00:00:00 (with ``dates_only``)."""
    import pandas as pd

    if dates_only and isinstance(t, pd.Timestamp) and t == t.normalize():
        return str(t.date())
    return str(t)


def _future_index(index, horizon: int) -> list:
    import pandas as pd

    if isinstance(index, pd.PeriodIndex):
        return list(index[-1] + k for k in range(1, horizon + 1))
    if isinstance(index, pd.DatetimeIndex) and len(index) >= 3:
        freq = index.freq or _recent_freq(index)
        if freq is not None:
            return list(pd.date_range(index[-1], periods=horizon + 1, freq=freq)[1:])
    if pd.api.types.is_integer_dtype(index):
        return list(range(int(index[-1]) + 1, int(index[-1]) + 1 + horizon))
    return [f"+{k}" for k in range(1, horizon + 1)]


# entry ------------------------------------------------------------------------------------------
def _setup(verbose: bool, quiet: bool = False) -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else logging.INFO if rank == 0 and not quiet else logging.WARNING
    logging.basicConfig(level=level, format=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s")
    import torch

    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup(args.verbose, args.quiet)
    try:
        if args.command == "forecast":
            return run_forecast(args)
        cfg = train_config_from_args(args)
        from .train.trainer import train

        result = train(cfg)
    except (ValueError, TypeError, OSError, ImportError) as err:  # OSError: paths, permissions, a full disk
        if args.verbose:
            raise
        parser.exit(2, f"timemoe {args.command}: error: {_error_text(err)}\n")
    except KeyboardInterrupt:
        # Ctrl-C before training takes it over (reading data, building the model: seconds on real files), or a
        # second one during training: a traceback from inside pandas or torch said nothing more than this.
        if args.verbose:
            raise
        stopped = "interrupted (Ctrl-C): stopped at once, unsaved (earlier checkpoints are kept)"
        parser.exit(130, f"timemoe {args.command}: {stopped}\n")
    if int(os.environ.get("RANK", "0")) == 0:
        if not result["losses"]:  # resumed at --max-steps: there is no loss of this run to report
            print(
                f"nothing to train: the run in {result['output_dir']} was already complete at step {result['steps']} "
                "(pass a larger --max-steps with --resume to train on)"
            )
        elif not result["finished"]:  # stopped by --time-limit or a signal: a checkpoint, no final model yet
            saved = (
                f"no final model yet, checkpoint {result['checkpoint']} (train on with --resume)"
                if result["checkpoint"]
                else "nothing was saved (no --output-dir), so the run cannot be resumed"
            )
            reason = result.get("stopped_by") or "time limit"
            print(
                f"{'time limit reached' if reason.startswith('time limit') else 'stopped by ' + reason}: trained "
                f"{result['steps']} of {cfg.max_steps} steps, last loss {result['final_loss']:.4f}; {saved}"
            )
        else:
            skipped = f" ({result['skipped_steps']} skipped: non-finite gradients)" if result["skipped_steps"] else ""
            saved = f"model in {result['output_dir']}" if result["output_dir"] else "nothing saved (no --output-dir)"
            print(f"trained {result['steps']} steps{skipped}, final loss {result['final_loss']:.4f}; {saved}")
    if result["finished"]:  # a signal during the last step still finishes the run
        return 0
    # Not 0: a script's `timemoe pretrain ... && next-step` must not go on as if the run had finished.
    if result.get("stopped_by") in ("SIGINT", "SIGTERM"):
        return 128 + getattr(signal, result["stopped_by"])
    # 75 says "resume me": a slice loop (docs/pretraining.md) ran forever on a run that saved nothing to resume.
    return TIME_LIMIT_EXIT if result["checkpoint"] else 1


def _error_text(err: Exception) -> str:
    """The one-line message of an error. A bare missing-module error (one our code did not reword) names the
    package to install, since an optional dependency (pyarrow, triton, flash_attn, ...) is the usual cause."""
    if isinstance(err, ModuleNotFoundError) and err.name and str(err).startswith("No module named"):
        package = err.name.split(".")[0]
        return f"the optional package {package!r} is not installed ({err}); install it: {install_hint(package)}"
    return str(err)


if __name__ == "__main__":
    sys.exit(main())
