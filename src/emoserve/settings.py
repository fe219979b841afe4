"""Every knob of emoserve in one place: defaults that serve on one machine, `EMOSERVE_*` env vars.

CLI flags override env vars, env vars override defaults: `Settings(**flags)` does exactly that.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
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
    cors_origins: str = Field("", description="comma-separated allowed CORS origins; * for any; empty: off")
    log_dir: Path = Field(Path("logs"), description="access.log, error.log, model_load.log go here")
    log_json: bool = Field(False, description="write log files as JSON lines")
    log_max_bytes: int = Field(10 * 1024 * 1024, gt=0, description="rotate a log file at this size")
    log_backups: int = Field(5, ge=0, description="rotated log files kept")

    def keys(self) -> list[str]:
        """The configured API keys (env/flag and file together); empty when auth is off."""
        keys = [k.strip() for k in self.api_keys.split(",") if k.strip()]
        if self.api_keys_file is not None:
            lines = self.api_keys_file.read_text(encoding="utf-8").splitlines()
            keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        return keys

    def origins(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]


def get_settings(**overrides) -> Settings:
    """Settings from the environment, with explicit (e.g. CLI) values on top; None means "not given"."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
