// `pilectl accounts`: the member-card account table that payment-card keeps on the pile
// (`accounts: local`). pilectl's main only registers it.
#pragma once

#include <CLI/CLI.hpp>

#include <iosfwd>
#include <memory>
#include <string>

namespace pilecore::cli {

class AccountsCommand {
 public:
  virtual ~AccountsCommand() = default;
  /// Whether the command line chose `accounts`.
  [[nodiscard]] virtual bool chosen() const = 0;
  /// Runs it: 0 done, 1 refused or failed (the reason on `err`).
  virtual int run(std::ostream& out, std::ostream& err) = 0;
};

/// pilectl's global options that `accounts` follows (set once the command line is parsed).
struct AccountsGlobals {
  const std::string* state_dir = nullptr;  ///< --state-dir
  const bool* json = nullptr;              ///< --json
  const std::string* time_zone = nullptr;  ///< --time-zone given before `accounts`
};

/// Adds `accounts` and its subcommands to `app`.
std::unique_ptr<AccountsCommand> add_accounts_command(CLI::App& app, AccountsGlobals globals);

}  // namespace pilecore::cli
