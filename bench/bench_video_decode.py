"""Benchmark video clip decoding: seeking to the clip against decoding from the start of the file.

Usage:
    .venv/bin/python bench/bench_video_decode.py [--clips 12] [--frames 16] [--stride 4] [--videos DIR]

Single process, ``torch.set_num_threads(1)`` and single-threaded decoders, so the figures are per core (a data-loader
worker's throughput). For each clip file, ``--clips`` training starts are drawn as :class:`VideoDataset` draws them
(uniform over valid starts, fixed seed) and each clip is read three ways, interleaved:

- seek: the keyframe seek the loader used to do, kept here as :func:`decode_seeking` to measure it (demux once for
  the timestamps and keyframes, seek to the last keyframe at or before the clip, decode forward, frames identified by
  pts; where that cannot be trusted, the loader's fallback: decode from the start);
- start: :func:`maskfeat.data.decode.decode_clip` (probe, then decode from frame 0 up to the clip's last frame: what
  the loader does since the seek was measured not to pay on Kinetics-like files);
- whole: decode the whole file with plain PyAV, ``frame.to_ndarray("rgb24")`` every frame, then index (the naive
  loader, as torchvision's ``read_video`` does it).

``--gop N`` first re-encodes the clips (libx264, a keyframe every N frames) to show what seeking gains when keyframes
are dense; the shared clips have 1-4 keyframes each, so most 16x4 clips start in the first GOP.

``--kinetics N`` instead writes N Kinetics-like files with PyAV (10 s at 30 fps, 340x256, libx264 with a keyframe every
250 frames, moving textured content) and times those: the case that decides whether the keyframe seek pays.

Prints a table per file (clips/s and mean ms per clip) and one summary line with the seek/start and seek/whole ratios,
plus the cost of the training transform (16 x 224 x 224 crop, flip, normalise) for scale.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing

from av.video.reformatter import VideoReformatter  # noqa: E402

from maskfeat.data.clips import clip_indices, random_clip_start  # noqa: E402
from maskfeat.data.decode import TORCHCODEC_CONTAINERS, decode_clip, probe_video, torchcodec_available  # noqa: E402
from maskfeat.data.sources import VIDEO_EXTENSIONS  # noqa: E402
from maskfeat.data.video_transforms import VideoTrainTransform  # noqa: E402

DEFAULT_VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"


def decode_whole(path: str, indices: np.ndarray) -> torch.Tensor:
    """The naive baseline: every frame decoded and converted, then the clip's frames picked."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    return torch.from_numpy(np.stack([frames[i] for i in indices]))


def _seek_and_decode(path: str, pts: list[int], key_pts: int, indices: np.ndarray) -> torch.Tensor | None:
    """Frames at ``indices`` after a seek to ``key_pts``, identified by pts; None if any is not found."""
    ordinal_of = {p: i for i, p in enumerate(pts)}
    need, last = set(indices.tolist()), int(indices.max())
    got: dict[int, np.ndarray] = {}
    reformatter = VideoReformatter()
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        if key_pts != pts[0]:
            container.seek(key_pts, stream=stream, backward=True, any_frame=False)
        previous = -1
        for frame in container.decode(stream):
            ordinal = ordinal_of.get(frame.pts, -1)
            if ordinal <= previous:  # output pts out of packet order (packed B-frames): not trustworthy
                return None
            previous = ordinal
            if ordinal in need:
                got[ordinal] = reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
            if ordinal >= last:
                break
    if len(got) < len(need):
        return None
    return torch.from_numpy(np.stack([got[i] for i in indices.tolist()]))


def decode_seeking(path: str, num_frames: int, stride: int, start: int) -> torch.Tensor:
    """The removed keyframe seek, for measuring it: a demux pass (as the loader's probe) for the timestamps and
    keyframes, a seek to the last keyframe at or before the clip's first frame, decoding forward; in an AVI, where
    timestamps are missing or repeated, or where the frames after the seek do not match them, decode from the start
    (the loader's fallback)."""
    with av.open(path) as container:
        packets = [(p.pts, bool(p.is_keyframe)) for p in container.demux(video=0) if p.size]
    indices = clip_indices(len(packets), num_frames, stride, start)
    stamps = [p for p, _ in packets]
    timestamped = path.lower().endswith(TORCHCODEC_CONTAINERS)  # AVI: made-up pts, the loader counted frames there
    if timestamped and None not in stamps and len(set(stamps)) == len(stamps):
        pts = sorted(stamps)
        first = pts[int(indices.min())]
        key_pts = max((p for p, key in packets if key and p <= first), default=pts[0])
        frames = _seek_and_decode(path, pts, key_pts, indices)
        if frames is not None:
            return frames
    return decode_clip(path, num_frames, stride, start)


def reencode(src: Path, dst: Path, gop: int) -> Path:
    """Re-encodes a clip with libx264 and a keyframe every ``gop`` frames (same size and rate)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        in_stream = inp.streams.video[0]
        stream = out.add_stream("libx264", rate=in_stream.average_rate or 30)
        stream.width = in_stream.codec_context.width
        stream.height = in_stream.codec_context.height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"preset": "veryfast", "crf": "23", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        for decoded in inp.decode(in_stream):
            frame = av.VideoFrame.from_ndarray(decoded.to_ndarray(format="rgb24"), format="rgb24")  # fresh timestamps
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return dst


def write_kinetics_like(dst: Path, seed: int, seconds: int = 10, fps: int = 30, gop: int = 250) -> Path:
    """Writes a Kinetics-like file: ``seconds`` at ``fps``, 340x256, libx264 with a keyframe every ``gop`` frames.

    The content is a textured image panning and brightening over time plus a little noise, so that the encoder
    produces real P/B-frames (not near-empty ones) and decoding costs about what it costs on camera footage.
    """
    rng = np.random.default_rng(seed)
    height, width = 256, 340
    texture = rng.integers(0, 256, (height * 2, width * 2, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(texture[::4, ::4], 4, 0), 4, 1)  # 4x4 blocks: compressible, not flat
    with av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"preset": "veryfast", "crf": "23", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        for i in range(seconds * fps):
            y, x = (3 * i) % height, (2 * i) % width
            image = texture[y : y + height, x : x + width].astype(np.int16) + (i % 64) - 32
            image += rng.integers(-8, 9, image.shape, dtype=np.int16)
            frame = av.VideoFrame.from_ndarray(np.clip(image, 0, 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return dst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=Path, default=DEFAULT_VIDEOS, help="folder of clips (default: shared data)")
    parser.add_argument("--clips", type=int, default=12, help="clips per file")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--stride", type=int, default=4, help="frame stride")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gop", type=int, default=0, help="first re-encode the clips with a keyframe every GOP frames")
    parser.add_argument(
        "--kinetics", type=int, default=0, help="time N written Kinetics-like files (10 s, 30 fps, GOP 250) instead"
    )
    args = parser.parse_args()

    files = (
        sorted(p for p in args.videos.glob("*") if p.suffix.lower() in VIDEO_EXTENSIONS) if args.videos.is_dir() else []
    )
    if args.kinetics > 0:
        tmp = Path(tempfile.mkdtemp(prefix="bench_video_"))
        files = [write_kinetics_like(tmp / f"kinetics_like_{i}.mp4", args.seed + i) for i in range(args.kinetics)]
    if not files:
        print(f"no video files in {args.videos}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    if args.gop > 0:
        tmp = Path(tempfile.mkdtemp(prefix="bench_video_"))
        files = [reencode(p, tmp / f"{p.stem}_gop{args.gop}.mp4", args.gop) for p in files]
    logging.getLogger("maskfeat").setLevel(logging.ERROR)  # the 32-frame clip's "stride lowered" notice

    T, stride = args.frames, args.stride
    generator = torch.Generator().manual_seed(args.seed)
    codec = torchcodec_available()  # the optional backend, timed beside PyAV when it can decode here
    totals = {"seek": [], "start": [], "whole": [], "torchcodec": [], "start_timestamped": []}
    print(f"{T}x{stride} clips, {args.clips} random starts per file, 1 thread; mean ms per clip (clips/s)")
    print(f"{'file':<28} {'frames':>6} {'keys':>4} {'seek':>16} {'from start':>16} {'whole file':>16} {'ratio':>6}")
    for path in files:
        info = probe_video(path)
        times = {"seek": [], "start": [], "whole": [], "torchcodec": []}
        use_codec = codec and path.suffix.lower() in TORCHCODEC_CONTAINERS  # where backend="auto" would use it
        for _ in range(args.clips):
            start = random_clip_start(info.num_frames, T, stride, generator)
            indices = clip_indices(info.num_frames, T, stride, start)
            t0 = time.perf_counter()
            a = decode_seeking(str(path), T, stride, start)
            t1 = time.perf_counter()
            b = decode_clip(path, T, stride, start)
            t2 = time.perf_counter()
            c = decode_whole(str(path), indices)
            t3 = time.perf_counter()
            if not (torch.equal(a, b) and torch.equal(a, c)):
                print(f"MISMATCH between decoding modes in {path} at start {start}", file=sys.stderr)
                return 1
            times["seek"].append(t1 - t0)
            times["start"].append(t2 - t1)
            times["whole"].append(t3 - t2)
            if use_codec:
                t4 = time.perf_counter()
                d = decode_clip(path, T, stride, start, backend="torchcodec")
                times["torchcodec"].append(time.perf_counter() - t4)
                totals["start_timestamped"].append(t2 - t1)  # PyAV on the same clips
                if not torch.equal(a, d):
                    print(f"MISMATCH between PyAV and torchcodec in {path} at start {start}", file=sys.stderr)
                    return 1
        cells = []
        for key in ("seek", "start", "whole", "torchcodec")[: 4 if use_codec else 3]:
            mean = statistics.fmean(times[key])
            totals[key].extend(times[key])
            cells.append(f"{mean * 1e3:7.1f} ({1 / mean:5.1f}/s)")
        ratio = statistics.fmean(times["start"]) / statistics.fmean(times["seek"])
        row = f"{path.name:<28} {info.num_frames:>6} {info.num_keyframes:>4}"
        extra = f" torchcodec {cells[3]}" if use_codec else ""
        print(f"{row} {cells[0]:>16} {cells[1]:>16} {cells[2]:>16} {ratio:5.2f}x{extra}")

    # Transform cost, for scale: one training augmentation of a decoded clip.
    clip = decode_clip(files[0], T, stride, 0)
    transform = VideoTrainTransform(224)
    transform(clip)
    t0 = time.perf_counter()
    for _ in range(5):
        transform(clip)
    transform_ms = (time.perf_counter() - t0) / 5 * 1e3

    seek, start, whole = (statistics.fmean(totals[k]) for k in ("seek", "start", "whole"))
    rates = f"seek {1 / seek:.1f}, from-start {1 / start:.1f}, whole-file {1 / whole:.1f}"
    ratios = f"seek is {start / seek:.2f}x from-start and {whole / seek:.2f}x whole-file"
    print(
        f"SUMMARY {T}x{stride} clips/s per core over {len(files)} files: {rates}; {ratios} "
        f"(+{transform_ms:.0f} ms/clip for the 224px train transform)"
    )
    if codec:
        tc = statistics.fmean(totals["torchcodec"])
        ratio = tc / statistics.fmean(totals["start_timestamped"])
        print(f"SUMMARY torchcodec (exact seek mode) on the timestamped containers: {1 / tc:.1f} clips/s per core, "
              f"{ratio:.2f}x the time of PyAV (from the start) on the same clips, identical frames")  # fmt: skip
    else:
        print("torchcodec: not usable here (not installed, or without its FFmpeg libraries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
