"""Fast CPU sparse training kernels (BSR blocks and CSR elements), JIT-built C++ (OpenMP + vectorised).

A block-sparse linear layer's weight ``W`` (``out x in``) is stored as BSR with ``R x C``
blocks, exactly as ``W.to_sparse_bsr((R, C))`` gives it:

* ``values``  float32 ``(nnzb, R, C)`` contiguous, block-row-major order
  (``.values()``),
* ``row_ptr`` int64 ``(out // R + 1,)`` (``.crow_indices()``),
* ``col_idx`` int64 ``(nnzb,)`` block-column index of each kept block (``.col_indices()``).

Activations are row-major ``x (n, in)``, ``dy (n, out)``; outputs are row-major too, so
no transposes of activations are made anywhere.  The three training products:

* :func:`bsr_linear_forward`    ``y  = x @ W^T``                      ``(n, out)``
* :func:`bsr_linear_input_grad` ``dx = dy @ W``                       ``(n, in)``
* :func:`bsr_linear_weight_grad` ``(dy^T @ x)`` at the kept blocks    ``(nnzb, R, C)``

:func:`transpose_structure` precomputes (once per sparsity pattern) the block-column view
the input gradient uses.  The extension is built on first use by
``torch.utils.cpp_extension.load`` (g++ ``-O3 -march=native -fopenmp``) into
``$SPARSEBENCH_CACHE_DIR/kernels`` when that variable is set, else torch's default
extensions directory (``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``).
Kernels run on ``torch.get_num_threads()`` threads (ATen's OpenMP pool).

Fast paths are compiled for ``R, C`` in ``{4, 8, 16, 32}``; any other block shape uses a
correct but slower generic path.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import torch

__all__ = [
    "available",
    "unavailable_reason",
    "bsr_linear_forward",
    "bsr_linear_input_grad",
    "bsr_linear_weight_grad",
    "transpose_structure",
    "csr_spmm",
    "csr_sddmm",
    "FAST_BLOCK_SIZES",
]

FAST_BLOCK_SIZES = (4, 8, 16, 32)
_SOURCES = [Path(__file__).with_name("bsr_cpu.cpp"), Path(__file__).with_name("csr_cpu.cpp")]
_EXT_BASE = "sparsebench_bsr_cpu"

_lock = threading.Lock()
_ext = None
_reason: str | None = None
_tried = False


def _ext_name() -> str:
    """Extension name tagged with the CPU's feature flags: the build uses -march=native, so
    a cache directory shared between different CPUs must not hand one CPU's binary to another."""
    import hashlib
    import platform

    tag = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    tag += line
                    break
    except OSError:
        tag += platform.processor()
    return f"{_EXT_BASE}_{hashlib.sha1(tag.encode()).hexdigest()[:8]}"


def _build_dir() -> str | None:
    root = os.environ.get("SPARSEBENCH_CACHE_DIR")
    if not root:
        return None  # torch's default extensions dir
    d = Path(root).expanduser() / "kernels" / _ext_name()
    d.mkdir(parents=True, exist_ok=True)
    return str(d)


def _ensure_ninja_on_path() -> None:
    """torch checks ``ninja --version`` on PATH; the pip ``ninja`` package may live in an
    un-activated venv's bin, so add its directory when needed."""
    if shutil.which("ninja"):
        return
    try:
        import ninja  # type: ignore

        bin_dir = getattr(ninja, "BIN_DIR", None)
    except Exception:  # pragma: no cover - no ninja package
        bin_dir = None
    if bin_dir and os.path.isfile(os.path.join(bin_dir, "ninja")):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def _first_error_line(exc: BaseException) -> str:
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "error:" in ln.lower() or "fatal" in ln.lower():
            return ln[:300]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _load():
    global _ext, _reason, _tried
    with _lock:
        if _tried:
            return _ext
        _tried = True
        try:
            cxx = os.environ.get("CXX", "c++")
            if shutil.which(cxx) is None:
                _reason = f"C++ compiler {cxx!r} not found on PATH (install g++ or set CXX)"
                return None
            _ensure_ninja_on_path()
            if shutil.which("ninja") is None:
                _reason = "ninja not found (pip install ninja)"
                return None
            from torch.utils.cpp_extension import load

            flags = ["-O3", "-march=native", "-fopenmp"]  # torch adds its own -std
            ext = load(
                name=_ext_name(),
                sources=[str(p) for p in _SOURCES],
                extra_cflags=flags,
                extra_ldflags=["-fopenmp"],
                build_directory=_build_dir(),
                verbose=False,
            )
            # smoke test: one tiny product against dense
            blk = torch.arange(16.0).reshape(1, 4, 4)
            W = torch.zeros(8, 8)
            W[:4, 4:] = blk[0]
            rp, ci = torch.tensor([0, 1, 1]), torch.tensor([1])
            x = torch.arange(16.0).reshape(2, 8)
            y = ext.forward(x, blk, rp, ci, 8)
            if not torch.allclose(y, x @ W.t()):
                _reason = "built extension gave wrong results in its smoke test"
                return None
            _ext = ext
        except Exception as exc:  # build or load failure
            _reason = "kernel build failed: " + _first_error_line(exc)
            _ext = None
        return _ext


def available() -> bool:
    """True when the C++ kernels are built (building them on the first call) and work."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """One line saying why :func:`available` is False (None when available/not tried)."""
    _load()
    return _reason


def _ext_or_raise():
    ext = _load()
    if ext is None:
        raise RuntimeError(f"sparsebench BSR kernels unavailable: {_reason}")
    return ext


# ------------------------------------------------------------------ argument checking
def _check_dense(name: str, t, cols: int | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got device {t.device}")
    if t.dtype != torch.float32:
        raise ValueError(f"{name} must be float32, got {t.dtype}")
    if t.layout != torch.strided:
        raise ValueError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (n, features), got shape {tuple(t.shape)}")
    if cols is not None and t.shape[1] != cols:
        raise ValueError(f"{name} must have {cols} columns, got shape {tuple(t.shape)}")
    if t.stride(1) != 1 or (t.shape[0] > 1 and t.stride(0) < t.shape[1]):
        t = t.contiguous()
    return t


def _check_index(name: str, t, length: int | None = None, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got device {t.device}")
    if t.dtype != dtype:
        raise ValueError(f"{name} must be {str(dtype).removeprefix('torch.')}, got {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if length is not None and t.shape[0] != length:
        raise ValueError(f"{name} must have length {length}, got {t.shape[0]}")
    return t.contiguous()


def _check_structure(row_ptr, col_idx, nnzb: int, n_block_rows: int | None, n_block_cols: int):
    row_ptr = _check_index("row_ptr", row_ptr, None if n_block_rows is None else n_block_rows + 1)
    col_idx = _check_index("col_idx", col_idx, nnzb)
    if row_ptr.shape[0] < 1:
        raise ValueError("row_ptr must have at least one entry")
    if int(row_ptr[0]) != 0 or int(row_ptr[-1]) != nnzb:
        raise ValueError(
            f"row_ptr must start at 0 and end at nnzb={nnzb}, got {int(row_ptr[0])}..{int(row_ptr[-1])}"
        )
    if row_ptr.shape[0] > 1 and bool((row_ptr[1:] < row_ptr[:-1]).any()):
        raise ValueError("row_ptr must be non-decreasing")
    if nnzb and (int(col_idx.min()) < 0 or int(col_idx.max()) >= n_block_cols):
        raise ValueError(f"col_idx entries must lie in [0, {n_block_cols}), got range "
                         f"[{int(col_idx.min())}, {int(col_idx.max())}]")
    return row_ptr, col_idx


def _check_values(values) -> torch.Tensor:
    if not isinstance(values, torch.Tensor):
        raise ValueError(f"values must be a torch.Tensor, got {type(values).__name__}")
    if values.device.type != "cpu":
        raise ValueError(f"values must be on the CPU, got device {values.device}")
    if values.dtype != torch.float32:
        raise ValueError(f"values must be float32, got {values.dtype}")
    if values.dim() != 3 or values.shape[1] < 1 or values.shape[2] < 1:
        raise ValueError(f"values must have shape (nnzb, R, C) with R, C >= 1, got {tuple(values.shape)}")
    return values.contiguous()


def _divide(total: int, block: int, what: str) -> int:
    if total % block:
        raise ValueError(f"{what}={total} is not a multiple of the block size {block}")
    return total // block


# ------------------------------------------------------------------ public API
def bsr_linear_forward(x, values, row_ptr, col_idx, out_features: int) -> torch.Tensor:
    """``y = x @ W^T`` for BSR ``W`` (``out_features x in``).

    x: float32 ``(n, in)`` (row-major; other strides are copied). values/row_ptr/col_idx:
    the BSR of ``W`` (see module doc).  ``in`` is ``x.shape[1]`` and must be a multiple of C;
    ``out_features`` must equal ``(len(row_ptr) - 1) * R``.  Returns float32 ``(n, out_features)``;
    block rows without kept blocks give zero columns.
    """
    values = _check_values(values)
    nnzb, R, C = values.shape
    x = _check_dense("x", x)
    nbc = _divide(x.shape[1], C, "x.shape[1] (in_features)")
    nbr = _divide(int(out_features), R, "out_features")
    row_ptr, col_idx = _check_structure(row_ptr, col_idx, nnzb, nbr, nbc)
    return _ext_or_raise().forward(x, values, row_ptr, col_idx, int(out_features))


def transpose_structure(row_ptr, col_idx, n_block_cols: int):
    """Block-column (CSC-of-blocks) view of a BSR structure, for the input gradient.

    Returns ``(t_row_ptr, t_col_idx, perm)``, all int64: ``t_row_ptr`` ``(n_block_cols + 1,)``
    indexes, per block column, into ``t_col_idx`` (block-row index of each kept block, in
    increasing order) and ``perm`` (index of that block in ``values``).  Compute once per
    sparsity pattern (the pattern, not the values) and pass it to
    :func:`bsr_linear_input_grad`.
    """
    row_ptr = _check_index("row_ptr", row_ptr)
    col_idx = _check_index("col_idx", col_idx)
    nbr = row_ptr.shape[0] - 1
    nnzb = col_idx.shape[0]
    rows = torch.repeat_interleave(torch.arange(nbr, dtype=torch.int64), row_ptr.diff())
    key = col_idx * max(nbr, 1) + rows
    perm = torch.argsort(key, stable=True)
    t_col_idx = rows[perm].contiguous()
    counts = torch.bincount(col_idx, minlength=int(n_block_cols)) if nnzb else torch.zeros(
        int(n_block_cols), dtype=torch.int64)
    t_row_ptr = torch.zeros(int(n_block_cols) + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=t_row_ptr[1:])
    return t_row_ptr, t_col_idx, perm.contiguous()


def bsr_linear_input_grad(dy, values, row_ptr, col_idx, in_features: int, transposed=None) -> torch.Tensor:
    """``dx = dy @ W`` for BSR ``W`` (``out x in_features``).

    dy: float32 ``(n, out)`` with ``out = (len(row_ptr) - 1) * R``.  ``transposed`` is the
    ``(t_row_ptr, t_col_idx, perm)`` from :func:`transpose_structure` for this pattern;
    computed here (cost: a sort of nnzb keys) when None.  Returns float32 ``(n, in_features)``.
    """
    values = _check_values(values)
    nnzb, R, C = values.shape
    nbc = _divide(int(in_features), C, "in_features")
    nbr = _check_index("row_ptr", row_ptr).shape[0] - 1
    dy = _check_dense("dy", dy, nbr * R)
    if transposed is None:
        row_ptr, col_idx = _check_structure(row_ptr, col_idx, nnzb, nbr, nbc)
        transposed = transpose_structure(row_ptr, col_idx, nbc)
    t_row_ptr, t_col_idx, perm = transposed
    t_row_ptr = _check_index("t_row_ptr", t_row_ptr, nbc + 1)
    t_col_idx = _check_index("t_col_idx", t_col_idx, nnzb)
    perm = _check_index("perm", perm, nnzb)
    if int(t_row_ptr[0]) != 0 or int(t_row_ptr[-1]) != nnzb:
        raise ValueError("transposed structure does not match values (t_row_ptr must run 0..nnzb)")
    if nnzb and (int(t_col_idx.min()) < 0 or int(t_col_idx.max()) >= nbr
                 or int(perm.min()) < 0 or int(perm.max()) >= nnzb):
        raise ValueError("transposed structure out of range for this matrix")
    return _ext_or_raise().input_grad(dy, values, t_row_ptr, t_col_idx, perm, int(in_features))


def bsr_linear_weight_grad(dy, x, row_ptr, col_idx, block) -> torch.Tensor:
    """Gradient of the kept blocks: ``(dy^T @ x)`` restricted to the BSR pattern.

    dy: float32 ``(n, out)``, x: float32 ``(n, in)``, block: ``(R, C)``; ``out`` and ``in``
    must be multiples of R and C and ``len(row_ptr) - 1 == out // R``.  Returns float32
    ``(nnzb, R, C)`` in the same (block-row-major) order as ``values``.
    """
    try:
        R, C = (int(b) for b in block)
    except Exception:
        raise ValueError(f"block must be a pair (R, C), got {block!r}") from None
    if R < 1 or C < 1:
        raise ValueError(f"block sizes must be >= 1, got {(R, C)}")
    dy = _check_dense("dy", dy)
    x = _check_dense("x", x)
    if dy.shape[0] != x.shape[0]:
        raise ValueError(f"dy and x must have the same number of rows, got {dy.shape[0]} and {x.shape[0]}")
    nbr = _divide(dy.shape[1], R, "dy.shape[1] (out_features)")
    nbc = _divide(x.shape[1], C, "x.shape[1] (in_features)")
    col_idx_t = _check_index("col_idx", col_idx)
    row_ptr, col_idx = _check_structure(row_ptr, col_idx_t, col_idx_t.shape[0], nbr, nbc)
    return _ext_or_raise().weight_grad(dy, x, row_ptr, col_idx, R, C)


# ------------------------------------------------------------------ CSR (element-wise sparsity)
def _check_csr(row_ptr, col, nnz: int, rows: int, cols: int):
    """Cheap checks only (dtypes, lengths, ends): these run every step. The index values come from
    ``csr_structure`` in the csr representation, which builds them from a mask."""
    row_ptr = _check_index("row_ptr", row_ptr, dtype=torch.int32)
    col = _check_index("col", col, dtype=torch.int32)
    if row_ptr.shape[0] != rows + 1 or col.shape[0] != nnz:
        raise ValueError(f"CSR structure does not match: row_ptr has {row_ptr.shape[0]} entries for {rows} rows, "
                         f"col has {col.shape[0]} for {nnz} values")
    if cols <= 0 and nnz:
        raise ValueError("CSR matrix has no columns but stores values")
    return row_ptr, col


def csr_spmm(row_ptr, col, values, b: torch.Tensor, cols: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``A @ b (+ bias[:, None])`` for ``A`` (rows x cols) in CSR (int32 ``row_ptr``, ``col``; float32
    ``values``) and dense ``b`` (cols, n). Feature-major: pass ``x^T`` to get ``W @ x^T + bias = y^T``.
    Returns (rows, n)."""
    b = _check_dense("b", b)
    if b.shape[0] != cols:
        raise ValueError(f"b must have {cols} rows (the sparse matrix's columns), got shape {tuple(b.shape)}")
    values = _check_dense("values", values.reshape(1, -1)).view(-1)
    row_ptr, col = _check_csr(row_ptr, col, values.shape[0], row_ptr.shape[0] - 1, cols)
    if bias is not None:
        bias = _check_dense("bias", bias.reshape(1, -1), cols=row_ptr.shape[0] - 1).view(-1)
    return _ext_or_raise().csr_spmm(row_ptr, col, values, b, bias)


def csr_sddmm(row_ptr, col, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a @ b^T)`` at the CSR pattern's positions, in its order: ``a`` (rows, n), ``b`` (cols, n)
    dense. With ``a = dy^T`` and ``b = x^T`` this is the weight gradient at the kept positions."""
    a = _check_dense("a", a)
    b = _check_dense("b", b, cols=a.shape[1])
    row_ptr, col = _check_csr(row_ptr, col, col.shape[0], a.shape[0], b.shape[0])
    return _ext_or_raise().csr_sddmm(row_ptr, col, a, b)
