// pilecore plugin SDK: the build key.
//
// Objects of the C++ standard library (std::string, std::function, std::vector) cross the
// plugin boundary, so a plugin must share the core's C++ standard library ABI and architecture.
// No Boost type crosses it (Boost.DLL only places the entry alias), so the Boost version is not
// part of the key: a plugin built on a system with another Boost loads. The compiler itself is
// not part of the key either: on Linux, g++ and clang++ follow the same Itanium C++ ABI, and what
// breaks binaries is the library underneath.
#pragma once

#include <cstddef>

#include "pilecore/version.hpp"

#if defined(__aarch64__)
#define PILECORE_BUILD_ARCH "aarch64"
#elif defined(__x86_64__)
#define PILECORE_BUILD_ARCH "x86_64"
#elif defined(__arm__)
#define PILECORE_BUILD_ARCH "arm"
#elif defined(__riscv) && __riscv_xlen == 64
#define PILECORE_BUILD_ARCH "riscv64"
#else
#define PILECORE_BUILD_ARCH "unknown-arch"
#endif

#if defined(_LIBCPP_VERSION)
#define PILECORE_BUILD_CXXLIB "libc++"
#elif defined(__GLIBCXX__)
#if _GLIBCXX_USE_CXX11_ABI
#define PILECORE_BUILD_CXXLIB "libstdc++-cxx11"
#else
#define PILECORE_BUILD_CXXLIB "libstdc++-cxx98"
#endif
#else
#define PILECORE_BUILD_CXXLIB "unknown-cxxlib"
#endif

/// e.g. "x86_64;libstdc++-cxx11"
#define PILECORE_BUILD_KEY PILECORE_BUILD_ARCH ";" PILECORE_BUILD_CXXLIB

#if defined(__clang__)
#define PILECORE_BUILD_COMPILER "clang-" PILECORE_DETAIL_STR(__clang_major__)
#elif defined(__GNUC__)
#define PILECORE_BUILD_COMPILER "gcc-" PILECORE_DETAIL_STR(__GNUC__)
#else
#define PILECORE_BUILD_COMPILER "unknown-compiler"
#endif
