# The torch-free CPU code: the kernels (csrc/cpu/kernels.cpp, low_rank_norm.cpp) compiled
# once per ISA, each into its own namespace, and what they share once (isa.cpp, pages.cpp);
# used by the extension (CMakeLists.txt) and by the kernel test (tests/cpp). Sets FASTWN_CPU_OBJECTS.
set(FASTWN_ROOT "${CMAKE_CURRENT_LIST_DIR}/..")
if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64")
  set(FASTWN_FLAGS_scalar "")
  set(FASTWN_FLAGS_avx2 -mavx2 -mfma -mf16c)
  set(FASTWN_FLAGS_avx512 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c)
else()  # other CPUs run the portable code under every name; isa.cpp picks scalar
  set(FASTWN_FLAGS_scalar "")
  set(FASTWN_FLAGS_avx2 "")
  set(FASTWN_FLAGS_avx512 "")
endif()
add_library(fastwn_cpu_common OBJECT "${FASTWN_ROOT}/csrc/cpu/isa.cpp" "${FASTWN_ROOT}/csrc/cpu/pages.cpp")
set_target_properties(fastwn_cpu_common PROPERTIES POSITION_INDEPENDENT_CODE ON)
set(FASTWN_CPU_OBJECTS $<TARGET_OBJECTS:fastwn_cpu_common>)
# Every loop starts on a 64-byte boundary (the assembler then aligns the sections to 64,
# and the linker keeps it): the speed of a short loop that runs from the caches depends on
# where it falls against those boundaries, so without it each link of the same object
# was a different kernel. Zen 4 VM, torch_ab, 1 thread, the same AVX2 source compiled
# both ways and linked into two orders of one program, torch's time over each (x): fp32
# rows forward (256, 2304) 1.62 and 1.07 unaligned, 1.63 and 1.68 aligned; (1024, 1024)
# 1.61 and 1.31 unaligned, 1.62 and 1.61 aligned.
set(FASTWN_ALIGN_LOOPS "")
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  set(FASTWN_ALIGN_LOOPS -falign-loops=64)
endif()
foreach(isa scalar avx2 avx512)
  add_library(fastwn_cpu_${isa} OBJECT "${FASTWN_ROOT}/csrc/cpu/kernels.cpp" "${FASTWN_ROOT}/csrc/cpu/low_rank_norm.cpp")
  target_compile_definitions(fastwn_cpu_${isa} PRIVATE FASTWN_ISA=${isa})
  target_compile_options(fastwn_cpu_${isa} PRIVATE -O3 -fno-math-errno ${FASTWN_ALIGN_LOOPS} ${FASTWN_FLAGS_${isa}})
  set_target_properties(fastwn_cpu_${isa} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  list(APPEND FASTWN_CPU_OBJECTS $<TARGET_OBJECTS:fastwn_cpu_${isa}>)
endforeach()
