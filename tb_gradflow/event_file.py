"""One TensorBoard event file, written on a background thread that never raises.

    >>> import tempfile
    >>> from tensorboard.compat.proto import event_pb2
    >>> f = EventFile(tempfile.mkdtemp(), ".gradflow")
    >>> f.write(event_pb2.Event(step=1).SerializeToString())
    True
    >>> f.close()
    True
    >>> f.error is None
    True

TensorBoard's `EventFileWriter` re-raises a write error inside its thread,
so Python prints the writer's traceback on stderr (beside any warning of
ours) and raises it again on the next call. A monitoring hook must report a
full disk once, in its own words, and carry on: here the thread records the
error in `error` and stops; `write` and `flush` then return False and the
caller decides what to say. The record format is TensorBoard's own
(`RecordWriter`), the file name follows `EventFileWriter`'s.
"""

import os
import queue
import socket
import struct
import threading
import time

from tensorboard.compat import tf
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

try:
    import google_crc32c
except ImportError:  # pragma: no cover - a dependency; TensorBoard's own CRC then
    google_crc32c = None

_STOP = object()


def masked_crc32c(data):
    """The TFRecord checksum of `data`: CRC-32C, rotated and offset (TensorFlow's
    `crc32c::Mask`), as TensorBoard's `masked_crc32c` computes it.

    >>> masked_crc32c(b"tb_gradflow") == _tensorboard_masked_crc32c(b"tb_gradflow")
    True
    """
    if google_crc32c is None:
        return _tensorboard_masked_crc32c(data)
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _tensorboard_masked_crc32c(data):
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as pure_python

    return pure_python(data)


class _RecordWriter(RecordWriter):
    """TensorBoard's `RecordWriter` with the checksums computed in C.

    Its own CRC-32C is pure Python (about 140 ns a byte): a row of
    histograms, tens of kilobytes, cost ~10 ms of a thread holding the GIL,
    which the training thread waited for. Same record bytes.
    """

    def write(self, data):
        header = struct.pack("<Q", len(data))
        self._writer.write(
            header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))
        )
_uid_lock = threading.Lock()
_uid = [0]


def _next_uid():
    with _uid_lock:
        _uid[0] += 1
        return _uid[0]


class EventFile:
    """Appends serialized `Event`s to a new event file in `log_dir`.

    Args:
      log_dir: an existing directory (local, or any filesystem TensorBoard's
        `tf.io.gfile` reaches).
      filename_suffix: appended to the file name.
      flush_secs: longest time an event waits in memory.
      max_queue: events held before `write` waits for the thread.

    Raises:
      OSError (or the filesystem's error): the file cannot be created.
    """

    def __init__(self, log_dir, filename_suffix="", flush_secs=120, max_queue=100):
        name = "events.out.tfevents.%010d.%s.%s.%s%s" % (
            time.time(), socket.gethostname(), os.getpid(), _next_uid(), filename_suffix
        )
        self.path = os.path.join(log_dir, name)
        self._file = tf.io.gfile.GFile(self.path, "wb")
        self._records = _RecordWriter(self._file)
        self._flush_secs = flush_secs
        self._queue = queue.Queue(max_queue)
        self._error = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tb_gradflow-events", daemon=True)
        self._thread.start()
        header = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
        header.source_metadata.writer = "tb_gradflow"
        self.write(header.SerializeToString())
        # GFile opens lazily: flushing the header creates the file now, so
        # that `exists()` means something from the start.
        if not self.flush():
            raise OSError(f"cannot create the event file {self.path!r}: {self._error}")

    @property
    def error(self):
        """The exception that stopped the writing thread, or None."""
        return self._error

    def exists(self):
        """Whether the file is still in place (a deleted log directory is not
        an error to the OS: writes to an unlinked file succeed)."""
        try:
            if "://" not in self.path:
                # A local path: one stat, not a filesystem-plugin call (that
                # costs ~0.5 ms, and this runs for every event written).
                return os.path.exists(self.path)
            return tf.io.gfile.exists(self.path)
        except Exception:
            return False

    def write(self, record):
        """Queues one serialized Event; False once the file has failed or closed."""
        if self._error is not None or self._closed:
            return False
        self._queue.put(record)
        return self._error is None

    def flush(self):
        """Writes everything queued so far to the file; False if that failed."""
        if self._error is not None or self._closed:
            return self._error is None
        done = threading.Event()
        self._queue.put(done)
        # The thread sets `done` after flushing, or when it stops on an error.
        while not done.wait(0.1):
            if not self._thread.is_alive():
                break
        return self._error is None

    def close(self):
        """Flushes and closes the file (idempotent); False if anything failed."""
        if not self._closed:
            self._closed = True
            if self._thread.is_alive():
                self._queue.put(_STOP)
                self._thread.join()
        return self._error is None

    # ------------------------------------------------------------------ thread
    def _run(self):
        next_flush = time.time() + self._flush_secs
        try:
            while True:
                try:
                    item = self._queue.get(timeout=max(0.0, next_flush - time.time()))
                except queue.Empty:
                    item = None
                if item is _STOP:
                    self._records.flush()
                    self._records.close()
                    return
                if isinstance(item, threading.Event):
                    self._records.flush()
                    item.set()
                elif item is not None:
                    self._records.write(item)
                if time.time() >= next_flush:
                    self._records.flush()
                    next_flush = time.time() + self._flush_secs
        except Exception as e:  # Disk full, file too large, directory gone: recorded, never raised here.
            self._error = e
            self._stop_quietly()

    def _stop_quietly(self):
        try:
            self._file.close()
        except Exception:
            pass
        # Release anyone waiting on a flush, and empty the queue so that no
        # writer blocks on a full one.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, threading.Event):
                item.set()
