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
    compile: bool = Field(False, description="torch.compile the transformer blocks (slow first calls)")


def get_settings(**overrides) -> Settings:
    """Settings from the environment, with explicit (e.g. CLI) values on top; None means "not given"."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
