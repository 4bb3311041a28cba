"""Benchmark: ingest pipeline frames/s vs a bare PyAV decode loop, 2 workers vs 1, peak RSS for 1 vs 10 minutes.

Makes its own synthetic recordings (head-motion scene, small resolution), runs every figure in this one process's
run, on the same files, on the local multi-processing runner. Peak RSS is sampled (psutil, every 50 ms) over the
whole process tree the job starts: Beam workers, the decoding helper and its per-window children.
Usage: python benchmarks/ingest.py [--quick | --full]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

# this file is named like the `ingest` package: keep its folder off the import path so the package is found
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE.parent)]

import av  # noqa: E402
import psutil  # noqa: E402

from alliance.settings import RunnerSettings, Settings  # noqa: E402
from ingest.clips import ClipConfig  # noqa: E402
from ingest.synth import VideoSpec, write_video  # noqa: E402


class PeakRss:
    """Samples the RSS of this process and every descendant; the peak of the sum and of the largest single one."""

    def __init__(self, every_s: float = 0.05):
        self.every_s, self.total, self.single = every_s, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self.stop.is_set():
            sizes = []
            for process in [me, *me.children(recursive=True)]:
                try:
                    sizes.append(process.memory_info().rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.total = max(self.total, sum(sizes))
            self.single = max(self.single, max(sizes[1:], default=0))  # the largest worker or decoding child
            self.stop.wait(self.every_s)

    def __enter__(self) -> "PeakRss":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def bare_decode(path: Path) -> tuple[int, float]:
    """The baseline: PyAV decoding every frame to an RGB array, nothing else."""
    started = time.perf_counter()
    frames = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            frames += 1
    return frames, time.perf_counter() - started


def pipeline(path: Path, workers: int, home: Path, run: str, config: ClipConfig) -> tuple[float, int, int, int]:
    """(wall seconds, clips, peak tree RSS, peak single-process RSS) of one ingest job over the folder of `path`."""
    from pipelines.ingest import run_ingest

    settings = Settings(home=home, runner=RunnerSettings(direct_num_workers=workers))
    with PeakRss() as rss:
        started = time.perf_counter()
        summary = run_ingest(settings, str(path.parent), run, config=config, overwrite=True, record=False)
        wall = time.perf_counter() - started
    return wall, summary.clips_written, rss.total, rss.single


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="320x240 at 10 fps (default)")
    size.add_argument("--full", action="store_true", help="640x480 at 30 fps")
    args = parser.parse_args()
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    width, height, fps, short_side = (640, 480, 30, 256) if args.full else (320, 240, 10, 128)
    config = ClipConfig(clip_s=4.0, short_side=short_side)
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    recordings = {}
    for minutes in (1, 10):
        started = time.perf_counter()
        path = work / f"m{minutes}" / f"walk-{minutes}min.mp4"
        write_video(path, VideoSpec(width=width, height=height, fps=fps, frames=minutes * 60 * fps,
                                    scene="head_motion", gop=2 * fps))
        recordings[minutes] = path
        print(f"made {path.name}: {width}x{height} at {fps} fps, {path.stat().st_size / 1e6:.1f} MB "
              f"in {time.perf_counter() - started:.1f} s")
    tiny = write_video(work / "tiny" / "tiny.mp4", VideoSpec(width=width, height=height, fps=fps, frames=4 * fps))

    frames, seconds = bare_decode(recordings[10])
    bare_fps = frames / seconds
    print(f"\nbare PyAV decode loop, 10 min: {frames} frames in {seconds:.1f} s = {bare_fps:.0f} frames/s")
    media_fps = media_work(recordings[1], config)
    print(f"media work alone (decode window + scale + encode + stats, in process, no Beam, no child), 1 min: "
          f"{media_fps:.0f} frames/s = {media_fps / bare_fps:.2f}x bare decode")

    overhead, _, _, _ = pipeline(tiny, 1, work / "home", "tiny", config)
    print(f"pipeline fixed cost (a 4 s recording, 1 worker): {overhead:.1f} s (Beam start, planning, tables)")
    walls, peaks = {}, {}
    for workers in (1, 2):
        wall, clips, total, single = pipeline(recordings[10], workers, work / "home", f"w{workers}", config)
        walls[workers] = wall
        if workers == 1:
            peaks[10] = (total, single)
        print(f"pipeline, 10 min, {workers} worker(s): {clips} clips in {wall:.1f} s = {frames / wall:.0f} frames/s "
              f"end to end, {frames / max(1e-9, wall - overhead):.0f} frames/s without the fixed cost")
    one, two = walls[1], walls[2]
    print(f"\npipeline / bare decode, 1 worker: {frames / one / bare_fps:.2f}x end to end, "
          f"{frames / max(1e-9, one - overhead) / bare_fps:.2f}x without the fixed cost (goal >= 0.7x)")
    print(f"2 workers vs 1: {one / two:.2f}x end to end, {(one - overhead) / max(1e-9, two - overhead):.2f}x "
          f"without the fixed cost (goal >= 1.7x; {psutil.cpu_count()} cores, load {psutil.getloadavg()[0]:.1f})")

    wall, clips, total, single = pipeline(recordings[1], 1, work / "home", "rss1", config)
    peaks[1] = (total, single)
    for minutes in (1, 10):
        print(f"peak RSS, {minutes:>2} min recording, 1 worker: process tree {peaks[minutes][0] / 2**20:.0f} MiB, "
              f"largest single process {peaks[minutes][1] / 2**20:.0f} MiB")
    print(f"peak RSS 10 min / 1 min: tree {peaks[10][0] / peaks[1][0]:.2f}x, largest process "
          f"{peaks[10][1] / peaks[1][1]:.2f}x (goal <= 1.2x)")


def media_work(path: Path, config: ClipConfig) -> float:
    """Frames/s of the pure functions over every window of a recording, one after the other in this process."""
    from ingest.clips import RecordingInfo, WindowTask, cut_window, plan_windows
    from ingest.probe import probe_in_process

    result = probe_in_process(str(path))
    rec = RecordingInfo("0" * 64, "bench", "bench", str(path), result.codec, result.width, result.height, 0)
    out = Path(tempfile.mkdtemp(prefix="bench-media-"))
    windows = plan_windows(result, config)
    started = time.perf_counter()
    for window in windows:
        cut_window(WindowTask(rec, str(path), window, config), out)
    return sum(w.frames for w in windows) / (time.perf_counter() - started)

if __name__ == "__main__":
    main()
