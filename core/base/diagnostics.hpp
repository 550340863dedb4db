// Diagnostics: problems found in a site file, each with its position.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace pilecore::core {

struct Position {
  std::size_t line = 0;    // 1-based; 0 = unknown
  std::size_t column = 0;  // 1-based
};

enum class Severity { error, warning };

struct Diagnostic {
  std::string file;
  Position pos;
  Severity severity = Severity::error;
  std::string message;

  /// "file:line:column: error: message", the form editors and compilers use.
  [[nodiscard]] std::string format() const;
};

class Diagnostics {
 public:
  explicit Diagnostics(std::string file = {}) : file_(std::move(file)) {}

  void error(Position pos, std::string message) { add(pos, Severity::error, std::move(message)); }
  void warning(Position pos, std::string message) { add(pos, Severity::warning, std::move(message)); }
  void add(Position pos, Severity severity, std::string message) {
    items_.push_back(Diagnostic{file_, pos, severity, std::move(message)});
  }

  [[nodiscard]] bool has_errors() const;
  [[nodiscard]] std::size_t error_count() const;
  [[nodiscard]] const std::vector<Diagnostic>& items() const { return items_; }
  [[nodiscard]] const std::string& file() const { return file_; }
  /// Sorted by position, one per line.
  [[nodiscard]] std::string format() const;

 private:
  std::string file_;
  std::vector<Diagnostic> items_;
};

}  // namespace pilecore::core
