// pilectl's command-line conventions, shared by every command: usage errors exit 2 (CLI11's own
// codes, 104-109, say nothing to a script), an unknown command gets "did you mean", and the
// manual pages and the bash completion are generated from the same command tree that parses,
// so they cannot drift from it.
#pragma once

#include <CLI/CLI.hpp>

#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace pilecore::cli {

/// Exit statuses (documented in pilectl(1), EXIT STATUS).
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;  ///< the command ran and failed or was refused
inline constexpr int kExitUsage = 2;   ///< the command line (or a value in it) is wrong

/// Parses; nullopt when the command should run, else the exit status after printing help
/// (0 for --help/--version, 2 with the help for a command given without its subcommand) or the
/// usage error (2).
std::optional<int> parse_command_line(CLI::App& app, int argc, char** argv, std::ostream& out, std::ostream& err);

/// The closest of `candidates` to `word` (edit distance at most a third of its length, at
/// least 1), or empty.
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates);

/// Manual pages in troff: pilectl(1) and one pilectl-<command>(1) per command with
/// subcommands or options (pilectl-config-validate(1) ...), keyed by file name.
std::vector<std::pair<std::string, std::string>> manual_pages(const CLI::App& app, const std::string& version);
/// site.yaml(5) from the generated Markdown reference (`pilectl config reference`): its tables
/// become one tagged paragraph per key, so the page holds exactly what the reference holds.
std::string site_reference_man(const std::string& reference_markdown, const std::string& version);
/// A bash completion script for the command tree.
std::string bash_completion(const CLI::App& app);

}  // namespace pilecore::cli
