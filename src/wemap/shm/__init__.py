"""`SharedMemWorkerMapper` and its parts: the public class (`mapper`), what a running one owns
(`transport`), one ``map`` call (`cycle`), lost workers and timeouts (`recovery`), the manager's
one wait (`watcher`), the descriptors of calls (`calls`) and the worker's loop (`worker_loop`)."""

from .mapper import SharedMemWorkerMapper

__all__ = ["SharedMemWorkerMapper"]
