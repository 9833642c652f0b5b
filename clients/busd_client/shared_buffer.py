"""SharedBuffer: a sealed memfd passed as a UnixFD argument and mapped by its receiver without copying.

    with busd_client.SharedBuffer(image_bytes) as buffer:      # sealed read-only
        await bus.call(..., "ShowImage", buffer, signature="h")  # or a hinted proxy/signal argument

    def ShowImage(self, image: SharedBuffer) -> None:            # in a service: adopted and checked
        with image:
            decode(image.view)                                   # a read-only memoryview of the pages

Theory: a receiver can trust a mapping only if the sender cannot change it
afterwards.  Linux file seals give that guarantee and are kept by the file,
not the descriptor: F_SEAL_SHRINK and F_SEAL_GROW fix the size (a shrunk file
would make the receiver's mapping fault with SIGBUS), F_SEAL_WRITE freezes
the contents, and F_SEAL_SEAL stops anyone adding or changing seals later.
Seals are only ever added, so a receiver checks the ones it needs with
F_GET_SEALS and refuses a descriptor without them.  Only fd passing is used,
so this works on every bus that passes fds.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import weakref

from .errors import SharedMemoryError

RESIZE_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
READ_ONLY_SEALS = RESIZE_SEALS | fcntl.F_SEAL_WRITE
ADOPT_MODES = ("frozen", "read", "write")
SEAL_NAMES = {fcntl.F_SEAL_SEAL: "F_SEAL_SEAL", fcntl.F_SEAL_SHRINK: "F_SEAL_SHRINK",
              fcntl.F_SEAL_GROW: "F_SEAL_GROW", fcntl.F_SEAL_WRITE: "F_SEAL_WRITE"}


class UnsealedBufferError(SharedMemoryError, ValueError):
    """A received descriptor lacks the seals that make its mapping safe (or is not a memfd at all)."""


def seal_names(seals: int) -> str:
    """The seals set in `seals`, in words: 'F_SEAL_SHRINK|F_SEAL_GROW', or 'no seals'."""
    names = [name for bit, name in SEAL_NAMES.items() if seals & bit]
    return "|".join(names) or "no seals"


def seals_of(fd: int) -> int:
    """The seals of the file behind `fd`; 0 for a file that cannot be sealed (not a memfd)."""
    try:
        return fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        return 0


class SharedBuffer:
    """A block of memory other processes map without copying, owned by whoever holds this object.

    `SharedBuffer(data)` copies `data` into a new memfd once and seals it
    read-only; `SharedBuffer(data, writable=True)` or `SharedBuffer(size,
    writable=True)` seals only its size, so every process mapping it shares
    writes.  `SharedBuffer(size)` is writable by its creator until `freeze()`
    seals it read-only; it cannot be sent before.

    Sending one (as an `h` argument, a `SharedBuffer`-annotated parameter or
    return value) sends a duplicate of its descriptor: the sender keeps its
    buffer.  A received one (`adopt`, or a `SharedBuffer` type hint) owns the
    received descriptor.  `close()` (or leaving its `with` block) releases the
    view and closes the descriptor; memoryviews sliced from `view` must be
    released first.
    """

    def __init__(self, source: bytes | bytearray | memoryview | int, *, writable: bool = False,
                 name: str = "busd-shared-buffer") -> None:
        if isinstance(source, int):
            if source <= 0:
                raise ValueError(f"a SharedBuffer needs a positive size, got {source}")
            size, data = source, None
        else:
            data = memoryview(source).cast("B")
            size = data.nbytes
            if size == 0:
                raise ValueError("a SharedBuffer cannot be empty (a zero-length file cannot be mapped)")
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            if data is not None:
                mapping[:] = data
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, RESIZE_SEALS)
        except BaseException:
            os.close(fd)
            raise
        self._own(fd, mapping, "write" if writable else "filling")
        if writable:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL)
        elif data is not None:
            self.freeze()

    @classmethod
    def adopt(cls, fd: int, *, mode: str = "frozen") -> SharedBuffer:
        """Map a received descriptor, taking ownership of it (it is closed on failure too).

        `mode` says what the receiver relies on.  "frozen" (the default)
        requires F_SEAL_SHRINK, F_SEAL_GROW and F_SEAL_WRITE: the contents can
        never change.  "read" maps read-only but lets other processes write
        (size seals only), "write" maps shared and writable (size seals only).
        A descriptor without the seals raises UnsealedBufferError.
        """
        try:
            if mode not in ADOPT_MODES:
                raise ValueError(f"mode={mode!r}; use one of {', '.join(ADOPT_MODES)}")
            seals = seals_of(fd)
            needed = READ_ONLY_SEALS if mode == "frozen" else RESIZE_SEALS
            if seals & needed != needed:
                raise UnsealedBufferError(
                    f"refusing to map fd {fd}: it has {seal_names(seals)} but a {mode!r} SharedBuffer needs "
                    f"{seal_names(needed)}; the sender must send a busd_client.SharedBuffer")
            size = os.fstat(fd).st_size
            if size == 0:
                raise UnsealedBufferError(f"refusing to map fd {fd}: it is empty")
            writable = mode == "write"
            protection = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, protection)
        except BaseException:
            os.close(fd)
            raise
        buffer = cls.__new__(cls)
        SharedBuffer._own(buffer, fd, mapping, mode)
        return buffer

    def _own(self, fd: int, mapping: mmap.mmap, mode: str) -> None:
        self._fd = fd
        self._mapping = mapping
        self._view: memoryview | None = memoryview(mapping)
        self.mode = mode
        """"filling" (writable by its maker until freeze()), "frozen" (sealed read-only), "write"
        (shared writable) or "read" (adopted read-only; others may write)."""
        # A buffer dropped without close() still closes its descriptor when collected.
        self._closer = weakref.finalize(self, os.close, fd)

    # -- the memory ------------------------------------------------------------------

    @property
    def view(self) -> memoryview:
        """The mapped memory: read-only once frozen or when adopted read-only.  No copy is made."""
        if self._view is None:
            raise ValueError("the SharedBuffer is closed")
        return self._view

    @property
    def size(self) -> int:
        return len(self._mapping)

    @property
    def writable(self) -> bool:
        """True if writes through `view` are possible (and seen by every process mapping it)."""
        return self.mode in ("write", "filling")

    @property
    def seals(self) -> int:
        """The file's seals (F_SEAL_* bits)."""
        if self._view is None:
            raise ValueError("the SharedBuffer is closed")
        return seals_of(self._fd)

    @property
    def closed(self) -> bool:
        return self._view is None

    def freeze(self) -> None:
        """Seal a buffer made with `SharedBuffer(size)` read-only, after filling it through `view`."""
        if self.mode == "frozen":
            return
        if self.mode != "filling":
            raise ValueError(f"only a buffer made with SharedBuffer(size) can be frozen; this one is {self.mode!r}")
        # F_SEAL_WRITE is refused while a writable shared mapping exists: unmap, seal, map read-only.
        self._unmap("freeze() it")
        fcntl.fcntl(self._fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
        self._mapping = mmap.mmap(self._fd, os.fstat(self._fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ)
        self._view = memoryview(self._mapping)
        self.mode = "frozen"

    def fileno(self) -> int:
        """The descriptor (still owned by this buffer).  Sending reads it, so an unfrozen buffer refuses."""
        if self._view is None:
            raise ValueError("the SharedBuffer is closed")
        if self.mode == "filling":
            raise ValueError("this SharedBuffer is still being filled: call freeze() before sending it")
        return self._fd

    def tobytes(self) -> bytes:
        """A copy of the contents."""
        return self.view.tobytes()

    # -- ownership ---------------------------------------------------------------------

    def close(self) -> None:
        """Release the view and the mapping, and close the descriptor.  Idempotent."""
        if self._view is None:
            return
        self._unmap("close it")
        self._view = None
        self._closer()

    def _unmap(self, doing: str) -> None:
        """Release the view and unmap; while views taken from it live, raise BufferError and stay mapped."""
        problem = BufferError(f"release the memoryviews taken from this SharedBuffer's view before you {doing}")
        try:
            self.view.release()
        except BufferError:
            raise problem from None
        try:
            self._mapping.close()
        except BufferError:
            self._view = memoryview(self._mapping)
            raise problem from None

    def __enter__(self) -> SharedBuffer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        if self._view is None:
            return "<SharedBuffer closed>"
        return f"<SharedBuffer fd={self._fd} {self.size} bytes {self.mode}>"
