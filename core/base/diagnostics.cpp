#include "diagnostics.hpp"

#include <algorithm>
#include <fmt/format.h>

namespace pilecore::core {

std::string Diagnostic::format() const {
  const char* sev = severity == Severity::error ? "error" : "warning";
  if (pos.line == 0) return fmt::format("{}: {}: {}", file, sev, message);
  return fmt::format("{}:{}:{}: {}: {}", file, pos.line, pos.column, sev, message);
}

bool Diagnostics::has_errors() const { return error_count() > 0; }

std::size_t Diagnostics::error_count() const {
  return static_cast<std::size_t>(
      std::count_if(items_.begin(), items_.end(), [](const Diagnostic& d) { return d.severity == Severity::error; }));
}

std::string Diagnostics::format() const {
  std::vector<const Diagnostic*> sorted;
  sorted.reserve(items_.size());
  for (const auto& d : items_) sorted.push_back(&d);
  std::stable_sort(sorted.begin(), sorted.end(), [](const Diagnostic* a, const Diagnostic* b) {
    return std::tie(a->pos.line, a->pos.column) < std::tie(b->pos.line, b->pos.column);
  });
  std::string out;
  for (const auto* d : sorted) {
    out += d->format();
    out += '\n';
  }
  return out;
}

}  // namespace pilecore::core
