"""Predicting many files at the model's speed: decoding, resizing back, thresholding and
encoding run on a small thread pool while the model computes the next batch.

PIL's decoders and encoders, OpenCV's resize and torch's kernels release the GIL, so these
threads run in parallel with the model's own threads. The labels are computed exactly as
:func:`~segpipe.inference.predictor.full_resolution` computes them (the same kernels on
the same logits), so a mask is the same byte for byte whichever path wrote it.
"""

from __future__ import annotations

import collections
import dataclasses
import typing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from segpipe.config import Decode
from segpipe.data.images import read_image, read_image_reduced
from segpipe.errors import SegpipeError
from segpipe.files import atomic_write
from segpipe.inference.predictor import Predictor
from segpipe.model.outputs import class_probabilities, foreground_probability, logits_to_labels

T = TypeVar("T")

DECODE_MODES: tuple[str, ...] = typing.get_args(Decode)
"""``exact``: every photo decoded at full size; ``reduced``: JPEGs decoded at 1/2, 1/4 or 1/8
scale where the model input stays covered (see :func:`~segpipe.data.images.read_image_reduced`)."""
IO_THREADS = 2
"""Threads that decode, resize back, threshold and encode beside the model (the count measured
best: BENCHMARKS.md)."""
MASK_PNG_LEVEL = 1
"""zlib level of the mask PNGs: level 1 encodes faster than PIL's default 6, for larger files
(BENCHMARKS.md); the pixels are the same."""


@dataclasses.dataclass(frozen=True)
class StreamSettings:
    """How a stream of files is predicted: ``batch_size`` images per forward pass, ``decode``
    (one of :data:`DECODE_MODES`), and ``threads`` beside the model (0: everything on the
    calling thread, one step after another). The callers check the values they take from
    the user (``segpipe predict``'s flags, ``evaluate.*`` in ``params.yaml``)."""

    batch_size: int
    decode: str = "exact"
    threads: int = IO_THREADS


@dataclasses.dataclass
class Prepared:
    """One input read and made ready for the model: its model input, its full (H, W), the
    (h, w) of the image inside the input's padding (None: no padding, see
    :meth:`~segpipe.inference.predictor.Predictor.prepare`), and what the caller needs beside the
    labels (the full-size photo for an overlay, the true mask for scoring), if anything."""

    tensor: torch.Tensor
    size: tuple[int, int]
    extra: Any = None
    valid: tuple[int, int] | None = None


@dataclasses.dataclass
class Outcome(Generic[T]):
    """What became of one input: its label map (H, W) uint8 and its :attr:`Prepared.extra`,
    or the error that stopped its reading (``labels`` None); and its class probabilities
    (C, H, W) float16 when the stream was asked for them."""

    item: T
    labels: np.ndarray | None
    extra: Any
    error: SegpipeError | None
    probabilities: np.ndarray | None = None


def read_prepared(
    predictor: Predictor, path: Path, *, decode: str, keep_photo: bool = False
) -> Prepared:
    """Read ``path`` and prepare it for ``predictor`` (``decode`` in :data:`DECODE_MODES`)."""
    if decode == "reduced":
        image, size = read_image_reduced(path, predictor.decode_size)
        photo = read_image(path) if keep_photo else None
    else:
        image = read_image(path)
        size, photo = image.shape[:2], image if keep_photo else None
    tensor, valid = predictor.prepare(image, tuple(size))
    return Prepared(tensor, tuple(size), photo, valid)


def resized_at(logits: torch.Tensor, index: int, size: tuple[int, int]) -> torch.Tensor:
    """The logits (1, C', H, W) of image ``index`` of a batch of logits (N, C', h, w), resized
    back bilinearly to ``size``: what every output at original resolution is made from."""
    return F.interpolate(logits[index : index + 1], size=size, mode="bilinear", align_corners=False)


def labels_at(
    logits: torch.Tensor, index: int, size: tuple[int, int], threshold: float
) -> np.ndarray:
    """The label map (H, W) uint8 of image ``index`` of a batch of logits (N, C', h, w),
    resized back bilinearly to ``size`` and thresholded (one channel) or argmax (several):
    the values :func:`~segpipe.inference.predictor.full_resolution` gives, without its
    int64 and float copies."""
    return _labels(resized_at(logits, index, size), threshold)


def _labels(resized: torch.Tensor, threshold: float) -> np.ndarray:
    return logits_to_labels(resized, threshold, dtype=torch.uint8)[0].cpu().numpy()


def probability_at(logits: torch.Tensor, index: int, size: tuple[int, int]) -> torch.Tensor:
    """The foreground probability (H, W) float32, on the CPU, of image ``index`` of a batch of
    logits, resized back as :func:`labels_at` resizes it."""
    return foreground_probability(resized_at(logits, index, size))[0].cpu()


def labels_and_probabilities_at(
    logits: torch.Tensor, index: int, size: tuple[int, int], threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """The label map of :func:`labels_at` and, from the same resized logits, the class
    probabilities (C, H, W) float16 (see :func:`~segpipe.model.outputs.class_probabilities`)."""
    resized = resized_at(logits, index, size)
    probabilities = class_probabilities(resized)[0].to(torch.float16).cpu().numpy()
    return _labels(resized, threshold), probabilities


def save_png(image: Image.Image, path: Path) -> None:
    """Write ``image`` as a PNG at :data:`MASK_PNG_LEVEL`, atomically.

    Raises:
        WriteFailed: naming ``path``, for a failed write (full disk, permissions).
    """
    try:
        atomic_write(path, lambda tmp: image.save(tmp, format="PNG", compress_level=MASK_PNG_LEVEL))
    except OSError as e:
        raise WriteFailed(path, e) from None


def save_mask(predictor: Predictor, labels: np.ndarray, path: Path) -> None:
    """Write ``labels`` as ``predictor.to_png`` draws it (see :func:`save_png`)."""
    save_png(predictor.to_png(labels), path)


def save_probabilities(path: Path, probabilities: np.ndarray, classes: list[str]) -> None:
    """Write one image's class probabilities as ``path`` (``.npz``, zlib-compressed):
    ``probabilities`` (C, H, W) float16 and ``classes`` (C,) their names, atomically
    (docs/inference.md, "Probabilities").

    Raises:
        WriteFailed: naming ``path``, for a failed write (full disk, permissions).
    """

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez_compressed(f, probabilities=probabilities, classes=np.array(classes))

    try:
        atomic_write(path, write)
    except OSError as e:
        raise WriteFailed(path, e) from None


class MaskStream:
    """Label maps for a sequence of inputs, in order, with the I/O on a thread pool.

    Args:
        predictor: the model.
        batch_size: images per forward pass.
        threads: pool threads; 0 runs everything on the calling thread, one step after
            another (the reference the pool is tested against).
        probability: give each input's foreground probability map instead of its labels.
        probabilities: also give each input's class probabilities (C, H, W) float16
            (:attr:`Outcome.probabilities`).
    """

    def __init__(
        self,
        predictor: Predictor,
        batch_size: int,
        *,
        threads: int = IO_THREADS,
        probability: bool = False,
        probabilities: bool = False,
    ) -> None:
        self.predictor = predictor
        self.batch_size = batch_size
        self.probability = probability
        self.probabilities = probabilities
        self.pool = ThreadPoolExecutor(threads, "segpipe-io") if threads > 0 else None
        self.writer = ThreadPoolExecutor(1, "segpipe-write") if threads > 0 else None
        self._writes: collections.deque[Future] = collections.deque()
        self._stopped = False
        self._written = 0

    def __enter__(self) -> MaskStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped = True  # on an error: start no further write
        for executor in (self.pool, self.writer):
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` on the pool (or now, without one)."""
        if self.pool is not None:
            return self.pool.submit(fn, *args)
        done: Future = Future()
        try:
            done.set_result(fn(*args))
        except BaseException as e:  # handed to whoever reads the future, as the pool does
            done.set_exception(e)
        return done

    def labels(self, items: Iterable[T], read: Callable[[T], Prepared]) -> Iterator[Outcome[T]]:
        """An :class:`Outcome` per item, in order. ``read`` runs on the pool, at most two
        batches ahead of the model; a :class:`SegpipeError` it raises becomes the outcome's
        ``error``, any other error propagates."""
        reads = _bounded_map(self.submit, read, items, 2 * self.batch_size)
        pending: collections.deque[tuple[T, Future, Prepared | None]] = collections.deque()
        batch: list[tuple[T, Prepared | SegpipeError]] = []
        for item, future in reads:
            try:
                batch.append((item, future.result()))
            except SegpipeError as e:
                batch.append((item, e))
            if sum(isinstance(p, Prepared) for _, p in batch) == self.batch_size:
                pending.extend(self._forward(batch))
                batch = []
            while pending and (pending[0][1].done() or len(pending) > 2 * self.batch_size):
                yield _outcome(*pending.popleft())
        pending.extend(self._forward(batch))
        while pending:
            yield _outcome(*pending.popleft())

    def _finish(self, logits: torch.Tensor, index: int, size: tuple[int, int]) -> Any:
        """Image ``index`` of ``logits`` at ``size``: its labels, or (with ``probability``)
        its foreground probability (H, W) float32, or (with ``probabilities``) its labels and
        class probabilities."""
        if self.probability:
            return probability_at(logits, index, size)
        if self.probabilities:
            return labels_and_probabilities_at(logits, index, size, self.predictor.threshold)
        return labels_at(logits, index, size, self.predictor.threshold)

    def _forward(
        self, batch: list[tuple[T, Prepared | SegpipeError]]
    ) -> list[tuple[T, Future, Prepared | None]]:
        """Run the model on the read images of ``batch`` here; resize back and threshold each
        on the pool. The entries come back in order, the unreadable ones with their error."""
        ready = [p for _, p in batch if isinstance(p, Prepared)]
        if not ready:
            logits = []
        elif self.predictor.geometry.fixed_size:  # one square size: one pass for the batch
            stacked = self.predictor.logits(torch.stack([p.tensor for p in ready]))
            logits = [(stacked, i) for i in range(len(ready))]
        else:  # sizes differ: one pass per image
            logits = [(self.predictor.logits(p.tensor[None], p.valid), 0) for p in ready]
        out: list[tuple[T, Future, Prepared | None]] = []
        index = 0
        for item, p in batch:
            if isinstance(p, SegpipeError):
                out.append((item, _failed(p), None))
                continue
            out.append((item, self.submit(self._finish, *logits[index], p.size), p))
            index += 1
        return out

    def write(self, fn: Callable[..., Any], *args: Any) -> int:
        """Queue ``fn(*args)`` on the writer thread, which runs the writes one at a time in
        the order they came; returns how many earlier writes have finished since the last
        call. After a failed write the later ones are skipped and the failure is raised here
        (or in :meth:`finish`) as a :class:`WriteFailed` that counts the writes before it."""
        self._writes.append(self._submit_write(fn, *args))
        limit = 2 * self.batch_size
        return self._collect(lambda: self._writes[0].done() or len(self._writes) > limit)

    def finish(self) -> int:
        """Wait for every queued write; returns how many finished (errors as :meth:`write`)."""
        return self._collect(lambda: True)

    def _submit_write(self, fn: Callable[..., Any], *args: Any) -> Future:
        def guarded() -> None:
            if self._stopped:
                raise _Skipped
            try:
                fn(*args)
            except BaseException:
                self._stopped = True
                raise

        if self.writer is None:
            return self.submit(guarded)
        return self.writer.submit(guarded)

    def _collect(self, ready: Callable[[], bool]) -> int:
        finished = 0
        while self._writes and ready():
            future = self._writes.popleft()
            try:
                future.result()
            except WriteFailed as e:
                e.done_before = self._written
                raise
            finished += 1
            self._written += 1
        return finished


class WriteFailed(Exception):
    """A write that failed: ``path`` and the ``error``; ``done_before`` writes finished
    before it (each file complete) and none after it was started."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(f"{path}: {error}")
        self.path = Path(path)
        self.error = error
        self.done_before = 0


class _Skipped(Exception):
    """A write not started because an earlier one failed."""


def _bounded_map(
    submit: Callable[..., Future], fn: Callable[[T], Any], items: Iterable[T], ahead: int
) -> Iterator[tuple[T, Future]]:
    """(item, future of ``fn(item)``) in order, with at most ``ahead`` futures in flight."""
    queue: collections.deque[tuple[T, Future]] = collections.deque()
    for item in items:
        queue.append((item, submit(fn, item)))
        if len(queue) >= ahead:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def _failed(error: SegpipeError) -> Future:
    future: Future = Future()
    future.set_exception(error)
    return future


def _outcome(item: T, future: Future, prepared: Prepared | None) -> Outcome[T]:
    try:
        labels = future.result()
    except SegpipeError as e:
        return Outcome(item, None, None, e)
    labels, probabilities = labels if isinstance(labels, tuple) else (labels, None)
    return Outcome(item, labels, prepared.extra if prepared else None, None, probabilities)
