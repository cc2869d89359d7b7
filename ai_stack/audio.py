"""Streaming audio encoding for /v1/audio/speech: one continuous file per response, sent as it is made.

FLAC is the exception: its STREAMINFO header carries the total sample count, which readers (libsndfile,
browsers) need for the duration and which is known only at the end, so a FLAC file is assembled whole in a
seekable buffer and sent when synthesis ends. Every other format streams.
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt

FORMATS: dict[str, str] = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
}

PCM_SAMPLE_RATE = 24000  # OpenAI's raw pcm is 24 kHz s16le mono, whatever rate the engine has

# Formats whose header needs the total length: assembled whole, then sent (see the module docstring).
WHOLE_FORMATS: frozenset[str] = frozenset({"flac"})

# format -> (PyAV container, codec, sample format fed to the codec, bit rate or 0 for the codec's default)
_AV_FORMATS: dict[str, tuple[str, str, str, int]] = {
    "flac": ("flac", "flac", "s16", 0),
    "mp3": ("mp3", "libmp3lame", "fltp", 64000),
    "opus": ("ogg", "libopus", "flt", 32000),
    "aac": ("adts", "aac", "fltp", 64000),
}
_OPUS_SAMPLE_RATE = 48000  # Ogg Opus is always decoded at 48 kHz; feeding it 48 kHz avoids a second resampler


def _to_s16le(samples: npt.NDArray[np.float32]) -> bytes:
    """Float samples in [-1, 1] as signed 16-bit little-endian bytes."""
    scaled = np.rint(np.clip(samples, -1.0, 1.0) * 32767.0)
    return bytes(scaled.astype("<i2").tobytes())


def wav_header(sample_rate: int) -> bytes:
    """A 16-bit mono PCM WAV header whose sizes say 'unknown' (0xFFFFFFFF), for a stream of unknown length."""
    unknown = 0xFFFFFFFF
    fmt_chunk = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return (
        struct.pack("<4sI4s", b"RIFF", unknown, b"WAVE") + fmt_chunk + struct.pack("<4sI", b"data", unknown)
    )


class _Sink:
    """A write-only, non-seekable file for PyAV; muxers then never seek back over bytes already sent."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        """Keep bytes until the next drain."""
        self._buffer += data
        return len(data)

    def drain(self) -> bytes:
        """Return and forget everything written so far."""
        out = bytes(self._buffer)
        self._buffer.clear()
        return out


class _Resampler:
    """Streaming mono float32 resampler (soxr HQ); keeps its filter state across chunks."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        import soxr

        self._stream: Any = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")

    def push(self, samples: npt.NDArray[np.float32], last: bool = False) -> npt.NDArray[np.float32]:
        """Resample one chunk; last=True also returns the filter's tail."""
        out = self._stream.resample_chunk(samples, last=last)
        return np.asarray(out, dtype=np.float32).reshape(-1)


def _av_rate(codec_name: str, fmt: str, sample_rate: int) -> int:
    """The rate to encode at: the engine's own when the codec takes it, else the nearest rate above it."""
    if fmt == "opus":
        return _OPUS_SAMPLE_RATE
    import av

    rates = av.codec.Codec(codec_name, "w").audio_rates
    if not rates or sample_rate in rates:
        return sample_rate
    higher = [r for r in rates if r >= sample_rate]
    return int(min(higher) if higher else max(rates))


class AudioEncoder:
    """Encodes float32 mono chunks into one continuous file of a response format, emitted incrementally."""

    def __init__(self, fmt: str, sample_rate: int) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown audio format {fmt!r}; expected one of: {', '.join(FORMATS)}")
        if sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {sample_rate}")
        self.format = fmt
        self.content_type = FORMATS[fmt]
        self.sample_rate = sample_rate
        self.output_rate = sample_rate
        self._finished = False
        self._header_sent = False
        self._resampler: _Resampler | None = None
        self._container: Any = None
        self._stream: Any = None
        self.whole = fmt in WHOLE_FORMATS  # encode() returns nothing; finish() returns the whole file
        self._sink = _Sink()
        self._file = io.BytesIO()  # the seekable file a whole format is written to
        self._pts = 0
        if fmt == "pcm":
            self.output_rate = PCM_SAMPLE_RATE
        elif fmt in _AV_FORMATS:
            self._open_av(fmt)
        if self.output_rate != sample_rate:
            self._resampler = _Resampler(sample_rate, self.output_rate)

    def _open_av(self, fmt: str) -> None:
        """Open the PyAV muxer and encoder writing into the sink."""
        import av

        container_format, codec_name, sample_format, bit_rate = _AV_FORMATS[fmt]
        self.output_rate = _av_rate(codec_name, fmt, self.sample_rate)
        # flush_packets: hand each packet to the sink at once instead of filling a 32 KB buffer first;
        # page_duration: Ogg pages of 100 ms rather than 1 s, so opus audio is not held back that long.
        options = {"flush_packets": "1"}
        if container_format == "ogg":
            options["page_duration"] = "100000"
        target: Any = (
            self._file if self.whole else self._sink
        )  # the muxer rewrites a seekable header at close
        self._container = av.open(target, mode="w", format=container_format, options=options)
        stream = self._container.add_stream(codec_name, rate=self.output_rate, layout="mono")
        stream.format = sample_format
        if bit_rate:
            stream.bit_rate = bit_rate
        self._stream = stream
        # Write the container header now: it leaves with the first chunk, and an empty input is still a file.
        self._container.start_encoding()

    def encode(self, samples: npt.NDArray[Any]) -> bytes:
        """Encode a chunk of float32 mono samples in [-1, 1]; returns the bytes ready so far (maybe none)."""
        if self._finished:
            raise RuntimeError("encode() after finish()")
        chunk = np.clip(np.asarray(samples, dtype=np.float32).reshape(-1), -1.0, 1.0)
        if self._resampler is not None:
            chunk = self._resampler.push(chunk)
        return self._write(chunk)

    def finish(self) -> bytes:
        """Flush the resampler and encoder and close the file; returns the last bytes."""
        if self._finished:
            return b""
        tail = b""
        if self._resampler is not None:
            tail = self._write(self._resampler.push(np.zeros(0, dtype=np.float32), last=True))
        self._finished = True
        if self._container is None:
            return tail + self._header()
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return tail + (self._file.getvalue() if self.whole else self._sink.drain())

    def close(self) -> None:
        """Release the encoder without finishing the file (the response was abandoned)."""
        if self._finished:
            return
        self._finished = True
        if self._container is not None:
            self._container.close()
        self._sink.drain()
        self._file = io.BytesIO()

    def _header(self) -> bytes:
        """The WAV header the first time it is asked for, else nothing."""
        if self._header_sent or self.format != "wav":
            return b""
        self._header_sent = True
        return wav_header(self.output_rate)

    def _write(self, chunk: npt.NDArray[np.float32]) -> bytes:
        """Encode samples already at the output rate."""
        if self._container is None:
            return self._header() + (_to_s16le(chunk) if chunk.size else b"")
        if chunk.size:
            import av

            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = self.output_rate
            frame.time_base = Fraction(1, self.output_rate)
            frame.pts = self._pts
            self._pts += chunk.size
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        return self._sink.drain()
