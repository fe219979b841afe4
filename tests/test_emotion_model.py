import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from emoserve import LABELS, AudioError, EmotionModel, InvalidParameterError
from emoserve.model.config import SAMPLE_RATE, TINY

from .conftest import write_checkpoint
from .samples import espeak_available, noise, speech, sweep, wav_bytes


def test_random_models_say_they_are_random(tiny_model):
    info = tiny_model.info
    assert info.weights == "random" and info.name == "random:tiny"
    assert info.labels == LABELS and info.sample_rate == 16000 and info.frame_rate == 50
    assert info.embedding_dim == TINY.embed_dim and info.device == "cpu" and info.dtype == "float32"


def test_random_models_are_seeded():
    a = EmotionModel.from_pretrained("random:tiny", seed=1).analyze(noise(8000)).utterance_scores
    b = EmotionModel.from_pretrained("random:tiny", seed=1).analyze(noise(8000)).utterance_scores
    c = EmotionModel.from_pretrained("random:tiny", seed=2).analyze(noise(8000)).utterance_scores
    assert a == b and a != c


def test_unknown_random_size_is_refused():
    with pytest.raises(InvalidParameterError, match="random:tiny"):
        EmotionModel.from_pretrained("random:huge")


def test_utterance_result(tiny_model):
    result = tiny_model.analyze(sweep(1.0), return_embedding=True)
    assert set(result.scores) == set(LABELS)
    assert sum(result.scores.values()) == pytest.approx(1.0, abs=1e-5)
    assert result.emotion == max(result.scores, key=result.scores.get)
    assert result.confidence == result.scores[result.emotion]
    assert result.embedding.shape == (TINY.embed_dim,) and result.embedding.dtype == np.float32
    assert result.duration_s == 1.0 and result.timestamps is None


def test_frame_result_has_one_row_per_20ms(tiny_model):
    clip = noise(16000 + 700)
    result = tiny_model.analyze(clip, granularity="frame", return_embedding=True)
    frames = (len(clip) - 400) // 320 + 1
    assert result.scores.shape == (frames, len(LABELS))
    np.testing.assert_allclose(result.scores.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(result.timestamps, np.arange(frames) * 0.02)
    assert result.embedding.shape == (frames, TINY.embed_dim)
    # the utterance answer of a frame result is the clip's: mean of frames, then the head
    utterance = tiny_model.analyze(clip, return_embedding=True)
    assert result.utterance_scores == pytest.approx(utterance.scores, abs=1e-6)
    np.testing.assert_allclose(result.embedding.mean(axis=0), utterance.embedding, atol=1e-5)
    assert result.emotion == utterance.emotion


def test_frame_scores_are_the_head_on_each_frame(tiny_model):
    clip = noise(8000, seed=3)
    result = tiny_model.analyze(clip, granularity="frame", return_embedding=True)
    head = tiny_model.network.proj
    with torch.inference_mode():
        expected = torch.softmax(head(torch.from_numpy(result.embedding)), -1).numpy()
    np.testing.assert_allclose(result.scores, expected, atol=1e-6)


def test_paths_bytes_and_arrays_give_the_same_answer(tiny_model, tmp_path):
    clip = sweep(0.5)
    data = wav_bytes(clip, subtype="FLOAT")
    (tmp_path / "clip.wav").write_bytes(data)
    from_array = tiny_model.analyze(clip).scores
    assert tiny_model.analyze(data).scores == pytest.approx(from_array, abs=1e-6)
    assert tiny_model.analyze(tmp_path / "clip.wav").scores == pytest.approx(from_array, abs=1e-6)
    assert tiny_model.analyze(str(tmp_path / "clip.wav")).scores == pytest.approx(from_array, abs=1e-6)


def test_analyze_batch_keeps_input_order_and_matches_single_runs(tiny_model):
    clips = [noise(n, seed=n) for n in (16000, 400, 7000, 12345, 3000)]
    batch = tiny_model.analyze_batch(clips, granularity="frame", return_embedding=True, max_batch_size=3)
    for clip, result in zip(clips, batch):
        alone = tiny_model.analyze(clip, granularity="frame", return_embedding=True)
        assert result.duration_s == alone.duration_s
        np.testing.assert_allclose(result.scores, alone.scores, atol=1e-5)
        np.testing.assert_allclose(result.embedding, alone.embedding, atol=1e-5)


def test_too_short_names_the_minimum(tiny_model):
    with pytest.raises(AudioError) as info:
        tiny_model.analyze(noise(399))
    assert info.value.code == "too_short" and "400 samples" in info.value.message
    assert tiny_model.analyze(noise(400)).scores  # exactly the minimum works


def test_bad_granularity_is_refused(tiny_model):
    with pytest.raises(InvalidParameterError):
        tiny_model.analyze(noise(1000), granularity="word")


def test_loading_a_directory_reports_its_name_and_pretrained_weights(tmp_path):
    write_checkpoint(tmp_path / "my_model", TINY)
    model = EmotionModel.from_pretrained(tmp_path / "my_model", cache_dir=tmp_path / "cache")
    assert model.info.name == "my_model" and model.info.weights == "pretrained"


def test_unused_labels_are_masked_and_dropped(tmp_path):
    directory = write_checkpoint(tmp_path / "m", TINY)
    tokens = (directory / "tokens.txt").read_text(encoding="utf-8").split("\n")
    tokens[5] = "unuse_5"
    (directory / "tokens.txt").write_text("\n".join(tokens), encoding="utf-8")
    model = EmotionModel.from_pretrained(directory, cache_dir=tmp_path / "cache")
    result = model.analyze(noise(4000), granularity="frame")
    assert "other" not in model.labels and len(model.labels) == 8
    assert result.scores.shape[1] == 8 and set(result.utterance_scores) == set(model.labels)
    assert sum(result.utterance_scores.values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.gpu
def test_bf16_on_cuda_agrees_with_fp32_on_cpu():
    cpu = EmotionModel.from_pretrained("random:base", device="cpu")
    gpu = EmotionModel.from_pretrained("random:base", device="cuda", dtype="bfloat16")
    rng = np.random.default_rng(0)
    same, total, worst = 0, 0, 0.0
    for _i in range(100):
        clip = (0.1 * rng.standard_normal(int(rng.integers(8000, 160000)))).astype(np.float32)
        a, b = cpu.analyze(clip), gpu.analyze(clip)
        same += a.emotion == b.emotion
        total += 1
        worst = max(worst, max(abs(a.scores[k] - b.scores[k]) for k in a.scores))
    assert same / total >= 0.99 and worst <= 2e-2


def test_onednn_kernel_cache_is_bounded_by_a_cpu_model_unless_the_user_set_it():
    code = ("import os; from emoserve import EmotionModel; "
            "imported = os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY'); "
            "EmotionModel.from_pretrained('random:tiny', device='cpu'); "
            "print(imported, os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])")
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    ours = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    theirs = subprocess.run([sys.executable, "-c", code], env={**env, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "7"},
                            capture_output=True, text=True, check=True)
    assert (ours.stdout.split(), theirs.stdout.split()) == (["None", "32"], ["7", "7"])  # importing sets nothing


# ---- channels="split": each channel on its own ----

@pytest.fixture(scope="module")
def two_voices() -> tuple[np.ndarray, np.ndarray]:
    """Different espeak-ng speech on the left and on the right, equally long (44.1 kHz, resampled on decode)."""
    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    left, right = speech("I am so happy to see you today", 44_100), speech("Why would you ever do that to me", 44_100)
    length = max(len(left), len(right))
    return np.pad(left, (0, length - len(left))), np.pad(right, (0, length - len(right)))


@pytest.mark.parametrize("granularity", ["utterance", "frame"])
def test_split_gives_each_channel_what_it_gives_alone_as_a_mono_file(tiny_model, two_voices, granularity):
    stereo = wav_bytes(np.stack(two_voices, axis=1), 44_100)
    split = tiny_model.analyze(stereo, granularity=granularity, return_embedding=True, channels="split",
                               channel_names="agent,customer")
    assert [(c.channel, c.name) for c in split.channels] == [(0, "agent"), (1, "customer")]
    for entry, voice in zip(split.channels, two_voices, strict=True):
        alone = tiny_model.analyze(wav_bytes(voice, 44_100), granularity=granularity, return_embedding=True)
        assert entry.result.emotion == alone.emotion
        np.testing.assert_allclose(entry.result.embedding, alone.embedding, rtol=0, atol=1e-5)
        np.testing.assert_allclose(np.asarray(list(entry.result.utterance_scores.values())),
                                   np.asarray(list(alone.utterance_scores.values())), rtol=0, atol=1e-5)
        if granularity == "frame":
            np.testing.assert_allclose(entry.result.scores, alone.scores, rtol=0, atol=1e-5)
        assert entry.result.duration_s == alone.duration_s == split.duration_s
    assert not np.allclose(split.channels[0].result.embedding, split.channels[1].result.embedding, atol=1e-3)


def test_split_names_default_to_left_right_then_numbered(tiny_model):
    three = np.stack([noise(SAMPLE_RATE, seed=s) for s in range(3)], axis=1)
    split = tiny_model.analyze(three, channels="split")
    assert [c.name for c in split.channels] == ["left", "right", "ch2"]
    assert split.to_dict()["channels"][2] == {"channel": 2, "name": "ch2", **split.channels[2].result.to_dict()}


@pytest.mark.parametrize("names, message", [("a,b,c", "names 3 channels"), ("a,a", "distinct"),
                                            (["a", ""], "empty")])
def test_bad_channel_names_are_refused(tiny_model, names, message):
    stereo = np.stack([noise(SAMPLE_RATE, seed=s) for s in range(2)], axis=1)
    with pytest.raises(InvalidParameterError, match=message):
        tiny_model.analyze(stereo, channels="split", channel_names=names)


def test_split_of_a_mono_file_and_unknown_modes_are_invalid_parameters(tiny_model):
    with pytest.raises(InvalidParameterError, match="one channel"):
        tiny_model.analyze(wav_bytes(noise(SAMPLE_RATE)), channels="split")
    with pytest.raises(InvalidParameterError, match="channels must be one of mix, split"):
        tiny_model.analyze(wav_bytes(noise(SAMPLE_RATE)), channels="both")
