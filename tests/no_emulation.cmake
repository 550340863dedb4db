# Unit tests that cannot pass under qemu-user (`make test-arm64`, the arm64 build run through
# binfmt_misc): they get the label no_emulation, which make test-arm64 excludes (-LE). Each with
# its reason. Read by ctest after gtest_discover_tests' own list (TEST_INCLUDE_FILES, in order).
#
# Isolation.AnIsolatedPluginCannotWriteOutsideItsStateDirectory: asserts that Landlock confines
#   an isolated plugin. qemu-user (7.2, Debian 12) does not implement the landlock_* system calls
#   (ENOSYS), so under emulation the sandbox reports "no landlock", as on a kernel without it,
#   and the write outside succeeds. On the board's real kernel the test runs as on amd64.
foreach(test IN ITEMS
    Isolation.AnIsolatedPluginCannotWriteOutsideItsStateDirectory)
  # (a name that is not, or no longer, a test is ignored: ctest's set_tests_properties is lenient)
  set_tests_properties("${test}" PROPERTIES LABELS "unit;no_emulation")
endforeach()
