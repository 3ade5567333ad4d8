"""Type stub for typed access to a slot's header (src/wemap/_slot_header.pyx)."""

class SlotHeader:
    def reset(self, task_id: int, cycle: int, walker_idx: int) -> None: ...
    task_id: int
    @property
    def cycle(self) -> int: ...
    @property
    def walker_idx(self) -> int: ...
    worker_idx: int
    worker_pid: int
    t_start_ns: int
    t_end_ns: int
    in_nbytes: int
    out_nbytes: int
    status: int
    flags: int
