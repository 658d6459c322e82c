"""What the CUDA scan kernels compile to, without a GPU: one JSON line per kernel.

Question: between GPU sessions, does a change to ``parscan/_cuda.py`` make the kernels'
machine code leaner or heavier? (Static counts, not speed: ``bench/scan.py --backend cuda``
measures speed, on a GPU.)

Each kernel is compiled as it runs (its launch bounds included) with ``numba.cuda.compile_ptx``
for compute capability 9.0 (no GPU needed), then by ``ptxas -arch=sm_90 -O3 -v``: registers
per thread, spill stores and loads (bytes), stack frame, static shared memory. With
``nvdisasm`` on PATH too, the machine code (SASS) is counted by class: ``instructions``
(static, the whole kernel), ``int`` (integer and address arithmetic, compares, selects, moves
and conversions: :data:`CLASSES`),
``float``, ``global_loads``, ``global_stores``, ``local`` (spill traffic), ``control``;
``int_per_load`` is int over global loads, a rough view of the address arithmetic around each
load. Kernels: the diagonal kernel of each dtype at its :data:`parscan._cuda.DIAG_TUNED`
shape for issue #2's target case (T*D = 1e8, B = 1, D = 16: 16 channels per block, complex128
8: a block spans at most one 128-byte line of channels),
the same with the other way of getting a run again (``--other-hold``) and the dense kernels
(``--dense``).

Tools: ``ptxas`` and ``nvdisasm`` of a CUDA toolkit as new as the NVVM that numba-cuda
compiles with (it writes its own PTX version: NVVM 13.5 writes 9.5, which ptxas 13.0 refuses),
e.g. from pip: ``nvidia-cuda-nvcc`` (ptxas) and ``nvidia-cuda-nvdisasm`` of the same release as
``nvidia-nvvm``, their ``bin`` folder on PATH. Without ``ptxas``, or with one too old, the
script exits with status 2.

    python bench/cuda_code.py
    python bench/cuda_code.py --other-hold --dense
"""

import argparse
import dataclasses
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter

import numpy as np
from _timing import print_row, versions

CC = (9, 0)
#: Channels ``B*D`` of issue #2's target case (B = 1, D = 16): they fix the diagonal kernel's
#: channels per block.
TARGET_CHANNELS = 16
#: SASS opcode classes (the opcode's first word); the rest count as "other".
CLASSES = {
    "int": {
        "IMAD",
        "IADD3",
        "IADD",
        "VIADD",
        "ISETP",
        "SEL",
        "LEA",
        "LOP3",
        "SHF",
        "IMNMX",
        "UIMAD",
        "UIADD3",
        "UISETP",
        "USEL",
        "ULEA",
        "ULOP3",
        "USHF",
        "UMOV",
        "MOV",
        "PLOP3",
        "IABS",
        "I2F",
        "F2I",
        "POPC",
        "FLO",
        "BREV",
        "PRMT",
        "VIMNMX",
        "R2UR",
        "S2R",
        "CS2R",
    },
    "float": {
        "FFMA",
        "FMUL",
        "FADD",
        "FSETP",
        "FSEL",
        "FMNMX",
        "MUFU",
        "DFMA",
        "DMUL",
        "DADD",
        "DSETP",
        "FCHK",
        "F2F",
    },
    "global_loads": {"LDG"},
    "global_stores": {"STG"},
    "local": {"LDL", "STL"},
    "control": {"BRA", "BSSY", "BSYNC", "BAR", "EXIT", "CALL", "RET", "WARPSYNC", "NOP"},
}


class _CapabilityNine:
    compute_capability = CC


def _compile_ptx(kernel, signature):
    """PTX of a jitted kernel for :data:`CC` with its launch bounds, no GPU needed."""
    import numba.cuda.dispatcher
    from numba import cuda

    numba.cuda.dispatcher.get_current_device = lambda: _CapabilityNine()
    bounds = kernel.targetoptions.get("launch_bounds")
    ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=CC, launch_bounds=bounds)
    return ptx


def _ptxas(ptx, folder):
    """``ptxas -v`` of ``ptx``: (resource dict, cubin path)."""
    source, cubin = os.path.join(folder, "k.ptx"), os.path.join(folder, "k.cubin")
    with open(source, "w") as f:
        f.write(ptx)
    run = subprocess.run(
        ["ptxas", f"-arch=sm_{CC[0]}{CC[1]}", "-O3", "-v", source, "-o", cubin],
        capture_output=True,
        text=True,
    )
    if run.returncode:
        error = " ".join(run.stderr.split())
        if "Unsupported .version" in error:
            error += (
                " (this ptxas is older than the NVVM that wrote the PTX: use a CUDA toolkit as "
                "new as numba-cuda's NVVM, e.g. pip install nvidia-cuda-nvcc)"
            )
        raise RuntimeError(f"ptxas failed: {error}")
    info = run.stderr
    number = lambda pattern: int(m.group(1)) if (m := re.search(pattern, info)) else 0  # noqa: E731
    return {
        "registers": number(r"Used (\d+) registers"),
        "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"),
        "stack_bytes": number(r"(\d+) bytes stack frame"),
        "shared_bytes": number(r"(\d+) bytes smem"),
    }, cubin


def _sass_counts(cubin):
    """Instruction counts of the cubin's SASS by :data:`CLASSES` (None without nvdisasm)."""
    if shutil.which("nvdisasm") is None:
        return None
    run = subprocess.run(["nvdisasm", cubin], capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"nvdisasm failed: {' '.join(run.stderr.split())}")
    text = run.stdout
    opcodes = Counter()
    for line in text.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
        if m:
            opcodes[m.group(1)] += 1
    counts = {name: sum(opcodes[op] for op in ops) for name, ops in CLASSES.items()}
    counts["instructions"] = sum(opcodes.values())
    loads = counts["global_loads"]
    counts["int_per_load"] = round(counts["int"] / loads, 1) if loads else None
    return counts


def kernel_cases(other_hold, dense):
    """(label, dtype, jitted kernel, signature) of the kernels to compile."""
    from parscan import _cuda

    for name in ("float32", "float64", "complex64", "complex128"):
        dtype = np.dtype(name)
        holds = [None] + ([not _cuda.diag_shape(dtype, _cuda.LAUNCH)[1]] if other_hold else [])
        for hold in holds:
            launch = dataclasses.replace(_cuda.LAUNCH, hold=hold)
            kernels = _cuda.make_kernels(dtype, launch)
            items, held, blocks = _cuda.diag_shape(dtype, launch)
            cw = _cuda.diag_channels(TARGET_CHANNELS, dtype, launch)
            label = f"diag items={items} hold={held} blocks_per_sm={blocks} channels={cw}"
            yield label, name, kernels.diag(cw), kernels.diag_signature
        if dense:
            kernels = _cuda.make_kernels(dtype)
            yield "dense", name, kernels.dense, kernels.dense_signature


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--other-hold", action="store_true", help="also the diagonal kernels' other hold"
    )
    parser.add_argument("--dense", action="store_true", help="also the dense kernels")
    args = parser.parse_args(argv)
    if shutil.which("ptxas") is None:
        parser.error(
            "ptxas is not on PATH: install a CUDA toolkit as new as numba-cuda's NVVM (e.g. "
            "pip install nvidia-cuda-nvcc) and put its bin folder on PATH"
        )
    info = versions()
    ptxas = subprocess.run(["ptxas", "--version"], capture_output=True, text=True).stdout
    info["ptxas"] = next((line for line in ptxas.splitlines() if "release" in line), ptxas)
    info["numba_cuda"] = importlib.metadata.version("numba-cuda")
    with tempfile.TemporaryDirectory() as folder:
        for label, dtype, kernel, signature in kernel_cases(args.other_hold, args.dense):
            try:
                resources, cubin = _ptxas(_compile_ptx(kernel, signature), folder)
                sass = _sass_counts(cubin)
            except RuntimeError as exc:
                print(f"cuda_code.py: {exc}", file=sys.stderr)
                return 2
            row = {"kernel": label, "dtype": dtype, "arch": f"sm_{CC[0]}{CC[1]}", **resources}
            row["sass"] = sass
            row["versions"] = info
            print_row(row)


if __name__ == "__main__":
    sys.exit(main())
