#include "pilectl_accounts.hpp"

#include <date/tz.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <map>
#include <vector>
#include <iostream>
#include <ostream>

#include "account_store.hpp"
#include "card_pins.hpp"
#include "money.hpp"
#include "paths.hpp"

namespace pilecore::cli {

namespace {

namespace fs = std::filesystem;
using core::format_yuan;

class Accounts final : public AccountsCommand {
 public:
  explicit Accounts(CLI::App& app, AccountsGlobals globals) : globals_(globals) {
    cmd_ = app.add_subcommand("accounts", "The member-card accounts payment-card keeps on the pile (accounts: local); safe while pilecored runs");
    cmd_->require_subcommand(1);
    cmd_->add_option("--db", db_, "The account table (default: <state dir>/plugins/<instance>/cards.db)");
    cmd_->add_option("--instance", instance_, "The payment-card instance in the site file")->default_val("card");
    time_zone_opt_ = cmd_->add_option("--time-zone", time_zone_, "The time zone of the site's day, for today's spending (the plugin's time_zone)")->default_val("Asia/Shanghai");

    list_ = cmd_->add_subcommand("list", "Every account: status, balance, daily limit, held and spent today");
    show_ = cmd_->add_subcommand("show", "One account");
    target(show_);
    add_ = cmd_->add_subcommand("add", "Open an account");
    target(add_);
    add_->add_option("--balance-fen", amount_, "Opening balance")->default_val(0)->check(CLI::Range(std::int64_t{0}, std::int64_t{1000000000000}));
    add_->add_option("--daily-limit-fen", limit_, "Most spent in one local day (0: no limit)")->default_val(0)->check(CLI::Range(std::int64_t{0}, std::int64_t{1000000000000}));
    set_balance_ = cmd_->add_subcommand("set-balance", "Set the balance (an operator correction): ACCOUNT|--uid HEX FEN");
    target(set_balance_, "FEN");
    top_up_ = cmd_->add_subcommand("top-up", "Add money to the balance: ACCOUNT|--uid HEX FEN");
    target(top_up_, "FEN");
    block_ = cmd_->add_subcommand("block", "Block the card: it is declined until unblocked");
    target(block_);
    unblock_ = cmd_->add_subcommand("unblock", "Unblock the card");
    target(unblock_);
    set_limit_ = cmd_->add_subcommand("set-limit", "Set the daily limit (0: none): ACCOUNT|--uid HEX FEN");
    target(set_limit_, "FEN");
    remove_ = cmd_->add_subcommand("remove", "Delete the account (refused while a session holds money on it)");
    target(remove_);
    set_pin_ = cmd_->add_subcommand("set-pin",
                                    "Set the card's PIN, read from standard input (4 to 12 digits; never an argument, so never in the shell's "
                                    "history); unlocks a PIN locked after wrong ones. Risk control may ask it at the pile (docs/risk.md)");
    target(set_pin_);
    clear_pin_ = cmd_->add_subcommand("clear-pin", "Remove the card's PIN: a step-up can no longer be answered with one");
    target(clear_pin_);
  }

  [[nodiscard]] bool chosen() const override { return cmd_->parsed(); }

  int run(std::ostream& out, std::ostream& err) override {
    // The global options (pilectl --state-dir, --json), given before or after `accounts`.
    if (globals_.state_dir) state_dir_ = *globals_.state_dir;
    if (globals_.json) json_ = *globals_.json;
    if (globals_.time_zone && !globals_.time_zone->empty() && time_zone_opt_->count() == 0) time_zone_ = *globals_.time_zone;
    try {
      const date::time_zone* zone = nullptr;
      try {
        zone = date::locate_zone(time_zone_);
      } catch (const std::exception&) {
        err << "pilectl: '" << time_zone_ << "' is not a known time zone (an IANA name, e.g. Asia/Shanghai)\n";
        return 1;
      }
      const auto now = std::chrono::time_point_cast<std::chrono::milliseconds>(std::chrono::system_clock::now());
      const date::year_month_day ymd{date::floor<date::days>(date::make_zoned(zone, now).get_local_time())};
      const std::string day = fmt::format("{:04}-{:02}-{:02}", static_cast<int>(ymd.year()), static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()));
      const std::int64_t now_ms = now.time_since_epoch().count();
      const fs::path file = !db_.empty() ? fs::path(db_) : (state_dir_.empty() ? core::default_state_dir() : fs::path(state_dir_)) / "plugins" / instance_ / "cards.db";
      // Only `add` may create the table: a mistyped path elsewhere is an error, not a new file.
      card::AccountStore store(file, add_->parsed() && fs::exists(file.parent_path()));
      if (list_->parsed()) {
        const auto all = store.list(day);
        if (json_) {
          auto a = nlohmann::json::array();
          for (const auto& x : all) a.push_back(to_json(x, day));
          out << a.dump(2) << "\n";
        } else {
          out << fmt::format("{:<40} {:<8} {:>12} {:>12} {:>10} {:>12}\n", "ACCOUNT", "STATUS", "BALANCE", "DAILY LIMIT", "HELD", "SPENT TODAY");
          for (const auto& x : all) {
            out << fmt::format("{:<40} {:<8} {:>12} {:>12} {:>10} {:>12}\n", x.id, x.blocked ? "blocked" : "active", format_yuan(x.balance_fen),
                               x.daily_limit_fen == 0 ? std::string("none") : format_yuan(x.daily_limit_fen), format_yuan(x.held_fen), format_yuan(x.spent_fen));
          }
          out << all.size() << " account(s); amounts in yuan; today is " << day << " (" << time_zone_ << ")\n";
        }
        return 0;
      }
      CLI::App* sub = nullptr;
      for (CLI::App* c : {show_, add_, set_balance_, top_up_, block_, unblock_, set_limit_, remove_, set_pin_, clear_pin_}) {
        if (c->parsed()) sub = c;
      }
      std::int64_t fen = 0;
      const std::string id = account_id(sub, &fen);
      if (show_->parsed()) {
        const auto a = store.find(id, day);
        if (!a) throw std::invalid_argument("no account " + id);
        if (json_) {
          out << to_json(*a, day).dump(2) << "\n";
        } else {
          out << "account      " << a->id << "\nstatus       " << (a->blocked ? "blocked" : "active") << "\nbalance      " << format_yuan(a->balance_fen)
              << " yuan (" << a->balance_fen << " fen)\ndaily limit  "
              << (a->daily_limit_fen == 0 ? std::string("none") : format_yuan(a->daily_limit_fen) + " yuan") << "\nheld         " << format_yuan(a->held_fen)
              << " yuan (open authorisations)\nspent today  " << format_yuan(a->spent_fen) << " yuan (" << day << ", " << time_zone_ << ")\npin          "
              << (card::CardPins(file).has_pin(id) ? "set" : "none") << "\n";
        }
        return 0;
      }
      if (add_->parsed()) {
        store.add(id, amount_, limit_, now_ms);
        out << "account " << id << " opened with " << format_yuan(amount_) << " yuan\n";
      } else if (set_balance_->parsed()) {
        store.set_balance(id, fen, now_ms);
        out << "account " << id << ": balance " << format_yuan(fen) << " yuan\n";
      } else if (top_up_->parsed()) {
        const auto balance = store.top_up(id, fen, now_ms);
        out << "account " << id << ": " << format_yuan(fen) << " yuan added, balance " << format_yuan(balance) << " yuan\n";
      } else if (block_->parsed() || unblock_->parsed()) {
        store.set_blocked(id, block_->parsed(), now_ms);
        out << "account " << id << (block_->parsed() ? " blocked\n" : " unblocked\n");
      } else if (set_limit_->parsed()) {
        store.set_daily_limit(id, fen, now_ms);
        out << "account " << id << ": daily limit " << (fen == 0 ? std::string("none") : format_yuan(fen) + " yuan") << "\n";
      } else if (remove_->parsed()) {
        store.remove(id);
        card::CardPins(file).clear(id);  // a card added again under the same id starts without one
        out << "account " << id << " removed\n";
      } else if (set_pin_->parsed()) {
        std::string pin;
        std::getline(std::cin, pin);
        if (!pin.empty() && pin.back() == '\r') pin.pop_back();
        card::CardPins(file).set(id, pin, now_ms);
        out << "account " << id << ": PIN set\n";
      } else if (clear_pin_->parsed()) {
        out << "account " << id << (card::CardPins(file).clear(id) ? ": PIN removed\n" : ": had no PIN\n");
      }
      return 0;
    } catch (const std::exception& e) {
      err << "pilectl: " << e.what() << "\n";
      return 1;
    }
  }

 private:
  /// ACCOUNT, or --uid for a card known by its UID (the table keeps only the UID's hash); then
  /// the amount where the command takes one. One positional list, because with --uid the
  /// amount is the first word.
  void target(CLI::App* sub, const char* amount = nullptr) {
    sub->add_option("WORDS", words_, amount ? "ACCOUNT FEN (or FEN after --uid)" : "ACCOUNT (as on the card)");
    sub->add_option("--uid", uid_, "Instead of ACCOUNT: the card's UID in hex, for identify_by: uid");
    wants_amount_[sub] = amount != nullptr;
  }

  /// The account id and, for the commands that take one, the amount in fen.
  [[nodiscard]] std::string account_id(CLI::App* sub, std::int64_t* fen) const {
    const bool amount = wants_amount_.at(sub);
    const std::size_t expected = (uid_.empty() ? 1U : 0U) + (amount ? 1U : 0U);
    if (words_.size() != expected) {
      throw std::invalid_argument(std::string("usage: pilectl accounts ") + sub->get_name() + (amount ? " ACCOUNT|--uid HEX FEN" : " ACCOUNT|--uid HEX"));
    }
    if (amount) {
      const std::string& w = words_.back();
      std::size_t used = 0;
      long long v = -1;
      try {
        v = std::stoll(w, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != w.size() || v < 0) throw std::invalid_argument("'" + w + "' is not an amount: a whole number of fen, 0 or more");
      *fen = v;
    }
    if (!uid_.empty()) return card::uid_account_id(std::string_view(uid_));
    return words_.front();
  }

  static nlohmann::json to_json(const card::Account& a, const std::string& day) {
    return {{"account", a.id},          {"status", a.blocked ? "blocked" : "active"}, {"balance_fen", a.balance_fen}, {"daily_limit_fen", a.daily_limit_fen},
            {"held_fen", a.held_fen},   {"spent_fen", a.spent_fen},                   {"day", day}};
  }

  AccountsGlobals globals_;
  CLI::Option* time_zone_opt_ = nullptr;
  CLI::App* cmd_ = nullptr;
  CLI::App *list_ = nullptr, *show_ = nullptr, *add_ = nullptr, *set_balance_ = nullptr, *top_up_ = nullptr, *block_ = nullptr, *unblock_ = nullptr,
           *set_limit_ = nullptr, *remove_ = nullptr, *set_pin_ = nullptr, *clear_pin_ = nullptr;
  std::string db_, state_dir_, instance_, time_zone_, uid_;
  std::vector<std::string> words_;
  std::map<CLI::App*, bool> wants_amount_;
  std::int64_t amount_ = 0, limit_ = 0;
  bool json_ = false;
};

}  // namespace

std::unique_ptr<AccountsCommand> add_accounts_command(CLI::App& app, AccountsGlobals globals) { return std::make_unique<Accounts>(app, globals); }

}  // namespace pilecore::cli
