"""The source's sound in the output video: copied, re-encoded, or left out with a reason.

Each sound stream of the source file is

- copied packet by packet, not re-encoded, where the output's container takes
  its codec (and, for ``.mp4`` and ``.webm``, where browsers play it: AAC, MP3,
  Opus, FLAC in MP4; Opus, Vorbis in WebM);
- otherwise decoded and re-encoded with the output type's sound encoder (AAC
  for ``.mp4``, ``.mov`` and ``.mkv``, Opus for ``.webm``, MP3 for ``.avi``);
- left out, with one line saying why, only when FFmpeg cannot decode it.

Packets keep their timestamps, so sound and pictures stay in step as in the
source. The writer thread calls :meth:`SoundTracks.pump` with each video
frame's time, so the sound is written up to the pictures and no further (the
container's interleaving orders the packets), and :meth:`SoundTracks.finish`
at the end: a run that stopped early (``MAX_FRAMES``, Ctrl-C) ends the sound
where the pictures end, since nothing was written past them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .video_av import av_error

__all__ = ["SoundTracks"]

#: The usual layout for a number of channels.
_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


@dataclass
class _Track:
    source: object  # the input stream
    out: object  # the output stream
    copy: bool
    how: str  # "aac copied", "pcm_s16le re-encoded as aac"
    damaged: int = 0


def _encoder_rate(codec, rate: int) -> int:
    rates = codec.audio_rates
    if not rates or rate in rates:
        return rate
    return 48000 if 48000 in rates else max(rates)


class SoundTracks:
    """The sound streams of ``source`` written into ``output`` (see the module's text).

    Args:
        av: The PyAV module.
        source: The source video file (opened again here: its sound is read
            beside the pictures, which another thread decodes).
        output: The output container (before its header is written).
        copyable: Codecs copied as they are; ``None``: whatever the container takes.
        encoder: The sound encoder for the rest (``aac``, ``libopus``, ``libmp3lame``).
        suffix: The output's suffix, for the messages.

    Attributes:
        tracks: The streams written, with how.
        notes: One line per stream left out, saying why.
    """

    def __init__(self, av, source: Path, output, copyable: frozenset[str] | None, encoder: str, suffix: str) -> None:
        self._av = av
        self._output = output
        self.tracks: dict[int, _Track] = {}
        self.notes: list[str] = []
        self._input = av.open(str(source), metadata_errors="ignore")
        takes = copyable if copyable is not None else output.supported_codecs
        for s in self._input.streams.audio:
            name = s.codec_context.codec.canonical_name if s.codec_context.codec else s.codec_context.name
            if name in takes:
                out = output.add_stream_from_template(s)
                self.tracks[s.index] = _Track(s, out, True, f"{name} copied")
                continue
            try:
                out = self._encoder_stream(s, encoder)
            except (av.error.FFmpegError, ValueError) as e:
                self.notes.append(
                    f"sound stream {s.index} ({name}) left out: {suffix} cannot hold it and it cannot be "
                    f"re-encoded ({av_error(e)})"
                )
                continue
            self.tracks[s.index] = _Track(
                s, out, False, f"{name} re-encoded as {out.codec_context.codec.canonical_name}"
            )
        self._packets = self._input.demux(*[t.source for t in self.tracks.values()]) if self.tracks else iter(())
        self._held = None  # a packet read that is not due yet
        self._done = not self.tracks

    def _encoder_stream(self, s, encoder: str):
        av = self._av
        if s.codec_context.codec is None or not s.codec_context.codec.is_decoder:
            raise ValueError("FFmpeg has no decoder for it")
        codec = av.codec.Codec(encoder, "w")
        channels = s.codec_context.channels or 2
        out = self._output.add_stream(encoder, rate=_encoder_rate(codec, s.codec_context.sample_rate or 48000))
        layout = s.codec_context.layout.name
        if channels > 8 or (channels > 2 and encoder == "libmp3lame"):
            layout = "stereo"  # more than the encoder takes: a stereo downmix
        elif layout.endswith("channels"):
            # Channels in no stated order ("1 channels": PCM in Matroska), which
            # encoders refuse: the usual layout for that many.
            layout = _LAYOUTS[channels]
        out.layout = layout
        out.bit_rate = 96000 * min(channels, 2) + 64000 * max(0, min(channels, 8) - 2)
        if s.metadata.get("language"):
            out.metadata["language"] = s.metadata["language"]
        return out

    def _time(self, packet) -> float | None:
        ts = packet.pts if packet.pts is not None else packet.dts
        return None if ts is None else float(ts * packet.time_base)

    def pump(self, until: float | None) -> None:
        """Write the sound up to ``until`` seconds (``None``: all of it)."""
        while not self._done:
            packet = self._held
            self._held = None
            if packet is None:
                try:
                    packet = next(self._packets)
                except StopIteration:
                    self._done = True
                    return
                except self._av.error.FFmpegError:
                    self._done = True  # a file that ends early: the sound ends there too
                    return
            t = self._time(packet)
            if t is None and packet.size == 0:
                continue  # the demuxer's end-of-stream marker; encoders are flushed in finish
            if until is not None and t is not None and t >= until:
                self._held = packet
                return
            self._write(packet)

    def _write(self, packet, end: float | None = None) -> None:
        track = self.tracks[packet.stream.index]
        if track.copy:
            packet.stream = track.out
            self._output.mux(packet)
            return
        try:
            frames = packet.decode()
        except self._av.error.FFmpegError:
            track.damaged += 1
            return
        for frame in frames:
            if end is not None and frame.pts is not None and float(frame.pts * frame.time_base) >= end:
                continue
            self._output.mux(track.out.encode(frame))

    def finish(self, end: float | None) -> None:
        """Write the rest of the sound (``end``: only what starts before ``end``
        seconds, the pictures' end after an early stop), flush the encoders and
        close the source."""
        past: set[int] = set()  # streams whose packets have reached ``end``
        try:
            while not self._done and len(past) < len(self.tracks):
                packet = self._held
                self._held = None
                if packet is None:
                    try:
                        packet = next(self._packets)
                    except (StopIteration, self._av.error.FFmpegError):
                        break
                t = self._time(packet)
                if t is None and packet.size == 0:
                    continue
                if end is not None and t is not None and t >= end:
                    past.add(packet.stream.index)  # a stream's packets come in time order: its rest is later
                    continue
                self._write(packet, end)
            self._done = True
            for track in self.tracks.values():
                if not track.copy:
                    self._output.mux(track.out.encode(None))
        finally:
            self.close()

    def describe(self) -> str:
        """``aac copied``, ``pcm_s16le re-encoded as aac, ...`` (empty without sound)."""
        return ", ".join(t.how for t in self.tracks.values())

    def close(self) -> None:
        c, self._input = self._input, None
        if c is not None:
            c.close()
