// pilecore plugin SDK: API version.
//
// A plugin is accepted when its API major equals the core's and its minor is not above the
// core's. The major is also part of the entry symbol's name (pilecore_plugin_v2), so a plugin
// recompiled against a new major cannot pretend to be an old one.
#pragma once

#define PILECORE_API_MAJOR 2
#define PILECORE_API_MINOR 4

#define PILECORE_DETAIL_STR2(x) #x
#define PILECORE_DETAIL_STR(x) PILECORE_DETAIL_STR2(x)
#define PILECORE_DETAIL_CAT2(a, b) a##b
#define PILECORE_DETAIL_CAT(a, b) PILECORE_DETAIL_CAT2(a, b)

/// The one exported symbol of a plugin; carries the API major in its name.
#define PILECORE_ENTRY_SYMBOL PILECORE_DETAIL_CAT(pilecore_plugin_v, PILECORE_API_MAJOR)
#define PILECORE_ENTRY_SYMBOL_NAME PILECORE_DETAIL_STR(PILECORE_ENTRY_SYMBOL)

namespace pilecore {
inline namespace v2 {
inline constexpr unsigned api_major = PILECORE_API_MAJOR;
inline constexpr unsigned api_minor = PILECORE_API_MINOR;
}  // namespace v2
}  // namespace pilecore
