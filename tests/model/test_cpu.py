"""CPU features from /proc/cpuinfo, and the kernels chosen for each kind of CPU."""

import pytest

from emoserve.model.cpu import CpuFeatures, cpu_features, parse_cpuinfo

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model name\t: AMD EPYC 9R45
flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16

processor\t: 1
vendor_id\t: SomethingElse
model name\t: not this one
flags\t\t: fpu
"""

# flags as /proc/cpuinfo spells them, one line per kind of CPU the kernels are chosen for
ZEN5 = CpuFeatures("AuthenticAMD", "AMD EPYC Zen 5", frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}),
                   "AVX512")
ZEN3 = CpuFeatures("AuthenticAMD", "AMD EPYC Zen 3", frozenset({"avx2", "fma"}), "AVX2")
SAPPHIRE_RAPIDS = CpuFeatures("GenuineIntel", "Intel Xeon Platinum 8480+",
                              frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
                                         "amx_int8"}), "AVX512")
ICE_LAKE = CpuFeatures("GenuineIntel", "Intel Xeon 8375C", frozenset({"avx2", "avx512f", "avx512_vnni"}), "AVX512")
ALDER_LAKE = CpuFeatures("GenuineIntel", "Intel Core i7-12700", frozenset({"avx2", "avx_vnni"}), "AVX2")
OLD_X86 = CpuFeatures("GenuineIntel", "Intel Xeon E5-2670", frozenset({"avx"}), "DEFAULT")


def test_parse_cpuinfo_reads_vendor_model_and_flags_of_the_first_processor():
    vendor, model, flags = parse_cpuinfo(CPUINFO)
    assert vendor == "AuthenticAMD" and model == "AMD EPYC 9R45"
    assert flags == {"fpu", "sse", "avx2", "avx512f", "avx512_vnni", "avx512_bf16"}
    assert parse_cpuinfo("") == ("", "", frozenset())


@pytest.mark.parametrize("cpu, fp32_linear, native_bf16, vnni, int8", [
    (ZEN5, "onednn", True, True, True),  # MKL would run AVX2 code on an AMD CPU: oneDNN has AVX-512
    (ZEN3, "mkl", False, False, True),  # AVX2 only: MKL is the faster fp32 matmul
    (SAPPHIRE_RAPIDS, "mkl", True, True, True),  # Intel: MKL's own AVX-512 kernels; AMX for bf16
    (ICE_LAKE, "mkl", False, True, True),
    (ALDER_LAKE, "mkl", False, True, True),  # AVX-VNNI without AVX-512
    (OLD_X86, "mkl", False, False, False),  # no AVX2: no int8 kernels
], ids=["zen5", "zen3", "sapphire-rapids", "ice-lake", "alder-lake", "pre-avx2"])
def test_kernels_are_chosen_by_vendor_and_isa(cpu, fp32_linear, native_bf16, vnni, int8):
    assert cpu.fp32_linear == fp32_linear
    assert cpu.native_bf16 is native_bf16 and cpu.vnni is vnni and cpu.int8_linear is int8


def test_this_machine_is_described_by_its_name_and_isa():
    cpu = cpu_features()
    assert cpu.capability  # torch always reports one
    described = cpu.describe()
    assert (cpu.model_name or "") in described
    assert ("AVX-512" in described) == cpu.avx512
