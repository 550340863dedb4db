# pilecore_add_plugin(<name> SOURCES <files...> [LIBRARIES <targets...>] [OUTPUT_DIRECTORY <dir>])
#
# Builds a pilecore plugin: a MODULE library named exactly <name>.so, compiled with hidden
# visibility and a version script so that the entry alias is its only export, linked against
# the SDK only.
# In-tree and out-of-tree plugins use this same function (the pilecore CMake package ships it).
function(pilecore_add_plugin name)
  cmake_parse_arguments(ARG "" "OUTPUT_DIRECTORY" "SOURCES;LIBRARIES" ${ARGN})
  add_library(${name} MODULE ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE pilecore::sdk ${ARG_LIBRARIES})
  set_target_properties(${name} PROPERTIES
    PREFIX ""
    OUTPUT_NAME "${name}"
    CXX_VISIBILITY_PRESET hidden
    C_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  if(ARG_OUTPUT_DIRECTORY)
    set_target_properties(${name} PROPERTIES LIBRARY_OUTPUT_DIRECTORY "${ARG_OUTPUT_DIRECTORY}")
  elseif(DEFINED PILECORE_PLUGIN_OUTPUT_DIR)
    set_target_properties(${name} PROPERTIES LIBRARY_OUTPUT_DIRECTORY "${PILECORE_PLUGIN_OUTPUT_DIR}")
  endif()
  # Every symbol must resolve at link time, so a missing library is a build error, not a
  # refusal on the charger. (Sanitizer runtimes live in the executable, hence the exception.)
  if(NOT CMAKE_CXX_FLAGS MATCHES "-fsanitize" AND NOT PILECORE_SANITIZE)
    target_link_options(${name} PRIVATE -Wl,--no-undefined)
  endif()
  target_link_options(${name} PRIVATE -Wl,-z,now -Wl,-z,relro)
  # Hidden visibility covers our own code only: template instances from headers that ask for
  # default visibility (libstdc++, Boost.System's error categories) and whatever static libraries
  # bring in stay exported, about 65 weak symbols a plugin, which the dynamic linker may bind
  # across objects. The version script leaves the entry symbol (pilecore_plugin_v<major>) the
  # only one; tests/integration/plugin_exports.sh fails on any other.
  set(exports "${CMAKE_CURRENT_BINARY_DIR}/${name}.exports")
  file(CONFIGURE OUTPUT "${exports}" CONTENT "{\n  global: pilecore_plugin_v*;\n  local: *;\n};\n")
  target_link_options(${name} PRIVATE "-Wl,--version-script=${exports}")
  set_property(TARGET ${name} APPEND PROPERTY LINK_DEPENDS "${exports}")
endfunction()
