# Cross build for the pile's board (ARM64, RK3568 class) on a Debian 12 machine with multiarch:
# `scripts/install-build-deps --arch arm64` installs the cross compiler, the :arm64 -dev packages
# (in /usr/lib/aarch64-linux-gnu, found through CMAKE_LIBRARY_ARCHITECTURE, which CMake takes
# from the compiler) and qemu-user-static. No separate sysroot: multiarch is the sysroot.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(PILECORE_CROSS_TRIPLET aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${PILECORE_CROSS_TRIPLET}-gcc)
set(CMAKE_CXX_COMPILER ${PILECORE_CROSS_TRIPLET}-g++)

# pkg-config for the target: Debian's aarch64-linux-gnu-pkg-config reads only the arm64 .pc
# files. The libraries whose -dev package cannot sit beside the native one are unpacked by
# install-build-deps into /opt/pilecore-cross (see there).
set(PKG_CONFIG_EXECUTABLE ${PILECORE_CROSS_TRIPLET}-pkg-config CACHE FILEPATH "pkg-config for the target")
set(PILECORE_CROSS_OVERLAY "/opt/pilecore-cross/${PILECORE_CROSS_TRIPLET}/usr")
set(ENV{PKG_CONFIG_PATH} "${PILECORE_CROSS_OVERLAY}/lib/${PILECORE_CROSS_TRIPLET}/pkgconfig")
list(APPEND CMAKE_PREFIX_PATH "${PILECORE_CROSS_OVERLAY}")

# Tests (ctest, gtest_discover_tests) and anything CMake runs go through qemu. The programs that
# the tests fork/exec (pilecored, pilectl) reach qemu through binfmt_misc, which
# install-build-deps registers. No QEMU_LD_PREFIX: libc6:arm64 puts the loader at
# /lib/ld-linux-aarch64.so.1 and the libraries in /usr/lib/aarch64-linux-gnu, where qemu looks
# (/usr/aarch64-linux-gnu holds the cross toolchain's own libc, another build: not for running).
find_program(PILECORE_QEMU qemu-aarch64-static REQUIRED)
set(CMAKE_CROSSCOMPILING_EMULATOR ${PILECORE_QEMU})
