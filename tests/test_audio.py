"""Streaming audio encoding: every response format decodes to one continuous file of the right length."""

from __future__ import annotations

import io
import struct

import av
import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf

from ai_stack.audio import FORMATS, PCM_SAMPLE_RATE, WHOLE_FORMATS, AudioEncoder

RATE = 22050  # Piper's rate: not the 24 kHz of pcm nor the 48 kHz of opus, so both resample
SECONDS = 2.5
CHUNK = 5000  # samples per encode() call, about a quarter second
# Decoded rate per format for a 22050 Hz input.
DECODED_RATE = {"wav": RATE, "pcm": PCM_SAMPLE_RATE, "flac": RATE, "mp3": RATE, "opus": 48000, "aac": RATE}
# How much longer than the input a decoded file may be: MP3 and ADTS cannot signal the encoder's priming
# samples, so decoders play them (about two codec frames); the others are exact to a frame.
SLACK_S = {"wav": 0.0, "pcm": 0.001, "flac": 0.0, "mp3": 0.1, "opus": 0.02, "aac": 0.1}


def sine(seconds: float = SECONDS, rate: int = RATE, freq: float = 440.0) -> npt.NDArray[np.float32]:
    """A 0.3-amplitude sine tone."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode_chunked(fmt: str, samples: npt.NDArray[np.float32], rate: int = RATE) -> list[bytes]:
    """The byte chunks an encoder emits for samples fed CHUNK at a time, finish() last."""
    encoder = AudioEncoder(fmt, rate)
    out = [encoder.encode(samples[i : i + CHUNK]) for i in range(0, len(samples), CHUNK)]
    out.append(encoder.finish())
    return out


def decode(fmt: str, data: bytes) -> tuple[npt.NDArray[np.float32], int]:
    """Decode a whole file (pcm: raw s16le at 24 kHz) to float mono samples and its rate."""
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, PCM_SAMPLE_RATE
    with av.open(io.BytesIO(data), mode="r") as container:
        frames = list(container.decode(audio=0))
    rates = {f.sample_rate for f in frames}
    assert len(rates) == 1, rates
    samples = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32)
    if frames[0].format.name.startswith("s16"):
        samples /= 32768.0
    return samples, rates.pop()


def rms(samples: npt.NDArray[np.float32]) -> float:
    """Root mean square level."""
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


def test_formats_and_content_types() -> None:
    """The six OpenAI response formats, each with its content type."""
    assert FORMATS == {
        "wav": "audio/wav",
        "pcm": "audio/pcm",
        "flac": "audio/flac",
        "mp3": "audio/mpeg",
        "opus": "audio/ogg",
        "aac": "audio/aac",
    }
    assert AudioEncoder("opus", RATE).content_type == "audio/ogg"


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_streamed_chunks_form_one_decodable_file(fmt: str) -> None:
    """Chunks emitted along the way concatenate to one file with the input's duration and level."""
    chunks = encode_chunked(fmt, sine())
    if fmt in WHOLE_FORMATS:  # its header needs the total length: the whole file comes at finish()
        assert not any(chunks[:-1]) and chunks[-1]
    else:  # incremental: bytes come out while audio is still arriving, not all at finish()
        assert sum(1 for c in chunks[:-1] if c) >= len(chunks) // 2
    samples, rate = decode(fmt, b"".join(chunks))
    assert rate == DECODED_RATE[fmt]
    duration = len(samples) / rate
    assert SECONDS - 0.001 <= duration <= SECONDS + SLACK_S[fmt] + 0.001, duration
    assert rms(samples) > 0.1  # the tone's RMS is 0.21; silence or garbage would not reach this


@pytest.mark.parametrize(("fmt", "magic"), [("wav", b"RIFF"), ("flac", b"fLaC"), ("mp3", b"ID3")])
def test_one_container_header_per_response(fmt: str, magic: bytes) -> None:
    """A stream carries one container header, not one per chunk."""
    assert b"".join(encode_chunked(fmt, sine())).count(magic) == 1


def test_opus_is_one_ogg_stream() -> None:
    """Ogg Opus output opens exactly one logical stream (one beginning-of-stream page) and ends it once."""
    data = b"".join(encode_chunked("opus", sine()))
    assert data.startswith(b"OggS")
    flags = [data[i + 5] for i in range(len(data)) if data.startswith(b"OggS", i)]
    assert sum(1 for f in flags if f & 0x02) == 1
    assert sum(1 for f in flags if f & 0x04) == 1
    assert b"OpusHead" in data


def test_wav_header_has_unknown_sizes_and_plays() -> None:
    """The WAV header marks its sizes unknown (0xFFFFFFFF) and readers still take the whole stream."""
    data = b"".join(encode_chunked("wav", sine()))
    riff, riff_size, wave = struct.unpack("<4sI4s", data[:12])
    assert (riff, riff_size, wave) == (b"RIFF", 0xFFFFFFFF, b"WAVE")
    _, _, audio_format, channels, rate, _, _, bits = struct.unpack("<4sIHHIIHH", data[12:36])
    assert (audio_format, channels, rate, bits) == (1, 1, RATE, 16)
    assert data[36:44] == b"data" + struct.pack("<I", 0xFFFFFFFF)
    samples, read_rate = sf.read(io.BytesIO(data), dtype="float32")
    assert read_rate == RATE
    assert len(samples) == int(SECONDS * RATE)


def test_pcm_is_24khz_s16le_and_keeps_the_pitch() -> None:
    """pcm from a 22.05 kHz engine is resampled to 24 kHz s16le mono, with the tone at the same pitch."""
    data = b"".join(encode_chunked("pcm", sine()))
    assert len(data) % 2 == 0
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    assert abs(len(samples) - SECONDS * PCM_SAMPLE_RATE) <= 2
    spectrum = np.abs(np.fft.rfft(samples))
    peak_hz = np.argmax(spectrum) * PCM_SAMPLE_RATE / len(samples)
    assert abs(peak_hz - 440.0) < 2.0
    assert rms(samples) > 0.1


def test_pcm_at_24khz_is_passed_through_exactly() -> None:
    """A 24 kHz engine's samples become s16le without resampling; out-of-range values clip."""
    encoder = AudioEncoder("pcm", PCM_SAMPLE_RATE)
    data = (
        encoder.encode(np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0], dtype=np.float32)) + encoder.finish()
    )
    assert np.frombuffer(data, dtype="<i2").tolist() == [0, 16384, -16384, 32767, -32767, 32767, -32767]


def test_opus_from_a_24khz_engine_is_48khz() -> None:
    """Opus is always encoded at 48 kHz."""
    samples, rate = decode("opus", b"".join(encode_chunked("opus", sine(rate=24000), rate=24000)))
    assert rate == 48000
    assert abs(len(samples) / rate - SECONDS) <= 0.02


def test_empty_wav_is_a_header() -> None:
    """With no audio at all the response is still a valid (empty) WAV file."""
    data = AudioEncoder("wav", RATE).finish()
    assert len(data) == 44
    samples, _ = sf.read(io.BytesIO(data))
    assert len(samples) == 0


def test_bad_format_and_use_after_finish() -> None:
    """An unknown format names the valid ones; encode after finish is a programming error."""
    with pytest.raises(ValueError, match="wav, pcm, flac, mp3, opus, aac"):
        AudioEncoder("ogg", RATE)
    encoder = AudioEncoder("flac", RATE)
    encoder.finish()
    assert encoder.finish() == b""
    with pytest.raises(RuntimeError):
        encoder.encode(sine(0.1))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_close_abandons_a_stream(fmt: str) -> None:
    """close() releases an unfinished encoder; nothing more comes out of it."""
    encoder = AudioEncoder(fmt, RATE)
    encoder.encode(sine(0.5))
    encoder.close()
    encoder.close()
    assert encoder.finish() == b""


# libsndfile reads these (not AAC); pcm is read as headerless 16-bit at 24 kHz.
SOUNDFILE_FORMATS = {
    "wav": {},
    "flac": {},
    "mp3": {},
    "opus": {},
    "pcm": {"format": "RAW", "subtype": "PCM_16"},
}


@pytest.mark.parametrize("fmt", list(SOUNDFILE_FORMATS))
def test_soundfile_reads_every_format_it_supports_with_the_right_duration(fmt: str) -> None:
    """libsndfile (soundfile) gets the true duration from the header and reads all the samples."""
    data = b"".join(encode_chunked(fmt, sine()))
    extra = SOUNDFILE_FORMATS[fmt]
    if extra:
        extra = {**extra, "samplerate": PCM_SAMPLE_RATE, "channels": 1}
    if fmt in ("flac", "wav"):
        info = sf.info(io.BytesIO(data))
        assert info.frames == int(SECONDS * RATE) and abs(info.duration - SECONDS) < 0.001, info
    samples, rate = sf.read(io.BytesIO(data), dtype="float32", **extra)
    assert rate == DECODED_RATE[fmt]
    assert SECONDS - 0.001 <= len(samples) / rate <= SECONDS + SLACK_S[fmt] + 0.001, len(samples) / rate
    assert rms(samples) > 0.1


def test_flac_header_carries_the_total_sample_count() -> None:
    """STREAMINFO's 36-bit total-samples field is set (0 means unknown and makes readers guess)."""
    data = b"".join(encode_chunked("flac", sine()))
    assert data[:4] == b"fLaC"
    streaminfo = data[8:42]  # after the marker and the 4-byte metadata block header
    total = int.from_bytes(streaminfo[13:18], "big") & 0xFFFFFFFFF
    assert total == int(SECONDS * RATE)
    with av.open(io.BytesIO(data)) as container:
        assert abs(container.duration / 1_000_000 - SECONDS) < 0.01
