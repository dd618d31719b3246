"""The installed llama.cpp must run on any x86-64 CPU, not only the one that built it.

Regression: llama-cpp-python compiled with its default native build (-march=native) on a
CPU with Intel AMX selects ggml's AMX matrix kernels, whose tile configuration is not fully
initialised by GCC 12: SIGSEGV at ``ldtilecfg`` on the first ``eval()``, which killed every
test that loads SmolLM2. ``make install`` builds llama.cpp for x86-64-v3 (AVX2/FMA/F16C)
with AMX and AVX-512 off; these tests read the machine code of the installed library.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from importlib.util import find_spec
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64",
                                reason="the instruction checks are for x86-64 builds")


def _ggml_cpu_libraries() -> list[Path]:
    spec = find_spec("llama_cpp")
    assert spec is not None and spec.origin, "llama-cpp-python is not installed (make install)"
    libs = sorted((Path(spec.origin).parent / "lib").glob("libggml-cpu*.so*"))
    # the .so, .so.0 and .so.0.x names are links to one file
    unique = {p.resolve() for p in libs}
    assert unique, f"no libggml-cpu library under {Path(spec.origin).parent / 'lib'}"
    return sorted(unique)


@pytest.fixture(scope="module")
def disassembly() -> dict[Path, str]:
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils) is needed to check the llama.cpp build"
    return {lib: subprocess.run([objdump, "-d", "--no-show-raw-insn", str(lib)],
                                check=True, capture_output=True, text=True).stdout
            for lib in _ggml_cpu_libraries()}


def test_no_amx_instructions(disassembly):
    for lib, text in disassembly.items():
        assert "ldtilecfg" not in text, f"{lib} contains AMX code (ldtilecfg): a native build"
        assert "tdpbssd" not in text and "tdpbf16ps" not in text, f"{lib} contains AMX code"


def test_no_avx512_registers(disassembly):
    # AVX-512 code would die with SIGILL on the many CPUs without it (all AMD before Zen 4,
    # Intel client CPUs since Alder Lake)
    for lib, text in disassembly.items():
        assert "%zmm" not in text, f"{lib} uses AVX-512 registers: built for the build machine"


def test_avx2_kernels_present(disassembly):
    # the portable build must still be fast: the AVX2/FMA kernels are compiled in
    assert any("vfmadd" in text and "%ymm" in text for text in disassembly.values())
