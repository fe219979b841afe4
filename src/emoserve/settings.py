"""Every knob of emoserve in one place: defaults that serve on one machine, `EMOSERVE_*` env vars.

CLI flags override env vars, env vars override defaults: `Settings(**flags)` does exactly that.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMOSERVE_", extra="ignore")

    # model
    model: str = Field("emotion2vec_plus_large", description="model name, local model dir, or random:tiny|base|large")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N")
    dtype: str = Field("auto", description="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    cache: Path = Field(Path.home() / ".cache" / "emoserve", description="downloaded and converted models")
    source: str = Field("hf", description="where `models pull` downloads from: hf or modelscope")

    # limits of one /v1/analyze request
    max_duration_s: float = Field(30.0, gt=0, description="longest clip for one request, in seconds")
    max_bytes: int = Field(10 * 1024 * 1024, gt=0, description="largest upload for one request, in bytes")

    # ---- HTTP service ----
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 for all interfaces)")
    port: int = Field(8000, ge=1, le=65535)
    api_only: bool = Field(False, description="serve the API without the web UI")
    api_keys: str = Field("", description="comma-separated API keys; empty: auth off", repr=False)
    api_keys_file: Path | None = Field(None, description="file with one API key per line")
    rate_limit_per_minute: int = Field(0, ge=0, description="requests per minute per API key (or client IP); 0: off")
    auth_failures_per_minute: int = Field(10, ge=0, description="wrong API keys (API or web UI sign-in) per minute "
                                                                "per client address; past it, 429 for all; 0: off")
    metrics_key: str = Field("", description="a key /metrics then needs (Bearer or X-API-Key); empty: /metrics open",
                             repr=False)
    forwarded_allow_ips: str = Field("", description="comma-separated proxy addresses or networks (* for any) whose "
                                                     "X-Forwarded-For/-Proto are trusted; empty: none")
    cors_origins: str = Field("", description="comma-separated allowed CORS origins; * for any; empty: off")
    shutdown_timeout_s: float = Field(30.0, gt=0, description="on SIGTERM, how long requests in flight may take to "
                                      "finish before they are cancelled; then jobs and the engine stop")
    log_dir: Path = Field(Path("logs"), description="access.log, error.log, model_load.log go here")
    log_json: bool = Field(False, description="write log files as JSON lines")
    log_max_bytes: int = Field(10 * 1024 * 1024, gt=0, description="rotate a log file at this size")
    log_backups: int = Field(5, ge=0, description="rotated log files kept")

    # ---- long audio: uploads, jobs, voice-activity segments, frame windows (store, jobs, longform) ----
    data_dir: Path = Field(Path("data"), description="uploads, job results and their SQLite database")
    upload_max_bytes: int = Field(2 * 1024**3, gt=0, description="largest file one upload may announce, in bytes")
    upload_max_chunk_bytes: int = Field(5 * 1024**2, gt=0, description="largest chunk (and the default chunk size)")
    upload_max_active: int = Field(64, gt=0, description="uploads in flight at once; more are refused")
    upload_max_active_bytes: int = Field(20 * 1024**3, gt=0, description="bytes announced by uploads in flight")
    upload_expiry_s: float = Field(24 * 3600, gt=0, description="an idle unfinished upload expires after this")
    upload_keep_completed_s: float = Field(24 * 3600, gt=0, description="a completed upload's file is kept this long")
    job_keep_s: float = Field(7 * 24 * 3600, gt=0, description="finished jobs and their results are kept this long")
    sweep_interval_s: float = Field(300.0, gt=0, description="how often expired uploads and jobs are removed")
    job_workers: int = Field(1, gt=0, description="jobs analysed at once")
    job_max_attempts: int = Field(3, gt=0, description="a job that crashed the server this often fails for good")
    callback_attempts: int = Field(5, gt=0, description="tries to POST a finished job to its callback_url")
    callback_backoff_s: float = Field(2.0, gt=0, description="first retry delay of a callback; doubles each try")
    callback_timeout_s: float = Field(10.0, gt=0, description="timeout of one callback POST")
    callback_allow_networks: str = Field(
        "", description="comma-separated CIDRs that callback_url hosts may resolve to besides public addresses "
                        "(e.g. 127.0.0.0/8 for hooks on this machine); empty: public addresses only")
    callback_secret: str = Field(
        "", repr=False, description="key that signs callbacks (whsec_<base64>, or any text); empty: one made on the "
                                    "first start and kept in DATA_DIR/callback_secret (mode 0600)")
    longform_max_duration_s: float = Field(4 * 3600, gt=0, description="longest file a job may analyse")
    longform_max_segment_s: float = Field(30.0, gt=0, le=30.0, description="voiced segments are split to this")
    longform_window_s: float = Field(30.0, gt=0, le=30.0, description="window of granularity=frame over long files")
    longform_window_overlap_s: float = Field(4.0, gt=0, description="overlap of frame windows; half each side dropped")
    longform_batch_size: int = Field(8, gt=0, description="segments or windows per forward pass")
    longform_batch_s: float = Field(120.0, gt=0, description="padded audio seconds per forward pass")
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="silero-vad speech probability threshold")
    vad_min_speech_ms: int = Field(250, ge=0, description="shorter voiced stretches are ignored")
    vad_min_silence_ms: int = Field(300, ge=0, description="a pause this long ends a segment")
    vad_speech_pad_ms: int = Field(100, ge=0, description="padding added to each side of a segment")

    # ---- engine: dynamic batching and the CPU/GPU execution paths (src/emoserve/engine.py) ----
    max_batch_size: int | None = Field(None, ge=1, description="clips per batch; default 4 on CPU, 64 on GPU")
    max_batch_samples: int | None = Field(
        None, ge=1, description="padded 16 kHz samples per batch (count × longest); default 40 s of audio on CPU, "
                                "640 s on GPU. A longer clip runs alone")
    max_wait_ms: float = Field(5.0, ge=0, description="how long the oldest queued clip waits for others to batch with")
    max_queue: int = Field(256, ge=1, description="clips waiting for the model; more get 503 overloaded")
    decode_workers: int = Field(2, ge=1, description="threads that decode and resample audio beside the model")
    threads: int | None = Field(None, ge=1, description="torch compute threads; default: the CPUs this process has")
    quantize: bool = Field(False, description="CPU fast path: int8 dynamic quantization of the transformer's "
                                              "linear layers (faster, not exact; see docs/engine.md)")
    compile: bool = Field(False, description="torch.compile the transformer, weights frozen (~20 s start-up; "
                                             "measured slower than plain fp32 here: see docs/engine.md)")

    # ---- streaming: WebSocket /v1/stream (src/emoserve/streaming.py); its utterances use the vad_* settings ----
    stream_window_s: float = Field(4.0, ge=1.0, le=30.0, description="audio each frame pass of a stream sees; "
                                   "a frame arrives (window - hop) / 2 to (window + hop) / 2 after its audio")
    stream_hop_s: float = Field(1.0, ge=0.1, le=15.0, description="a stream's frames are analysed every hop of audio; "
                                "at most half the window")
    stream_max_buffer_s: float = Field(30.0, gt=0, description="received audio a stream may hold unanalysed; past it "
                                       "the server stops reading (backpressure)")
    stream_max_duration_s: float = Field(4 * 3600, gt=0, description="longest audio one stream may send")
    stream_idle_timeout_s: float = Field(60.0, gt=0, description="a stream that sends no message for this long is "
                                         "ended: idle_timeout error, its last results, close 4408")
    stream_max_concurrent: int = Field(64, ge=1, description="streams open at once; more are refused at the "
                                       "handshake (HTTP 503 overloaded)")

    @field_validator("callback_allow_networks")
    @classmethod
    def networks_parse(cls, value: str) -> str:
        parse_networks(value)
        return value

    @model_validator(mode="after")
    def stream_hop_fits(self) -> Settings:
        if self.stream_hop_s > self.stream_window_s / 2:
            raise ValueError(f"stream_hop_s ({self.stream_hop_s}) must be at most half of stream_window_s "
                             f"({self.stream_window_s}), so every frame has context on both sides")
        if self.stream_max_buffer_s < self.stream_hop_s:
            raise ValueError(f"stream_max_buffer_s ({self.stream_max_buffer_s}) must be at least stream_hop_s "
                             f"({self.stream_hop_s}): a hop of audio waits in the buffer for its window")
        return self

    # ---- web UI: Gradio at /ui of the server, or `emoserve ui` alone (src/emoserve/ui/) ----
    ui_max_upload_bytes: int = Field(200 * 1024**2, gt=0, description="largest file the web UI accepts, in bytes")
    ui_max_long_s: float = Field(600.0, gt=0, description="longest file the web UI analyses in long-file mode; "
                                                          "longer audio goes through the upload API")
    ui_concurrency: int = Field(4, ge=1, description="web UI analyses running at once; more wait in Gradio's queue")
    ui_examples: bool = Field(True, description="offer spoken example clips (made once with espeak-ng when installed)")

    # ---- long audio over HTTP: upload, tus and job routes (src/emoserve/api/routes_uploads.py, _tus.py, _jobs.py) ----
    job_max_wait_s: float = Field(60.0, ge=0, description="longest ?wait= of GET /v1/jobs/{id}; a longer wait is cut "
                                                          "to this")

    # ---- the Rasa action (src/emoserve/integrations/rasa.py): read by the Rasa action server ----
    rasa_audio_dirs: str = Field("", description="folders (separated like PATH) whose files a chat message may name "
                                                 "as its audio; empty: local paths are refused")
    rasa_max_audio_bytes: int = Field(10 * 1024 * 1024, gt=0, description="largest voice message the action reads, "
                                                                          "downloads or decodes, in bytes")
    rasa_download_timeout_s: float = Field(30.0, gt=0, description="longest download of an audio URL, start to end")

    def keys(self) -> list[str]:
        """The configured API keys (env/flag and file together); empty when auth is off."""
        keys = [k.strip() for k in self.api_keys.split(",") if k.strip()]
        if self.api_keys_file is not None:
            lines = self.api_keys_file.read_text(encoding="utf-8").splitlines()
            keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        return keys

    def origins(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    def callback_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return parse_networks(self.callback_allow_networks)


def parse_networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Comma-separated CIDRs (a bare address is its /32 or /128); host bits are ignored."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def get_settings(**overrides) -> Settings:
    """Settings from the environment, with explicit (e.g. CLI) values on top; None means "not given"."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
