// Where the unit tests find the source tree, the programs and the plugins of their build.
//
// The paths are read at run time from `unit_tests.paths`, which CMake writes beside the
// executable, rather than compiled in: with the paths out of the compile lines, a test's object
// is the same in every checkout, so a clean clone (CI) finds it in ccache.
#pragma once

#include <string>

namespace pilecore::test {

struct TestPaths {
  std::string source_dir;          // the source tree (docs, configs, corpus)
  std::string test_plugin_dir;     // plugins built only for the tests
  std::string broken_plugin_dir;   // plugins built to be refused
  std::string plugin_dir;          // the production plugins of this build
  std::string bin_dir;             // pilecored, pilectl, the simulators
};

/// Read once from `<executable>.paths`; a missing or incomplete file ends the run with a message
/// that names it.
const TestPaths& test_paths();

}  // namespace pilecore::test

// A program that has these on its compile line (the crash-injection test, one file) keeps them.
#ifndef PILECORE_TEST_SOURCE_DIR
#define PILECORE_TEST_SOURCE_DIR (::pilecore::test::test_paths().source_dir.c_str())
#endif
#ifndef PILECORE_TEST_PLUGIN_DIR
#define PILECORE_TEST_PLUGIN_DIR (::pilecore::test::test_paths().test_plugin_dir.c_str())
#endif
#ifndef PILECORE_BROKEN_PLUGIN_DIR
#define PILECORE_BROKEN_PLUGIN_DIR (::pilecore::test::test_paths().broken_plugin_dir.c_str())
#endif
#ifndef PILECORE_PLUGIN_DIR
#define PILECORE_PLUGIN_DIR (::pilecore::test::test_paths().plugin_dir.c_str())
#endif
#ifndef PILECORE_BIN_DIR
#define PILECORE_BIN_DIR (::pilecore::test::test_paths().bin_dir.c_str())
#endif
