"""/v1/audio/speech and /v1/audio/voices with the real embedded Piper voice: formats, streams, errors."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf
from starlette.testclient import TestClient

from ai_stack.audio import WHOLE_FORMATS
from tests.conftest import FAKE, LiveServer, assert_error, wait_ready

PIPER: dict[str, Any] = {
    "id": "piper-joe",
    "aliases": ["tts-1", "tts-1-hd"],
    "kind": "speech",
    "engine": "piper",
    "source": "embedded:en_US-joe-medium",
}
PIPER_RATE = 22050
SHORT = "Hello there."
LONG = "Hello there. This is a much longer sentence, spoken to check that more text makes more audio."
# The rate each format comes back at for a 22.05 kHz voice (pcm is OpenAI's 24 kHz; Ogg Opus is 48 kHz).
RATES = {
    "wav": PIPER_RATE,
    "flac": PIPER_RATE,
    "mp3": PIPER_RATE,
    "aac": PIPER_RATE,
    "opus": 48000,
    "pcm": 24000,
}
CONTENT_TYPES = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
}


def decode(data: bytes, fmt: str) -> tuple[npt.NDArray[np.float32], int]:
    """Decode a response body to float mono samples and their rate (pcm is raw 24 kHz s16le)."""
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, 24000
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray().astype(np.float32).reshape(-1) for frame in container.decode(stream)]
        rate = int(stream.codec_context.sample_rate)
    assert frames, f"{fmt}: no audio frames"
    samples = np.concatenate(frames)
    if samples.dtype.kind == "i" or np.abs(samples).max() > 1.5:
        samples = samples / 32768.0
    return samples, rate


def assert_speech(samples: npt.NDArray[np.float32], rate: int, expected_rate: int) -> float:
    """Right rate, non-silent, at least a fraction of a second; returns the duration in seconds."""
    assert rate == expected_rate
    duration = samples.size / rate
    assert duration > 0.3, duration
    rms = float(np.sqrt(np.mean(np.square(samples.astype(np.float64)))))
    assert rms > 0.01, rms
    return duration


def same_length(a: int, b: int) -> bool:
    """Piper samples its durations (noise_w), so two syntheses of one text differ by some percent."""
    return abs(a - b) <= 0.3 * max(a, b)


@pytest.fixture
def client(app_client: Callable[..., TestClient]) -> TestClient:
    c = app_client([FAKE, PIPER])
    wait_ready(c, "piper-joe", timeout=60)
    wait_ready(c, "fake-chat")
    return c


# Protocol tests need no voice model: the fake engine speaks a tone per sentence (two voices, blends).
FAKE_SPEECH: dict[str, Any] = {
    "id": "fake-voice",
    "aliases": ["tts-fake"],
    "kind": "speech",
    "engine": "fake-speech",
    "source": "fake:",
    "options": {"voice_map": {"alloy": "fake-b"}},
}
KOKORO_ONNX: dict[str, Any] = {
    "id": "kokoro-ja",
    "kind": "speech",
    "engine": "kokoro-onnx",
    "source": "embedded:kokoro-v1.0-int8",
}


@pytest.fixture
def fake_client(app_client: Callable[..., TestClient]) -> TestClient:
    c = app_client([FAKE, FAKE_SPEECH])
    wait_ready(c, "fake-voice")
    wait_ready(c, "fake-chat")
    return c


def speak(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/audio/speech", json={"model": "piper-joe", "voice": "en_US-joe-medium", **body})


@pytest.mark.parametrize("fmt", list(RATES))
def test_every_format_decodes_at_the_right_rate(client: TestClient, fmt: str) -> None:
    short = speak(client, input=SHORT, response_format=fmt)
    assert short.status_code == 200, short.text
    assert short.headers["content-type"].startswith(CONTENT_TYPES[fmt])
    long = speak(client, input=LONG, response_format=fmt)
    assert long.status_code == 200, long.text
    short_s = assert_speech(*decode(short.content, fmt), RATES[fmt])
    long_s = assert_speech(*decode(long.content, fmt), RATES[fmt])
    assert long_s > short_s * 2


def test_default_format_is_mp3(client: TestClient) -> None:
    response = speak(client, input=SHORT)
    assert response.headers["content-type"].startswith("audio/mpeg")
    assert_speech(*decode(response.content, "mp3"), PIPER_RATE)


@pytest.fixture
def exact_client(app_client: Callable[..., TestClient]) -> TestClient:
    """Piper with its sampling noise off, so one text always gives the same samples."""
    c = app_client([{**PIPER, "options": {"noise_scale": 0, "noise_w": 0}}])
    wait_ready(c, "piper-joe", timeout=60)
    return c


@pytest.mark.parametrize("fmt", ["wav", "pcm", "flac", "mp3", "opus", "aac"])
def test_streamed_equals_buffered(exact_client: TestClient, fmt: str) -> None:
    client = exact_client
    buffered = speak(client, input=LONG, response_format=fmt)
    body = {"model": "piper-joe", "voice": "en_US-joe-medium", "input": LONG, "response_format": fmt}
    with client.stream("POST", "/v1/audio/speech", json=body) as response:
        assert response.status_code == 200
        parts = list(response.iter_bytes())
    streamed = b"".join(parts)
    buffered_samples, _ = decode(buffered.content, fmt)
    streamed_samples, rate = decode(streamed, fmt)
    assert_speech(streamed_samples, rate, RATES[fmt])
    if fmt in WHOLE_FORMATS:  # FLAC's header needs the total length: the file comes whole, at the end
        assert len(parts) == 1
    else:
        assert len(parts) > 1  # it really arrived in pieces
    assert streamed_samples.size == buffered_samples.size


def test_speed_changes_length(client: TestClient) -> None:
    normal, _ = decode(speak(client, input=LONG, response_format="wav").content, "wav")
    fast, _ = decode(speak(client, input=LONG, response_format="wav", speed=2.0).content, "wav")
    assert fast.size < normal.size * 0.75


def test_sse_events_decode_to_audio(client: TestClient) -> None:
    response = speak(client, input=LONG, response_format="wav", stream_format="sse")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert len(events) >= 2
    done = events[-1]
    assert done["type"] == "speech.audio.done"
    usage = done["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert_speech(*decode(audio, "wav"), PIPER_RATE)


def test_voices_listing(client: TestClient) -> None:
    response = client.get("/v1/audio/voices")
    assert response.status_code == 200
    voices = response.json()["voices"]
    assert voices
    for voice in voices:
        assert {"id", "name", "model", "language", "description"} <= set(voice)
    assert {"id": "en_US-joe-medium", "model": "piper-joe"}.items() <= voices[0].items()
    assert voices[0]["language"].startswith("en")
    only = client.get("/v1/audio/voices", params={"model": "tts-1"}).json()["voices"]
    assert only == voices
    assert_error(client.get("/v1/audio/voices", params={"model": "nope"}), 404, "model_not_found", "model")


@pytest.mark.parametrize("voice", ["alloy", "nova", {"id": "en_US-joe-medium"}])
def test_openai_voice_names_and_alias_model(client: TestClient, voice: Any) -> None:
    response = client.post(
        "/v1/audio/speech",
        json={
            "model": "tts-1",
            "voice": voice,
            "input": SHORT,
            "response_format": "flac",
            "instructions": "calm",
        },
    )
    assert response.status_code == 200, response.text
    assert_speech(*decode(response.content, "flac"), PIPER_RATE)


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"input": ""}, "input", None),
        ({"input": "   "}, "input", None),
        ({"input": "a" * 4097}, "input", "4096"),
        ({"input": SHORT, "voice": "bogus"}, "voice", "en_US-joe-medium"),
        ({"input": SHORT, "response_format": "ogg"}, "response_format", None),
        ({"input": SHORT, "speed": 5}, "speed", None),
        ({"input": SHORT, "speed": 0.1}, "speed", None),
        ({"input": SHORT, "stream_format": "chunks"}, "stream_format", None),
        ({"voice": "alloy"}, "input", None),
    ],
)
def test_bad_inputs_are_400(client: TestClient, body: dict[str, Any], param: str, needle: str | None) -> None:
    error = assert_error(speak(client, **body), 400, "invalid_value", param)
    if needle:
        assert needle in error["message"]


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"input": ""}, "input", None),
        ({"input": "a" * 4097}, "input", "4096"),
        ({"input": SHORT, "voice": "bogus"}, "voice", "fake-a, fake-b"),
        ({"input": SHORT, "voice": "fake-a(2)+bogus"}, "voice", "'bogus'"),
        ({"input": SHORT, "voice": "fake-a(-1)"}, "voice", "positive"),
        ({"input": SHORT, "response_format": "ogg"}, "response_format", None),
        ({"input": SHORT, "speed": 5}, "speed", None),
        ({"input": SHORT, "stream_format": "chunks"}, "stream_format", None),
    ],
)
def test_bad_inputs_are_400_on_any_engine(
    fake_client: TestClient, body: dict[str, Any], param: str, needle: str | None
) -> None:
    response = fake_client.post("/v1/audio/speech", json={"model": "fake-voice", "voice": "fake-a", **body})
    error = assert_error(response, 400, "invalid_value", param)
    if needle:
        assert needle in error["message"]


def test_fake_engine_voices_blends_and_voice_map(fake_client: TestClient) -> None:
    """Each voice, a blend, a mapped OpenAI name: a tone of the right pitch and length per request."""
    pitches = {}
    for voice in ("fake-a", "fake-b", "fake-a(1)+fake-b(1)", "alloy"):
        response = fake_client.post(
            "/v1/audio/speech",
            json={"model": "tts-fake", "voice": voice, "input": LONG, "response_format": "pcm"},
        )
        assert response.status_code == 200, response.text
        samples = np.frombuffer(response.content, dtype="<i2").astype(np.float32)
        assert abs(samples.size / 24000 - len(LONG) * 0.02) < 0.1  # 20 ms per character
        spectrum = np.abs(np.fft.rfft(samples))
        pitches[voice] = float(np.argmax(spectrum) * 24000 / samples.size)
    assert abs(pitches["fake-a"] - 220) < 5 and abs(pitches["fake-b"] - 440) < 5
    assert abs(pitches["fake-a(1)+fake-b(1)"] - 330) < 5
    assert pitches["alloy"] == pitches["fake-b"]  # options.voice_map


def test_missing_voice_is_400(fake_client: TestClient) -> None:
    response = fake_client.post("/v1/audio/speech", json={"model": "fake-voice", "input": SHORT})
    assert_error(response, 400, "invalid_value", "voice")


def test_chat_model_for_speech_and_speech_model_for_chat(fake_client: TestClient) -> None:
    client = fake_client
    response = client.post("/v1/audio/speech", json={"model": "fake", "voice": "alloy", "input": SHORT})
    assert_error(response, 400, "model_kind_mismatch", "model")
    response = client.post(
        "/v1/chat/completions", json={"model": "tts-fake", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert_error(response, 400, "model_kind_mismatch", "model")
    assert_error(
        client.post("/v1/audio/speech", json={"model": "gpt-9", "voice": "alloy", "input": SHORT}),
        404,
        "model_not_found",
        "model",
    )


def test_openai_sdk_over_http(live_server: Callable[..., LiveServer]) -> None:
    openai = pytest.importorskip("openai")
    server = live_server([PIPER])
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    import httpx

    wait_ready(httpx.Client(base_url=server.url), "piper-joe", timeout=60)
    audio = sdk.audio.speech.create(model="tts-1", voice="alloy", input=LONG, response_format="wav")
    buffered, rate = decode(audio.content, "wav")
    assert_speech(buffered, rate, PIPER_RATE)
    with sdk.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=LONG, response_format="wav"
    ) as response:
        streamed = b"".join(response.iter_bytes())
    samples, rate = decode(streamed, "wav")
    assert_speech(samples, rate, PIPER_RATE)
    assert same_length(samples.size, buffered.size)


def test_client_disconnect_cancels_synthesis(live_server: Callable[..., LiveServer]) -> None:
    import httpx

    from ai_stack.sentences import split_sentences
    from tests.conftest import wait_for

    server = live_server([PIPER])
    http = httpx.Client(base_url=server.url, timeout=60)
    wait_ready(http, "piper-joe", timeout=60)
    engine = server.app.state.registry.entries["piper-joe"].engine
    spoken: list[int] = []
    finished = []
    original = engine.synthesize

    def counting(text: str, voice: str, speed: float, cancel: Any) -> Any:
        try:
            for chunk in original(text, voice, speed, cancel):
                spoken.append(chunk.size)
                yield chunk
        finally:
            finished.append(cancel.is_set())

    engine.synthesize = counting
    text = " ".join(f"This is sentence number {i} of a rather long text." for i in range(80))
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "mp3"}
    with http.stream("POST", "/v1/audio/speech", json=body) as response:
        assert response.status_code == 200
        assert next(response.iter_bytes())
    assert wait_for(lambda: bool(finished), 60)
    assert finished == [True]
    assert len(spoken) < len(split_sentences(text)) / 2


def test_kokoro_onnx_blend_through_the_api(app_client: Callable[..., TestClient]) -> None:
    """The embedded Kokoro ONNX model speaks a weighted blend of two of its voices; a bad part is a 400."""
    client = app_client([KOKORO_ONNX])
    wait_ready(client, "kokoro-ja", timeout=120)
    body = {"model": "kokoro-ja", "input": SHORT, "response_format": "wav"}
    response = client.post("/v1/audio/speech", json={**body, "voice": "jf_alpha(2)+jm_kumo(1)"})
    assert response.status_code == 200, response.text
    samples, rate = decode(response.content, "wav")
    assert rate == 24000 and samples.size > 0.3 * rate
    response = client.post("/v1/audio/speech", json={**body, "voice": "jf_alpha+nobody"})
    assert_error(response, 400, "invalid_value", "voice")


def test_audio_models_lists_the_speech_models(fake_client: TestClient) -> None:
    """Open WebUI asks GET /v1/audio/models first: the speech models only, with their aliases and state."""
    response = fake_client.get("/v1/audio/models")
    assert response.status_code == 200
    assert response.json() == {
        "models": [
            {
                "id": "fake-voice",
                "name": "fake-voice",
                "aliases": ["tts-fake"],
                "engine": "fake-speech",
                "state": "ready",
            }
        ]
    }


# libsndfile reads every format but AAC; pcm as headerless 16-bit 24 kHz mono.
SOUNDFILE_READS = {
    "wav": {},
    "flac": {},
    "mp3": {},
    "opus": {},
    "pcm": {"format": "RAW", "subtype": "PCM_16"},
}


@pytest.mark.parametrize("fmt", list(RATES))
def test_every_format_reads_in_soundfile_and_pyav_with_its_duration(
    fake_client: TestClient, fmt: str
) -> None:
    """The tone of a known length (20 ms a character) decodes to that length in both readers."""
    body = {"model": "fake-voice", "voice": "fake-a", "input": LONG, "response_format": fmt}
    response = fake_client.post("/v1/audio/speech", json=body)
    assert response.status_code == 200, response.text
    expected = len(LONG) * 0.02
    samples, rate = decode(response.content, fmt)
    assert rate == (RATES[fmt] if fmt in ("opus", "pcm") else 24000)
    assert expected - 0.05 <= samples.size / rate <= expected + 0.15
    if fmt in SOUNDFILE_READS:
        extra = SOUNDFILE_READS[fmt]
        if extra:
            extra = {**extra, "samplerate": 24000, "channels": 1}
        else:
            assert abs(sf.info(io.BytesIO(response.content)).duration - expected) < 0.15
        read, read_rate = sf.read(io.BytesIO(response.content), dtype="float32", **extra)
        assert read_rate == rate
        assert expected - 0.05 <= read.size / read_rate <= expected + 0.15


def test_flac_comes_whole_in_sse_too(fake_client: TestClient) -> None:
    """stream_format sse with flac: one delta holding the whole file, then done."""
    body = {"model": "fake-voice", "voice": "fake-a", "input": LONG, "response_format": "flac"}
    response = fake_client.post("/v1/audio/speech", json={**body, "stream_format": "sse"})
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events] == ["speech.audio.delta", "speech.audio.done"]
    read, rate = sf.read(io.BytesIO(base64.b64decode(events[0]["audio"])), dtype="float32")
    assert abs(read.size / rate - len(LONG) * 0.02) < 0.15


OTHER_VOICE: dict[str, Any] = {
    "id": "other-voice",
    "kind": "speech",
    "engine": "fake-speech",
    "source": "fake:",
    "options": {"voices": ["deep", "deeper"]},
}
TTS1_VOICE: dict[str, Any] = {**FAKE_SPEECH, "aliases": ["tts-1", "tts-fake"]}


def test_a_generic_alias_reaches_the_voices_of_every_speech_model(
    app_client: Callable[..., TestClient],
) -> None:
    """`tts-1` with another model's voice is served by that model; its own voices and OpenAI names stay."""
    client = app_client([TTS1_VOICE, OTHER_VOICE])
    wait_ready(client, "fake-voice")
    wait_ready(client, "other-voice")
    entries = client.app.state.registry.entries  # type: ignore[attr-defined]
    own, other = entries["fake-voice"].engine, entries["other-voice"].engine
    for voice, engine in [("deep", other), ("deep(1)+deeper(1)", other), ("fake-b", own), ("alloy", own)]:
        body = {"model": "tts-1", "voice": voice, "input": "Hi there.", "response_format": "wav"}
        before = len(engine.spoken)
        assert client.post("/v1/audio/speech", json=body).status_code == 200, voice
        assert len(engine.spoken) == before + 1, voice
    # Only a generic name routes: a model named by its id or its own alias keeps its own voices.
    for model in ("fake-voice", "tts-fake"):
        response = client.post("/v1/audio/speech", json={"model": model, "voice": "deep", "input": "Hi."})
        assert "fake-a, fake-b" in assert_error(response, 400, "invalid_value", "voice")["message"]
    response = client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "nobody", "input": "Hi."})
    assert "fake-a, fake-b" in assert_error(response, 400, "invalid_value", "voice")["message"]


def test_a_generic_alias_waits_for_the_model_whose_voice_it_asks_for(
    app_client: Callable[..., TestClient],
) -> None:
    """The voice's model still loading: 503 model_loading naming it (its voices are known from its files)."""
    client = app_client([TTS1_VOICE, {**OTHER_VOICE, "options": {"voices": ["deep"], "load_delay": 30}}])
    wait_ready(client, "fake-voice")
    response = client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "deep", "input": "Hi."})
    error = assert_error(response, 503, "model_loading", "model")
    assert "other-voice" in error["message"]


def test_voices_are_listed_while_their_models_load(app_client: Callable[..., TestClient]) -> None:
    """Voices come from the engines' files, without loading: Piper's JSON, Kokoro's voices archive."""
    slow = {**FAKE_SPEECH, "options": {"voices": ["v1", "v2"], "load_delay": 30}}
    piper = {**PIPER, "autoload": False}
    kokoro = {**KOKORO_ONNX, "autoload": False}
    client = app_client([slow, piper, kokoro])
    voices = client.get("/v1/audio/voices").json()["voices"]
    by_model: dict[str, list[dict[str, Any]]] = {}
    for voice in voices:
        by_model.setdefault(voice["model"], []).append(voice)
    assert [(v["id"], v["state"]) for v in by_model["fake-voice"]] == [("v1", "loading"), ("v2", "loading")]
    assert [(v["id"], v["state"]) for v in by_model["piper-joe"]] == [("en_US-joe-medium", "unloaded")]
    assert by_model["piper-joe"][0]["language"].startswith("en")
    kokoro_ids = {v["id"] for v in by_model["kokoro-ja"]}
    assert {"jf_alpha", "jm_kumo"} <= kokoro_ids
    assert {v["state"] for v in by_model["kokoro-ja"]} == {"unloaded"}
    states = {m["id"]: m["state"] for m in client.get("/v1/models").json()["data"]}
    assert states == {"fake-voice": "loading", "piper-joe": "unloaded", "kokoro-ja": "unloaded"}
