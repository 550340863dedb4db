# Install rules beyond the programs, plugins and SDK (which their own CMakeLists install).
#
# <datadir>/pilecore/schema/site.schema.json: the JSON Schema of site files. When configs/schema
# holds a committed copy (`make schema`), the configs/ rule of the top-level CMakeLists installs
# it; otherwise the built pilectl generates it at install time from the plugins built in this
# tree, so that the installed schema always exists and matches the shipped plugins.
if(NOT EXISTS "${PROJECT_SOURCE_DIR}/configs/schema/site.schema.json")
  install(CODE "
    set(schema \"\$ENV{DESTDIR}${PILECORE_INSTALL_DATA_DIR}/schema/site.schema.json\")
    file(MAKE_DIRECTORY \"\$ENV{DESTDIR}${PILECORE_INSTALL_DATA_DIR}/schema\")
    message(STATUS \"Generating: \${schema}\")
    execute_process(
      COMMAND \"$<TARGET_FILE:pilectl>\" --plugin-dir \"${PILECORE_PLUGIN_OUTPUT_DIR}\" config schema -o \"\${schema}\"
      RESULT_VARIABLE rc)
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR \"pilectl config schema failed (\${rc})\")
    endif()
    list(APPEND CMAKE_INSTALL_MANIFEST_FILES \"\${schema}\")
  " COMPONENT Unspecified)
endif()
