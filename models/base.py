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

import importlib
import json
import os
import tempfile
import zipfile
import zlib
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

#: model class name -> defining module; :func:`load` imports only the module it needs.
MODEL_MODULES = {
    "ShPLRNN": "models.shplrnn",
    "ClippedShPLRNN": "models.shplrnn",
    "ALRNN": "models.alrnn",
    "PLRNN": "models.alrnn",
    "LinearSSM": "models.ssm",
    "SelectiveSSM": "models.ssm",
}


def check_float_dtype(dtype, where: str) -> np.dtype:
    """Return ``dtype`` as a NumPy dtype if it is float32/float64, else raise ``TypeError``."""
    dt = np.dtype(dtype)
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{where}: dtype must be float32 or float64; got {dt}.")
    return dt


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
        The parameters, of dtype ``self.dtype`` (float32 or float64).
    n_obs : int
        N, the number of observed dimensions the model reads and predicts.
    standardization : tuple of ndarray (mean, sd), each shape (N,), or None
        Per-dimension mean and standard deviation of the raw training data; stored with the
        model so predictions can be mapped back to data units.
    """

    params: np.ndarray
    n_obs: int
    dtype: np.dtype
    standardization: tuple[np.ndarray, np.ndarray] | None = None

    def _setup(self, dtype) -> None:
        self.dtype = check_float_dtype(dtype, type(self).__name__)
        spec = self.param_spec()
        self._offsets = {}
        offset = 0
        for name, shape in spec:
            size = int(np.prod(shape, dtype=np.int64))
            self._offsets[name] = (offset, offset + size, tuple(shape))
            offset += size
        self.params = np.zeros(offset, dtype=self.dtype)

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
        x0 : ndarray, shape (..., N)
            Initial observation(s).
        n_steps : int
            Number of steps to generate.

        Returns
        -------
        ndarray, shape (..., n_steps, N)
            The observations ``x_1 .. x_n`` following ``x0`` (``x0`` itself is not included).
        """

    @property
    def n_params(self) -> int:
        return int(self.params.size)

    def unflatten(self, vector: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Named views into ``vector`` (default: ``self.params``), in :meth:`param_spec` order.

        Writing into a view writes into ``vector``.
        """
        vec = self.params if vector is None else vector
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
            Not a real numeric array (bool, complex, strings, objects).
        ValueError
            Wrong shape, NaN/inf, or values too large for ``self.dtype`` (inf after the cast).
        """
        where = f"{type(self).__name__}.set_params"
        arr = np.asarray(params)
        if arr.dtype.kind not in "iuf":
            raise TypeError(
                f"{where}: expected a real numeric (integer or float) array; got dtype "
                f"{arr.dtype}. Pass real values as a float array, e.g. "
                f"np.asarray(params, dtype=np.float64)."
            )
        if arr.shape != (self.n_params,):
            raise ValueError(f"{where}: expected shape ({self.n_params},); got {arr.shape}.")
        if not np.all(np.isfinite(arr)):
            first = int(np.argmin(np.isfinite(arr)))
            raise ValueError(f"{where}: parameters contain NaN or inf (first at index {first}).")
        with np.errstate(over="ignore"):
            cast = arr.astype(self.dtype)
        if not np.all(np.isfinite(cast)):
            first = int(np.argmin(np.isfinite(cast)))
            raise ValueError(
                f"{where}: parameter {first} = {arr[first]:.6g} overflows {self.dtype} (largest "
                f"finite value {np.finfo(self.dtype).max:.6g}). Rescale the parameters or use "
                f"model.astype('float64')."
            )
        self.params[...] = cast
        return self

    def copy(self) -> "Model":
        """An independent model with the same architecture, parameters and metadata."""
        other = type(self)(**self.hyperparameters())
        other.params[...] = self.params
        other.standardization = self.standardization
        return other

    def _check_obs(self, x, method: str, what: str = "x", min_ndim: int = 1) -> np.ndarray:
        """``x`` as an array of observations ``(..., N)`` (``(..., T+1, N)`` when
        ``min_ndim = 2``) in the model's dtype; ValueError/TypeError naming ``method``."""
        x = np.asarray(x)
        if x.ndim < min_ndim or x.shape[-1] != self.n_obs:
            shape = "(..., T+1, N)" if min_ndim == 2 else "(..., N)"
            raise ValueError(
                f"{type(self).__name__}.{method}: {what} must have shape {shape} with "
                f"N={self.n_obs}; got {x.shape}."
            )
        if x.dtype != self.dtype:
            raise TypeError(
                f"{type(self).__name__}.{method}: {what} must have dtype {self.dtype}; got "
                f"{x.dtype}. Use {what}.astype(np.{self.dtype}) or model.astype(...)."
            )
        return x

    def astype(self, dtype) -> "Model":
        """A copy whose parameters (and computations) use ``dtype`` (float32 or float64)."""
        hp = dict(self.hyperparameters())
        hp["dtype"] = np.dtype(dtype).name
        other = type(self)(**hp)
        other.params[...] = self.params.astype(other.dtype)
        other.standardization = self.standardization
        return other

    def npz_payload(self, metadata: dict | None = None, params=None) -> dict[str, np.ndarray]:
        """The arrays of a model file: class name, hyperparameters, ``params`` (default
        ``self.params``), standardisation and a free JSON ``metadata`` dict."""
        payload = {
            "model_class": np.array(type(self).__name__),
            "hyperparameters": np.array(json.dumps(self.hyperparameters())),
            "params": self.params if params is None else params,
            "metadata": np.array(json.dumps(metadata or {})),
        }
        if self.standardization is not None:
            payload["data_mean"] = np.asarray(self.standardization[0], dtype=np.float64)
            payload["data_std"] = np.asarray(self.standardization[1], dtype=np.float64)
        return payload

    def save(self, path, metadata: dict | None = None) -> Path:
        """Write the model to ``path`` (``.npz``, atomically): see :meth:`npz_payload`.
        Returns the path written."""
        return atomic_save_npz(path, self.npz_payload(metadata))

    @classmethod
    def load(cls, path) -> "Model":
        """Read a model written by :meth:`save`; a file of another model class is rejected."""
        model, _ = load_with_metadata(path)
        if cls is not Model and not isinstance(model, cls):
            raise ValueError(
                f"{cls.__name__}.load: {path} holds a {type(model).__name__}, not a "
                f"{cls.__name__}. Use models.load(path) to load any model."
            )
        return model


def atomic_save_npz(path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` to ``path`` (``.npz``) atomically: temp file in the same directory,
    flushed and fsynced, then :func:`os.replace`. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_npz_fields(path: Path, where: str) -> dict[str, np.ndarray]:
    """All arrays of the ``.npz`` at ``path``; ValueError if it is missing or unreadable."""
    if not path.is_file():
        raise ValueError(f"{where}: no such file {path}.")
    try:
        with open(path, "rb") as fh:
            npz = np.load(fh, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("it holds one .npy array, not the named arrays of a model")
            with npz:
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
            f"may be truncated or corrupt; restore it or save the model again."
        ) from None


def _json_dict(fields: dict, key: str, path: Path, where: str) -> dict:
    """The JSON object stored as the string array ``fields[key]``."""
    try:
        value = json.loads(str(fields[key]))
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{where}: {path}: the {key!r} entry is not valid JSON ({exc}); the file is corrupt "
            f"or was not written by model.save."
        ) from None
    if not isinstance(value, dict):
        raise ValueError(
            f"{where}: {path}: the {key!r} entry must be a JSON object (a dict); got "
            f"{type(value).__name__}."
        )
    return value


def _build_model(fields: dict, path: Path, where: str) -> Model:
    """The model of class ``fields["model_class"]`` with the file's hyperparameters and
    parameters."""
    name = str(fields["model_class"])
    if name not in MODEL_MODULES:
        raise ValueError(
            f"{where}: {path} holds an unknown model class {name!r}; "
            f"known: {', '.join(sorted(MODEL_MODULES))}."
        )
    model_cls = getattr(importlib.import_module(MODEL_MODULES[name]), name)
    hyper = _json_dict(fields, "hyperparameters", path, where)
    try:
        model = model_cls(**hyper)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{where}: {path}: the hyperparameters {hyper} do not build a {name} ({exc}). The "
            f"file is corrupt or was written by an incompatible version."
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
    for key in present:
        arr = fields[key]
        if arr.dtype.kind not in "iuf" or arr.shape != (n_obs,):
            raise ValueError(
                f"{where}: {path}: {key} must be a real array of shape ({n_obs},), one entry "
                f"per observed dimension; got dtype {arr.dtype}, shape {arr.shape}."
            )
    mean, sd = (fields[key].astype(np.float64) for key in present)
    if not np.all(np.isfinite(mean)) or not np.all(np.isfinite(sd) & (sd > 0)):
        raise ValueError(
            f"{where}: {path}: the standardisation must have a finite data_mean and a finite "
            f"data_std > 0; got data_mean={mean}, data_std={sd}."
        )
    return mean, sd


def load_with_metadata(path) -> tuple[Model, dict]:
    """Load any registered model and the ``metadata`` dict saved with it.

    Raises
    ------
    ValueError
        Naming ``models.load`` and the path: a missing, truncated or corrupt file, a file that
        is not a parscan model (missing entries, unknown class), malformed hyperparameters or
        metadata JSON, hyperparameters the class does not accept, invalid ``params`` (see
        :meth:`Model.set_params`), or an incomplete or invalid standardisation (``data_mean``
        and ``data_std`` of shape ``(n_obs,)``, finite, ``data_std > 0``).
    """
    where = "models.load"
    path = Path(path)
    fields = read_npz_fields(path, where)
    missing = {"model_class", "hyperparameters", "params"} - set(fields)
    if missing:
        raise ValueError(
            f"{where}: {path} is not a parscan model file (missing {sorted(missing)})."
        )
    model = _build_model(fields, path, where)
    model.standardization = read_standardization(fields, model.n_obs, path, where)
    metadata = _json_dict(fields, "metadata", path, where) if "metadata" in fields else {}
    return model, metadata


def load(path) -> Model:
    """Load any parscan model from an ``.npz`` written by ``model.save``."""
    return load_with_metadata(path)[0]


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
      the states ``z_1 .. z_n`` (``z0`` not included).
    Inputs must have the model's dtype; shapes and dtypes are validated with errors naming
    the method.

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
        """``z_0 = [x_0; L0 x_0]``: ``(..., N) -> (..., M)``."""
        x0 = self._check_obs(x0, "initial_state", "x0")
        z0 = np.zeros((*x0.shape[:-1], self.M), dtype=self.dtype)
        z0[..., : self.n_obs] = x0
        if self.M > self.n_obs:
            z0[..., self.n_obs :] = x0 @ self["L0"].T
        return z0

    def initial_state_vjp(self, x0: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
        """Gradient of ``<initial_state(x0), cotangent>`` w.r.t. ``params`` (the ``L0`` block).

        ``x0`` is ``(..., N)``, ``cotangent`` ``(..., M)``; summed over ``...``.
        """
        grad = np.zeros(self.n_params, dtype=self.dtype)
        if self.M > self.n_obs:
            x = np.asarray(x0).reshape(-1, self.n_obs)
            c = np.asarray(cotangent).reshape(-1, self.M)[:, self.n_obs :]
            self.unflatten(grad)["L0"][...] = c.T @ x
        return grad

    def generate(self, x0: np.ndarray, n_steps: int) -> np.ndarray:
        """Free run from ``initial_state(x0)``, observed part: ``(..., n_steps, N)``."""
        return self.simulate(self.initial_state(x0), n_steps)[..., : self.n_obs]
