"""Every knob of emoserve, in one section per subsystem; each default is written here and nowhere else.

Every field is also an environment variable, named as it always was: its section's `env_prefix`
followed by the field's name (`EngineConfig.max_batch_size` ← `EMOSERVE_MAX_BATCH_SIZE`,
`VadConfig.threshold` ← `EMOSERVE_VAD_THRESHOLD`). Only `Settings` reads the environment: a
section made in code (`LongformConfig(window_s=10)`) holds its defaults and what it is given, so
library code never depends on the process it runs in. The CLI and the composition root
(`runtime.py`) build `Settings` and hand each subsystem its own section.

    settings = Settings()                                  # defaults ← EMOSERVE_CONFIG's file ← EMOSERVE_* variables
    settings = get_settings(model="random:tiny", port=None)  # … ← flat overrides (CLI flags; None: not given)
    settings.engine.max_batch_size, settings.longform.vad.threshold

A settings file (`EMOSERVE_CONFIG=emoserve.toml`) holds one TOML table per section, with the fields'
names (`[server]` `port = 9000`, `[longform.vad]` `threshold = 0.6`); a file of another suffix is a
`.env` file of the flat `EMOSERVE_*` names. The environment wins over the file. Secrets are `SecretStr`:
no repr, log or error shows them (`.get_secret_value()` reads one).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import InvalidParameterError
from .model.config import HOP, RECEPTIVE_FIELD, SAMPLE_RATE

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PREFIX = "EMOSERVE_"
CONFIG_FILE_VARIABLE = PREFIX + "CONFIG"  # the settings file; not a setting itself


def parse_networks(cls: type, value: Any) -> Any:
    """Comma-separated CIDRs (a bare address is its /32 or /128); host bits are ignored."""
    parts = value.split(",") if isinstance(value, str) else value
    return tuple(ipaddress.ip_network(str(part).strip(), strict=False) for part in parts if str(part).strip())


class Section(BaseModel):
    """A group of settings: frozen, unknown names refused; `env_prefix` + a field's name is its variable."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    env_prefix: ClassVar[str] = PREFIX


class ModelConfig(Section):
    """Which model, where it is cached, and how it is loaded (`EmotionModel.from_config`)."""

    model: str = Field("emotion2vec_plus_large", description="model name, local model dir, or random:tiny|base|large")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N")
    precision: Literal["exact", "fast"] = Field(
        "exact", description="exact: fp32 with FunASR parity; fast: the fastest close path for this hardware (bf16 on "
                             "GPUs and AMX CPUs, int8 matmuls on other x86 CPUs); see docs/engine.md")
    dtype: str = Field("auto", description="auto (as precision says), or force float32, bfloat16, float16")
    cache: Path = Field(Path.home() / ".cache" / "emoserve", description="downloaded and converted models")
    source: str = Field("hf", description="where `models pull` downloads from: hf or modelscope")
    revision: str | None = Field(None, description="the revision (commit hash, tag or branch) a known model is "
                                                   "downloaded at; default: the one pinned per model and source "
                                                   "(model/hub.py)")
    quantize: bool = Field(False, description="CPU: int8 matmuls in the transformer, whatever precision says "
                                              "(faster, not exact; see docs/engine.md)")
    compile: bool = Field(False, description="torch.compile the transformer, weights frozen (~20 s start-up; "
                                             "measured slower than plain fp32 here: see docs/engine.md)")
    backend: Literal["torch", "onnxruntime", "openvino"] = Field(
        "torch", description="who runs the forward pass: torch, or the exported ONNX graph (exported once into the "
                             "cache) in onnxruntime or openvino (the `openvino` extra); see docs/engine.md")


class EngineConfig(Section):
    """Dynamic batching and the CPU/GPU execution paths (`inference/engine.py`)."""

    max_batch_size: int | None = Field(None, ge=1, description="clips per batch; default 4 on CPU, 64 on GPU")
    max_batch_samples: int | None = Field(
        None, ge=1, description="padded 16 kHz samples per batch (count × longest); default 40 s of audio on CPU, "
                                "640 s on GPU. A longer clip runs alone")
    max_wait_ms: float = Field(5.0, ge=0, description="how long the oldest queued clip waits for others to batch with")
    max_queue: int = Field(256, ge=1, description="clips waiting for the model; more get 503 overloaded")
    decode_workers: int = Field(2, ge=1, description="threads that decode and resample audio beside the model")
    threads: int | None = Field(None, ge=1, description="compute threads (torch, or the onnxruntime/openvino "
                                                        "graph); default: the CPUs this process has")


class VadConfig(Section):
    """silero-vad's segmentation rules, for long files and for a stream's utterances alike."""

    env_prefix: ClassVar[str] = PREFIX + "VAD_"

    threshold: float = Field(0.5, gt=0, lt=1, description="silero-vad speech probability threshold")
    min_speech_ms: int = Field(250, ge=0, description="shorter voiced stretches are ignored")
    min_silence_ms: int = Field(300, ge=0, description="a pause this long ends a segment")
    speech_pad_ms: int = Field(100, ge=0, description="padding added to each side of a segment")


class LongformConfig(Section):
    """How long files are cut up: voiced segments, frame windows, batches (`timeline/longform.py`)."""

    env_prefix: ClassVar[str] = PREFIX + "LONGFORM_"

    max_duration_s: float = Field(4 * 3600, gt=0, description="longest file a job may analyse")
    max_segment_s: float = Field(30.0, ge=1.0, le=30.0, description="voiced segments are split to this")
    window_s: float = Field(30.0, gt=0, le=30.0, description="window of granularity=frame over long files")
    window_overlap_s: float = Field(4.0, gt=0, description="overlap of frame windows; half each side dropped")
    batch_size: int = Field(8, gt=0, description="segments or windows per forward pass")
    batch_s: float = Field(120.0, gt=0, description="padded audio seconds per forward pass")
    vad: VadConfig = Field(default_factory=VadConfig, description="where the voiced segments are")

    @model_validator(mode="after")
    def windows_fit(self) -> LongformConfig:
        if self.window_samples < 2 * RECEPTIVE_FIELD:
            raise ValueError(f"window_s {self.window_s} is too short for frame windows")
        if not 2 * HOP <= self.overlap_samples <= self.window_samples // 2:
            raise ValueError("window_overlap_s must be between 0.04 s and half the window; "
                             f"got {self.window_overlap_s}")
        return self

    @property
    def window_samples(self) -> int:
        return int(self.window_s * SAMPLE_RATE) // HOP * HOP

    @property
    def overlap_samples(self) -> int:
        return round(self.window_overlap_s * SAMPLE_RATE / HOP) * HOP

    @property
    def batch_samples(self) -> int:
        return int(self.batch_s * SAMPLE_RATE)


class StreamConfig(Section):
    """WebSocket /v1/stream (`timeline/streaming.py`); its utterances follow `LongformConfig` and its `vad`."""

    env_prefix: ClassVar[str] = PREFIX + "STREAM_"

    window_s: float = Field(4.0, ge=1.0, le=30.0, description="audio each frame pass of a stream sees; "
                            "a frame arrives (window - hop) / 2 to (window + hop) / 2 after its audio")
    hop_s: float = Field(1.0, ge=0.1, le=15.0, description="a stream's frames are analysed every hop of audio; "
                         "at most half the window")
    max_buffer_s: float = Field(30.0, gt=0, description="received audio a stream may hold unanalysed; past it "
                                "the server stops reading (backpressure)")
    max_duration_s: float = Field(4 * 3600, gt=0, description="longest audio one stream may send")
    idle_timeout_s: float = Field(60.0, gt=0, description="a stream that sends no message for this long is "
                                  "ended: idle_timeout error, its last results, close 4408")
    max_concurrent: int = Field(64, ge=1, description="streams open at once; more are refused at the "
                                "handshake (HTTP 503 overloaded)")

    @model_validator(mode="after")
    def hop_fits(self) -> StreamConfig:
        if self.hop_samples > self.window_samples // 2:
            raise ValueError(f"stream hop_s ({self.hop_s}) must be at most half of window_s ({self.window_s}), "
                             "so every frame has context on both sides")
        if self.max_buffer_samples < self.hop_samples:
            raise ValueError(f"stream max_buffer_s ({self.max_buffer_s}) must be at least hop_s ({self.hop_s}): "
                             "a hop of audio waits in the buffer for its window")
        return self

    @property
    def window_samples(self) -> int:
        return round(self.window_s * SAMPLE_RATE / HOP) * HOP

    @property
    def hop_samples(self) -> int:
        return round(self.hop_s * SAMPLE_RATE / HOP) * HOP

    @property
    def max_buffer_samples(self) -> int:
        return int(self.max_buffer_s * SAMPLE_RATE)

    @property
    def max_duration_samples(self) -> int:
        return int(self.max_duration_s * SAMPLE_RATE)


class StoreConfig(Section):
    """Uploads and job results on disk: where, how much, how long (`jobs/store.py`, the upload routes)."""

    data_dir: Path = Field(Path("data"), description="uploads, job results and their SQLite database")
    data_min_free_bytes: int = Field(1024**3, ge=0, description="free space kept on the data dir's file system: "
                                     "upload bytes that would go below it are refused (507) and /health says "
                                     "degraded")
    upload_max_bytes: int = Field(2 * 1024**3, gt=0, description="largest file one upload may announce, in bytes")
    upload_max_chunk_bytes: int = Field(5 * 1024**2, gt=0, description="largest chunk (and the default chunk size)")
    upload_max_active: int = Field(64, gt=0, description="uploads in flight at once; more are refused")
    upload_max_active_bytes: int = Field(20 * 1024**3, gt=0, description="bytes announced by uploads in flight")
    upload_max_disk_bytes: int = Field(40 * 1024**3, gt=0, description="bytes all uploads together may hold on disk "
                                       "(in flight, completed, tus; each counts its size until its files are "
                                       "removed); more are refused with 507 insufficient_storage")
    upload_body_timeout_s: float = Field(30.0, gt=0, description="a chunk or tus PATCH body that sends no byte for "
                                         "this long is cut off (408 request_timeout)")
    upload_max_concurrent_bodies: int = Field(32, gt=0, description="chunk and tus PATCH bodies received at once; "
                                              "more get 503 overloaded with Retry-After")
    upload_expiry_s: float = Field(24 * 3600, gt=0, description="an idle unfinished upload expires after this")
    upload_keep_completed_s: float = Field(24 * 3600, gt=0, description="a completed upload's file is kept this long")
    job_keep_s: float = Field(7 * 24 * 3600, gt=0, description="finished jobs and their results are kept this long")


class JobsConfig(Section):
    """Long-audio jobs: workers, retries, callbacks, the sweeper (`jobs/runner.py`, the job routes)."""

    job_workers: int = Field(1, gt=0, description="jobs analysed at once")
    job_max_attempts: int = Field(3, gt=0, description="a job that crashed the server this often fails for good")
    job_max_wait_s: float = Field(60.0, ge=0, description="longest ?wait= of GET /v1/jobs/{id}; a longer wait is cut "
                                                          "to this")
    sweep_interval_s: float = Field(300.0, gt=0, description="how often expired uploads and jobs are removed")
    callback_attempts: int = Field(5, gt=0, description="tries to POST a finished job to its callback_url")
    callback_backoff_s: float = Field(2.0, gt=0, description="first retry delay of a callback; doubles each try")
    callback_timeout_s: float = Field(10.0, gt=0, description="timeout of one callback POST")
    callback_allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = Field(
        (), description="comma-separated CIDRs that callback_url hosts may resolve to besides public addresses "
                        "(e.g. 127.0.0.0/8 for hooks on this machine); empty: public addresses only")
    callback_secret: SecretStr = Field(
        SecretStr(""), description="key that signs callbacks (whsec_<base64>, or any text); empty: one made on the "
                                   "first start and kept in DATA_DIR/callback_secret (mode 0600)")

    networks_parse = field_validator("callback_allow_networks", mode="before")(parse_networks)


class ServerConfig(Section):
    """The HTTP service: address, auth, budgets, proxies, CORS, logs, and the limits of one request."""

    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 for all interfaces)")
    port: int = Field(8000, ge=1, le=65535, description="port to listen on")
    shutdown_timeout_s: float = Field(30.0, gt=0, description="on SIGTERM, how long requests in flight may take to "
                                      "finish before they are cancelled; then jobs and the engine stop")
    api_only: bool = Field(False, description="serve the API without the web UI")
    api_keys: SecretStr = Field(SecretStr(""), description="comma-separated API keys; empty: auth off")
    api_keys_file: Path | None = Field(None, description="file with one API key per line")
    rate_limit_per_minute: int = Field(0, ge=0, description="requests per minute per API key (or client IP); 0: off")
    auth_failures_per_minute: int = Field(10, ge=0, description="wrong API keys (API or web UI sign-in) per minute "
                                                                "per client address; past it, 429 for all; 0: off")
    metrics_key: SecretStr = Field(SecretStr(""), description="a key /metrics then needs (Bearer or X-API-Key); "
                                                              "empty: /metrics open")
    forwarded_allow_ips: str = Field("", description="comma-separated proxy addresses or networks (* for any) whose "
                                                     "X-Forwarded-For/-Proto are trusted; empty: none")
    cors_origins: str = Field("", description="comma-separated allowed CORS origins; * for any; empty: off")
    max_duration_s: float = Field(30.0, gt=0, description="longest clip for one request, in seconds")
    max_bytes: int = Field(10 * 1024 * 1024, gt=0, description="largest upload for one request, in bytes")
    log_dir: Path = Field(Path("logs"), description="access.log, error.log, model_load.log go here")
    log_json: bool = Field(False, description="write log files as JSON lines")
    log_max_bytes: int = Field(10 * 1024 * 1024, gt=0, description="rotate a log file at this size")
    log_backups: int = Field(5, ge=0, description="rotated log files kept")

    def keys(self) -> list[str]:
        """The configured API keys (env/flag and file together); empty when auth is off."""
        keys = [k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip()]
        if self.api_keys_file is not None:
            lines = self.api_keys_file.read_text(encoding="utf-8").splitlines()
            keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        return keys

    def origins(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]


class UiConfig(Section):
    """The web UI: Gradio at /ui of the server, or `emoserve ui` alone (`ui/`)."""

    env_prefix: ClassVar[str] = PREFIX + "UI_"

    max_upload_bytes: int = Field(200 * 1024**2, gt=0, description="largest file the web UI accepts, in bytes")
    max_long_s: float = Field(600.0, gt=0, description="longest file the web UI analyses in long-file mode; "
                                                       "longer audio goes through the upload API")
    concurrency: int = Field(4, ge=1, description="web UI analyses running at once; more wait in Gradio's queue")
    examples: bool = Field(True, description="offer spoken example clips (made once with espeak-ng when installed)")


class RasaConfig(Section):
    """The Rasa action (`integrations/rasa.py`), read by the Rasa action server."""

    env_prefix: ClassVar[str] = PREFIX + "RASA_"

    audio_dirs: str = Field("", description="folders (separated like PATH) whose files a chat message may name "
                                            "as its audio; empty: local paths are refused")
    max_audio_bytes: int = Field(10 * 1024 * 1024, gt=0, description="largest voice message the action reads, "
                                                                     "downloads or decodes, in bytes")
    download_timeout_s: float = Field(30.0, gt=0, description="longest download of an audio URL, start to end")
    download_allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = Field(
        (), description="comma-separated CIDRs that audio URL hosts may resolve to besides public addresses (e.g. "
                        "192.168.0.0/16 for a NAS on the LAN); empty: public addresses only")
    escalate: str = Field("", description="hand-off rules, e.g. angry:0.7,fearful:0.8; empty: the action's own "
                                          "(`escalate`, by default angry above 0.7)")

    networks_parse = field_validator("download_allow_networks", mode="before")(parse_networks)


class RayConfig(Section):
    """Model replicas on a Ray cluster (`analyze --ray`, `serve --ray`: src/emoserve/scale/, docs/scaling.md)."""

    env_prefix: ClassVar[str] = PREFIX + "RAY_"

    min_replicas: int = Field(1, ge=1, description="model replicas kept on the Ray cluster")
    max_replicas: int | None = Field(None, ge=1, description="model replicas at most; default: as many as the "
                                                             "cluster's CPUs and GPUs fit")
    replica_cpus: float = Field(1.0, gt=0, description="CPUs reserved for each model replica (its torch threads)")
    replica_gpus: float = Field(0.0, ge=0, description="GPUs for each model replica: 1 on GPU nodes, 0 on CPU")
    ingress_replicas: int = Field(1, ge=1, description="HTTP replicas of `serve --ray` (parsing, decoding, auth)")
    ingress_max_ongoing_requests: int = Field(64, ge=1, description="HTTP requests one ingress replica handles at "
                                                                    "once; more wait in Serve's proxy, which retries "
                                                                    "them with backoff (Serve's default, 5, caps "
                                                                    "throughput at a third)")
    target_ongoing_requests: float = Field(4.0, gt=0, description="clips in flight per model replica that "
                                                                  "autoscaling keeps (queue length)")
    max_ongoing_requests: int = Field(16, ge=1, description="clips sent to one model replica at once (its engine "
                                                            "batches them); more wait at the caller")
    max_queued_requests: int = Field(64, ge=1, description="clips waiting at each caller for a model replica; "
                                                           "more are answered 503 overloaded")
    upscale_delay_s: float = Field(30.0, ge=0, description="how long the load must stay above the target before "
                                                          "Serve adds a model replica (Serve's default)")
    downscale_delay_s: float = Field(600.0, ge=0, description="how long the load must stay below the target before "
                                                              "Serve removes a model replica (Serve's default)")
    look_back_period_s: float = Field(30.0, gt=0, description="the window over which Serve averages the queue "
                                                              "length it scales on (Serve's default)")
    metrics_interval_s: float = Field(10.0, gt=0, description="how often replicas and callers report their queue "
                                                              "length to Serve's controller (Serve's default)")

    @model_validator(mode="after")
    def replicas_ordered(self) -> RayConfig:
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(f"ray_max_replicas ({self.max_replicas}) must be at least ray_min_replicas "
                             f"({self.min_replicas})")
        return self


class Settings(BaseSettings):
    """All sections, from the `EMOSERVE_*` environment; values given to the constructor win."""

    model_config = SettingsConfigDict(extra="forbid")

    model: ModelConfig = Field(default_factory=ModelConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    longform: LongformConfig = Field(default_factory=LongformConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    ui: UiConfig = Field(default_factory=UiConfig)
    rasa: RasaConfig = Field(default_factory=RasaConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Constructor values, then the flat `EMOSERVE_*` variables, then the settings file (pydantic-settings'
        own sources look for one variable per section, which is not how emoserve names them)."""
        return init_settings, EnvironmentVariables(settings_cls), SettingsFile(settings_cls)

    @classmethod
    def from_flat(cls, **values: Any) -> Settings:
        """The environment with `values` on top, each named like its variable less `EMOSERVE_` (`vad_threshold=0.6`)."""
        return cls(**nest({variable_of(name): value for name, value in values.items()}))


class EnvironmentVariables(PydanticBaseSettingsSource):
    """The `EMOSERVE_*` variables (any case), each routed to the section field it names."""

    def __call__(self) -> dict[str, Any]:
        environ = {name.upper(): value for name, value in os.environ.items() if name.upper().startswith(PREFIX)}
        return nest({name: value for name, value in environ.items() if name in variables()})

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: `__call__` reads every section at once (the base class requires it)."""
        return None, field_name, False


class SettingsFile(PydanticBaseSettingsSource):
    """The file `EMOSERVE_CONFIG` names: TOML tables named like the sections, or a `.env` file of `EMOSERVE_*`
    names. Unknown names are refused, as unknown fields are."""

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get(CONFIG_FILE_VARIABLE)
        return read_settings_file(Path(path)) if path else {}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: `__call__` reads the whole file at once (the base class requires it)."""
        return None, field_name, False


def read_settings_file(path: Path) -> dict[str, Any]:
    """A settings file → the nested {section: {field: value}} that `Settings` takes."""
    if not path.is_file():
        raise InvalidParameterError(f"{CONFIG_FILE_VARIABLE}={path}: no such file")
    try:
        if path.suffix == ".toml":
            with open(path, "rb") as f:
                return tomllib.load(f)
        values = {name.upper(): value for name, value in dotenv_values(path).items() if value is not None}
    except (OSError, ValueError) as e:  # TOMLDecodeError is a ValueError
        raise InvalidParameterError(f"{CONFIG_FILE_VARIABLE}={path}: {e}") from e
    unknown = sorted(set(values) - set(variables()))
    if unknown:
        raise InvalidParameterError(f"{CONFIG_FILE_VARIABLE}={path}: {', '.join(unknown)} are not settings "
                                    "(docs/configuration.md)")
    return nest(values)


@functools.cache
def variables() -> dict[str, tuple[str, ...]]:
    """Every `EMOSERVE_*` variable → the path of the field it sets (`EMOSERVE_VAD_THRESHOLD` → longform, vad,
    threshold)."""
    return {variable: (name, *path) for name, field in Settings.model_fields.items()
            for variable, path in section_variables(field.annotation).items()}


def section_variables(section: type[Section]) -> dict[str, tuple[str, ...]]:
    found: dict[str, tuple[str, ...]] = {}
    for name, field in section.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            found |= {variable: (name, *path) for variable, path in section_variables(field.annotation).items()}
        else:
            found[section.env_prefix + name.upper()] = (name,)
    return found


def variable_of(name: str) -> str:
    """`vad_threshold` → `EMOSERVE_VAD_THRESHOLD`; a name that is no setting is refused."""
    variable = PREFIX + name.upper()
    if variable not in variables():
        raise TypeError(f"{name} is not a setting (no {variable})")
    return variable


def nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """{variable: value} → the nested {section: {field: value}} that `Settings` takes."""
    nested: dict[str, Any] = {}
    for variable, value in values.items():
        *sections, field = variables()[variable]
        target = nested
        for section in sections:
            target = target.setdefault(section, {})
        target[field] = value
    return nested


def get_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with explicit (e.g. CLI) values on top; None means "not given"."""
    return Settings.from_flat(**{name: value for name, value in overrides.items() if value is not None})
