"""A RunLogger that aggregates, judges and writes rows on a thread of its own.

    >>> import tempfile
    >>> from tb_gradflow.background_logger import BackgroundLogger
    >>> from tb_gradflow.proto import plugin_data_pb2
    >>> from tb_gradflow.run_logger import RunLogger
    >>> table = plugin_data_pb2.LayerTable(layers=[plugin_data_pb2.Layer(name="dense")],
    ...     variables=[plugin_data_pb2.Variable(name="dense/kernel", shape=[2])])
    >>> logger = BackgroundLogger(RunLogger(tempfile.mkdtemp()))
    >>> logger.set_layer_table(step=0, table=table)
    >>> logger.close()
    >>> logger.last_step
    -1

Why: a row's host work (per-layer aggregation, the alert rules, a few
hundred protobuf events) takes tens of milliseconds on a large model, and
the train step waits for none of it. The Keras callback reads the device
state on the training thread (the values must be those of the row's step)
and hands the numpy snapshot over; the next executions run on the device
while this thread writes. Keras releases the GIL while a train function
runs, so on any machine with a second core the write overlaps training.

Guarantees:
* one worker thread: rows are written in the order they were logged;
* at most `max_pending` rows wait (a slow disk slows training down rather
  than filling memory);
* an error of a row is raised by the next call on the training thread
  (`log`, `flush`, `close`, `wait`), once, and nothing is printed by the
  thread itself: the caller decides (the callback warns once and trains on
  unhooked, as before);
* `flush` and `close` return once everything logged before them is written.

It imports no TensorFlow.
"""

import collections
import concurrent.futures


class BackgroundLogger:
    """Runs a `RunLogger`'s calls on one worker thread, in call order.

    Args:
      logger: the `RunLogger` (or anything with its methods) to drive. Only
        the worker touches it once rows are logged.
      max_pending: rows (and flushes) allowed to wait before `log` blocks.
    """

    def __init__(self, logger, max_pending=2):
        self._logger = logger
        self._max_pending = max(1, int(max_pending))
        self._pending = collections.deque()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tb_gradflow_writer")

    @property
    def log_dir(self):
        return self._logger.log_dir

    @property
    def last_step(self):
        """The newest row step written so far (rows still pending not counted)."""
        return self._logger.last_step

    def set_layer_table(self, **kwargs):
        """Synchronous: the table is written once, before any row."""
        self.wait()
        self._logger.set_layer_table(**kwargs)

    def log(self, raw):
        self._submit(self._logger.log, raw)

    def log_activations(self, snapshot):
        self._submit(self._logger.log_activations, snapshot)

    def flush(self):
        self._submit(self._logger.flush)
        self.wait()

    def wait(self):
        """Blocks until every call so far has run; raises the first error among them."""
        while self._pending:
            self._pending.popleft().result()

    def close(self):
        """Waits for the pending rows, closes the logger and the thread.

        The logger is closed even when a pending row failed; that error is
        raised afterwards."""
        try:
            self.wait()
        finally:
            self._pending.clear()
            self._executor.shutdown(wait=True)
            self._logger.close()

    def _submit(self, call, *args):
        # Earlier rows' errors first, in order, on the training thread.
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()
        while len(self._pending) >= self._max_pending:
            self._pending.popleft().result()
        self._pending.append(self._executor.submit(call, *args))
