"""Abstract model contracts: one flat parameter vector with named views, save/load.

Two families share :class:`Model`:

* :class:`LatentRNN` -- latent recurrent maps ``z_t = F_theta(z_{t-1})`` with an identity
  observation model (the first ``n_obs`` latents are the observations), trained with
  generalized teacher forcing (Hess et al., ICML 2023) and solved in parallel with DEER /
  GTF-DEER (Lim et al., ICLR 2024; Hess, Goetz & Durstewitz, arXiv:2605.12683).
* linear-recurrence state-space models (``models.ssm``), trained teacher-forced.

Every optimiser, finite-difference check and checkpoint sees only ``model.params``, a 1-D
array of length ``n_params``; ``model.unflatten(vector)`` gives named, shaped *views* into
any vector of that length (a gradient, an Adam moment) in a fixed, documented order.
"""

import errno
import importlib
import importlib.metadata
import json
import math
import os
import secrets
import stat
import typing
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import numpy as np

from models._checks import (
    FLOAT_DTYPES,
    Checks,
    as_array,
    check_float_dtype,
    check_path,
    not_numeric,
)
from models._signals import signals_deferred
from models.data import NPY_MAGIC, ZIP_MAGIC, MissingFileError, not_numpy_reason, to_sd_units
from parscan._arguments import masked_problem
from parscan._buffers import short_of_memory
from parscan._jit import jit

#: Layout version of model files (``format_version`` entry). Files written before the entry
#: existed are format 1; :func:`load` refuses files of a later format.
FORMAT_VERSION = 1

#: model class name -> defining module; :func:`load` imports only the module it needs.
MODEL_MODULES = {
    "ShPLRNN": "models.shplrnn",
    "ClippedShPLRNN": "models.shplrnn",
    "ALRNN": "models.alrnn",
    "PLRNN": "models.alrnn",
    "LinearSSM": "models.ssm",
    "SelectiveSSM": "models.ssm",
}


def astype_hint(dtype) -> str:
    """``" or model.astype('<dtype>')"`` when a model can take ``dtype`` (float32/float64),
    else ``""``: the tail of a dtype-mismatch message."""
    dt = np.dtype(dtype)
    return f" or model.astype({dt.name!r})" if dt in FLOAT_DTYPES else ""


def format_bytes(n: int) -> str:
    """``n`` bytes (an int >= 0, any size) to three significant digits in binary units, e.g.
    ``"218 TiB"``."""
    value, units = Decimal(n), ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"]
    while value >= 1000 and len(units) > 1:
        value /= 1024
        units.pop(0)
    return f"{value:.3g} {units[0]}"


def check_finite_params(
    params: np.ndarray, where: str, name: str = "parameters", remedy: str = ""
) -> None:
    """Raise ``ValueError`` naming ``where`` and the first NaN/inf entry of the parameter
    vector ``params`` (real, 1-D): ``"<where>: <name> contain NaN or inf (first at index
    3).<remedy>"`` (``remedy``: sentences with a leading space, or empty)."""
    finite = np.isfinite(params)
    if not np.all(finite):
        first = int(np.argmin(finite))
        raise ValueError(f"{where}: {name} contain NaN or inf (first at index {first}).{remedy}")


class TooLargeForThisMachine(ValueError):
    """A model, or a run or batch of states, that needs more memory than this machine can
    allocate (or has available now)."""


def beyond_available(n_bytes: int) -> str | None:
    """``"more than the <size> of memory available now"`` if an allocation of ``n_bytes``
    needs more (:func:`parscan._buffers.short_of_memory`); else None."""
    available = short_of_memory(n_bytes)
    if available is None:
        return None
    return f"more than the {format_bytes(available)} of memory available now"


def allocated(make, n_bytes: int, where: str, what: str, fix: str = "pass fewer at a time"):
    """``make()`` (NumPy allocations of ``n_bytes`` in all), with a size beyond the memory
    available now (:func:`beyond_available`), one this machine cannot allocate
    (``MemoryError``) or one NumPy cannot hold (``ValueError``) refused as a ``ValueError``
    naming ``where``, ``what`` is allocated and the ``fix``."""
    limit = beyond_available(n_bytes)
    if limit is None:
        try:
            return make()
        except (MemoryError, ValueError):
            limit = "more than this machine can allocate"
    raise TooLargeForThisMachine(f"{where}: {what} need {format_bytes(n_bytes)}, {limit}; {fix}.")


def new_run(shape: tuple[int, ...], dtype, where: str) -> np.ndarray:
    """``np.empty(shape, dtype)``: the output of free runs, ``shape`` ``(..., n_steps, D)``.

    A size NumPy cannot hold (a byte count beyond ``intp``), one beyond the memory available
    now (:func:`beyond_available`) or one this machine cannot allocate (``MemoryError``)
    raises ``ValueError`` naming ``where``, the memory needed and the fix.

    Parameters
    ----------
    shape : tuple of int
        ``(*starts, n_steps, D)``: one run of ``n_steps`` steps of ``D`` values per start.
    dtype : numpy dtype
        Of the runs.
    where : str
        The public method the message names, e.g. ``"ShPLRNN.generate"``.

    Returns
    -------
    ndarray
        Uninitialised, C-contiguous.
    """
    n_steps, width = shape[-2:]
    starts = math.prod(shape[:-2])
    per_run = n_steps * width * np.dtype(dtype).itemsize
    if max(per_run, starts * per_run) > np.iinfo(np.intp).max:
        limit = "more than NumPy can address"
    else:
        limit = beyond_available(starts * per_run)
    if limit is None:
        try:
            return np.empty(shape, dtype=dtype)
        except (MemoryError, ValueError):
            limit = "more than this machine can allocate"
    need = format_bytes(per_run) + (" per start" if starts != 1 else "")
    if starts > 1:
        need += f", {format_bytes(starts * per_run)} for the {starts} starts"
    raise TooLargeForThisMachine(
        f"{where}: a free run of {n_steps} steps ({width} {np.dtype(dtype)} values a step) "
        f"needs {need}, {limit}; use fewer steps{' or starts' if starts > 1 else ''} (or "
        f"several shorter runs)."
    )


def _json_default(value):
    """``json.dumps`` hook: NumPy scalars become Python numbers; anything else is refused."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(
        f"metadata values must be JSON types (dict, list, str, int, float, bool, None) or NumPy "
        f"scalars; got {type(value).__name__}. Convert it first (e.g. array.tolist())."
    )


def _non_string_key(value, where: str = "metadata") -> str | None:
    """Where in ``value`` (nested dicts, lists and tuples; acyclic: JSON wrote it) a dict key
    is not a ``str``, e.g. ``"metadata['runs'][1] has the key 2 (int)"``, or None: JSON
    writes such keys as strings, so they would come back from :func:`load_with_metadata` as
    other keys."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has the key {key!r} ({type(key).__name__})"
            found = _non_string_key(item, f"{where}[{key!r}]")
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _non_string_key(item, f"{where}[{i}]")
            if found:
                return found
    return None


def _library_version() -> str | None:
    """The installed parscan distribution's version, or None when it is not installed."""
    try:
        return importlib.metadata.version("parscan")
    except importlib.metadata.PackageNotFoundError:
        return None


class Model(ABC):
    """A learnable model with one flat parameter vector.

    Contract for subclasses
    -----------------------
    * ``__init__`` stores its hyperparameters, calls :meth:`_setup` with the ordered parameter
      specification and then :meth:`init` with the seed.
    * :meth:`param_spec` -- ``[(name, shape), ...]``: the order of blocks in ``params``.
    * :meth:`hyperparameters` -- JSON-able dict such that ``type(self)(**hp)`` rebuilds the
      architecture (parameters are then overwritten by :meth:`load`).
    * :meth:`init` -- (re)initialise ``params`` in place from a seed, returns ``self``.
    * :meth:`generate` -- closed-loop free run in observation space.

    Attributes
    ----------
    params : ndarray, shape (n_params,)
        The parameters, of dtype ``self.dtype`` (float32 or float64); see :attr:`params`.
    n_obs : int
        N, the number of observed dimensions the model reads and predicts.
    standardization : tuple of ndarray (mean, sd), each shape (N,), or None
        Per-dimension mean and standard deviation of the raw training data; stored with the
        model so predictions can be mapped back to data units. See :attr:`standardization`.
    """

    n_obs: int
    dtype: np.dtype

    @property
    def params(self) -> np.ndarray:
        """The parameters, shape ``(n_params,)``, dtype ``self.dtype``.

        The model's own array, the same object for the model's life: writes into it
        (``model.params[...] = x``, an optimiser's in-place step) change the model and are
        not checked. Assigning ``model.params = x`` copies ``x`` into that array after the
        checks of :meth:`set_params` (errors name ``<class>.params``); nothing is written
        when they fail (but ``model.params += x`` adds in place before its assignment checks).
        """
        return self._params

    @params.setter
    def params(self, value) -> None:
        self._params[...] = self._checked_params(value, f"{type(self).__name__}.params")

    @property
    def standardization(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(mean, sd)`` of the raw training data, float64 arrays of shape ``(N,)``, or None.

        Assigning it checks the value as :func:`load` checks a file's (None, or a pair of
        real arrays of shape ``(N,)``, finite, ``sd > 0``; :func:`check_standardization`)
        and stores float64 copies; errors name ``<class>.standardization``.
        """
        return self._standardization

    def __setstate__(self, state: dict) -> None:
        """Unpickle, also a model pickled before ``params`` and ``standardization`` became
        checked properties (its ``__dict__`` holds them under those names)."""
        for name in ("params", "standardization"):
            if name in state:
                state[f"_{name}"] = state.pop(name)
        self.__dict__.update(state)

    @standardization.setter
    def standardization(self, value) -> None:
        where = f"{type(self).__name__}.standardization"
        if value is None:
            self._standardization = None
            return
        try:
            if isinstance(value, dict | str):  # unpacking would read the keys or characters
                raise TypeError
            mean, sd = value
        except (TypeError, ValueError):
            raise TypeError(
                f"{where}: expected None or a pair (mean, sd) of real arrays of shape "
                f"({self.n_obs},); got {type(value).__name__} {value!r:.80}."
            ) from None
        self._standardization = check_standardization(mean, sd, self.n_obs, where)

    def _setup(self, dtype) -> None:
        where = type(self).__name__
        self.dtype = check_float_dtype(dtype, where)
        self._offsets = {}
        offset = 0
        for name, shape in self.param_spec():
            size = math.prod(int(d) for d in shape)  # Python ints: no overflow
            self._offsets[name] = (offset, offset + size, tuple(shape))
            offset += size
        self._standardization = None
        try:
            self._params = np.zeros(offset, dtype=self.dtype)
        except (MemoryError, ValueError):
            size = format_bytes(offset * self.dtype.itemsize)
            raise self._too_large(f"{offset} parameters ({size} of {self.dtype})") from None

    def _too_large(self, needed: str) -> "TooLargeForThisMachine":
        """The refusal of dimensions whose parameters or initialisation need ``needed`` (a
        phrase), more than this machine can allocate."""
        blocks = ", ".join(f"{n} {s}" for n, (_, _, s) in self._offsets.items())
        return TooLargeForThisMachine(
            f"{type(self).__name__}: these dimensions need {needed}, more than this machine "
            f"can allocate; reduce the dimensions ({blocks})."
        )

    def _setup_checked(self, checks: Checks, dtype, seed) -> None:
        """The end of a constructor that gathers its problems in ``checks`` (named after the
        class): add those of ``dtype`` and ``seed``, raise them all, then lay out ``params``
        (:meth:`_setup`) and :meth:`init` them."""
        dtype = checks.float_dtype(dtype)
        seed = checks.seed(seed)
        checks.raise_problems()
        self._setup(dtype)
        try:
            self.init(seed)
        except MemoryError:  # float64 scratch several times the parameters (M x M draws)
            raise self._too_large("float64 scratch for their initialisation") from None

    @abstractmethod
    def param_spec(self) -> list[tuple[str, tuple[int, ...]]]:
        """Ordered ``(name, shape)`` blocks making up the flat parameter vector."""

    @abstractmethod
    def hyperparameters(self) -> dict:
        """Constructor keyword arguments (JSON-able) that rebuild this architecture."""

    @abstractmethod
    def init(self, seed: int = 0) -> "Model":
        """Re-initialise ``params`` in place following the lab's scheme; return ``self``."""

    @abstractmethod
    def generate(self, x0: np.ndarray, n_steps: int) -> np.ndarray:
        """Closed-loop free run from observation(s) ``x0``.

        Parameters
        ----------
        x0 : array_like, shape (..., N)
            Initial observation(s).
        n_steps : int
            Number of steps to generate.

        Returns
        -------
        ndarray, shape (..., n_steps, N)
            The observations ``x_1 .. x_n`` following ``x0`` (``x0`` itself is not included).
            A run that diverges or becomes non-finite is returned as computed (huge, inf or
            NaN entries), not flagged; :func:`models.evaluate` reports such runs.

        Raises
        ------
        TypeError, ValueError
            Naming the method: bad arguments; in the library's models also runs too large
            to allocate (:func:`new_run`).
        """

    def generate_in_data_units(self, x0, n_steps: int) -> np.ndarray:
        """:meth:`generate` from observation(s) in data units, returned in data units.

        ``x0`` is standardised with :attr:`standardization` (as training standardised the
        data), cast to the model's dtype and run by :meth:`generate`; the runs are mapped back
        with ``x * sd + mean`` (:func:`models.destandardize`). A model without a
        standardisation works in its own units.

        Parameters
        ----------
        x0 : array_like, shape (..., N)
            Initial observation(s) in data units, any real dtype.
        n_steps : int
            Number of steps, >= 0.

        Returns
        -------
        ndarray, shape (..., n_steps, N), float64
            The observations following ``x0`` (``x0`` not included), in data units. As for
            :meth:`generate`, a run that diverges or becomes non-finite (also from a
            non-finite ``x0``) is returned as computed, not flagged.

        Raises
        ------
        TypeError, ValueError
            Naming this method: ``x0`` not real or of another shape than ``(..., N)``, a
            finite ``x0`` beyond the model's dtype once standardised, ``n_steps`` not an int
            >= 0, runs too large to allocate in float64 (:func:`new_run`); a run of the model
            too large, naming :meth:`generate`.
        """
        where = f"{type(self).__name__}.generate_in_data_units"
        with Checks(where) as checks:
            x0 = checks.array(x0, "x0")
            if checks.ok("x0") and x0.dtype.kind not in "iuf":
                checks.add(f"x0 must be real numeric; got dtype {x0.dtype}.", wrong_kind=True)
            elif checks.ok("x0") and (x0.ndim < 1 or x0.shape[-1] != self.n_obs):
                checks.add(f"x0 must have shape (..., N) with N={self.n_obs}; got {x0.shape}.")
            n_steps = checks.integer(n_steps, "n_steps", 0)
        mean, sd = self.standardization or (0.0, 1.0)
        out = new_run((*x0.shape[:-1], n_steps, self.n_obs), np.float64, where)
        # the model's run (of its latents, in its dtype; and their observed part) and this
        # float64 copy, together
        # (out's pages are not touched yet: the memory available does not count them)
        runs, width = math.prod(x0.shape[:-1]) * n_steps, getattr(self, "M", self.n_obs)
        observed = self.n_obs if width > self.n_obs else 0  # generate's copy of them
        both = runs * ((width + observed) * self.dtype.itemsize + self.n_obs * 8)
        limit = beyond_available(both)
        if limit is not None:
            raise TooLargeForThisMachine(
                f"{where}: free runs of {n_steps} steps from {math.prod(x0.shape[:-1])} "
                f"start(s) need {format_bytes(both)} (the model's run and its float64 copy in "
                f"data units), {limit}; use fewer steps or starts (or several shorter runs)."
            )
        with np.errstate(over="ignore", invalid="ignore"):
            units = to_sd_units(x0.astype(np.float64), mean, sd)
            z0 = units.astype(self.dtype)
            if np.isinf(z0).sum() != np.isinf(units).sum():  # finite, but not in the dtype
                raise ValueError(
                    f"{where}: x0 in the model's standardised units reaches "
                    f"{np.abs(units[np.isfinite(units)]).max():.3g}, beyond {self.dtype} (it "
                    "would start from inf); use model.astype('float64') or starts nearer the "
                    "training data."
                )
            np.multiply(self.generate(z0, n_steps), sd, out=out)
            out += mean
        return out

    @property
    def n_params(self) -> int:
        return int(self.params.size)

    def unflatten(self, vector: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Named views into ``vector`` (default: ``self.params``), in :meth:`param_spec` order.

        Writing into a view writes into ``vector``, which must therefore be a NumPy array
        (a list is refused with ``TypeError``).
        """
        vec = self.params if vector is None else vector
        if not isinstance(vec, np.ndarray):
            raise TypeError(
                f"{type(self).__name__}.unflatten: expected a numpy array of shape "
                f"({self.n_params},) (the views write into it); got {type(vec).__name__}. Use "
                f"np.asarray(vector)."
            )
        if vec.ndim != 1 or vec.size != self.n_params:
            raise ValueError(
                f"{type(self).__name__}.unflatten: expected a vector of shape "
                f"({self.n_params},); got shape {vec.shape}."
            )
        return {
            name: vec[start:stop].reshape(shape)
            for name, (start, stop, shape) in self._offsets.items()
        }

    def __getitem__(self, name: str) -> np.ndarray:
        """View of the named parameter block, e.g. ``model["W1"]``."""
        if not isinstance(name, str):
            raise TypeError(
                f"{type(self).__name__}: a parameter block is named by a str; got "
                f"{type(name).__name__} {name!r}. Available: {', '.join(self._offsets)}."
            )
        if name not in self._offsets:
            raise KeyError(
                f"{type(self).__name__} has no parameter {name!r}; "
                f"available: {', '.join(self._offsets)}."
            )
        return self.unflatten()[name]

    def set_params(self, params: np.ndarray) -> "Model":
        """Copy ``params`` into the model, cast to ``self.dtype``; return ``self``.

        Parameters
        ----------
        params : array_like, shape (n_params,)
            Real numbers (integer or floating) that are finite in ``self.dtype``.

        Raises
        ------
        TypeError
            Not a real numeric array (bool, complex, strings, objects), or a masked array
            (its masked entries would be read as parameters).
        ValueError
            Wrong shape, NaN/inf, values too large for ``self.dtype`` (inf after the cast),
            or values the model class forbids (the PLRNN's nonzero ``diag(W)``). Nothing is
            written then.
        """
        self.params[...] = self._checked_params(params, f"{type(self).__name__}.set_params")
        return self

    def _checked_params(self, params, where: str) -> np.ndarray:
        """``params`` cast to ``self.dtype`` after the checks of :meth:`set_params` (errors
        name ``where``)."""
        arr = as_array(params, "params", where)
        if arr.dtype.kind not in "iuf":
            raise TypeError(
                f"{where}: expected a real numeric (integer or float) array; got dtype "
                f"{arr.dtype}. Pass real values as a float array, e.g. "
                f"np.asarray(params, dtype=np.float64)."
            )
        if arr.shape != (self.n_params,):
            raise ValueError(f"{where}: expected shape ({self.n_params},); got {arr.shape}.")
        check_finite_params(arr, where)
        with np.errstate(over="ignore"):
            cast = arr.astype(self.dtype)
        if not np.all(np.isfinite(cast)):
            first = int(np.argmin(np.isfinite(cast)))
            raise ValueError(
                f"{where}: parameter {first} = {arr[first]:.6g} overflows {self.dtype} (largest "
                f"finite value {np.finfo(self.dtype).max:.6g}). Rescale the parameters or use "
                f"model.astype('float64')."
            )
        self._check_param_values(cast, where)
        return cast

    def _check_param_values(self, params: np.ndarray, where: str) -> None:
        """Class-specific constraints on a finite parameter vector of the model dtype;
        raise ``ValueError`` naming ``where``. None here (the PLRNN overrides it)."""
        return None

    def _copy_standardization_to(self, other: "Model") -> "Model":
        """Give ``other`` its own copy of this model's standardisation arrays; return it."""
        other.standardization = self.standardization  # the setter copies
        return other

    def copy(self) -> "Model":
        """An independent model with the same architecture, parameters and standardisation
        (copies: nothing is shared with ``self``)."""
        other = type(self)(**self.hyperparameters())
        other.params[...] = self.params
        return self._copy_standardization_to(other)

    def _check_obs(self, x, where: str, what: str = "x", min_ndim: int = 1) -> np.ndarray:
        """``x`` (array_like) as an array of observations ``(..., N)`` (``(..., T+1, N)`` when
        ``min_ndim = 2``) in the model's dtype; ValueError/TypeError naming ``where`` (the
        function checking it, e.g. ``"ShPLRNN.initial_state"``) and ``what``."""
        shape = "(..., T+1, N)" if min_ndim == 2 else "(..., N)"
        return self._check_last_axis(x, where, what, self.n_obs, shape, f"N={self.n_obs}", min_ndim)

    def _check_last_axis(self, x, where, what, size, shape, dims, min_ndim=1) -> np.ndarray:
        """``x`` (array_like) as an array of at least ``min_ndim`` dimensions whose last one
        has ``size`` entries (``shape``, ``dims``: how the message writes it), of the model's
        dtype (a list is converted to it, an array of another dtype refused:
        :func:`models._checks.as_array`); ValueError/TypeError naming ``where``."""
        given, x = x, as_array(x, what, where, self.dtype)
        not_numeric(given, x, where, what)
        if x.ndim < min_ndim or x.shape[-1] != size:
            raise ValueError(f"{where}: {what} must have shape {shape} with {dims}; got {x.shape}.")
        if x.dtype != self.dtype:
            raise TypeError(
                f"{where}: {what} must have dtype {self.dtype}; got {x.dtype}. Use "
                f"np.asarray({what}, dtype=np.{self.dtype}){astype_hint(x.dtype)}."
            )
        return x

    def astype(self, dtype) -> "Model":
        """A copy whose parameters (and computations) use ``dtype`` (float32 or float64).

        The parameters go through the checks of :meth:`set_params`: a value too large for
        ``dtype`` raises ``ValueError`` (it would become inf). The standardisation is copied.
        """
        where = f"{type(self).__name__}.astype"
        hp = dict(self.hyperparameters())
        hp["dtype"] = check_float_dtype(dtype, where).name
        other = type(self)(**hp)
        other.params[...] = other._checked_params(self.params, where)
        return self._copy_standardization_to(other)

    def npz_payload(
        self, metadata: dict | None = None, params=None, *, where: str | None = None
    ) -> dict[str, np.ndarray]:
        """The arrays of a model file: class name, hyperparameters, ``params`` (default
        ``self.params``), standardisation, a free JSON ``metadata`` dict (NumPy scalars in it
        become Python numbers; keys must be strings, tuples come back as lists),
        ``format_version`` (:data:`FORMAT_VERSION`) and, when parscan is installed,
        ``parscan_version``. Errors (metadata that JSON cannot hold or would change) name
        ``where`` (default ``"<class>.npz_payload"``)."""
        where = where or f"{type(self).__name__}.npz_payload"
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(
                f"{where}: metadata must be a dict (a JSON object) or None; got "
                f"{type(metadata).__name__}. Wrap it, e.g. {{'values': metadata}}."
            )
        try:
            meta = json.dumps({} if metadata is None else metadata, default=_json_default)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{where}: metadata cannot be stored as JSON ({exc})") from None
        if found := _non_string_key(metadata):  # JSON wrote it as a string: refused
            raise TypeError(
                f"{where}: metadata keys must be strings (JSON stores the key 1 as '1', and "
                f"loading gives back '1'); {found}. Convert the keys, e.g. "
                "{str(k): v for k, v in d.items()}."
            )
        payload = {
            "model_class": np.array(type(self).__name__),
            "hyperparameters": np.array(json.dumps(self.hyperparameters())),
            "params": self.params if params is None else params,
            "metadata": np.array(meta),
            "format_version": np.array(FORMAT_VERSION),
        }
        version = _library_version()
        if version is not None:
            payload["parscan_version"] = np.array(version)
        if self.standardization is not None:
            payload["data_mean"], payload["data_std"] = self.standardization
        return payload

    def save(self, path, metadata: dict | None = None) -> Path:
        """Write the model to ``path`` (``.npz``, atomically): see :meth:`npz_payload`.

        The file is checked as :func:`load` would check it before anything is written, so
        ``save`` never writes a file that ``load`` refuses.

        Parameters
        ----------
        path : path-like
            Target file; its directory is created if missing. The file gets the usual
            permissions (``0o666`` less the umask).
        metadata : dict, optional
            JSON-able values under ``str`` keys (NumPy scalars are converted to Python
            numbers; tuples are read back as lists).

        Returns
        -------
        pathlib.Path
            The path written.

        Raises
        ------
        TypeError
            ``metadata`` not a dict, or that JSON cannot hold (arrays, objects) or would
            change: a key that is not a ``str`` (JSON would write it as one). Non-finite floats
            are written as the ``NaN`` / ``Infinity`` extension of Python's ``json`` (read
            back by :func:`load_with_metadata`; strict JSON parsers refuse them).
        ValueError
            Parameters that :meth:`set_params` refuses (NaN/inf, a
            PLRNN's nonzero ``diag(W)``) or a standardisation that :func:`load` refuses (not
            finite, ``sd <= 0``), written into the arrays in place; a class that
            :func:`models.load` cannot rebuild (a subclass defined outside the library).
        OSError
            The file cannot be written (see :func:`atomic_save_npz`); the message names this
            method, ``path`` and the reason.
        """
        where = f"{type(self).__name__}.save"
        path = check_path(path, where)
        payload = self.npz_payload(metadata, where=where)
        model_from_fields(payload, f"the model to write to {path}", where)
        return atomic_save_npz(path, payload, where)

    @classmethod
    def load(cls, path) -> "Model":
        """Read a model written by :meth:`save`; a file of another model class is rejected
        (errors as :func:`models.load`'s, naming this method)."""
        model, _ = _load_with_metadata(path, f"{cls.__name__}.load")
        if cls is not Model and not isinstance(model, cls):
            raise ValueError(
                f"{cls.__name__}.load: {path} holds a model of class {type(model).__name__}, "
                f"not {cls.__name__}. Use models.load(path) to load any model."
            )
        return model


def reworded_os_error(exc: OSError, message: str) -> OSError:
    """An exception of ``exc``'s class (``FileNotFoundError``, ``PermissionError``, ...) and
    ``errno`` whose text is ``message``, so that callers catching ``OSError`` or testing
    ``errno`` still work while the message names the public function, the user's path (not a
    temporary file) and the reason. ``strerror`` and ``filename`` stay None: with them set,
    ``str()`` would be ``"[Errno ...] <strerror>: <filename>"`` instead of ``message``."""
    reworded = type(exc)(message)
    reworded.errno = exc.errno
    return reworded


def atomic_save_npz(path, arrays: dict[str, np.ndarray], where: str) -> Path:
    """Write ``arrays`` to ``path`` (``.npz``) atomically (:func:`atomic_write`); returns
    ``path``."""
    return atomic_write(path, lambda fh: np.savez(fh, **arrays), where)


def atomic_write(path, write: Callable[[typing.BinaryIO], None], where: str) -> Path:
    """Write a file atomically: ``write(fh)`` fills a temp file (binary) in the same
    directory, which is flushed, fsynced and moved to ``path`` with :func:`os.replace`.
    Returns ``path``. SIGINT and SIGTERM that arrive meanwhile act once the file is complete
    (:func:`models._signals.signals_deferred`).

    A new file gets the mode of any newly created file (``0o666`` less the process umask),
    not the private ``0o600`` of :func:`tempfile.mkstemp`; a file replaced keeps its mode.
    An ``OSError`` (a directory that cannot be created, a read-only or full file system; a
    ``path`` that is a directory, or a device, pipe or socket, which replacing would swap out
    of the file system) is re-raised as :func:`reworded_os_error` with a message naming
    ``where`` (the public function), ``path`` and the reason; a file already at ``path`` is
    then unchanged. A ``path`` with a NUL byte is a ``ValueError``.
    """
    path = Path(path)
    if "\0" in str(path):  # os calls would raise a ValueError that names no path
        raise ValueError(f"{where}: the path {str(path)!r} contains a NUL byte; remove it.")
    try:
        if path.is_dir():  # os.replace would fail with a reason that does not say this
            raise IsADirectoryError(errno.EISDIR, "it is a directory; name a file inside it")
        if path.exists() and not path.is_file():  # os.replace would swap out a device or FIFO
            raise OSError(
                errno.EEXIST, "it is not a regular file (a device, pipe or socket); name a file"
            )
        folder = next(p for p in path.absolute().parents if os.path.lexists(p))
        if folder.is_symlink() and not folder.exists():  # mkdir would say "File exists"
            raise FileNotFoundError(errno.ENOENT, f"{folder} is a broken symbolic link")
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{folder} is a file, not a folder")
        with signals_deferred():  # a Ctrl-C or SIGTERM now acts once the file is complete
            _write_atomically(path, write)
    except OSError as exc:
        raise reworded_os_error(
            exc,
            f"{where}: cannot write {path} ({exc.strerror or exc}); a file already there is "
            "unchanged. Fix that or choose another path.",
        ) from None
    return path


def _write_atomically(path: Path, write: Callable[[typing.BinaryIO], None]) -> None:
    """The writing of :func:`atomic_write`; raises the ``OSError`` of the failed step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:  # a fresh name; O_EXCL makes the create fail rather than reuse a file
        tmp = path.parent / f".{path.name[:200]}.{secrets.token_hex(8)}.tmp"  # NAME_MAX 255
        try:
            fd = os.open(tmp, flags, 0o666)  # the kernel applies the umask
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        except FileNotFoundError:  # a new file keeps the umask mode
            pass
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _NotNpz(Exception):
    """A file that is not a NumPy file at all (not a damaged one)."""


def read_npz_fields(
    path: Path, where: str, remedy: str = "restore it or save the model again"
) -> dict[str, np.ndarray]:
    """All arrays of the ``.npz`` at ``path``; ValueError if it is missing
    (:class:`models.data.MissingFileError`, also a ``FileNotFoundError``), a directory or
    unreadable (then naming ``where`` and, for a damaged file, the ``remedy``)."""
    if "\0" in str(path):  # the checks below would raise a ValueError naming no path
        raise ValueError(f"{where}: the path {str(path)!r} contains a NUL byte; remove it.")
    try:
        kind = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):  # also a path under a regular file
        raise MissingFileError(f"{where}: no such file {path}.") from None
    except OSError as exc:  # e.g. a name too long for the file system
        raise ValueError(f"{where}: cannot read {path} ({exc.strerror or exc}).") from None
    if stat.S_ISDIR(kind):
        raise ValueError(
            f"{where}: {path} is a directory, not a model file; pass the .npz file inside it "
            f"(e.g. {path / 'model.npz'})."
        )
    if not stat.S_ISREG(kind):
        raise ValueError(
            f"{where}: {path} is not a regular file (a device, pipe or socket); pass a .npz file."
        )
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
            fh.seek(0)
            if head.startswith(NPY_MAGIC):
                raise _NotNpz("it is an .npy file (one array), not an .npz archive of named arrays")
            if not head.startswith(ZIP_MAGIC):
                raise _NotNpz(not_numpy_reason(head, ".npz"))
            with np.load(fh, allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files}
    except (
        OSError,
        ValueError,
        EOFError,
        NotImplementedError,
        zipfile.BadZipFile,
        zlib.error,
    ) as exc:
        raise ValueError(
            f"{where}: {path} is not a readable .npz file ({type(exc).__name__}: {exc}). It "
            f"may be truncated or corrupt; {remedy}."
        ) from None
    except _NotNpz as exc:
        raise ValueError(
            f"{where}: {path}: {exc}; check the path (parscan saves models and checkpoints as "
            ".npz archives)."
        ) from None
    except MemoryError as exc:  # a header that declares a vast array (a damaged file)
        raise ValueError(
            f"{where}: {path} declares an array larger than this machine can hold ({exc}). It "
            f"may be corrupt; {remedy}."
        ) from None


def _json_dict(fields: dict, key: str, path: Path, where: str) -> dict:
    """The JSON object stored as the string array ``fields[key]``."""
    try:
        value = json.loads(str(fields[key]))
    except (ValueError, RecursionError) as exc:  # also an int beyond Python's digit limit
        raise ValueError(
            f"{where}: {path}: the {key!r} entry is not valid JSON ({parse_problem(exc)}); the "
            f"file is corrupt or was not written by model.save."
        ) from None
    if not isinstance(value, dict):
        raise ValueError(
            f"{where}: {path}: the {key!r} entry must be a JSON object (a dict); got "
            f"{type(value).__name__}."
        )
    return value


def parse_problem(exc: Exception) -> str:
    """What :func:`json.loads` refused, in words: the message of its ``JSONDecodeError``;
    arrays or objects nested thousands deep (``RecursionError``); or a number of more digits
    than Python converts (its other ``ValueError``)."""
    if isinstance(exc, json.JSONDecodeError):
        return str(exc)
    if isinstance(exc, RecursionError):
        return "nested too deeply to read"
    return "a number too long to read"


def _check_format(fields: dict, path: Path, where: str) -> None:
    """The file's ``format_version`` (absent: 1) must be an integer this version reads."""
    if "format_version" not in fields:
        return
    value = fields["format_version"]
    if value.shape != () or value.dtype.kind not in "iu" or value < 1:
        raise ValueError(
            f"{where}: {path}: format_version must be a positive integer; got {value!r}. The "
            f"file is corrupt or was not written by model.save."
        )
    if value > FORMAT_VERSION:
        written = fields.get("parscan_version")
        by = f"parscan {written}" if written is not None else "a later parscan"
        raise ValueError(
            f"{where}: {path} has model-file format {int(value)} (written by {by}); this "
            f"parscan ({_library_version() or 'not installed'}) reads format {FORMAT_VERSION}"
            f". Upgrade parscan to load it."
        )


def _build_model(fields: dict, path: Path, where: str) -> Model:
    """The model of class ``fields["model_class"]`` with the file's hyperparameters and
    parameters."""
    name = str(fields["model_class"])
    if name not in MODEL_MODULES:
        raise ValueError(
            f"{where}: {path} holds an unknown model class {name!r}; "
            f"known: {', '.join(sorted(MODEL_MODULES))} (only these can be saved and loaded)."
        )
    model_cls = getattr(importlib.import_module(MODEL_MODULES[name]), name)
    hyper = _json_dict(fields, "hyperparameters", path, where)
    try:
        model = model_cls(**hyper)
    except TooLargeForThisMachine as exc:  # a model another machine saved
        raise ValueError(
            f"{where}: {path} holds a model too large for this machine: {exc}"
        ) from None
    except (TypeError, ValueError) as exc:
        written = fields.get("parscan_version")
        by = f" (this one by parscan {written})" if written is not None else ""
        raise ValueError(
            f"{where}: {path}: the hyperparameters {hyper} do not build a {name} ({exc}). The "
            f"file is corrupt or was written by an incompatible version{by}."
        ) from None
    try:
        model.set_params(fields["params"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {path}: invalid params ({exc})") from None
    return model


def read_standardization(fields: dict, n_obs: int | None, path: Path, where: str):
    """``(data_mean, data_std)`` of the file as float64, or None if it stores none; each of
    shape ``(n_obs,)`` (``n_obs=None``: the length of ``data_mean``), finite, ``sd > 0``."""
    present = [key for key in ("data_mean", "data_std") if key in fields]
    if not present:
        return None
    if len(present) == 1:
        raise ValueError(
            f"{where}: {path} has {present[0]} but not "
            f"{({'data_mean', 'data_std'} - set(present)).pop()}; a standardisation needs both. "
            f"The file is corrupt or was edited; set model.standardization and save it again."
        )
    if n_obs is None:
        n_obs = fields["data_mean"].size
    try:
        return check_standardization(
            fields["data_mean"],
            fields["data_std"],
            n_obs,
            f"{where}: {path}",
            ("data_mean", "data_std"),
        )
    except TypeError as exc:  # in a file, a wrong dtype is damage: a value problem
        raise ValueError(str(exc)) from None


def check_standardization(mean, sd, n_obs: int, where: str, names=("mean", "sd")):
    """``(mean, sd)`` as float64 copies after the checks of a standardisation.

    Parameters
    ----------
    mean, sd : array_like, shape (n_obs,)
        Real (integer or float) arrays; ``mean`` finite, ``sd`` finite and > 0.
    n_obs : int
        N, the number of observed dimensions.
    where : str
        What the messages name first (the public function or attribute).
    names : pair of str
        The names of ``mean`` and ``sd`` in the messages.

    Returns
    -------
    tuple of ndarray, each shape (n_obs,), float64
        New arrays (nothing is shared with the arguments).

    Raises
    ------
    TypeError, ValueError
        A dtype that is not real (``TypeError``), another shape, NaN/inf or ``sd <= 0``
        (``ValueError``); every problem in one message.
    """
    with Checks(where) as checks:
        arrays = []
        for name, x in zip(names, (mean, sd), strict=True):
            masked = masked_problem(x, name)
            if masked is not None:
                checks.add(masked, name, wrong_kind=True)
                arrays.append(None)
                continue
            try:
                arr = np.asarray(x)
            except (TypeError, ValueError):  # ragged nested sequences
                arr = None
                checks.add(
                    f"{name} must be a real array of shape ({n_obs},); got a ragged "
                    f"{type(x).__name__} that is no array.",
                    name,
                    wrong_kind=True,
                )
            arrays.append(arr)
            if arr is None:
                continue
            if arr.dtype.kind not in "iuf" or arr.shape != (n_obs,):
                checks.add(
                    f"{name} must be a real array of shape ({n_obs},), one entry per observed "
                    f"dimension; got dtype {arr.dtype}, shape {arr.shape}.",
                    name,
                    wrong_kind=arr.dtype.kind not in "iuf",
                )
        if checks.ok(*names):
            mean, sd = (np.array(arr, dtype=np.float64) for arr in arrays)
            if not np.all(np.isfinite(mean)) or not np.all(np.isfinite(sd) & (sd > 0)):
                checks.add(
                    f"the standardisation must have a finite {names[0]} and a finite "
                    f"{names[1]} > 0; got {names[0]}={mean}, {names[1]}={sd}."
                )
    return mean, sd


def model_from_fields(fields: dict, path: Path, where: str) -> tuple[Model, dict]:
    """The model and metadata dict described by the arrays of a model file (read by
    :func:`load_with_metadata`, or about to be written by :meth:`Model.save`), after every
    check :func:`load_with_metadata` documents; errors name ``where`` and ``path``."""
    missing = {"model_class", "hyperparameters", "params"} - set(fields)
    if missing:
        raise ValueError(
            f"{where}: {path} is not a parscan model file (missing {sorted(missing)})."
        )
    _check_format(fields, path, where)
    model = _build_model(fields, path, where)
    model.standardization = read_standardization(fields, model.n_obs, path, where)
    metadata = _json_dict(fields, "metadata", path, where) if "metadata" in fields else {}
    return model, metadata


def load_with_metadata(path) -> tuple[Model, dict]:
    """Load any registered model and the ``metadata`` dict saved with it.

    Raises
    ------
    TypeError
        ``path`` not a str or path-like object.
    ValueError
        Naming this function (or ``models.load``, ``<Model>.load``: the one called) and the
        path: an empty path, a missing file (:class:`models.data.MissingFileError`, also a
        ``FileNotFoundError``), a truncated or corrupt file, a directory, a file that is
        not a parscan model (missing entries, unknown class), a ``format_version`` later
        than :data:`FORMAT_VERSION` (files without one are format 1), malformed
        hyperparameters or metadata JSON, hyperparameters the class does not accept,
        invalid ``params`` (see :meth:`Model.set_params`), or an incomplete or invalid
        standardisation (``data_mean`` and ``data_std`` of shape ``(n_obs,)``, finite,
        ``data_std > 0``).
    """
    return _load_with_metadata(path, "models.load_with_metadata")


def load(path) -> Model:
    """Load any parscan model from an ``.npz`` written by ``model.save`` (errors as
    :func:`load_with_metadata`'s, naming ``models.load``)."""
    return _load_with_metadata(path, "models.load")[0]


def _load_with_metadata(path, where: str) -> tuple[Model, dict]:
    """:func:`load_with_metadata`, its errors naming ``where`` (the function called)."""
    path = check_path(path, where)
    return model_from_fields(read_npz_fields(path, where), path, where)


@jit
def _lift(x, L0, z):
    """``z[b, N + i] = sum_j L0[i, j] x[b, j]`` for ``x`` (B, N), ``L0`` (M - N, N), ``z`` (B, M):
    the sum taken over ``j = 0 .. N-1`` in this order, one rounding per product and per sum
    (no contraction to fused multiply-adds), the same for every row whatever ``B``."""
    N = x.shape[1]
    for b in range(x.shape[0]):
        for i in range(L0.shape[0]):
            acc = x[b, 0] * L0[i, 0]
            for j in range(1, N):
                acc += x[b, j] * L0[i, j]
            z[b, N + i] = acc


class LatentRNN(Model):
    """A latent recurrent map ``z_t = F(z_{t-1})`` with identity observation model.

    The first ``n_obs`` (N) of the ``M`` latents are the observations. The initial latent
    state for a window starting at observation ``x_0`` is ``z_0 = [x_0; L0 x_0]`` with the
    learned ``(M - N, N)`` matrix ``L0`` (parameter block ``"L0"``, absent when ``M == N``);
    see DESIGN.md section 4 and Hess et al. (ICML 2023).

    Contract for subclasses (all batched over any leading dimensions ``...``)
    ------------------------------------------------------------------------
    * ``step(z)``: ``(..., M) -> (..., M)``, ``F(z)``.
    * ``jacobian(z)``: ``(..., M) -> (..., M, M)``, ``dF/dz`` (row = output).
    * ``jacobian_diag(z)``: ``(..., M) -> (..., M)``, its diagonal.
    * ``step_and_jacobian(z, diag=False, out=None, backend="auto")``: ``(F(z), J(z))`` in one
      parallel pass (prange over all leading positions), ``J`` of shape ``(..., M, M)`` or,
      with ``diag=True``, ``(..., M)``; ``out=(f_out, j_out)`` reuses caller arrays;
      ``backend="cuda"`` (or device-array input) evaluates on the GPU where the model can.
      This is what the DEER solver calls once per Newton iteration.
    * ``param_vjp(z_prev, cotangent)``: ``sum over ... of (dF/dtheta at z_prev)^T cotangent``,
      a flat vector of shape ``(n_params,)`` (zero in the ``L0`` block).
    * ``norm_bound()``: cheap upper bound on ``sup_z ||dF/dz||_2``.
    * ``simulate(z0, n_steps)``: sequential free run, ``(..., M) -> (..., n_steps, M)``,
      the states ``z_1 .. z_n`` (``z0`` not included). A subclass may also override
      :meth:`_free_run`, the run of checked states whose errors name the method called.
    Host inputs are arrays of the model's dtype, or lists (and Python numbers), which are
    converted to it; an array of another dtype is refused (no silent casts). Shapes and
    dtypes are validated with errors naming the method.

    Optional fused-kernel interface (the piecewise-linear models provide it; see
    ``models._plrnn_kernels``): ``kernel_args()`` (tuple of parameter arrays), ``n_map_params``
    and ``step_functions_jit`` (jitted per-step ``step``, ``vjp_state``, ``vjp_params``).
    ``parscan.sequential_solve`` uses it when present (else a Python loop over ``step``), and
    ``autodiff.gtf_loss_and_grad(method="sequential")`` requires it.
    """

    M: int

    def _init_map_spec(self) -> list[tuple[str, tuple[int, ...]]]:
        return [("L0", (self.M - self.n_obs, self.n_obs))] if self.M > self.n_obs else []

    @abstractmethod
    def step(self, z: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def jacobian(self, z: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def jacobian_diag(self, z: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def step_and_jacobian(
        self, z: np.ndarray, diag: bool = False, out=None, backend: str = "auto"
    ) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def param_vjp(self, z_prev: np.ndarray, cotangent: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def norm_bound(self) -> float: ...

    @abstractmethod
    def simulate(self, z0: np.ndarray, n_steps: int) -> np.ndarray: ...

    def initial_state(self, x0: np.ndarray) -> np.ndarray:
        """``z_0 = [x_0; L0 x_0]``: ``(..., N) -> (..., M)``.

        ``L0 x_0`` is summed over ``j = 0 .. N-1`` in this order (:func:`_lift`), for every
        start alike: a start gives the same bits alone as in any batch (a BLAS product picks
        its kernel, and so its rounding, by the batch's shape), so a chaotic free run from it
        does not depend on the starts beside it.
        """
        where = f"{type(self).__name__}.initial_state"
        x0 = self._check_obs(x0, where, "x0")
        shape = (*x0.shape[:-1], self.M)
        n_bytes = math.prod(shape) * self.dtype.itemsize
        z0 = allocated(lambda: np.zeros(shape, dtype=self.dtype), n_bytes, where, "the states")
        z0[..., : self.n_obs] = x0
        if self.M > self.n_obs:
            flat = z0.reshape(-1, self.M)  # a view: z0 is new and C-contiguous
            _lift(np.ascontiguousarray(x0).reshape(-1, self.n_obs), self["L0"], flat)
        return z0

    def initial_state_vjp(self, x0: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
        """Gradient of ``<initial_state(x0), cotangent>`` w.r.t. ``params`` (the ``L0`` block).

        Parameters
        ----------
        x0 : array_like, shape (..., N)
            Initial observations, of the model dtype.
        cotangent : array_like, shape (..., M)
            Cotangents of ``initial_state(x0)``, same leading shape ``...`` as ``x0``, of the
            model dtype.

        Returns
        -------
        ndarray, shape (n_params,)
            Summed over ``...``; zero outside the ``L0`` block.
        """
        where = f"{type(self).__name__}.initial_state_vjp"
        with Checks(where) as checks:
            with checks.caught("x0"):
                x0 = self._check_obs(x0, where, "x0")
            with checks.caught("cotangent"):
                cot = self._check_last_axis(
                    cotangent, where, "cotangent", self.M, "(..., M)", f"M={self.M}"
                )
            if checks.ok("x0", "cotangent") and cot.shape[:-1] != x0.shape[:-1]:
                checks.add(
                    f"x0 and cotangent must have the same leading shape (one cotangent per "
                    f"initial state); got x0.shape={x0.shape}, cotangent.shape={cot.shape}."
                )
        grad = np.zeros(self.n_params, dtype=self.dtype)
        if self.M > self.n_obs:
            x = x0.reshape(-1, self.n_obs)
            c = cot.reshape(-1, self.M)[:, self.n_obs :]
            self.unflatten(grad)["L0"][...] = c.T @ x
        return grad

    def generate(self, x0: np.ndarray, n_steps: int) -> np.ndarray:
        """Free run from ``initial_state(x0)``, observed part: ``(..., n_steps, N)``.

        A run that diverges or becomes non-finite is returned as computed (huge, inf or NaN
        entries), not flagged; :func:`models.evaluate` reports such runs. Bad arguments and
        runs too large to allocate are refused as by :meth:`initial_state` and
        :meth:`simulate`, naming this method.
        """
        where = f"{type(self).__name__}.generate"
        with Checks(where) as checks:
            with checks.caught("x0"):
                x0 = self._check_obs(x0, where, "x0")
            n_steps = checks.integer(n_steps, "n_steps", 0)
        run = self._free_run(self.initial_state(x0), n_steps, where)
        if self.n_obs == self.M:
            return run
        # the observed part alone (a view would keep all M latents of every step alive), in
        # an array checked against the memory available with the run's pages filled
        observed = new_run((*run.shape[:-1], self.n_obs), self.dtype, where)
        observed[...] = run[..., : self.n_obs]
        return observed

    def _free_run(self, z0: np.ndarray, n_steps: int, where: str) -> np.ndarray:
        """:meth:`simulate` of checked states ``z0`` (..., M) of the model dtype and a checked
        ``n_steps`` >= 0, for the public method ``where``: here :meth:`simulate` itself (its
        errors name it); the piecewise-linear models allocate the run with :func:`new_run`,
        naming ``where``."""
        return self.simulate(z0, n_steps)
