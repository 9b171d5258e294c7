"""The one settings object: every variable the project reads from the environment (12-factor), checked.

Typed and grouped by stage; each script's flags override it. Nothing else reads ``os.environ`` for a project setting.

Variable names are the contract with operators (README, docs). Third-party variables are honoured where their
libraries look for them (``AWS_*`` by boto3, ``MLFLOW_HTTP_*`` by MLflow, ``PROMETHEUS_MULTIPROC_DIR`` by
prometheus_client); the ones the project itself decides with are read here (``MLFLOW_TRACKING_URI``,
``AWS_ENDPOINT_URL``, ``RAY_ADDRESS``).

Every variable is checked when it is read: its type, its range or choices, the shape of a URI. All invalid ones are
reported at once (:class:`SettingsError`, one message per variable, each naming it). A script reads the core
settings and its own stage's group strictly (``Settings.from_env(groups=(...))``); another stage's invalid variable
is then ignored (that group keeps its defaults), so a bad ``SERVING_WORKERS`` does not stop ``ric registry list``,
and ``lenient=True`` never fails (for building ``--help``).

Build with :meth:`Settings.from_env`; override core fields with :meth:`Settings.with_overrides` and a group with
``dataclasses.replace(settings, serving=replace(settings.serving, port=8080))``. :func:`describe` lists every
variable, its meaning and its effective value (credentials masked, defaults shown): ``ric settings``
(``python -m common.list_settings``) prints it.
"""

from __future__ import annotations

import math
import os
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from common.redact import redact

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "refund-item-classifier"
TRAINING_EXPERIMENT = "refund-item-classifier"  # the experiment of training runs (model_training.config's default)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
GROUPS = ("serving", "training", "batch", "learning")
UI_PORT = 5000  # where ``ric ui`` serves the MLflow UI of a local store

G = TypeVar("G")
# The inference runtimes a process can be told to use (inference.loading.RUNTIMES; a test keeps the two equal).
RUNTIME_CHOICES = ("auto", "exported", "keras", "litert-int8", "onnx", "litert")
Check = Callable[[Any], str | None]  # a value -> what is wrong with it (None: fine)


def env(
    name: str,
    default: Any = None,
    doc: str = "",
    *,
    secret: bool = False,
    check: Check | None = None,
    shown: str | None = None,
) -> Any:
    """A settings field read from environment variable ``name`` (empty counts as unset).

    ``check(value)`` says what is wrong with a value (None: nothing); ``shown`` describes the effective default of a
    field whose default is None because another module decides it (the recipe's epochs, the version's threshold)."""
    return field(default=default, metadata={"env": name, "doc": doc, "secret": secret, "check": check, "shown": shown})


class SettingsError(ValueError):
    """One or more variables have invalid values; ``errors`` holds one message per variable, each naming it."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))


# --- checks: a value -> what is wrong with it, or None ------------------------------------------------------


def positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def unit_interval(value: float) -> str | None:
    return None if 0.0 <= value <= 1.0 else "must be in [0, 1]"


def finite(value: float) -> str | None:
    return None if math.isfinite(value) else "must be a finite number"


def open_unit_interval(value: float) -> str | None:
    return None if 0.0 < value < 1.0 else "must be in (0, 1), exclusive"


def below_one(value: float) -> str | None:
    return None if 0.0 <= value < 1.0 else "must be in [0, 1)"


def port_number(value: int) -> str | None:
    return None if 1 <= value <= 65535 else "must be a port number, 1-65535"


def one_of(*choices: str) -> Check:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def not_blank(value: str) -> str | None:
    return None if value.strip() else "must not be blank"


def relative_prefix(value: str) -> str | None:
    """A key prefix inside the store: relative, no ``..``."""
    if value.startswith("/") or ".." in value.split("/"):
        return "must be a prefix inside the store (relative, without '..'), e.g. incoming/"
    return not_blank(value)


def split_shares(text: str) -> tuple[float, float, float]:
    """``"0.7,0.15,0.15"`` -> the train, val and test shares (non-negative, summing to 1); ValueError otherwise."""
    try:
        shares = tuple(float(x) for x in text.split(","))
    except ValueError:
        shares = ()
    if len(shares) != 3 or min(shares) < 0 or abs(sum(shares) - 1.0) > 1e-6:
        raise ValueError("must be three shares train,val,test summing to 1, e.g. 0.7,0.15,0.15")
    return shares  # type: ignore[return-value]


def warehouse_split(value: str) -> str | None:
    try:
        split_shares(value)
    except ValueError as exc:
        return str(exc)
    return None


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):")


def storage_uri(value: str) -> str | None:
    """A folder path, ``file://path`` or ``s3://bucket[/prefix]``."""
    if value.lower().startswith("s3:") and not value.startswith("s3://"):
        return "must start with s3:// for S3 (s3://bucket/prefix)"
    if value.startswith("s3://"):
        bucket = value[len("s3://") :].split("/", 1)[0]
        if not bucket:
            return "names no bucket (use s3://bucket/prefix)"
        if not _BUCKET.match(bucket):
            return f"names an invalid bucket {bucket!r} (3-63 lowercase letters, digits, dots and hyphens)"
        return None
    if value.startswith("file://"):
        return None if value[len("file://") :] else "names no folder"
    if "://" in value:
        scheme = value.split("://", 1)[0]
        return f"has the unsupported scheme {scheme!r} (use a folder path or s3://bucket/prefix)"
    return None


def http_url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http(s)://host[:port] URL"
    try:
        parts.port  # noqa: B018 (a malformed port raises here)
    except ValueError:
        return "has an invalid port"
    return None


# The stores MLflow itself accepts as a tracking/registry URI (SQLAlchemy dialects may name a driver: mysql+pymysql).
_TRACKING_SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks", "databricks-uc")


def tracking_uri(value: str) -> str | None:
    """An MLflow tracking URI: ``sqlite:///path``, ``http(s)://host``, a database URL, ``file:`` or a folder path."""
    m = _SCHEME.match(value)
    if m is None or len(m["scheme"]) == 1:  # no scheme, or a Windows drive letter: a folder (MLflow's file store)
        return None
    scheme = m["scheme"].split("+", 1)[0].lower()
    if scheme not in _TRACKING_SCHEMES:
        return f"has the unsupported scheme {m['scheme']!r} (use sqlite:///path, http(s)://host:port or a database URL)"
    if scheme in ("http", "https"):
        return http_url(value)
    if scheme == "sqlite" and (not value.startswith("sqlite:///") or value == "sqlite:///"):
        return "must name a database file: sqlite:///relative.db or sqlite:////absolute.db"
    return None


_MODELS_URI = re.compile(r"^models:/[^/@]+(?:@[^/]+|/[^/]+)$")


def model_uri(value: str) -> str | None:
    if value.startswith("models:") and not _MODELS_URI.match(value):
        return "must be models:/NAME@ALIAS or models:/NAME/VERSION"
    return None


def log_level(value: str) -> str | None:
    return None if value.upper() in LOG_LEVELS else f"must be one of {', '.join(LOG_LEVELS)}"


# --- reading ------------------------------------------------------------------------------------------------


def _cast(kind: Any, raw: str) -> Any:
    options = [t for t in typing.get_args(kind) if t is not type(None)] or [kind]
    target = options[0]
    try:
        if target is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if target is Path:
            return Path(raw).expanduser().resolve()
        return target(raw)
    except ValueError as exc:
        what = {int: "an integer", float: "a number", bool: "true or false", Path: "a path"}.get(target, "a string")
        raise ValueError(f"must be {what}") from exc


def _read(cls: type[G], environ: Mapping[str, str], errors: list[str], choices: Mapping[str, Iterable[str]]) -> G:
    """``cls`` from ``environ``; each invalid variable is left at its default and its message added to ``errors``."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        name = f.metadata.get("env")
        raw = environ.get(name) if name else None
        if raw in (None, ""):
            continue
        try:
            value = _cast(hints[f.name], raw)
        except ValueError as exc:
            errors.append(f"{name} {exc}, got {raw!r}")
            continue
        check = f.metadata.get("check")
        problem = check(value) if check is not None else None
        if problem is None and name in choices and value not in (allowed := list(choices[name])):
            problem = f"must be one of {', '.join(map(str, allowed))}"
        if problem is not None:
            errors.append(f"{name} {problem}, got {redact(raw)!r}")
            continue
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a rule between variables (the group's __post_init__)
        errors.append(str(exc))
        return cls()


def _field_problems(group: Any) -> list[str]:
    """One message per field of ``group`` whose value its check refuses."""
    return [
        f"{f.metadata['env']} {problem}, got {getattr(group, f.name)!r}"
        for f in fields(group)
        if f.metadata.get("check") is not None
        and getattr(group, f.name) is not None
        and (problem := f.metadata["check"](getattr(group, f.name)))
    ]


@dataclass(frozen=True)
class ServingSettings:
    """The API server and app (``model_serving``)."""

    host: str = env("SERVING_HOST", "127.0.0.1", "bind address", check=not_blank)
    port: int = env("SERVING_PORT", 5001, "port", check=port_number)
    workers: int = env(
        "SERVING_WORKERS", os.cpu_count() or 1, "worker processes, each with its own model", check=positive
    )
    max_upload_bytes: int = env(
        "SERVING_MAX_UPLOAD_BYTES", 20 * 1024 * 1024, "largest request body (413 above)", check=positive
    )
    max_files: int = env("SERVING_MAX_FILES", 32, "most images in one request (413 above)", check=positive)
    body_buffer_bytes: int = env(
        "SERVING_BODY_BUFFER_BYTES",
        160 * 1024 * 1024,
        "request bodies one worker holds in all (503 above)",
        check=positive,
    )
    client_buffer_bytes: int = env(
        "SERVING_CLIENT_BUFFER_BYTES",
        64 * 1024 * 1024,
        "request bodies one worker holds per client address (429 above)",
        check=positive,
    )
    # The decoding limits: unset means data_processing.preprocessing's own defaults (a test keeps `shown` honest).
    max_pixels: int | None = env(
        "SERVING_MAX_PIXELS", None, "most pixels an image may declare (413 above)", check=positive, shown="50000000"
    )
    max_decode_pixels: int | None = env(
        "SERVING_MAX_DECODE_PIXELS", None, "most pixels decoded at full scale", check=positive, shown="16777216"
    )
    max_request_pixels: int | None = env(
        "SERVING_MAX_REQUEST_PIXELS",
        None,
        "most pixels decoded for all images of a request",
        check=positive,
        shown="67108864",
    )
    decode_seconds: float | None = env(
        "SERVING_DECODE_SECONDS", None, "decoding time budget of a request", check=positive, shown="10.0"
    )
    poll_seconds: float = env(
        "MODEL_POLL_SECONDS", 30.0, "re-resolve the model alias this often (0: never)", check=non_negative
    )
    admin_token: str = env("ADMIN_TOKEN", "", "bearer token of POST /admin/reload (unset: disabled)", secret=True)
    test_traffic_token: str = env(
        "SERVING_TEST_TRAFFIC_TOKEN",
        "",
        "requests with X-Test-Traffic: <this> stay out of the drift window and class mix (unset: none do)",
        secret=True,
    )
    review_token: str = env(
        "REVIEW_TOKEN", "", "bearer token of POST /labels and the review page's data (unset: disabled)", secret=True
    )
    drift_window_size: int = env("DRIFT_WINDOW_SIZE", 500, "items in the drift window", check=positive)
    drift_min_window: int = env("DRIFT_MIN_WINDOW", 100, "fewer items: insufficient_data", check=positive)
    drift_alpha: float = env(
        "DRIFT_ALPHA", 0.05, "family-wise false-alarm rate of the drift tests", check=open_unit_interval
    )
    runtime: str = env(
        "SERVING_RUNTIME",
        "auto",
        "auto (the fastest here at batch 1), exported (the export's preferred), keras, litert-int8, litert or onnx",
        check=one_of(*RUNTIME_CHOICES),
    )
    model_cache: str = env(
        "SERVING_MODEL_CACHE",
        "",
        "local copy of the last version loaded ('off' disables it)",
        shown="<DATA_DIR>/model-cache",
    )
    runtime_threads: int = env(
        "SERVING_TF_THREADS", 0, "threads of a worker's runtime (0: the runtime's default)", check=non_negative
    )
    runtime_dir: Path | None = env(
        "SERVING_RUNTIME_DIR", None, "shared runtime folder", shown="a new temporary folder per start"
    )
    window_dir: Path | None = env(
        "DRIFT_WINDOW_DIR", None, "shared drift-window folder", shown="<runtime folder>/drift-window"
    )

    def __post_init__(self) -> None:
        # Direct construction (tests, dataclasses.replace) gets the same checks as the environment.
        problems = _field_problems(self)
        if self.drift_min_window > self.drift_window_size:
            problems.append(
                f"DRIFT_MIN_WINDOW ({self.drift_min_window}) must be <= DRIFT_WINDOW_SIZE ({self.drift_window_size})"
            )
        if problems:
            raise SettingsError(problems)


@dataclass(frozen=True)
class TrainingSettings:
    """Defaults of ``model_training/train.py``'s flags; unset means the recipe's own default (``TrainConfig``; a test
    keeps each ``shown`` equal to it). The architecture, views and precision are checked against the choices the
    training script knows (``choices=`` of :meth:`Settings.from_env`)."""

    epochs: int | None = env("TRAIN_EPOCHS", None, "training epochs, the most", check=positive, shown="44")
    batch_size: int | None = env("TRAIN_BATCH_SIZE", None, "mini-batch size", check=positive, shown="256")
    learning_rate: float | None = env("TRAIN_LEARNING_RATE", None, "peak learning rate", check=positive, shown="0.004")
    seed: int | None = env(
        "TRAIN_SEED", None, "seed of init, shuffling and augmentation", check=non_negative, shown="42"
    )
    arch: str | None = env("TRAIN_ARCH", None, "architecture", shown="cnn-fc192")
    tta: str | None = env("TRAIN_TTA", None, "test-time views of the served model", shown="none")
    precision: str | None = env(
        "TRAIN_PRECISION", None, "training arithmetic: auto (from the CPU), mixed_bfloat16 or float32", shown="auto"
    )
    ema_decay: float | None = env(
        "TRAIN_EMA_DECAY", None, "decay of the served weight average (0 = off)", check=below_one, shown="0.999"
    )
    time_budget: float | None = env(
        "TRAIN_TIME_BUDGET", None, "seconds for a whole training run (0 = off)", check=non_negative, shown="870.0"
    )
    experiment: str = env(
        "MLFLOW_EXPERIMENT_NAME", TRAINING_EXPERIMENT, "MLflow experiment of training runs", check=not_blank
    )


@dataclass(frozen=True)
class BatchSettings:
    """The nightly job (``batch_prediction``)."""

    input_prefix: str = env(
        "BATCH_INPUT_PREFIX", "incoming/", "where the nightly job looks for photos", check=relative_prefix
    )
    max_object_bytes: int = env(
        "BATCH_MAX_OBJECT_BYTES",
        20 * 1024 * 1024,
        "larger inputs are quarantined unread (object_too_large)",
        check=positive,
    )
    ray_address: str | None = env("RAY_ADDRESS", None, "Ray cluster for --engine ray", shown="a local Ray")
    runtime: str = env(
        "BATCH_RUNTIME",
        "auto",
        "auto (the fastest here at the night's batch size), or one by name",
        check=one_of(*RUNTIME_CHOICES),
    )

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIME_CHOICES:  # direct construction (the environment's value is checked on reading)
            raise SettingsError([f"BATCH_RUNTIME must be one of {', '.join(RUNTIME_CHOICES)}, got {self.runtime!r}"])


@dataclass(frozen=True)
class LearningSettings:
    """The learning loop: the nightly audit sample, accuracy status, and when to retrain (``monitoring``,
    ``model_training.retrain_policy``, the warehouse labels in ``model_training``)."""

    audit_share: float = env(
        "AUDIT_SHARE", 0.02, "share of a night's auto-routed items sent to people (audit.csv)", check=unit_interval
    )
    audit_min: int = env("AUDIT_MIN", 20, "at least this many audited items a night (all if fewer)", check=non_negative)
    audit_max: int = env("AUDIT_MAX", 200, "at most this many audited items a night", check=non_negative)
    accuracy_margin: float = env(
        "ACCURACY_MARGIN",
        0.02,
        "degraded: the measured accuracy's interval lies this far below the validated one",
        check=below_one,
    )
    accuracy_min_labels: int = env(
        "ACCURACY_MIN_LABELS", 20, "fewer audit labels on a night: status unknown", check=positive
    )
    retrain_min_labels: int = env(
        "RETRAIN_MIN_LABELS", 500, "retrain when this many labels are new since the champion", check=positive
    )
    retrain_drift_nights: int = env(
        "RETRAIN_DRIFT_NIGHTS", 3, "retrain after drift on this many nights in a row", check=positive
    )
    warehouse_split: str = env(
        "WAREHOUSE_SPLIT",
        "0.7,0.15,0.15",
        "train,val,test shares of the labelled warehouse photos",
        check=warehouse_split,
    )

    def __post_init__(self) -> None:
        # Direct construction (tests, dataclasses.replace) gets the same checks as the environment.
        problems = _field_problems(self)
        if self.audit_min > self.audit_max:
            problems.append(f"AUDIT_MIN ({self.audit_min}) must be <= AUDIT_MAX ({self.audit_max})")
        if problems:
            raise SettingsError(problems)


# Each group's name (``Settings``' field, ``from_env(groups=...)``) and class.
GROUP_CLASSES: dict[str, type] = {
    "serving": ServingSettings,
    "training": TrainingSettings,
    "batch": BatchSettings,
    "learning": LearningSettings,
}


def _default_data_dir() -> Path:
    return PROJECT_ROOT / "data"


@dataclass(frozen=True)
class Settings:
    """Configuration shared by every stage, and each stage's own group."""

    data_dir: Path = field(default_factory=_default_data_dir, metadata={"env": "DATA_DIR", "doc": "local folder"})
    storage_uri: str = env(
        "STORAGE_URI",
        "",
        "images, processed data, predictions, ledger (s3://bucket/prefix: S3)",
        check=storage_uri,
        shown="<DATA_DIR>/store",
    )
    aws_endpoint_url: str | None = env(
        "AWS_ENDPOINT_URL", None, "an S3-compatible endpoint (MinIO, moto, ...)", check=http_url, shown="AWS itself"
    )
    mlflow_tracking_uri: str = env("MLFLOW_TRACKING_URI", "", "MLflow tracking and registry store", check=tracking_uri)
    mlflow_ui_url: str = env(
        "MLFLOW_UI_URL",
        "",
        "where people open the MLflow UI (links from the dashboard)",
        check=http_url,
        shown=f"the tracking server, or http://127.0.0.1:{UI_PORT} (ric ui) for a local store",
    )
    fashion_mnist_dir: Path | None = env(
        "FASHION_MNIST_DIR", None, "local copy of the four IDX .gz files", shown="download into <DATA_DIR>/downloads"
    )
    model_name: str = env("MODEL_NAME", MODEL_NAME, "registered model name", check=not_blank)
    model_uri: str = env("MODEL_URI", "", "the model the API and the batch job serve", check=model_uri)
    review_threshold: float | None = env(
        "REVIEW_THRESHOLD",
        None,
        "confidence below which an item needs_review",
        check=unit_interval,
        shown="the served version's own: chosen when it was trained, 0.7 without one",
    )
    unfamiliar_threshold: float | None = env(
        "UNFAMILIAR_THRESHOLD",
        None,
        "unfamiliarity score above which an item is unfamiliar (needs_review, review_reason unfamiliar)",
        check=finite,
        shown="the served version's own: chosen when it was trained; none for a version without the score",
    )
    log_level: str | None = env(
        "LOG_LEVEL", None, "log level of every script", check=log_level, shown="INFO, -v: DEBUG"
    )
    cpu_assume: str | None = env(
        "CPU_ASSUME",
        None,
        "avx2: act as on an AVX2-only CPU (hardware choices, TensorFlow kernels)",
        check=one_of("avx2"),
        shown="detect the CPU",
    )
    serving: ServingSettings = field(default_factory=ServingSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    learning: LearningSettings = field(default_factory=LearningSettings)

    def __post_init__(self) -> None:
        # Derived defaults depend on data_dir / model_name / the tracking URI, so they are filled here, once.
        if not self.storage_uri:
            object.__setattr__(self, "storage_uri", str(Path(self.data_dir) / "store"))
        if not self.mlflow_tracking_uri:
            object.__setattr__(self, "mlflow_tracking_uri", f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}")
        if not self.model_uri:
            object.__setattr__(self, "model_uri", f"models:/{self.model_name}@champion")
        if not self.mlflow_ui_url:
            object.__setattr__(self, "mlflow_ui_url", default_ui_url(self.mlflow_tracking_uri))
        if self.log_level:
            object.__setattr__(self, "log_level", self.log_level.upper())
        if self.cpu_assume is not None and self.cpu_assume not in ("avx2",):
            raise SettingsError([f"CPU_ASSUME must be avx2 or unset, got {self.cpu_assume!r}"])
        if self.review_threshold is not None and not 0.0 <= self.review_threshold <= 1.0:
            raise SettingsError([f"REVIEW_THRESHOLD must be in [0, 1], got {self.review_threshold}"])

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        groups: Iterable[str] = GROUPS,
        choices: Mapping[str, Iterable[str]] | None = None,
        lenient: bool = False,
    ) -> Settings:
        """The core settings and every group from ``environ`` (default: the process environment).

        Raises :class:`SettingsError` listing every invalid variable of the core settings and of ``groups`` (the
        stages the caller uses); an invalid variable of another group is ignored (it keeps its default), and
        ``lenient`` ignores every invalid variable. ``choices`` adds allowed values decided elsewhere (the
        training script's architectures)."""
        source = os.environ if environ is None else environ
        wanted = set(groups)
        unknown = wanted - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown settings group(s): {sorted(unknown)}")
        allowed = dict(choices or {})
        errors: list[str] = []
        core = _read(cls, source, errors, allowed)
        parts = {}
        for name, group in GROUP_CLASSES.items():
            parts[name] = _read(group, source, errors if name in wanted else [], allowed)
        if errors and not lenient:
            raise SettingsError(errors)
        return replace(core, **parts)

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with every non-None override applied (CLI flags beat the environment)."""
        clean = {k: v for k, v in overrides.items() if v is not None}
        if "mlflow_tracking_uri" in clean and "mlflow_ui_url" not in clean and self._ui_url_was_derived():
            clean["mlflow_ui_url"] = ""  # derived again from the new tracking URI
        return replace(self, **clean)

    def _ui_url_was_derived(self) -> bool:
        return self.mlflow_ui_url == default_ui_url(self.mlflow_tracking_uri)


def default_ui_url(tracking: str) -> str:
    """Where the MLflow UI of ``tracking`` is: the server itself (without credentials), or ``ric ui``'s address."""
    if tracking.startswith(("http://", "https://")):
        parts = urlsplit(tracking)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return f"{parts.scheme}://{netloc}{parts.path}".rstrip("/")
    return f"http://127.0.0.1:{UI_PORT}"


def describe(settings: Settings) -> list[tuple[str, str, str]]:
    """(variable, effective value, meaning) of every setting: credentials masked (secrets entirely, URIs' user
    info), and the effective default of a field left unset (``shown``)."""
    rows = []
    for group in (settings, settings.serving, settings.training, settings.batch, settings.learning):
        for f in fields(group):
            name = f.metadata.get("env")
            if not name:
                continue
            value = getattr(group, f.name)
            if f.metadata.get("secret"):
                shown = "***" if value else "(unset)"
            elif value is None or value == "":
                shown = f"({f.metadata.get('shown') or 'unset'})"
            else:
                shown = redact(str(value))
            rows.append((name, shown, f.metadata.get("doc", "")))
    return rows
