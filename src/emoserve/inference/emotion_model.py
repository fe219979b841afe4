"""`EmotionModel`: the one public class that loads a model and answers "how does this sound?".

    m = EmotionModel.from_pretrained("emotion2vec_plus_large")   # name, local dir, or "random:large"
    r = m.analyze("clip.wav", granularity="frame", return_embedding=True)
    r.emotion, r.confidence, r.scores, r.timestamps, r.embedding

`predict` is the batched forward pass the engine calls; `analyze*` add decoding and results.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..audio import AudioSource, decode_audio, decode_channels
from ..backends import GRAPH_BACKENDS, Graph, GraphPlan, check_backend, graph_device, open_graph, plan_graph, require
from ..backends.cache import checkpoint_digest, exported_graph
from ..config import LongformConfig, ModelConfig
from ..errors import AudioError, InvalidParameterError
from ..labels import LABELS, UNUSED_PREFIX
from ..model import hub
from ..model.checkpoint import load_model_dir, random_state_dict
from ..model.config import BASE, FRAME_RATE, PLUS_BASE, PLUS_LARGE, SAMPLE_RATE, TINY, Emotion2vecConfig
from ..model.emotion2vec import Emotion2vec, emotion_scores
from ..model.precision import ExecutionPlan, apply_plan, plan_execution
from .batching import plan_batches
from .results import (
    ChannelResult,
    ClipOutput,
    EmotionResult,
    LongformResult,
    ModelInfo,
    SplitLongformResult,
    SplitResult,
    channel_names,
    check_channel_mode,
    check_granularity,
    make_result,
)

log = logging.getLogger(__name__)

DEFAULTS = ModelConfig()  # the keyword defaults of `from_pretrained`: config.py is their one source
RANDOM_CONFIGS = {"tiny": TINY, "base": PLUS_BASE, "large": PLUS_LARGE, "base-nohead": BASE}


def bound_onednn_kernel_cache() -> None:
    """Keep oneDNN's kernel cache small (32 entries) unless the user set its size.

    oneDNN (the CPU convolutions) keeps a compiled kernel per op and input shape, 1024 of them by
    default. Clip lengths differ with every request, so that cache mostly churns and pins fragmented
    heap: the server's RSS climbed by 0.6 GB over 4000 random-length batches of random:tiny. 32
    entries still hold the kernels that the layers of one forward pass share, at the same speed
    (measured on random:large), and keep memory flat. oneDNN reads the variable at its first use,
    so a model sets it when it is made on the CPU, before its first forward pass.
    """
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidParameterError(f"device {device} asked for, but CUDA is not available here")
    return resolved




class EmotionModel:
    """A loaded emotion2vec network on a device, with its labels."""

    def __init__(self, network: Emotion2vec, labels: Sequence[str], name: str, *, weights: str = "pretrained",
                 device: str | torch.device = DEFAULTS.device, dtype: str | torch.dtype = DEFAULTS.dtype,
                 precision: str = DEFAULTS.precision):
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            bound_onednn_kernel_cache()
        self.plan: ExecutionPlan = plan_execution(precision, self.device, dtype)
        self.network = network.eval().requires_grad_(False).to(self.device)
        self.config: Emotion2vecConfig = network.config
        active = [i for i, label in enumerate(labels) if not label.startswith(UNUSED_PREFIX)]
        self.labels: tuple[str, ...] = tuple(labels[i] for i in active)
        self.label_index = torch.tensor(active, dtype=torch.long, device=self.device)
        if network.proj is not None and len(labels) != network.proj.out_features:
            raise InvalidParameterError(f"{len(labels)} labels for a head of {network.proj.out_features} outputs")
        self.name = name
        self.weights = weights
        self.num_parameters = sum(p.numel() for p in self.network.parameters())  # before int8 packs some
        apply_plan(self.plan, self.network)
        self.compiled = False
        self.backend = "torch"
        self.graph: Graph | None = None  # the exported graph that runs the forward pass (backend not torch)
        self.graph_plan: GraphPlan | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.plan.dtype

    @property
    def quantization(self) -> str | None:
        compute = self.graph_plan.variant if self.graph_plan is not None else self.plan.compute
        return "int8-dynamic" if compute == "int8" else None

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = DEFAULTS.model, *, device: str = DEFAULTS.device,
                        dtype: str = DEFAULTS.dtype, cache_dir: str | Path = DEFAULTS.cache,
                        source: str = DEFAULTS.source, download: bool = True, seed: int = 0,
                        precision: str = DEFAULTS.precision, quantize: bool = DEFAULTS.quantize,
                        compile: bool = DEFAULTS.compile, revision: str | None = DEFAULTS.revision,
                        backend: str = DEFAULTS.backend, variant: str | None = None,
                        threads: int | None = None) -> EmotionModel:
        """Load a model by name (downloading it once into `cache_dir`), from a local directory, or
        `random:tiny|base|large`.

        `precision`: "exact" (fp32, FunASR parity) or "fast" (the best path for this hardware; see
        `emoserve.model.precision`, and `emoserve.backends` for the graph backends).
        `quantize` and `compile` apply `quantize_int8` and `compile` below (torch backend only).
        `backend`: "torch" runs the network; "onnxruntime" and "openvino" run its exported graph (`run_graph`);
        `variant` names the graph's arithmetic instead of what `precision` picks (`backends.VARIANTS`: fp32, int8,
        fp16 or bf16; `emoserve bench` measures each); `threads`: the graph backends' compute threads (the engine's
        `threads` setting; default one per usable CPU). Torch's threads are set by the engine that runs the model.
        """
        started = time.perf_counter()
        if variant is not None and backend not in GRAPH_BACKENDS:
            raise InvalidParameterError("variant is for the graph backends (onnxruntime, openvino)")
        if check_backend(backend) in GRAPH_BACKENDS:
            require(backend)  # before any loading: a missing package is the first thing to say
            if quantize or compile or dtype != "auto":
                raise InvalidParameterError(f"quantize, compile and dtype are torch options; backend {backend} "
                                            "takes precision exact or fast")
        cache = Path(cache_dir)
        name = str(name_or_path)
        if name.startswith("random:"):
            size = name.split(":", 1)[1]
            if size not in RANDOM_CONFIGS:
                raise InvalidParameterError(f"random models are {', '.join('random:' + s for s in RANDOM_CONFIGS)}")
            config = RANDOM_CONFIGS[size]
            state, labels, weights = random_state_dict(config, seed), LABELS[: config.num_labels], "random"
        else:
            directory = hub.resolve(name, cache, source, download=download, revision=revision)
            loaded = load_model_dir(directory, cache)
            config, state, labels, weights = loaded.config, loaded.state_dict, loaded.labels, "pretrained"
            name = name if name in hub.MODELS else directory.name
        with torch.device("meta"):
            network = Emotion2vec(config)
        network.load_state_dict(state, strict=True, assign=True)
        if backend in GRAPH_BACKENDS:
            model = cls(network, labels, name, weights=weights, device="cpu", precision="exact")
            model.run_graph(plan_graph(backend, precision, graph_device(backend, device), variant=variant), cache,
                            checkpoint_digest(state, config, labels), threads)
            log.info("loaded %s (%s weights) on %s in %.2fs: %s precision, %s (%s)", name, weights, backend,
                     time.perf_counter() - started, model.graph_plan.precision, model.graph_plan.execution,
                     model.graph_plan.reason)
            return model
        model = cls(network, labels, name, weights=weights, device=device, dtype=dtype,
                    precision=precision)
        if quantize:
            model.quantize_int8()
        if compile:
            model.compile()
        log.info("loaded %s (%s weights) on %s in %.2fs: %s precision, %s (%s)", name, weights, model.device,
                 time.perf_counter() - started, model.plan.precision, model.plan.execution, model.plan.reason)
        return model

    @classmethod
    def from_config(cls, config: ModelConfig, threads: int | None = None) -> EmotionModel:
        """The model its settings section names, loaded as it says (`Settings().model`), its graph backend (if any)
        on `threads` compute threads (`Settings().engine.threads`)."""
        return cls.from_pretrained(config.model, device=config.device, dtype=config.dtype, cache_dir=config.cache,
                                   source=config.source, precision=config.precision, quantize=config.quantize,
                                   compile=config.compile, revision=config.revision, backend=config.backend,
                                   threads=threads)

    @property
    def info(self) -> ModelInfo:
        plan = self.graph_plan or self.plan
        return ModelInfo(
            name=self.name, labels=self.labels, sample_rate=SAMPLE_RATE, frame_rate=FRAME_RATE,
            embedding_dim=self.config.embed_dim, device=str(self.device), dtype=str(self.dtype).replace("torch.", ""),
            quantization=self.quantization, weights=self.weights, parameters=self.num_parameters,
            min_samples=self.config.min_samples, precision=plan.precision, execution=plan.execution,
            backend=self.backend,
        )

    # ---- graph backends ----

    def run_graph(self, plan: GraphPlan, cache: Path, digest: str, threads: int | None = None) -> EmotionModel:
        """Run the forward pass on the exported graph in `plan.backend` from now on (an exact fp32 CPU model).

        The graph is exported once into `cache` (keyed by `digest`, `backends.cache.checkpoint_digest`) and
        read from there on the next start. The network's weights are then released: the graph holds its own.
        """
        if self.graph is not None or self.compiled or self.plan.compute != "fp32" or self.device.type != "cpu":
            raise InvalidParameterError("a graph backend starts from the exact fp32 torch model on CPU")
        path = exported_graph(self, cache, digest, plan.graph)
        self.graph = open_graph(plan, path, threads)
        self.graph_plan, self.backend = plan, plan.backend
        self.device = torch.device(plan.device)
        self.network.to("meta")
        return self

    # ---- opt-in speed paths ----

    def quantize_int8(self) -> EmotionModel:
        """Switch to the int8 CPU path (what precision="fast" picks on x86 CPUs without AMX).

        The transformer's Linear layers become `kernels.Int8Linear`: int8 weights per output
        channel, activations quantized per call, oneDNN's int8 matmul (VNNI where the CPU has
        it). About 70% of the fp32 time is in these matmuls. The convolutions but the extractor's
        first (one input channel) become `kernels.Int8Conv`, the same for oneDNN's int8 convolution;
        the first conv, norms, attention and the emotion head stay fp32. Not exact:
        benchmarks/engine_paired.py reports label agreement and score error against fp32.
        """
        if self.compiled:
            raise InvalidParameterError("quantize before compiling, or not at all: they do not combine")
        self.require_torch("quantize_int8")
        if self.plan.compute != "int8":
            self.plan = plan_execution(self.plan.precision, self.device, self.dtype, quantize=True)
            apply_plan(self.plan, self.network)
        return self

    def compile(self) -> EmotionModel:
        """torch.compile the transformer as one graph, weights frozen into it (inference only).

        Freezing lets inductor pre-pack the weights for oneDNN and fuse bias, GELU, residual adds
        and norms into the matmuls; shapes stay dynamic, since every clip length differs. The
        first calls compile (~20 s for plus_large on 2 cores); results stay within fp32 rounding.
        Freezing is inductor's process-wide setting: other graphs compiled in this process get it too.
        """
        self.require_torch("compile")
        if self.plan.compute != "fp32":
            raise InvalidParameterError("compile the exact fp32 model; fast paths and compile do not combine")
        if not self.compiled:
            import torch._inductor.config

            # read when the graph compiles, at the first call: per-compile `options` do not reach it
            torch._inductor.config.freezing = True
            self.network.transformer = torch.compile(self.network.transformer, dynamic=True)
            self.compiled = True
        return self

    def require_torch(self, what: str) -> None:
        if self.graph is not None:
            raise InvalidParameterError(f"{what} is for the torch backend; this model runs on {self.backend}")

    # ---- the forward pass ----

    def check_length(self, num_samples: int) -> None:
        minimum = self.config.min_samples
        if num_samples < minimum:
            raise AudioError(
                f"the audio is too short: {num_samples} samples ({num_samples / SAMPLE_RATE * 1000:.1f} ms) at 16 kHz; "
                f"the model needs at least {minimum} samples ({minimum / SAMPLE_RATE * 1000:.0f} ms)",
                code="too_short", details={"min_samples": minimum})

    @torch.inference_mode()
    def predict(self, waveforms: Sequence[np.ndarray], frames: bool = False) -> list[ClipOutput]:
        """One padded forward pass over 16 kHz mono float32 clips; `frames` adds per-frame outputs."""
        if not waveforms:
            return []
        lengths = [len(w) for w in waveforms]
        for n in lengths:
            self.check_length(n)
        if self.graph is not None:
            return self.clip_outputs(lengths, *self.run_graph_batch(waveforms, lengths, frames))
        batch = torch.zeros(len(waveforms), max(lengths), dtype=torch.float32)
        for row, wav in enumerate(waveforms):
            batch[row, : len(wav)] = torch.from_numpy(np.asarray(wav, dtype=np.float32))
        num_samples = torch.tensor(lengths, dtype=torch.long)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
            num_samples = num_samples.to(self.device, non_blocking=True)
        with self.plan.context(self.device):
            out = self.network(batch, num_samples)
        out.features = out.features.float()
        embeddings = self.network.pool(out)
        probs = self.classify(embeddings)
        frame_probs = self.classify(out.features) if frames else None

        embeddings = embeddings.cpu().numpy()
        probs = probs.cpu().numpy() if probs is not None else None
        features = out.features.cpu().numpy() if frames else None
        frame_probs = frame_probs.cpu().numpy() if frame_probs is not None else None
        return self.clip_outputs(lengths, embeddings, probs, features, frame_probs, out.frame_lengths.tolist())

    def run_graph_batch(self, waveforms: Sequence[np.ndarray], lengths: list[int], frames: bool
                        ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None, list[int]]:
        """The padded batch through the exported graph: the same arrays the torch path makes."""
        batch = np.zeros((len(waveforms), max(lengths)), dtype=np.float32)
        for row, wav in enumerate(waveforms):
            batch[row, : len(wav)] = wav
        head = "scores" in self.graph.outputs
        names = ("embedding", "frame_lengths", *(("scores",) if head else ()),
                 *(("frame_features", *(("frame_scores",) if head else ())) if frames else ()))
        out = self.graph.run(batch, np.asarray(lengths, dtype=np.int64), names)
        return (out["embedding"], out.get("scores"), out.get("frame_features"), out.get("frame_scores"),
                out["frame_lengths"].tolist())

    @staticmethod
    def clip_outputs(lengths: list[int], embeddings: np.ndarray, probs: np.ndarray | None,
                     features: np.ndarray | None, frame_probs: np.ndarray | None,
                     frame_lengths: list[int]) -> list[ClipOutput]:
        """Each clip's rows of the batch's arrays, its frames cut to its own length."""
        results = []
        for i, n in enumerate(lengths):
            t = frame_lengths[i]
            results.append(ClipOutput(
                num_samples=n, embedding=embeddings[i], probs=probs[i] if probs is not None else None,
                frame_features=features[i, :t] if features is not None else None,
                frame_probs=frame_probs[i, :t] if frame_probs is not None else None))
        return results

    def classify(self, x: torch.Tensor) -> torch.Tensor | None:
        """softmax(proj(x)) in float32 over the labels in use (labels named "unuse*" are masked)."""
        if self.network.proj is None:
            return None
        return emotion_scores(self.network.proj, self.label_index, x)

    # ---- the public API ----

    def analyze(self, audio: AudioSource, granularity: str = "utterance", return_embedding: bool = False,
                sample_rate: int | None = None, channels: str = "mix",
                channel_names: str | Sequence[str] | None = None) -> EmotionResult | SplitResult:
        """One clip: a path, bytes, a file object, or a float32 array (16 kHz unless `sample_rate`).

        `channels="split"` analyses each channel on its own (a stereo call: agent left, customer right) and
        returns a `SplitResult`, one entry per channel named from `channel_names` (a list, or "agent,customer").
        """
        check_granularity(granularity)
        if check_channel_mode(channels) == "split":
            return self.analyze_channels(decode_channels(audio, sample_rate=sample_rate), granularity,
                                         return_embedding, channel_names)
        wav = decode_audio(audio, sample_rate=sample_rate)
        out = self.predict([wav], frames=granularity == "frame")[0]
        return make_result(out, self.labels, self.name, granularity, return_embedding)

    def analyze_channels(self, waveforms: np.ndarray, granularity: str = "utterance", return_embedding: bool = False,
                         names: str | Sequence[str] | None = None) -> SplitResult:
        """Decoded channels (channels, samples) → one result per channel, the channels in one batch.

        Every channel has the same length, so the batch has no padding and each row is what that
        channel gives alone.
        """
        named = channel_names(names, len(waveforms))
        outputs = self.predict(list(waveforms), frames=granularity == "frame")
        return SplitResult(
            [ChannelResult(k, name, make_result(out, self.labels, self.name, granularity, return_embedding))
             for k, (name, out) in enumerate(zip(named, outputs, strict=True))],
            round(waveforms.shape[1] / SAMPLE_RATE, 6), self.name)

    def analyze_batch(self, inputs: Sequence[AudioSource], granularity: str = "utterance",
                      return_embedding: bool = False, sample_rate: int | None = None, max_batch_size: int = 16,
                      max_batch_samples: int = 16 * SAMPLE_RATE * 10) -> list[EmotionResult]:
        """Many clips, batched by similar length; results in input order."""
        check_granularity(granularity)
        waveforms = [decode_audio(a, sample_rate=sample_rate) for a in inputs]
        for wav in waveforms:
            self.check_length(len(wav))
        outputs: list[ClipOutput | None] = [None] * len(waveforms)
        for group in plan_batches([len(w) for w in waveforms], max_batch_size, max_batch_samples):
            outs = self.predict([waveforms[i] for i in group], frames=granularity == "frame")
            for index, out in zip(group, outs, strict=True):
                outputs[index] = out
        return [make_result(out, self.labels, self.name, granularity, return_embedding) for out in outputs]

    def analyze_long(self, audio: AudioSource, granularity: str = "utterance", return_embedding: bool = False,
                     progress: Callable[[float], None] | None = None, *, sample_rate: int | None = None,
                     regions: Sequence[tuple[float, float]] | None = None,
                     options: LongformConfig | None = None, channels: str = "mix",
                     channel_names: str | Sequence[str] | None = None) -> LongformResult | SplitLongformResult:
        """A file of any length: voiced segments with their emotion, the duration-weighted whole, and
        (granularity="frame") scores for every 20 ms of the file. `channels="split"`: that per channel, with
        the call's turns, overlaps and summary (docs/calls.md). See `emoserve.timeline.longform`, which
        runs on top of this class's `predict` (so it is imported here, not above)."""
        from ..timeline.longform import analyze_long

        return analyze_long(audio, self.predict, labels=self.labels, model_name=self.name, granularity=granularity,
                            return_embedding=return_embedding, sample_rate=sample_rate, regions=regions,
                            options=options, progress=progress,
                            min_samples=self.config.min_samples, channels=channels, channel_names=channel_names)
