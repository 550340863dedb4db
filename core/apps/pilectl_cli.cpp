#include "pilectl_cli.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <set>
#include <sstream>

namespace pilecore::cli {

namespace {

std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

/// Commands a person is shown: not the hidden ones (group "").
std::vector<const CLI::App*> visible_subcommands(const CLI::App& app) {
  std::vector<const CLI::App*> out;
  for (const CLI::App* s : app.get_subcommands([](const CLI::App* a) { return !a->get_group().empty(); })) out.push_back(s);
  return out;
}

std::vector<const CLI::Option*> visible_options(const CLI::App& app) {
  return app.get_options([](const CLI::Option* o) { return !o->get_group().empty(); });
}

/// The command that was being parsed when the error came: the deepest one chosen.
CLI::App* deepest(CLI::App* app) {
  for (CLI::App* s : app->get_subcommands()) {
    if (s->parsed()) return deepest(s);
  }
  return app;
}

std::string path_of(const CLI::App* app) {
  std::string path;
  for (const CLI::App* a = app; a != nullptr; a = a->get_parent()) path = a->get_name() + (path.empty() ? "" : " " + path);
  return path;
}

/// Text for troff: backslashes and hyphens escaped, a leading '.' or '\'' made literal, and
/// anything not ASCII (the reference's Chinese period names, dashes) as \[uXXXX], so groff
/// reads the page without preconv and lintian's check finds nothing.
std::string troff(const std::string& text) {
  std::string out;
  bool line_start = true;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (line_start && (c == '.' || c == '\'')) out += "\\&";
    line_start = c == '\n';
    if (c == '\\') {
      out += "\\e";
    } else if (c == '-') {
      out += "\\-";
    } else if (c < 0x80) {
      out += static_cast<char>(c);
    } else {
      const int extra = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC0 ? 1 : 0;
      std::uint32_t cp = extra == 3 ? c & 0x07U : extra == 2 ? c & 0x0FU : c & 0x1FU;
      if (extra == 0 || i + static_cast<std::size_t>(extra) >= text.size()) {
        out += "\\[uFFFD]";  // a stray continuation byte, or a sequence cut short
        continue;
      }
      for (int k = 1; k <= extra; ++k) cp = (cp << 6) | (static_cast<unsigned char>(text[i + static_cast<std::size_t>(k)]) & 0x3FU);
      i += static_cast<std::size_t>(extra);
      char buf[16];
      std::snprintf(buf, sizeof buf, "\\[u%04X]", static_cast<unsigned>(cp));
      out += buf;
    }
  }
  return out;
}

/// "-q, --quiet" or "--db TEXT" or "FILE".
std::string option_words(const CLI::Option* o) {
  if (o->get_positional() && !o->nonpositional()) return o->get_name(true);
  std::string names;
  for (const auto& s : o->get_snames()) names += (names.empty() ? "-" : ", -") + s;
  for (const auto& l : o->get_lnames()) names += (names.empty() ? "--" : ", --") + l;
  if (o->get_type_size() != 0 && !o->get_type_name().empty()) names += " " + o->get_type_name();
  return names;
}

}  // namespace

std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  std::size_t best_d = std::max<std::size_t>(1, word.size() / 3) + 1;
  for (const auto& c : candidates) {
    std::size_t d = edit_distance(word, c);
    if (c.rfind(word, 0) == 0 && word.size() >= 3) d = 1;  // a prefix of it
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  return best;
}

std::optional<int> parse_command_line(CLI::App& app, int argc, char** argv, std::ostream& out, std::ostream& err) {
  try {
    app.parse(argc, argv);
    return std::nullopt;
  } catch (const CLI::CallForHelp& e) {
    app.exit(e, out, err);
    return kExitOk;
  } catch (const CLI::CallForAllHelp& e) {
    app.exit(e, out, err);
    return kExitOk;
  } catch (const CLI::CallForVersion& e) {
    app.exit(e, out, err);
    return kExitOk;
  } catch (const CLI::ParseError& e) {
    CLI::App* at = deepest(&app);
    const auto subs = visible_subcommands(*at);
    if (!subs.empty()) {
      std::string word;
      // CLI11 keeps the word it could not place on the command being parsed or on its parent.
      auto left = at->remaining();
      if (left.empty()) left = app.remaining(true);
      for (const auto& r : left) {
        if (!r.empty() && r[0] != '-') {
          word = r;
          break;
        }
      }
      std::vector<std::string> names;
      for (const CLI::App* s : subs) names.push_back(s->get_name());
      if (!word.empty()) {
        const std::string guess = did_you_mean(word, names);
        err << path_of(at) << ": unknown command '" << word << "'";
        if (!guess.empty()) err << "; did you mean '" << guess << "'?";
        err << "\nCommands: ";
        for (std::size_t i = 0; i < names.size(); ++i) err << (i ? ", " : "") << names[i];
        err << "\n";
        return kExitUsage;
      }
      if (at->get_subcommands().empty() && at->get_require_subcommand_min() > 0) {
        // A command given without the subcommand it needs: what it can be followed by.
        err << at->help();
        return kExitUsage;
      }
    }
    err << path_of(at) << ": " << e.what() << "\nRun '" << path_of(at) << " --help' for its options.\n";
    return kExitUsage;
  }
}

std::vector<std::pair<std::string, std::string>> manual_pages(const CLI::App& root, const std::string& version) {
  std::vector<std::pair<std::string, std::string>> pages;
  const std::string footer = root.get_footer();
  std::function<void(const CLI::App&)> page = [&](const CLI::App& app) {
    const std::string path = path_of(&app);
    std::string name = path;
    std::replace(name.begin(), name.end(), ' ', '-');
    std::string upper = name;
    std::transform(upper.begin(), upper.end(), upper.begin(), [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
    std::string description = app.get_description();
    if (&app == &root) description = "the pilecore command-line tool";
    std::ostringstream m;
    m << ".\\\" Generated by `pilectl manpages` from pilectl's command tree; do not edit.\n";
    m << ".TH " << troff(upper) << " 1 \"\" \"pilectl " << troff(version) << "\" \"pilecore\"\n";
    m << ".SH NAME\n" << troff(name) << " \\- " << troff(description) << "\n";
    const auto subs = visible_subcommands(app);
    std::string positionals;
    for (const CLI::Option* o : visible_options(app)) {
      if (o->get_positional() && !o->nonpositional()) positionals += " " + std::string(o->get_required() ? "" : "[") + o->get_name(true) + (o->get_required() ? "" : "]");
    }
    m << ".SH SYNOPSIS\n.B " << troff(path) << "\n[\\fIOPTIONS\\fR]" << troff(positionals) << (subs.empty() ? "" : " \\fICOMMAND\\fR ...") << "\n";
    m << ".SH DESCRIPTION\n" << troff(app.get_description()) << "\n";
    if (!subs.empty()) {
      m << ".SH COMMANDS\n";
      for (const CLI::App* s : subs) {
        std::string sub_name = path_of(s);
        std::replace(sub_name.begin(), sub_name.end(), ' ', '-');
        std::string d = s->get_description();
        if (!d.empty() && d.back() != '.') d += '.';
        m << ".TP\n.B " << troff(s->get_name()) << "\n" << troff(d) << " See \\fB" << troff(sub_name) << "\\fR(1).\n";
      }
    }
    const auto opts = visible_options(app);
    if (!opts.empty()) {
      m << ".SH OPTIONS\n";
      for (const CLI::Option* o : opts) m << ".TP\n.B " << troff(option_words(o)) << "\n" << troff(o->get_description()) << "\n";
    }
    if (const CLI::App* parent = app.get_parent(); parent != nullptr && parent != &root && visible_options(*parent).size() > 1) {
      std::string parent_name = path_of(parent);
      std::replace(parent_name.begin(), parent_name.end(), ' ', '-');
      m << ".PP\nThe options of \\fB" << troff(parent_name) << "\\fR(1) are accepted too.\n";
    }
    if (&app != &root) {
      m << ".SH GLOBAL OPTIONS\nThe options of \\fBpilectl\\fR(1) (\\-c/\\-\\-config, \\-\\-state\\-dir, \\-\\-socket, \\-\\-json, \\-\\-utc, "
           "\\-\\-time\\-zone, \\-\\-plugin\\-dir) are accepted before or after the command.\n";
    }
    m << ".SH EXIT STATUS\n" << troff(app.get_footer().empty() ? footer : app.get_footer()) << "\n";
    m << ".SH SEE ALSO\n\\fBpilecored\\fR(1), \\fBsite.yaml\\fR(5)";
    if (&app != &root) m << ", \\fBpilectl\\fR(1)";
    m << "\n";
    pages.emplace_back(name + ".1", m.str());
    for (const CLI::App* s : subs) page(*s);
  };
  page(root);
  return pages;
}

std::string site_reference_man(const std::string& md, const std::string& version) {
  std::ostringstream m;
  m << ".\\\" Generated by `pilectl config reference --format man` from the plugins' declarations; do not edit.\n";
  m << ".TH SITE.YAML 5 \"\" \"pilecore " << troff(version) << "\" \"pilecore\"\n";
  m << ".SH NAME\nsite.yaml \\- the pilecore site file, /etc/pilecore/site.yaml\n";
  m << ".SH DESCRIPTION\nOne YAML file describes a site: its connectors, its plugin instances and their configuration. "
       "\\fBpilectl config validate\\fR checks it; \\fBpilecored\\fR refuses to start on any error. Every key follows.\n";
  // Backticks mark code in the Markdown; bold in the page.
  auto inline_text = [](const std::string& t) {
    // Escaped as a whole (a '.' only matters at a line's start), then the code marks set.
    std::string marked;
    bool code = false;
    for (char c : t) {
      if (c == '`') {
        marked += code ? '\x02' : '\x01';
        code = !code;
      } else {
        marked += c;
      }
    }
    if (code) marked += '\x02';
    std::string out;
    for (char c : troff(marked)) {
      if (c == '\x01') {
        out += "\\fB";
      } else if (c == '\x02') {
        out += "\\fR";
      } else {
        out += c;
      }
    }
    return out;
  };
  auto cells = [](const std::string& line) {
    std::vector<std::string> out;
    std::string cell;
    for (std::size_t i = 1; i < line.size(); ++i) {
      if (line[i] == '|') {
        const auto b = cell.find_first_not_of(' ');
        const auto e = cell.find_last_not_of(' ');
        out.push_back(b == std::string::npos ? std::string() : cell.substr(b, e - b + 1));
        cell.clear();
      } else {
        cell += line[i];
      }
    }
    return out;
  };
  std::istringstream in(md);
  std::string line;
  bool fence = false, first_heading = true;
  std::vector<std::string> header;
  while (std::getline(in, line)) {
    if (line.rfind("```", 0) == 0) {
      m << (fence ? ".fi\n" : ".nf\n");
      fence = !fence;
      continue;
    }
    if (fence) {
      m << troff(line.empty() ? line : line) << "\n";
      continue;
    }
    if (line.rfind("# ", 0) == 0) {
      if (!first_heading) m << ".SH " << inline_text(line.substr(2)) << "\n";
      first_heading = false;
      continue;
    }
    if (line.rfind("## ", 0) == 0) {
      std::string h = line.substr(3);
      std::transform(h.begin(), h.end(), h.begin(), [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
      m << ".SH " << inline_text(h) << "\n";
      continue;
    }
    if (line.rfind("### ", 0) == 0) {
      m << ".SS " << inline_text(line.substr(4)) << "\n";
      continue;
    }
    if (line.rfind("|", 0) == 0) {
      auto c = cells(line);
      if (!c.empty() && c[0].rfind("---", 0) == 0) continue;
      if (header.empty()) {
        header = c;
        continue;
      }
      // | Key | Type | Default | Allowed | Description |
      m << ".TP\n" << inline_text(c.empty() ? "" : c[0]) << "\n";
      std::string rest;
      for (std::size_t i = 1; i + 1 < c.size() && i < header.size(); ++i) {
        if (c[i].empty()) continue;
        rest += (rest.empty() ? "" : "; ") + c[i];
      }
      if (c.size() >= 2) m << inline_text(c.back()) << (rest.empty() ? "" : ".\n.br\n" + inline_text(rest)) << "\n";
      continue;
    }
    header.clear();
    if (line.empty()) {
      m << ".PP\n";
      continue;
    }
    m << inline_text(line) << "\n";
  }
  m << ".SH SEE ALSO\n\\fBpilectl\\fR(1), \\fBpilectl\\-config\\-validate\\fR(1), \\fBpilecored\\fR(1)\n";
  return m.str();
}

std::string bash_completion(const CLI::App& root) {
  std::ostringstream s;
  s << "# bash completion for pilectl; generated by `pilectl completion bash` from its command tree.\n";
  s << "_pilectl_words() {\n  case \"$1\" in\n";
  std::set<std::string> value_options;
  std::function<void(const CLI::App&, const std::string&)> node = [&](const CLI::App& app, const std::string& key) {
    std::vector<std::string> words;
    for (const CLI::App* sub : visible_subcommands(app)) words.push_back(sub->get_name());
    // Its own options, then those of the commands above it (fallthrough takes them too).
    for (const CLI::App* a = &app; a != nullptr; a = a->get_parent()) {
      for (const CLI::Option* o : visible_options(*a)) {
        if (o->get_positional() && !o->nonpositional()) continue;
        for (const auto& n : o->get_snames()) words.push_back("-" + n);
        for (const auto& n : o->get_lnames()) words.push_back("--" + n);
        if (o->get_type_size() != 0) {
          for (const auto& n : o->get_snames()) value_options.insert("-" + n);
          for (const auto& n : o->get_lnames()) value_options.insert("--" + n);
        }
      }
    }
    std::set<std::string> seen;
    words.erase(std::remove_if(words.begin(), words.end(), [&](const std::string& w) { return !seen.insert(w).second; }), words.end());
    s << "    \"" << key << "\") echo '";
    for (std::size_t i = 0; i < words.size(); ++i) s << (i ? " " : "") << words[i];
    s << "';;\n";
    for (const CLI::App* sub : visible_subcommands(app)) node(*sub, key.empty() ? sub->get_name() : key + " " + sub->get_name());
  };
  node(root, "");
  s << "  esac\n}\n";
  s << "_pilectl() {\n"
       "  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} path='' w i words\n"
       "  case \"$prev\" in\n    ";
  bool first = true;
  for (const auto& v : value_options) {
    s << (first ? "" : "|") << v;
    first = false;
  }
  s << ")\n      COMPREPLY=($(compgen -f -- \"$cur\")); return;;\n  esac\n"
       "  # The command path so far: the words that are commands at their level.\n"
       "  for ((i = 1; i < COMP_CWORD; i++)); do\n"
       "    w=${COMP_WORDS[i]}\n"
       "    [[ $w == -* ]] && continue\n"
       "    for c in $(_pilectl_words \"$path\"); do\n"
       "      if [[ $c == \"$w\" ]]; then path=${path:+$path }$w; break; fi\n"
       "    done\n"
       "  done\n"
       "  words=$(_pilectl_words \"$path\")\n"
       "  COMPREPLY=($(compgen -W \"$words\" -- \"$cur\"))\n"
       "  [[ ${#COMPREPLY[@]} -eq 0 && $cur != -* ]] && COMPREPLY=($(compgen -f -- \"$cur\"))\n"
       "}\n"
       "complete -F _pilectl pilectl\n";
  return s.str();
}

}  // namespace pilecore::cli
