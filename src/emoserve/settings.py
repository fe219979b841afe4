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


def get_settings(**overrides) -> Settings:
    """Settings from the environment, with explicit (e.g. CLI) values on top; None means "not given"."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
