"""Device-resident Newton iterations of :func:`parscan.deer_solve` with ``backend="cuda"``.

Imported lazily by :mod:`parscan.deer`, only for ``backend="cuda"`` with a model that evaluates
``F`` and ``J`` on the GPU (``supports_cuda_eval``). :class:`DeviceNewton` keeps the iterate,
the linearisation points, the Jacobians, the forcing and ``alpha`` on the GPU for the whole
solve; one Newton iteration (DEER: Lim et al., ICLR 2024; GTF-DEER: Hess, Goetz & Durstewitz,
arXiv:2605.12683) is five launches and one small copy::

    _shift          z_{t-1} <- iterate (z0 at t = 0)              one thread per element
    F, J            model.step_and_jacobian on device arrays     models._cuda_eval
    _assemble       (F, J) -> (b, A) of the linearised system     one thread per step
    linear_scan     the next iterate (into the points' buffer)   parscan._cuda
    norm partials   per (sequence, chunk): max |dz|, tolerance    one block per chunk
                    met, finite -> host (B x 3 x chunks numbers)

The per-element arithmetic is shared with the CPU kernels: :func:`parscan._deer_kernels.
assemble_steps`, :func:`~parscan._deer_kernels.update_element` and
:func:`~parscan._deer_kernels.max_keep_nan` are plain functions compiled here with
``numba.cuda.jit(device=True)``, so both sides assemble bitwise the same system from the same
``F, J`` (the GPU may still contract ``a*b + c`` to an FMA).

Stopped sequences are set aside in a device buffer and the active rows compacted
(:func:`_gather_rows`); the forcing and ``alpha`` stay where they are and are read through the
row map ``rows``. :meth:`DeviceNewton.device_states` hands the final states to the GPU
gradient (:mod:`autodiff._deer_adjoint_cuda`) without a trip through the host.

Launch shapes come from :data:`LAUNCH` at call time; tests shrink it so that tiny inputs in the
simulator (``NUMBA_ENABLE_CUDASIM=1``) wrap the grid-stride loops and split a sequence's norm
into several chunks.
"""

import dataclasses
import functools

import numba
import numpy as np

from parscan import _cuda
from parscan._cuda import cuda
from parscan._deer_kernels import assemble_steps, max_keep_nan, update_element
from parscan.scan import linear_scan


@dataclasses.dataclass(frozen=True)
class Launch:
    """Threads per block (a power of 2), the largest grid of the element-wise kernels, and
    the elements each thread of a norm block reads."""

    threads: int = 256
    max_blocks: int = 8192
    norm_items: int = 16

    def __post_init__(self):
        _cuda.check_launch(self, ("threads",))


#: The launch shape used by :class:`DeviceNewton` (read at call time). The simulator runs one
#: Python thread per GPU thread, so its default is tiny.
LAUNCH = Launch(threads=8, max_blocks=4, norm_items=16) if numba.config.ENABLE_CUDASIM else Launch()

_assemble_device = cuda.jit(device=True)(assemble_steps)
_update_device = cuda.jit(device=True)(update_element)
_max_device = cuda.jit(device=True)(max_keep_nan)


@cuda.jit
def _shift(cur, z0, zprev):
    """``zprev[i, 0] = z0[i]``, ``zprev[i, t] = cur[i, t-1]``: the linearisation points
    (``zprev`` may be one step longer than ``cur``: then it is ``[z0; cur]``)."""
    n, T, M = zprev.shape
    for e in range(cuda.grid(1), n * T * M, cuda.gridsize(1)):
        i = e // (T * M)
        r = e - i * (T * M)
        t = r // M
        m = r - t * M
        zprev[i, t, m] = z0[i, m] if t == 0 else cur[i, t - 1, m]


@cuda.jit
def _assemble(f, j, zprev, forcing, alpha, rows, n_forced):
    """``(F, J) -> (b, A)`` in place for every step of the active rows; ``forcing`` and
    ``alpha`` are indexed by the original sequence ``rows[i]``."""
    n, T = f.shape[0], f.shape[1]
    for p in range(cuda.grid(1), n * T, cuda.gridsize(1)):
        i = p // T
        t = p - i * T
        r = rows[i]
        _assemble_device(f[i], j[i], zprev[i], forcing[r], alpha[r], n_forced, t, t + 1)


@cuda.jit
def _gather_rows(src, idx, dst):
    """``dst[k] = src[idx[k]]`` for 2-D ``src, dst``."""
    n, S = dst.shape
    for e in range(cuda.grid(1), n * S, cuda.gridsize(1)):
        k = e // S
        s = e - k * S
        dst[k, s] = src[idx[k], s]


@functools.cache
def _norm_kernel(threads: int):
    """The norm-partials kernel for blocks of ``threads`` (a compile-time constant)."""

    @cuda.jit
    def norm_partials(new, old, rtol, atol, chunk, parts):
        """Block ``(i, c)`` reduces elements ``c*chunk ..`` of row ``i`` of ``new, old``
        (n, S) into ``parts[i, :, c]`` (n, 3, n_chunks): the max ``|new - old|`` (NaN kept),
        and 1.0 / 0.0 for "every element meets the tolerance" and "every element is finite"
        (one array, so the host fetches all three with one copy)."""
        sh_max = cuda.shared.array(threads, numba.float64)
        sh_ok = cuda.shared.array(threads, numba.int32)
        sh_fin = cuda.shared.array(threads, numba.int32)
        n_chunks = parts.shape[2]
        i = cuda.blockIdx.x // n_chunks
        c = cuda.blockIdx.x - i * n_chunks
        tid = cuda.threadIdx.x
        hi = min((c + 1) * chunk, new.shape[1])
        big = 0.0
        ok = 1
        fin = 1
        for s in range(c * chunk + tid, hi, threads):
            d, w, f = _update_device(new[i, s], old[i, s], rtol, atol)
            big = _max_device(big, d)
            if not w:
                ok = 0
            if not f:
                fin = 0
        sh_max[tid] = big
        sh_ok[tid] = ok
        sh_fin[tid] = fin
        cuda.syncthreads()
        off = threads // 2
        while off > 0:
            if tid < off:
                sh_max[tid] = _max_device(sh_max[tid], sh_max[tid + off])
                sh_ok[tid] = min(sh_ok[tid], sh_ok[tid + off])
                sh_fin[tid] = min(sh_fin[tid], sh_fin[tid + off])
            cuda.syncthreads()
            off //= 2
        if tid == 0:
            parts[i, 0, c] = sh_max[0]
            parts[i, 1, c] = sh_ok[0]
            parts[i, 2, c] = sh_fin[0]

    return norm_partials


def kernel_signatures(dtype, launch: Launch | None = None) -> list:
    """``(python function, signature)`` of every kernel for ``dtype`` (for
    ``cuda.compile_ptx`` in the tests; the kernels themselves compile lazily on first use)."""
    launch = LAUNCH if launch is None else launch
    dt = numba.from_dtype(np.dtype(dtype))
    a3, a2, a1 = dt[:, :, ::1], dt[:, ::1], dt[::1]
    rows = numba.int64[::1]
    scalar = numba.float64
    return [
        (_shift.py_func, (a3, a2, a3)),
        (_assemble.py_func, (a3, a3, a3, a3, a1, rows, numba.int64)),
        (_gather_rows.py_func, (a2, rows, a2)),
        (
            _norm_kernel(launch.threads).py_func,
            (a2, a2, scalar, scalar, numba.int64, scalar[:, :, ::1]),
        ),
    ]


def launch_grid(work: int, launch: Launch | None = None) -> tuple[int, int]:
    """``(blocks, threads)`` of a grid-stride kernel over ``work`` items (default
    :data:`LAUNCH`, read at call time)."""
    launch = LAUNCH if launch is None else launch
    return min(-(-work // launch.threads), launch.max_blocks), launch.threads


def shift_device(states, z0, out, launch: Launch | None = None) -> None:
    """``out[:, 0] = z0``, ``out[:, t] = states[:, t-1]`` on the GPU: the linearisation points
    of ``states`` (B, T, M), ``z0`` (B, M), ``out`` (B, T, M), C-contiguous device arrays.
    With ``out`` of shape (B, T+1, M) it is ``[z0; states]``."""
    _shift[launch_grid(out.size, launch)](states, z0, out)


class DeviceNewton:
    """The Newton buffers of :func:`parscan.deer._newton` on the GPU (same interface as
    :class:`parscan.deer._HostNewton`: ``rows``, ``iterate``, ``retire``, ``result``,
    ``predictions``; plus :meth:`device_states` for the gradient).

    Parameters
    ----------
    model : PiecewiseLinearRNN
        A model with ``supports_cuda_eval`` (``step_and_jacobian`` on device arrays).
    p : parscan.deer._Problem
        The validated problem: ``z0`` (B, M), ``forcing`` (B, T, N), ``alpha`` (B,),
        ``n_forced``; host arrays of the model dtype.
    guess : ndarray, shape (B, T, M)
        The initial iterate (copied to the GPU).
    diag : bool
        Quasi-DEER (Jacobian diagonals) instead of the full Jacobians.
    """

    def __init__(self, model, p, guess, diag: bool):
        B, T, M = guess.shape
        dtype = guess.dtype
        self.model, self.diag, self.n_forced = model, diag, p.n_forced
        self.cur = _cuda.to_device(guess)
        self.nxt = cuda.device_array((B, T, M), dtype)
        self.zprev = cuda.device_array((B, T, M), dtype)
        self.j = cuda.device_array((B, T, M) if diag else (B, T, M, M), dtype)
        has_data = p.forcing.shape[2] > 0
        self.forcing = _cuda.to_device(p.forcing if has_data else np.zeros((B, 1, 1), dtype))
        self.alpha = _cuda.to_device(p.alpha)
        self.z0_host = p.z0
        self.done = None  # device (B, T, M) for rows that stop early (first retire allocates)
        self.launch = LAUNCH
        self.chunk = self.launch.threads * self.launch.norm_items
        self.parts = cuda.device_array((B, 3, -(-(T * M) // self.chunk)), np.float64)
        self._set_rows(np.arange(B))

    def _set_rows(self, rows) -> None:
        """Active rows ``rows`` (original sequence indices) and their ``z0`` on the GPU."""
        self.rows = rows
        self.d_rows = cuda.to_device(rows)
        self.z0 = _cuda.to_device(np.ascontiguousarray(self.z0_host[rows]))

    def iterate(self, rtol: float, atol: float):
        """One Newton step of the active rows on the GPU; returns their ``(max update, within
        tolerance, finite)`` as host arrays of shape (n_active,)."""
        n = self.rows.size
        _, T, M = self.cur.shape
        cur, nxt, zprev, j = self.cur[:n], self.nxt[:n], self.zprev[:n], self.j[:n]
        launch = self.launch
        shift_device(cur, self.z0, zprev, launch)
        self.model.step_and_jacobian(zprev, diag=self.diag, out=(nxt, j))
        j_flat = j.reshape(n, T, M if self.diag else M * M)
        _assemble[launch_grid(n * T, launch)](
            nxt, j_flat, zprev, self.forcing, self.alpha, self.d_rows, self.n_forced
        )
        # into zprev, which _assemble has read: not in place, which would cost linear_scan a
        # temporary result (its walks over overflowed products re-read b)
        linear_scan(j, nxt, self.z0, backend="cuda", out=zprev)
        parts = self.parts[:n]
        _norm_kernel(launch.threads)[n * parts.shape[2], launch.threads](
            zprev.reshape(n, T * M),
            cur.reshape(n, T * M),
            float(rtol),
            float(atol),
            self.chunk,
            parts,
        )
        self.cur, self.zprev = self.zprev, self.cur
        host = parts.copy_to_host()  # the one synchronising copy of an iteration
        upd = host[:, 0].max(axis=1)  # NaN propagates, as on the host
        return upd, host[:, 1].min(axis=1) == 1.0, host[:, 2].min(axis=1) == 1.0

    def retire(self, stop) -> None:
        """Rows ``stop`` (bool, (n_active,)) keep their current iterate (copied into ``done``
        on the GPU); the others are compacted into the leading rows."""
        n = self.rows.size
        _, T, M = self.cur.shape
        if self.done is None:
            self.done = cuda.device_array(self.cur.shape, self.cur.dtype)
        for r in np.flatnonzero(stop):
            self.done[self.rows[r]].copy_to_device(self.cur[r])
        keep = np.flatnonzero(~stop)
        k = keep.size
        _gather_rows[launch_grid(k * T * M, self.launch)](
            self.cur[:n].reshape(n, T * M), cuda.to_device(keep), self.nxt[:k].reshape(k, T * M)
        )
        self.cur, self.nxt = self.nxt, self.cur
        self._set_rows(self.rows[keep])

    def device_states(self):
        """The states of every sequence, (B, T, M) on the GPU, in the original order (the
        iterate buffer itself when no row stopped early, else ``done`` completed with the
        rows still active)."""
        if self.done is None:
            return self.cur
        for r, orig in enumerate(self.rows):
            self.done[orig].copy_to_device(self.cur[r])
        return self.done

    def result(self) -> np.ndarray:
        """The states of every sequence, (B, T, M) on the host, in the original order."""
        return self.device_states().copy_to_host()

    def predictions(self, states) -> np.ndarray:
        """``F(z~_t)`` for ``t = 0 .. T-1`` of the final states, evaluated on the GPU from
        :meth:`device_states` in the solver's buffers; returned on the host (``states``, the
        host copy, only gives the shape)."""
        B, T, M = states.shape
        shift_device(self.device_states(), _cuda.to_device(self.z0_host), self.zprev, self.launch)
        scratch = self.j.reshape(self.j.size)[: B * T * M].reshape(B, T, M)  # unused diag J
        self.model.step_and_jacobian(self.zprev, diag=True, out=(self.nxt, scratch))
        return self.nxt.copy_to_host()
