"""Typed settings: defaults < TOML file < MLDROPD_<SECTION>__<KEY> environment < flags."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_origin, get_type_hints

from mldropd.errors import ConfigError

ENV_PREFIX = "MLDROPD_"


def _opt(default: Any, help: str, *, path: bool = False, secret: bool = False) -> Any:
    meta = {"help": help, "path": path, "secret": secret}
    if isinstance(default, dict | list):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ServerSettings:
    """The web server: address, sessions and cookies, logs, the SSO proxy."""

    host: str = _opt("127.0.0.1", "Address the web server binds to.")
    port: int = _opt(8080, "TCP port of the web server.")
    secret_key_file: str = _opt(
        "secret.key",
        "File holding the session-signing key; created (mode 0600) if missing.",
        path=True,
    )
    log_format: str = _opt("text", "Log line format: text or json.")
    log_level: str = _opt("INFO", "Log level: DEBUG, INFO, WARNING, ERROR.")
    base_url: str = _opt(
        "", "Public URL of the daemon, used in report links (default http://host:port)."
    )
    work_dir: str = _opt("work", "Scratch space for uploads and batch runs.", path=True)
    access_log: bool = _opt(
        False, "Log one line per HTTP request (method, path, status, ms, user; no credentials)."
    )
    min_free_disk_mb: int = _opt(
        500, "/readyz fails when the home's file system has less free space than this."
    )
    session_idle_minutes: int = _opt(
        480, "A web session ends after this many minutes without a request (each request renews)."
    )
    secure_cookies: bool = _opt(
        False, "Mark cookies Secure (sent over HTTPS only): set it when TLS ends at a proxy."
    )
    trusted_user_header: str = _opt(
        "",
        "Header naming the signed-in user's email, set by an SSO proxy (e.g. X-Forwarded-Email).",
    )
    trusted_proxies: list[str] = _opt(
        [], "Addresses (IPs or CIDRs) whose trusted_user_header is believed; from others it is not."
    )


@dataclass
class DatabaseSettings:
    """The SQLite database: users, models, runs, DQ results and the scheduler's jobs."""

    path: str = _opt("mldropd.db", "SQLite database file.", path=True)


@dataclass
class StorageSettings:
    """Where uploaded model files live: a local folder or an S3/MinIO bucket."""

    kind: str = _opt("local", "Artifact store: local (a folder) or s3 (S3/MinIO).")
    path: str = _opt("artifacts", "Folder of the local artifact store.", path=True)
    bucket: str = _opt("", "S3 bucket (kind = s3).")
    prefix: str = _opt("mldropd", "Key prefix inside the bucket (kind = s3).")
    endpoint_url: str = _opt("", "S3 endpoint, e.g. http://minio:9000 (empty: AWS).")
    region: str = _opt("us-east-1", "S3 region.")
    access_key_file: str = _opt(
        "", "File with the S3 access key (else the boto3 chain).", path=True
    )
    secret_key_file: str = _opt(
        "", "File with the S3 secret key (else the boto3 chain).", path=True, secret=True
    )


@dataclass
class FeatureSettings:
    """The feature store the models are scored on, one slice per date."""

    kind: str = _opt(
        "parquet",
        "Feature source: parquet (hive dt=YYYY-MM-DD folders), duckdb, or spark_table (a catalog "
        "table scored by Spark; path = its location).",
    )
    path: str = _opt("features", "Parquet dataset folder, or DuckDB database file.", path=True)
    table: str = _opt("features", "Table name (kind = duckdb or spark_table).")
    entity_key: str = _opt("entity_id", "Entity key column, unless a model names its own.")
    date_column: str = _opt("dt", "Date column or hive partition key of the feature slices.")
    max_staleness_days: int = _opt(
        3, "Use the latest slice at most this many days older than the run date."
    )
    duplicate_keys: str = _opt(
        "fail",
        "Entity keys on several rows of a slice: fail (the models fail, naming them), first or "
        "last (score only the first/last row of each key in file order).",
    )
    null_keys: str = _opt(
        "fail", "Rows without an entity key: fail (the models fail) or drop (not scored)."
    )


@dataclass
class ScoresSettings:
    """The partitioned Parquet table the scores are written to."""

    path: str = _opt("scores", "Root of the partitioned scores table (Parquet).", path=True)


@dataclass
class SchedulerSettings:
    """The daily sweep, retries, catch-up after downtime, the late-data sensor, shutdown."""

    sweep: str = _opt("0 6 * * *", "Cron expression (5 fields) of the daily sweep.")
    timezone: str = _opt("UTC", "Time zone of the sweep and of run dates.")
    retry_delay: int = _opt(1800, "Seconds before a failed model is retried.")
    max_attempts: int = _opt(3, "Attempts per model and date, the first included.")
    catchup_days: int = _opt(3, "After downtime, missed sweep dates this many days back are run.")
    misfire_grace_s: int = _opt(
        21600, "A sweep late by at most this many seconds (daemon was down) still fires once."
    )
    sensor_interval: int = _opt(600, "Seconds between checks for a late feature slice.")
    sensor_deadline: int = _opt(
        21600, "Seconds a batch waits for its feature slice before its models fail."
    )
    duration_warning: float = _opt(
        3.0, "Flag a model run slower than this many times its model's median run."
    )
    shutdown_grace_s: int = _opt(
        60, "On SIGTERM, seconds the running batch may finish before it is stopped (and resumed)."
    )
    heartbeat_timeout_s: int = _opt(
        900, "A batch job silent for this many seconds is stopped and its batch failed."
    )


@dataclass
class EngineSettings:
    """The scoring engines (local, Spark) and the limits of the model sandbox."""

    default: str = _opt("auto", "Scoring engine: auto, local or spark.")
    spark_master: str = _opt("local[*]", "Spark master URL for the spark engine.")
    spark_min_rows: int = _opt(
        5_000_000, "engine = auto uses Spark from this many rows (if installed)."
    )
    batch_rows: int = _opt(100_000, "Rows per record batch streamed through the models.")
    model_timeout_s: int = _opt(
        1800, "Wall-clock limit of one model's scoring, unless it sets its own."
    )
    max_model_timeout_s: int = _opt(
        7200,
        "Operator cap on a model's time limit: params.timeout_s above it is lowered to it.",
    )
    model_memory_mb: int = _opt(8192, "Address-space limit of a scoring or validation process.")
    validate_timeout_s: int = _opt(120, "Wall-clock limit of the validation of an upload.")
    validate_sample_rows: int = _opt(1000, "Rows of the latest slice used for the dry run.")
    spark_conf: dict[str, str] = _opt(
        {},
        'Spark settings passed to the session builder (a table: "spark.x" = "v"); settings read '
        "before the JVM starts (spark.driver.memory, spark.pyspark.python) need spark-submit.",
    )
    spark_python: str = _opt(
        "",
        "Python that Spark's executors run (PYSPARK_PYTHON) for every master; empty: "
        "$PYSPARK_PYTHON if set, else this interpreter. It must have mldropd installed.",
    )
    spark_keep_s: int = _opt(
        2400,
        "Seconds the daemon keeps its Spark batch driver (one Spark session for its batches, "
        "retries included) after its last Spark batch; above [scheduler] retry_delay, a retry "
        "finds the session running. 0: each Spark batch starts its own session.",
    )


@dataclass
class SandboxSettings:
    """The model sandbox: the isolation layers it requires, its users and its limits."""

    require: list[str] = _opt(
        ["uid", "mountns", "pidns", "netns", "landlock", "seccomp"],
        "Sandbox layers without which the daemon refuses to start (mldropd check-config shows "
        "which this machine offers); remove a layer to run where it is missing.",
    )
    user: str = _opt(
        "",
        "Root daemon: run every sandbox as this user; empty gives each sandbox its own uid "
        "from uid_base (so one model cannot touch another's processes or files).",
    )
    uid_base: int = _opt(900000, "First uid (and gid) of the sandboxes' own uids (root daemon).")
    preload: list[str] = _opt(
        ["numpy", "pandas", "pyarrow", "scipy", "sklearn", "sklearn.pipeline",
         "sklearn.linear_model", "sklearn.ensemble", "sklearn.preprocessing", "sklearn.compose",
         "sklearn.impute", "dill", "lightgbm", "xgboost", "catboost"],
        "Modules the fork server imports once, so model hosts start without importing them; "
        "a model's own module (its class's) is imported ahead only inside these libraries.",
    )  # fmt: skip
    max_processes: int = _opt(64, "RLIMIT_NPROC of a sandbox: processes and threads it may have.")
    max_file_mb: int = _opt(256, "RLIMIT_FSIZE of a sandbox: the largest file it may write.")
    tmp_mb: int = _opt(256, "Size of a sandbox's private /tmp (a tmpfs, with mountns).")
    threads: int = _opt(
        0,
        "Threads a model may use (OMP/OpenBLAS/MKL); 0: the number of cores (on Spark executors:"
        " spark.task.cpus, the share Spark gives each task).",
    )


@dataclass
class DQSettings:
    """Data-quality thresholds and the publish gate."""

    psi_warn: float = _opt(0.1, "PSI at or above this is warn.")
    psi_alert: float = _opt(0.25, "PSI at or above this is alert.")
    auc_warn: float = _opt(0.6, "Adversarial-validation AUC at or above this is warn.")
    auc_alert: float = _opt(0.75, "Adversarial-validation AUC at or above this is alert.")
    av_max_rows: int = _opt(50_000, "Rows sampled per side for adversarial validation.")
    threads: int = _opt(
        2, "Models whose DQ the batch job computes at once (each classifier on one core)."
    )
    feature_psi_top: int = _opt(
        10, "Feature drift: PSI of this many of the model's most important features."
    )
    gate: str = _opt(
        "off", "Publish gate: 'alert' keeps scores of an alert run in quarantine until published."
    )
    quarantine_path: str = _opt(
        "quarantine", "Where the publish gate keeps held-back partitions.", path=True
    )
    stale_slice: str = _opt(
        "warn",
        "DQ status of a run scored from an older slice (max_staleness_days): ok (only stated), "
        "warn or alert.",
    )
    samples_path: str = _opt(
        "dq-samples",
        "Where the DQ sample of each scored slice is kept for the next day's comparison.",
        path=True,
    )
    samples_days: int = _opt(
        7,
        "Keep DQ samples of slices this many days older than the newest (about 20 MB a slice at "
        "50,000 rows x 50 features); an older reference slice is read again; 0: none kept.",
    )


@dataclass
class EmailSettings:
    """Report emails: an SMTP relay, or .eml files in the outbox folder."""

    smtp_host: str = _opt("", "SMTP server; empty keeps messages in the outbox folder.")
    smtp_port: int = _opt(587, "SMTP port.")
    starttls: bool = _opt(True, "Use STARTTLS.")
    ssl: bool = _opt(False, "Use implicit TLS (SMTPS).")
    username: str = _opt("", "SMTP user name.")
    password_file: str = _opt("", "File with the SMTP password.", path=True, secret=True)
    sender: str = _opt("mldropd@localhost", "From address of reports.")
    outbox: str = _opt("outbox", "Folder where messages are written as .eml files.", path=True)


@dataclass
class LimitsSettings:
    """Upload size, active models per user, versions kept per model."""

    max_upload_mb: int = _opt(512, "Largest accepted model file.")
    active_models_per_user: int = _opt(20, "Active models a user may have, unless set per user.")
    versions_kept: int = _opt(
        5, "Versions kept per model; older ones are deleted (never the version being scored)."
    )
    concurrent_validations: int = _opt(
        0,
        "Uploads scanned and validated at once; 0: the core count, lowered until that many "
        "sandboxes of [engine] model_memory_mb fit in the machine's memory.",
    )
    validation_wait_s: int = _opt(
        120, "How long an upload waits for a validation slot before it gets 503 (Retry-After)."
    )
    scan_timeout_s: int = _opt(
        60, "Time budget of the static scan of one upload (a model scans in about a second)."
    )
    scan_memory_mb: int = _opt(1024, "Address-space limit of the static scan's process.")


@dataclass
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    features: FeatureSettings = field(default_factory=FeatureSettings)
    scores: ScoresSettings = field(default_factory=ScoresSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    dq: DQSettings = field(default_factory=DQSettings)
    email: EmailSettings = field(default_factory=EmailSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    config_file: str = ""  # where the file layer came from; "" when none
    # "section.key" -> file | environment | flag, for keys not left at their default
    sources: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def base_url(self) -> str:
        return self.server.base_url or f"http://{self.server.host}:{self.server.port}"

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict of every section (for the batch job and check-config)."""
        return {s.name: dataclasses.asdict(getattr(self, s.name)) for s in _sections()}

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, Any]]) -> Settings:
        """Rebuild settings from to_dict() output; paths are taken as they are."""
        settings = cls()
        for section in _sections():
            for key, value in data.get(section.name, {}).items():
                setattr(getattr(settings, section.name), key, value)
        return settings


def _sections() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(Settings) if f.name not in ("config_file", "sources")]


def describe() -> list[tuple[str, str, Any, str]]:
    """Every setting as (section, key, default, help): used by docs, tests and check-config."""
    defaults = Settings()
    rows = []
    for section in _sections():
        instance = getattr(defaults, section.name)
        for f in dataclasses.fields(instance):
            rows.append((section.name, f.name, getattr(instance, f.name), f.metadata["help"]))
    return rows


def describe_sections() -> dict[str, str]:
    """Each section's one-line description (its class docstring; "" when it has none)."""
    defaults = Settings()
    described = {}
    for section in _sections():
        cls = type(getattr(defaults, section.name))
        doc = cls.__doc__ or ""
        # a dataclass without a docstring gets its signature as __doc__
        described[section.name] = "" if doc.startswith(f"{cls.__name__}(") else doc.strip()
    return described


def _coerce(section: str, key: str, kind: type, value: Any, source: str) -> Any:
    where = f"[{section}] {key} (from {source})"
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        }:
            return value.lower() in {"1", "true", "yes", "on"}
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a whole number, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a whole number, got {value!r}") from None
    if kind is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if get_origin(kind) is list:  # a TOML array, or comma-separated text in the environment
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings, got {value!r}")
        return list(value)
    if get_origin(kind) is dict:  # a TOML table, or a JSON object in the environment
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ConfigError(f"{where} must be a table (JSON object), got {value!r}") from None
        if not isinstance(value, dict) or not all(
            isinstance(v, str | int | float | bool) for v in value.values()
        ):
            raise ConfigError(f"{where} must be a table of plain values, got {value!r}")
        return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


def default_config_path() -> Path:
    return Path(os.environ.get("MLDROPD_CONFIG") or "config.toml")


def load_settings(
    config: str | Path | None = None,
    *,
    env: dict[str, str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    require_file: bool = False,
) -> Settings:
    """Build settings from defaults, the TOML file, MLDROPD_* variables and flags, then validate."""
    env = dict(os.environ) if env is None else env
    path = Path(config) if config else default_config_path()
    settings = Settings()
    layers: list[tuple[str, dict[str, dict[str, Any]]]] = []
    if path.is_file():
        try:
            layers.append((str(path), tomllib.loads(path.read_text())))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f"{path} is not valid TOML: {exc}. Fix the file and start again."
            ) from None
        settings.config_file = str(path.resolve())
    elif require_file or config:
        raise ConfigError(
            f"config file {path} does not exist. Create it (see config.example.toml)."
        )
    layers.append(("environment", _env_layer(env)))
    if overrides:
        layers.append(("command line", overrides))

    sections = {s.name: s for s in _sections()}
    for source, layer in layers:
        for section_name, values in layer.items():
            if section_name not in sections:
                raise ConfigError(
                    f"unknown section [{section_name}] in {source}; "
                    f"known sections: {', '.join(sections)}"
                )
            if not isinstance(values, dict):
                raise ConfigError(f"[{section_name}] in {source} must be a table of keys")
            target = getattr(settings, section_name)
            hints = get_type_hints(type(target))
            for key, value in values.items():
                if key not in hints:
                    raise ConfigError(
                        f"unknown key '{key}' in [{section_name}] ({source}); "
                        f"known keys: {', '.join(hints)}"
                    )
                setattr(target, key, _coerce(section_name, key, hints[key], value, source))
                settings.sources[f"{section_name}.{key}"] = _SOURCE_KINDS.get(source, "file")

    base = path.resolve().parent if settings.config_file else Path.cwd()
    _resolve_paths(settings, base)
    validate(settings)
    return settings


_SOURCE_KINDS = {"environment": "environment", "command line": "flag"}


def _env_layer(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    layer: dict[str, dict[str, Any]] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name or name == "MLDROPD_CONFIG":
            continue
        section, _, key = name[len(ENV_PREFIX) :].partition("__")
        layer.setdefault(section.lower(), {})[key.lower()] = value
    return layer


def _resolve_paths(settings: Settings, base: Path) -> None:
    for section in _sections():
        target = getattr(settings, section.name)
        for f in dataclasses.fields(target):
            value = getattr(target, f.name)
            if f.metadata.get("path") and value:
                setattr(target, f.name, str((base / Path(value).expanduser()).resolve()))


_CHOICES = {
    ("server", "log_format"): {"text", "json"},
    ("storage", "kind"): {"local", "s3"},
    ("features", "kind"): {"parquet", "duckdb", "spark_table"},
    ("features", "duplicate_keys"): {"fail", "first", "last"},
    ("features", "null_keys"): {"fail", "drop"},
    ("engine", "default"): {"auto", "local", "spark"},
    ("dq", "gate"): {"off", "alert"},
    ("dq", "stale_slice"): {"ok", "warn", "alert"},
}


def validate(settings: Settings) -> None:
    """Check values that types alone cannot; raise ConfigError naming the key."""
    for (section, key), allowed in _CHOICES.items():
        value = getattr(getattr(settings, section), key)
        if value not in allowed:
            raise ConfigError(
                f"[{section}] {key} = {value!r} is not one of: {', '.join(sorted(allowed))}"
            )
    from mldropd.scheduling.schedules import ScheduleError, parse_cron

    try:
        parse_cron(settings.scheduler.sweep)
    except ScheduleError as exc:
        raise ConfigError(f"[scheduler] sweep: {exc}") from None
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(settings.scheduler.timezone)
    except Exception:
        raise ConfigError(
            f"[scheduler] timezone = {settings.scheduler.timezone!r} is not a known time zone "
            "(use an IANA name such as Europe/Berlin)"
        ) from None
    _check_engine_and_store(settings)
    if settings.storage.kind == "s3" and not settings.storage.bucket:
        raise ConfigError("[storage] bucket must be set when kind = 's3'")
    positive = [
        ("server", "port"),
        ("engine", "batch_rows"),
        ("engine", "model_timeout_s"),
        ("engine", "model_memory_mb"),
        ("engine", "max_model_timeout_s"),
        ("sandbox", "max_processes"),
        ("sandbox", "max_file_mb"),
        ("sandbox", "tmp_mb"),
        ("scheduler", "max_attempts"),
        ("limits", "max_upload_mb"),
        ("limits", "versions_kept"),
        ("limits", "validation_wait_s"),
        ("limits", "scan_timeout_s"),
        ("limits", "scan_memory_mb"),
        ("dq", "av_max_rows"),
        ("dq", "threads"),
    ]
    for section, key in positive:
        if getattr(getattr(settings, section), key) <= 0:
            raise ConfigError(f"[{section}] {key} must be greater than 0")
    if settings.limits.concurrent_validations < 0:
        raise ConfigError("[limits] concurrent_validations must be 0 (from the cores) or more")
    if settings.server.session_idle_minutes <= 0:
        raise ConfigError("[server] session_idle_minutes must be greater than 0")
    for entry in settings.server.trusted_proxies:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                f"[server] trusted_proxies: {entry!r} is not an IP address or CIDR network"
            ) from None
    from mldropd.sandbox.policy import LAYERS

    unknown = [layer for layer in settings.sandbox.require if layer not in LAYERS]
    if unknown:
        raise ConfigError(
            f"[sandbox] require names {', '.join(unknown)}, which is not a sandbox layer; "
            f"layers: {', '.join(LAYERS)}"
        )
    if settings.dq.samples_days < 0:
        raise ConfigError("[dq] samples_days must be 0 (keep no DQ samples) or more")
    if settings.scheduler.catchup_days < 0 or settings.scheduler.retry_delay < 0:
        raise ConfigError("[scheduler] catchup_days and retry_delay must not be negative")
    if settings.engine.spark_keep_s < 0:
        raise ConfigError("[engine] spark_keep_s must not be negative (0 turns the driver off)")


def _check_engine_and_store(settings: Settings) -> None:
    """Refuse an engine that cannot read the feature store, naming both keys."""
    engine, kind = settings.engine.default, settings.features.kind
    if engine == "spark" and kind == "duckdb":
        raise ConfigError(
            '[engine] default = "spark" cannot read [features] kind = "duckdb" (a DuckDB file '
            'is read by the local engine only): set [engine] default = "local" or "auto", or '
            'move the features to Parquet (kind = "parquet")'
        )
    if engine == "local" and kind == "spark_table":
        raise ConfigError(
            '[engine] default = "local" cannot read [features] kind = "spark_table" (a catalog '
            'table is scored by Spark): set [engine] default = "spark" or "auto", or point '
            '[features] at the table\'s files with kind = "parquet"'
        )
