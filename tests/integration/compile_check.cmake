# Compiles SOURCE against the SDK with -fsyntax-only and checks the outcome.
#   -DCXX=<compiler> -DSDK_INCLUDE=<dir> -DSOURCE=<file> -DEXPECT=fail|pass [-DMUST_NAME=a;b;...]
# EXPECT=fail: the compiler must refuse the file, say PILECORE_PLUGIN's sentence, and name each
# method in MUST_NAME in its "pure within" notes.
execute_process(COMMAND "${CXX}" -std=c++20 -fsyntax-only -I "${SDK_INCLUDE}" "${SOURCE}"
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
set(all "${out}${err}")
if(EXPECT STREQUAL "pass")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "expected ${SOURCE} to compile, it did not:\n${all}")
  endif()
  return()
endif()
if(rc EQUAL 0)
  message(FATAL_ERROR "expected ${SOURCE} to fail to compile, it compiled")
endif()
string(FIND "${all}" "PILECORE_PLUGIN: the plugin class does not implement every method of its kind interface" at)
if(at EQUAL -1)
  message(FATAL_ERROR "the compiler's output lacks PILECORE_PLUGIN's static_assert text:\n${all}")
endif()
string(FIND "${all}" "because the following virtual functions are pure within" at)
if(at EQUAL -1)
  message(FATAL_ERROR "the compiler's output does not list the pure virtual functions:\n${all}")
endif()
foreach(method IN LISTS MUST_NAME)
  # A note line naming the method, e.g. "note:     'virtual ... Sensor::channels() const'".
  string(REGEX MATCH "note:[^\n]*::${method}\\(" found "${all}")
  if(NOT found)
    message(FATAL_ERROR "the compiler's output does not name the missing method '${method}':\n${all}")
  endif()
endforeach()
