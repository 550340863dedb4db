// `pilectl accounts`: the member-card account table that payment-card keeps on the pile
// (`accounts: local`). pilectl's main only registers it.
#pragma once

#include <CLI/CLI.hpp>

#include <iosfwd>
#include <memory>

namespace pilecore::cli {

class AccountsCommand {
 public:
  virtual ~AccountsCommand() = default;
  /// Whether the command line chose `accounts`.
  [[nodiscard]] virtual bool chosen() const = 0;
  /// Runs it: 0 done, 1 refused or failed (the reason on `err`).
  virtual int run(std::ostream& out, std::ostream& err) = 0;
};

/// Adds `accounts` and its subcommands to `app`.
std::unique_ptr<AccountsCommand> add_accounts_command(CLI::App& app);

}  // namespace pilecore::cli
