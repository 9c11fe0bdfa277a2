"""Optional experiment loggers behind one tiny interface, plus Ray dashboard gauges.

    logger = make_logger("jsonl", run_dir)          # none | jsonl | tensorboard | wandb | mlflow
    logger.log({"loss": 0.73, "lr": 1e-5}, step=10)
    logger.close()

    emit_dashboard_metrics("sft0", {"final_loss": 0.41, "tokens_per_s": 5300.0})

`jsonl` needs nothing beyond the standard library and is the one to rely on: it appends one
JSON object per `log` call to `<run_dir>/logs/metrics.jsonl`. The other kinds import their
package only when asked for, so importing this module never needs TensorBoard, W&B or MLflow,
nor the network. Log from one process only (the driver, or rank 0 of a Ray Train group):
several writers to one file or run would interleave.
"""

from __future__ import annotations

import importlib
import json
import math
import numbers
import os
import posixpath
import re
import time

KINDS = ("none", "jsonl", "tensorboard", "wandb", "mlflow")


def _is_number(value) -> bool:
    # bool is an int subclass, but True/False is a flag, not a measurement.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _numeric(metrics: dict) -> dict[str, float]:
    """The plain-number entries: what scalar backends (TensorBoard, MLflow, gauges) accept."""
    return {k: float(v) for k, v in metrics.items() if _is_number(v)}


def _jsonable(value):
    """json.dumps fallback for numpy / torch scalars and anything else odd."""
    if hasattr(value, "item"):
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    return str(value)


def _require(module: str, kind: str, pip_name: str):
    """Import an optional backend, or fail with the one command that fixes it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"the '{kind}' logger needs the '{pip_name}' package, which is not "
                          f"installed: pip install {pip_name}  (or use kind='jsonl')") from exc


def _local_dir(run_dir: str) -> str | None:
    """The run dir as a local path, or None for cloud storage (s3://, gs://)."""
    return None if "://" in run_dir else os.path.abspath(run_dir)


class NullLogger:
    def log(self, metrics: dict, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlLogger:
    """One JSON line per call: {"step": ..., "time": ..., **metrics}.

    Local run dirs are appended to and flushed per line, so a crash loses nothing already
    logged and a resumed run continues the same file. Object stores cannot append, so for
    s3:// / gs:// run dirs the lines are kept in memory and the whole object is rewritten
    on each call (metrics files are small: one line per logging step).
    """

    def __init__(self, run_dir: str):
        from stagent_ray.runio import filesystem, run_path

        self.path = run_path(run_dir, "logs/metrics.jsonl")
        self.local = _local_dir(run_dir) is not None
        if self.local:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self.file = open(self.path, "a", encoding="utf-8")
            return
        self.fs, self.path = filesystem(self.path)
        self.fs.create_dir(posixpath.dirname(self.path), recursive=True)
        self.lines: list[str] = []
        if self.fs.get_file_info(self.path).is_file:  # resumed run: keep what is there
            with self.fs.open_input_stream(self.path) as f:
                self.lines = f.read().decode("utf-8").splitlines(keepends=True)

    def log(self, metrics: dict, step: int) -> None:
        line = json.dumps({"step": step, "time": time.time(), **metrics},
                          default=_jsonable) + "\n"
        if self.local:
            self.file.write(line)
            self.file.flush()
            return
        self.lines.append(line)
        with self.fs.open_output_stream(self.path) as f:
            f.write("".join(self.lines).encode("utf-8"))

    def close(self) -> None:
        if self.local and not self.file.closed:
            self.file.close()


class TensorBoardLogger:
    def __init__(self, run_dir: str, run_name: str | None):
        _require("tensorboard", "tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        # SummaryWriter writes through the local filesystem; for a cloud run dir keep the
        # event files beside the job (cwd) and sync them yourself.
        base = _local_dir(run_dir) or os.getcwd()
        self.writer = SummaryWriter(os.path.join(base, "logs", "tensorboard", run_name or "run"))

    def log(self, metrics: dict, step: int) -> None:
        for name, value in _numeric(metrics).items():
            self.writer.add_scalar(name, value, global_step=step)

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    def __init__(self, run_dir: str, project: str, run_name: str | None, config: dict | None):
        wandb = _require("wandb", "wandb", "wandb")
        # WANDB_MODE=offline, WANDB_API_KEY etc. are read from the environment by wandb itself.
        local = _local_dir(run_dir)
        if local:
            os.makedirs(os.path.join(local, "logs"), exist_ok=True)
        self.run = wandb.init(project=project, name=run_name, config=config,
                              dir=os.path.join(local, "logs") if local else None)

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowLogger:
    def __init__(self, project: str, run_name: str | None, config: dict | None):
        self.mlflow = _require("mlflow", "mlflow", "mlflow")
        # The tracking server comes from MLFLOW_TRACKING_URI as usual; the project names the
        # experiment so runs of one project group together.
        self.mlflow.set_experiment(project)
        self.run = self.mlflow.start_run(run_name=run_name)
        if config:
            self.mlflow.log_params(_flatten(config))

    def log(self, metrics: dict, step: int) -> None:
        numeric = {_metric_key(k): v for k, v in _numeric(metrics).items() if math.isfinite(v)}
        if numeric:
            self.mlflow.log_metrics(numeric, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def _flatten(data: dict, prefix: str = "", sep: str = ".") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: configs and stage metrics nest, backends want flat keys."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, name, sep))
        else:
            out[name] = value
    return out


def _metric_key(name: str) -> str:
    # MLflow allows alphanumerics, _ - . space / only.
    return re.sub(r"[^\w\-. /]", "_", name)


def make_logger(kind: str, run_dir: str, project: str = "stagent-ray",
                run_name: str | None = None, config: dict | None = None):
    """An object with `log(metrics, step)` and `close()`.

    `config` (optional) is recorded by the backends that keep run parameters (W&B, MLflow).
    """
    kind = (kind or "none").lower()
    if kind == "none":
        return NullLogger()
    if kind == "jsonl":
        return JsonlLogger(run_dir)
    if kind == "tensorboard":
        return TensorBoardLogger(run_dir, run_name)
    if kind == "wandb":
        return WandbLogger(run_dir, project, run_name, config)
    if kind == "mlflow":
        return MlflowLogger(project, run_name, config)
    raise ValueError(f"unknown logger kind {kind!r}; choose one of {', '.join(KINDS)}")


# ---------------------------------------------------------------------------------------
# Ray dashboard / Prometheus

# One Gauge object per metric name for the life of the process: Ray registers a metric
# per object, so creating a new one per call would re-register the same name each time.
_GAUGES: dict = {}


def dashboard_metric_name(key: str) -> str:
    """`final_loss` -> `stagent_stage_final_loss` (Prometheus: [a-zA-Z_:][a-zA-Z0-9_:]*).

    The `stage_` part keeps these per-stage summaries apart from the live metrics the
    rollout actors emit (`stagent_mean_reward`, `stagent_trajectories`): a stage that
    reports `mean_reward` must not write into the actors' gauge.
    """
    return "stagent_stage_" + re.sub(r"[^a-zA-Z0-9_]", "_", key).strip("_").lower()


def emit_dashboard_metrics(stage: str, metrics: dict) -> list[str]:
    """Publish the numeric entries of `metrics` as Ray gauges tagged `stage=<stage>`.

    Nested dicts are flattened (`{"funnel": {"kept": 3}}` -> `stagent_stage_funnel_kept`);
    strings, None and booleans are skipped. A no-op when Ray is not initialised, so stage
    code can call it unconditionally. Returns the gauge names it set.
    """
    try:
        import ray
    except ImportError:
        return []
    if not ray.is_initialized():
        return []
    from ray.util.metrics import Gauge

    names = []
    for key, value in _numeric(_flatten(metrics, sep="_")).items():
        name = dashboard_metric_name(key)
        gauge = _GAUGES.get(name)
        if gauge is None:
            gauge = _GAUGES[name] = Gauge(name, f"stagent-ray stage metric '{key}'",
                                          tag_keys=("stage",))
        gauge.set(value, tags={"stage": stage})
        names.append(name)
    return names


def report_progress(stage: str, step: int, total: int, seconds_per_step: float,
                    values: dict) -> str:
    """A training stage's progress, from rank 0: one line in the job log (a Train worker's
    stdout reaches `ray job logs`) and the same numbers as dashboard gauges (step, total
    steps, ETA in seconds and `values`, e.g. loss or reward and tokens/s)."""
    eta = max(0, total - step) * seconds_per_step
    minutes, seconds = divmod(int(round(eta)), 60)
    shown = " ".join(f"{k} {v:.4g}" for k, v in values.items())
    line = f"[{stage}] step {step}/{total} {shown} eta {minutes}m{seconds:02d}s"
    print(line, flush=True)
    emit_dashboard_metrics(stage, {"step": step, "total_steps": total, "eta_s": eta, **values})
    return line
