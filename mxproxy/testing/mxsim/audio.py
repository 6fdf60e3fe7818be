"""The audio of simulated mail: mono 16-bit WAV files made of tones, built in memory.

The demo's voicemails are tunes (:func:`wav_tones`); a voicemail left through the control API
or a call recording gets :func:`beeps` for its duration. Both are deterministic, so a download
can be compared byte for byte with what the simulator holds.
"""

from __future__ import annotations

import array
import functools
import io
import math
import wave
from collections.abc import Sequence

SAMPLE_RATE = 8000
MAX_BEEP_SECONDS = 300
"""Generated audio is at most this long (4.8 MB), whatever duration a mail claims: a
recording of a call held open for a day on a test clock must not take a gigabyte."""


def wav_tones(tones: Sequence[tuple[float, float]], rate: int = SAMPLE_RATE) -> bytes:
    """A mono 16-bit WAV of ``(frequency Hz, seconds)`` tones; frequency 0 is silence."""
    return _wav(_samples(tuple(tones), rate), rate)


def beeps(seconds: int) -> bytes:
    """``seconds`` (at most :data:`MAX_BEEP_SECONDS`) of a beep a second: half a second of
    440 Hz, half a second of silence."""
    return _wav(_samples(((440.0, 0.5), (0.0, 0.5)), SAMPLE_RATE)
                * max(0, min(seconds, MAX_BEEP_SECONDS)), SAMPLE_RATE)


@functools.cache
def _samples(tones: tuple[tuple[float, float], ...], rate: int) -> bytes:
    samples = array.array("h")
    ramp = rate // 100  # 10 ms fade in and out, so tones do not click
    for frequency, seconds in tones:
        count = int(seconds * rate)
        for n in range(count):
            envelope = min(1.0, n / ramp, (count - n) / ramp)
            samples.append(int(9000 * envelope * math.sin(2 * math.pi * frequency * n / rate)))
    if samples.itemsize != 2:
        raise RuntimeError("array('h') is not 16-bit on this platform")
    return samples.tobytes()  # WAV is little-endian, like every CI machine


def _wav(frames: bytes, rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(frames)
    return buffer.getvalue()
