"""Jitted kernels of the (GTF-)DEER solver: Newton-system assembly, per-sequence update norms
and spectral norms of many small Jacobians.

All kernels are pure functions over explicit C-contiguous arrays that write into caller
arrays; the ``prange`` bodies are thin calls into per-position helpers. Index conventions
(see :mod:`parscan.deer`): ``B`` sequences, ``T`` steps, ``M`` latents, ``N`` data columns,
``n_forced <= N`` of them forced.
"""

import math

import numpy as np
from numba import float64, prange

from parscan._jit import jit, jit_parallel

# ---------------------------------------------------------------------------------------------
# Newton-system assembly: A_t = (I - alpha P) J_F(z_{t-1}),  b_t = G_t(z_{t-1}) - A_t z_{t-1},
# G_t(z) = (I - alpha P) F(z) + alpha P d_t,  P = diag(1_{n_forced}, 0).
# ---------------------------------------------------------------------------------------------


#: Steps of one sequence assembled by one ``prange`` work item.
_ASSEMBLE_CHUNK = 1024


def assemble_steps(f, j, zprev, forcing, a, n_forced, t0, t1):
    """Steps ``t0 .. t1-1`` of one sequence, in place: ``f[t]`` F(z) -> b_t and ``j[t]``
    J_F(z) -> A_t, either the full Jacobian flattened row-major (``M*M``) or its diagonal
    (``M``). ``f, zprev`` (T, M), ``j`` (T, M*M) or (T, M), ``forcing`` (T, N), ``a`` the
    sequence's alpha. Plain index loops, no allocation: compiled for the CPU (below) and with
    ``numba.cuda.jit(device=True)`` for the GPU (:mod:`parscan._deer_cuda`). With ``a = 0``
    the data are not read (``0 * NaN`` would be NaN): the sequence is a free run."""
    M = f.shape[1]
    diag = j.shape[1] == M  # for M = 1 both layouts coincide
    c = 1.0 - a
    nf = n_forced if a != 0.0 else 0
    for t in range(t0, t1):
        for r in range(M):
            if r < nf:
                g = c * f[t, r] + a * forcing[t, r]
                if diag:
                    j[t, r] = c * j[t, r]
                else:
                    for k in range(M):
                        j[t, r * M + k] = c * j[t, r * M + k]
            else:
                g = f[t, r]
            if diag:
                acc = j[t, r] * zprev[t, r]
            else:
                acc = 0.0
                for k in range(M):
                    acc += j[t, r * M + k] * zprev[t, k]
            f[t, r] = g - acc


_assemble_steps = jit(assemble_steps)


@jit_parallel
def assemble(f, j, zprev, forcing, alpha, n_forced):
    """Turn ``(F, J_F)`` at the linearisation points into the scan inputs ``(b, A)``, in place.

    Parameters
    ----------
    f : ndarray, shape (B, T, M)
        ``F(z_{t-1})`` on entry, ``b_t`` on exit.
    j : ndarray, shape (B, T, M*M) or (B, T, M)
        ``J_F(z_{t-1})`` (row-major) or its diagonal (quasi-DEER) on entry, ``A_t`` on exit.
    zprev : ndarray, shape (B, T, M)
        Linearisation points ``z_{t-1}`` (``zprev[:, 0]`` is ``z0``).
    forcing : ndarray, shape (B, T, N)
        Data ``x_t`` (only the first ``n_forced`` columns of sequences with alpha > 0 are read;
        ``N`` may be 0).
    alpha : ndarray, shape (B,)
        GTF parameter per sequence.
    n_forced : int
        Number of forced latents.
    """
    B, T = f.shape[0], f.shape[1]
    per_seq = (T + _ASSEMBLE_CHUNK - 1) // _ASSEMBLE_CHUNK
    for idx in prange(B * per_seq):
        i = idx // per_seq
        k = idx - i * per_seq
        t0 = k * T // per_seq
        t1 = (k + 1) * T // per_seq
        _assemble_steps(f[i], j[i], zprev[i], forcing[i], alpha[i], n_forced, t0, t1)


@jit
def _blend_one(f, x, a, n_forced, out):
    """``out = (I - alpha P) f + alpha P x`` for one step; ``x`` is not read when ``a = 0``."""
    c = 1.0 - a
    nf = n_forced if a != 0.0 else 0
    for r in range(f.shape[0]):
        out[r] = c * f[r] + a * x[r] if r < nf else f[r]


@jit(cache=False)
def forced_sequential(step, args, z0, forcing, alpha, n_forced, states, predictions):
    """The forced recurrence, one step after the other, with a model's jitted step function.

    ``step(*args, z, out)`` writes ``F(z)`` into ``out``. ``z0`` (B, M), ``forcing`` (B, T, N),
    ``alpha`` (B,); writes ``predictions[:, t] = F(states[:, t-1])`` and ``states[:, t]``
    (B, T, M). Not cached: Numba cannot cache a kernel taking a function argument.
    """
    B, T = states.shape[0], states.shape[1]
    for i in range(B):
        for t in range(T):
            prev = z0[i] if t == 0 else states[i, t - 1]
            step(*args, prev, predictions[i, t])
            _blend_one(predictions[i, t], forcing[i, t], alpha[i], n_forced, states[i, t])


# ---------------------------------------------------------------------------------------------
# Convergence test.
# ---------------------------------------------------------------------------------------------


def update_element(new, old, rtol, atol):
    """``(|new - old|, |new - old| <= atol + rtol |new|, new is finite)`` in float64, for one
    element (shared by the CPU kernel below and the CUDA one of :mod:`parscan._deer_cuda`)."""
    v = float64(new)
    d = abs(v - float64(old))
    return d, d <= atol + rtol * abs(v), math.isfinite(v)


def max_keep_nan(biggest, d):
    """``max(biggest, d)`` where a NaN, once met, stays the result."""
    return d if d > biggest or d != d else biggest


_update_element = jit(update_element)
_max_keep_nan = jit(max_keep_nan)


@jit
def _update_norms_one(new, old, rtol, atol):
    """``(max |new - old|, all |new - old| <= atol + rtol |new|, all new finite)``."""
    flat_new = new.reshape(-1)
    flat_old = old.reshape(-1)
    biggest = 0.0
    ok = True
    finite = True
    for k in range(flat_new.size):
        d, within, fin = _update_element(flat_new[k], flat_old[k], rtol, atol)
        biggest = _max_keep_nan(biggest, d)
        ok = ok and within
        finite = finite and fin
    return biggest, ok, finite


@jit_parallel
def update_norms(new, old, rtol, atol, max_update, within_tol, finite):
    """Per sequence ``i`` of ``new, old`` (B, T, M): the max update ``max_t |new - old|``
    (float64, NaN/inf when the update is), whether every element meets
    ``|new - old| <= atol + rtol |new|``, and whether ``new`` is finite."""
    for i in prange(new.shape[0]):
        max_update[i], within_tol[i], finite[i] = _update_norms_one(new[i], old[i], rtol, atol)


# ---------------------------------------------------------------------------------------------
# Spectral norms ||J||_2 of many small matrices (exact: the largest eigenvalue of J^T J in float64).
# ---------------------------------------------------------------------------------------------

_EPS = np.finfo(np.float64).eps
#: Largest M for which the cyclic Jacobi diagonalisation is used; above it, tridiagonalisation
#: and bisection (microseconds per matrix, 2 threads, Jacobi vs bisection: M = 3 0.35 vs 0.92,
#: M = 5 1.4 vs 1.5-2.1, M = 6 level, M = 8 5.0 vs 3.0, M = 16 30 vs 9.8).
_JACOBI_MAX_M = 5
_JACOBI_SWEEPS = 60
#: Bisection steps: halving the Gershgorin bracket [0, ||S||_inf <= M ||S||_2] down to
#: 2 eps relative takes at most log2(M / eps) + 1 < 70 steps for M < 2^16.
_BISECTION_STEPS = 70


@jit
def _jacobi_max_eigenvalue(s):
    """Largest eigenvalue of the symmetric ``s`` (M, M) by cyclic Jacobi rotations (Golub &
    Van Loan, Matrix Computations, 4th ed., Alg. 8.5.3) until the off-diagonal mass is below
    ``eps^2`` times the total; ``s`` is overwritten. Quadratically convergent."""
    M = s.shape[0]
    total = 0.0
    for p in range(M):
        for q in range(M):
            total += s[p, q] * s[p, q]
    for _ in range(_JACOBI_SWEEPS):
        off = 0.0
        for p in range(M - 1):
            for q in range(p + 1, M):
                off += s[p, q] * s[p, q]
        if off <= _EPS * _EPS * total:
            break
        for p in range(M - 1):
            for q in range(p + 1, M):
                spq = s[p, q]
                if spq == 0.0:
                    continue
                theta = (s[q, q] - s[p, p]) / (2.0 * spq)
                t = 1.0 / (abs(theta) + np.sqrt(theta * theta + 1.0))
                if theta < 0.0:
                    t = -t
                c = 1.0 / np.sqrt(t * t + 1.0)
                sn = t * c
                for k in range(M):
                    skp = s[k, p]
                    skq = s[k, q]
                    s[k, p] = c * skp - sn * skq
                    s[k, q] = sn * skp + c * skq
                for k in range(M):
                    spk = s[p, k]
                    sqk = s[q, k]
                    s[p, k] = c * spk - sn * sqk
                    s[q, k] = sn * spk + c * sqk
    biggest = 0.0
    for p in range(M):
        biggest = max(biggest, s[p, p])
    return biggest


@jit
def _tridiagonalize(s, d, e, v, w):
    """Householder reduction of the symmetric ``s`` (M, M) to tridiagonal form, in place
    (Golub & Van Loan, Matrix Computations, 4th ed., Alg. 8.3.1): on return ``d`` holds the
    diagonal and ``e[:M-1]`` the off-diagonal of a tridiagonal matrix with the eigenvalues of
    ``s``. ``v, w`` are (M,) scratch. Backward stable: eigenvalues move by ``O(eps ||s||)``."""
    M = s.shape[0]
    for k in range(M - 2):
        norm2 = 0.0
        for i in range(k + 1, M):
            norm2 += s[i, k] * s[i, k]
        x0 = s[k + 1, k]
        alpha = -np.sqrt(norm2) if x0 >= 0.0 else np.sqrt(norm2)
        e[k] = alpha
        vnorm2 = norm2 - x0 * x0 + (x0 - alpha) * (x0 - alpha)
        if vnorm2 == 0.0:
            e[k] = x0
            continue
        for i in range(k + 1, M):
            v[i] = s[i, k]
        v[k + 1] = x0 - alpha
        beta = 2.0 / vnorm2
        # p = beta S22 v, then w = p - (beta p.v / 2) v; S22 -= v w^T + w v^T
        pv = 0.0
        for i in range(k + 1, M):
            acc = 0.0
            for j in range(k + 1, M):
                acc += s[i, j] * v[j]
            w[i] = beta * acc
            pv += w[i] * v[i]
        half = 0.5 * beta * pv
        for i in range(k + 1, M):
            w[i] -= half * v[i]
        for i in range(k + 1, M):
            for j in range(k + 1, M):
                s[i, j] -= v[i] * w[j] + w[i] * v[j]
    for i in range(M):
        d[i] = s[i, i]
    if M >= 2:
        e[M - 2] = s[M - 1, M - 2]


@jit
def _count_below(d, e, x):
    """Eigenvalues of the symmetric tridiagonal ``(d, e)`` below ``x`` (Sturm sequence: the
    negative pivots of the LDL^T factorisation of ``T - x I``)."""
    M = d.shape[0]
    count = 0
    q = d[0] - x
    for i in range(M):
        if i > 0:
            q = d[i] - x - e[i - 1] * e[i - 1] / q
        if q == 0.0:
            q = -_EPS * (abs(x) + _EPS)
        if q < 0.0:
            count += 1
    return count


@jit
def _bisection_max_eigenvalue(s, work):
    """Largest eigenvalue of the symmetric ``s`` (M, M): :func:`_tridiagonalize` (``s`` is
    overwritten), then bisection on Sturm counts inside the Gershgorin bracket down to 2 eps
    relative. ``work`` is (4, M) float64 scratch."""
    M = s.shape[0]
    d, e = work[0], work[1]
    _tridiagonalize(s, d, e, work[2], work[3])
    lo = 0.0
    hi = 0.0
    for i in range(M):
        lo = max(lo, d[i])
        radius = (abs(e[i - 1]) if i > 0 else 0.0) + (abs(e[i]) if i < M - 1 else 0.0)
        hi = max(hi, d[i] + radius)
    for _ in range(_BISECTION_STEPS):
        if hi - lo <= 2.0 * _EPS * hi:
            break
        mid = 0.5 * (lo + hi)
        if _count_below(d, e, mid) == M:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)


@jit
def _spectral_norm_one(j, s, js, work):
    """``sigma_max(j)`` for one ``(M, M)`` float64 matrix; ``s``, ``js`` (M, M) and ``work``
    (4, M) are float64 scratch.

    Scales ``j`` by its largest entry (no overflow in ``J^T J``), forms ``S = J^T J`` and
    takes ``sigma_max = sqrt(lambda_max(S))``: by cyclic Jacobi for ``M <= 5`` and by
    Householder tridiagonalisation and Sturm bisection above (the faster of the two at each
    size; see :data:`_JACOBI_MAX_M`). Relative accuracy about ``M * eps`` either way.
    Non-finite input gives NaN.
    """
    M = j.shape[0]
    scale = 0.0
    for p in range(M):
        for q in range(M):
            v = abs(j[p, q])
            if not np.isfinite(v):
                return np.nan
            scale = max(scale, v)
    if scale == 0.0:
        return 0.0
    for p in range(M):
        for q in range(M):
            js[p, q] = j[p, q] / scale  # divided once: M^2 divisions, not 2 per product
    for p in range(M):
        for q in range(p, M):
            acc = 0.0
            for k in range(M):
                acc += js[k, p] * js[k, q]
            s[p, q] = acc
            s[q, p] = acc
    if M <= _JACOBI_MAX_M:
        return scale * np.sqrt(_jacobi_max_eigenvalue(s))
    return scale * np.sqrt(_bisection_max_eigenvalue(s, work))


@jit
def _spectral_norm_range(j, lo, hi, out):
    M = j.shape[1]
    s = np.empty((M, M), dtype=np.float64)
    js = np.empty((M, M), dtype=np.float64)
    work = np.empty((4, M), dtype=np.float64)
    for k in range(lo, hi):
        out[k] = _spectral_norm_one(j[k], s, js, work)


@jit_parallel
def spectral_norms(j, n_chunks, out):
    """``out[k] = ||j[k]||_2`` for ``j`` of shape (P, M, M), float64 (one specialisation), in
    ``n_chunks`` parallel chunks (one scratch matrix per chunk)."""
    P = j.shape[0]
    for c in prange(n_chunks):
        _spectral_norm_range(j, c * P // n_chunks, (c + 1) * P // n_chunks, out)
