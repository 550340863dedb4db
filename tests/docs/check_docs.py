#!/usr/bin/env python3
"""Runs the commands and site-file snippets of the docs through the real programs.

    check_docs.py --pilectl BIN --pilecored BIN --source DIR DOC.md...

The conventions it checks are in docs/writing-docs.md:
- every line of a ```sh block that starts with `pilectl` or `pilecored` (after an optional `$ `)
  is run in a temporary state directory, against a valid temporary site file where it names
  /etc/pilecore/site.yaml or site.yaml: pilectl must not refuse it as a usage error (an unknown
  command or option, a missing argument) nor crash; pilecored runs with --check and must start;
- every ```yaml block has a marker comment before it saying what it is (site-file,
  site-fragment, config of: PLUGIN, file: PATH, not-checked: REASON), and site files, fragments
  and plugin configurations must pass `pilectl config validate`;
- a command outside a ```sh block, or site YAML outside a ```yaml block, is an error, so that a
  snippet cannot escape the check by its fence;
- what the prose says of the source tree: every `make TARGET` is a Makefile target, the API
  version ("now 2.4", "today pilecore-abi-2 (>= 2.4)") is version.hpp's, and packaging.md's
  Lintian section lists exactly the overrides packaging/deb/ has.
Exit status 0 when everything passed, 1 otherwise; each problem is printed as FILE:LINE: message.
"""
import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile

FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*(site-file|site-fragment(?: continues)?(?: with: [^>]*?)?|config of:\s*(\S+)|file:\s*(\S+)|not-checked:\s*(.+?))\s*-->\s*$")
ANY_MARKER = re.compile(r"^\s*<!--\s*(site-file|site-fragment|config of|file:|not-checked)")
SECTION = re.compile(r"^([A-Za-z_][\w-]*):(.*)$")
SITE_SECTIONS = {"site", "connectors", "plugins", "tariffs", "payment", "links", "storage", "log", "charging", "identity",
                 "containment", "risk", "uplink"}
USAGE_ERROR = re.compile(r"for its options|unknown command|^usage:|^Commands:|The following arguments were not expected", re.M)

# What a fragment is merged into: the smallest site pilecored starts.
BASE_SITE = """site:
  id: DOCS-CHECK
  name: Docs check
  location: {lat: 31.2304, lon: 121.4737}
  timezone: Asia/Shanghai
connectors:
  - {id: 1, type: gbt-dc, max_power_w: 60000}
plugins:
  power-1:
    plugin: sim-power
    connector: 1
"""


class Block:
    def __init__(self, doc, line, lang, lines, marker, marker_line):
        self.doc, self.line, self.lang, self.lines, self.marker, self.marker_line = doc, line, lang, lines, marker, marker_line

    @property
    def where(self):
        return f"{self.doc}:{self.line}"


def blocks_of(doc):
    """The fenced blocks of a Markdown file, each with the marker comment before it, if any."""
    with open(doc, encoding="utf-8") as f:
        text = f.read().split("\n")
    out = []
    i = 0
    while i < len(text):
        m = FENCE.match(text[i])
        if not m:
            i += 1
            continue
        indent, lang, start = len(m.group(1)), m.group(2), i
        body = []
        i += 1
        while i < len(text) and not re.match(r"^\s*```\s*$", text[i]):
            body.append(text[i][indent:] if text[i][:indent].strip() == "" else text[i])
            i += 1
        marker, marker_line = None, None
        j = start - 1
        while j >= 0 and text[j].strip() == "":
            j -= 1
        if j >= 0 and ANY_MARKER.match(text[j]):
            marker, marker_line = text[j].strip(), j + 1
        out.append(Block(doc, start + 1, lang, body, marker, marker_line))
        i += 1
    return out


def sections(text):
    """Top-level sections of a block-style YAML text: [name, [lines]]; comments before the first dropped."""
    out = []
    for line in text.split("\n"):
        m = SECTION.match(line)
        if m:
            out.append([m.group(1), [line]])
        elif out:
            out[-1][1].append(line)
    return out


def indent_of(lines):
    widths = [len(l) - len(l.lstrip(" ")) for l in lines if l.strip() and not l.lstrip().startswith("#")]
    return min(widths) if widths else 2


def entries(lines, unit):
    """The entries of a block mapping's body (lines indented by `unit`): [name, [lines]]."""
    out = []
    for line in lines:
        m = re.match(r"^" + " " * unit + r"([A-Za-z0-9_-]+):", line)
        if m:
            out.append([m.group(1), [line]])
        elif out:
            out[-1][1].append(line)
    return out


def bare(line):
    """A line without its comment and surrounding blanks."""
    return re.sub(r"\s+#.*$", "", line).strip()


def merge(base, fragment):
    """The base site with the fragment's sections: each replaces the base's, except a block-style
    `plugins`, whose instances are added (an instance of the same name replaced)."""
    merged = sections(base)
    for name, lines in sections(fragment):
        old = next((s for s in merged if s[0] == name), None)
        if old is None:
            merged.append([name, lines])
            continue
        if name == "plugins" and bare(lines[0]) == "plugins:" and bare(old[1][0]) == "plugins:":
            unit = indent_of(lines[1:])
            ours = entries(lines[1:], unit)
            names = {n for n, _ in ours}
            base_unit = indent_of(old[1][1:])
            base_body = [" " * ((len(l) - len(l.lstrip(" "))) * unit // base_unit) + l.lstrip(" ") if l.strip() else l for l in old[1][1:]]
            kept = [e for e in entries(base_body, unit) if e[0] not in names]
            old[1] = ["plugins:"] + [l for _, ls in kept for l in ls] + [l for _, ls in ours for l in ls]
        else:
            old[1] = lines
    return "\n".join(l for _, ls in merged for l in ls) + "\n"


class Checker:
    def __init__(self, pilectl, pilecored, work):
        self.pilectl, self.pilecored, self.work = pilectl, pilecored, work
        self.problems, self.validated, self.ran, self.skipped = [], 0, 0, 0
        self.files = {}  # a path the docs name -> where the test wrote it
        self.subcommands = None
        self.site = os.path.join(work, "site.yaml")
        with open(self.site, "w", encoding="utf-8") as f:
            f.write(BASE_SITE)

    def problem(self, where, message):
        self.problems.append(f"{where}: {message}")

    def rooted(self, text):
        for path, real in self.files.items():
            text = text.replace(path, real)
        return text

    def validate(self, block, text, what):
        self.validated += 1
        path = os.path.join(self.work, f"snippet-{self.validated}.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.rooted(text))
        r = subprocess.run([self.pilectl, "config", "validate", path], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            numbered = "\n".join(f"    {n:3} | {l}" for n, l in enumerate(self.rooted(text).split("\n"), 1))
            self.problem(block.where, f"{what} does not validate (exit {r.returncode}):\n  " + (r.stdout + r.stderr).strip().replace("\n", "\n  ")
                         + f"\n  the file checked ({path}):\n{numbered}")

    def with_stand_ins(self, block, kind, text):
        """`with: NAME=PLUGIN` adds a stand-in instance the fragment names but does not show,
        `connector=N` a connector with its own sim-power, `cert=PATH` a self-signed certificate
        (and `key=PATH` a key) at a path the fragment names."""
        head, _, items = kind.partition(" with: ")
        instances, connectors = [], []
        for item in items.split():
            name, _, value = item.partition("=")
            if name == "connector":
                connectors.append(value)
            elif name in ("cert", "key"):
                self.certificate(value, name)
            elif value:
                instances.append(f"  {name}:\n    plugin: {value}")
            else:
                self.problem(block.where, f"'with: {item}': write NAME=PLUGIN, connector=N, cert=PATH or key=PATH")
        extra = ""
        if instances or connectors:
            extra = "plugins:\n" + "\n".join(instances + [f"  power-{n}:\n    plugin: sim-power\n    connector: {n}" for n in connectors]) + "\n"
        merged = merge(extra, text) if extra else text  # the fragment's own instances win
        if connectors:
            # The fragment's connectors stay; the stand-in connectors come after them.
            ours = sections(merged)
            if not any(n == "connectors" for n, _ in ours):
                merged += "connectors:\n  - {id: 1, type: gbt-dc, max_power_w: 60000}\n"
            merged = re.sub(r"^connectors:.*$", lambda m: m.group(0) + "".join(f"\n  - {{id: {n}, type: gbt-dc, max_power_w: 60000}}" for n in connectors),
                            merged, count=1, flags=re.M)
        return head, merged

    def certificate(self, path, what):
        real = os.path.join(self.work, "root") + path
        if os.path.exists(real):
            return
        os.makedirs(os.path.dirname(real), exist_ok=True)
        key = real if what == "key" else real + ".key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30",
                        "-subj", "/CN=pilecore docs check", "-keyout", key, "-out", real if what == "cert" else real + ".crt"],
                       check=True, capture_output=True)
        self.files[path] = real

    def yaml_block(self, block, previous_fragment):
        text = "\n".join(block.lines) + "\n"
        m = MARKER.match(block.marker or "")
        if not m:
            where = f"{block.doc}:{block.marker_line}" if block.marker else block.where
            self.problem(where, "a ```yaml block needs a marker before it: <!-- site-file -->, <!-- site-fragment -->, "
                                "<!-- site-fragment continues -->, <!-- config of: PLUGIN -->, <!-- file: PATH --> or "
                                "<!-- not-checked: REASON --> (docs/writing-docs.md)")
            return previous_fragment
        kind = m.group(1)
        if kind.startswith("site-fragment"):
            kind, text = self.with_stand_ins(block, kind, text)
        if kind == "site-file":
            self.validate(block, text, "the site file")
        elif kind == "site-fragment":
            merged = merge(BASE_SITE, text)
            self.validate(block, merged, "the site-file fragment")
            return merged
        elif kind == "site-fragment continues":
            if previous_fragment is None:
                self.problem(block.where, "'site-fragment continues' with no site-fragment before it on this page")
                return None
            merged = merge(previous_fragment, text)
            self.validate(block, merged, "the site-file fragment (with the one before it)")
            return merged
        elif kind.startswith("config of:"):
            body = "\n".join("      " + l if l.strip() else l for l in block.lines)
            self.validate(block, merge(BASE_SITE, f"plugins:\n  docs-snippet:\n    plugin: {m.group(2)}\n    config:\n{body}\n"),
                          f"the configuration of a {m.group(2)} instance")
        return previous_fragment

    def command(self, block, offset, line):
        try:
            # A shell substitution stands for one word (a date in a file name).
            words = shlex.split(re.sub(r"\$\([^)]*\)", "X", line), comments=True)
        except ValueError as e:
            self.problem(f"{block.doc}:{block.line + 1 + offset}", f"cannot split the command: {e}")
            return
        if any(re.search(r"[\[\]<>|]|\.\.\.", w) for w in words[1:]):
            self.problem(f"{block.doc}:{block.line + 1 + offset}", "a synopsis ([optional], <placeholder>) in a ```sh block: "
                                                                    "write it in a ```text block, or give a real command")
            return
        if words[:2] == ["pilectl", "demo"]:
            self.skipped += 1  # a whole simulated day; tests/unit runs it
            return
        state = os.path.join(self.work, "state")
        args = [self.site if w in ("/etc/pilecore/site.yaml", "site.yaml") else self.rooted(w) for w in words[1:]]
        if words[0] == "pilectl":
            argv = [self.pilectl] + args
            if "--state-dir" not in args:
                argv += ["--state-dir", state]
            if "--socket" not in args:
                argv += ["--socket", os.path.join(self.work, "no-daemon.sock")]
        else:
            argv = [self.pilecored] + args + ["--check"]
            if "--state-dir" not in args:
                argv += ["--state-dir", os.path.join(self.work, "state-check")]
        self.ran += 1
        where = f"{block.doc}:{block.line + 1 + offset}"
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=self.work)
        except subprocess.TimeoutExpired:
            self.problem(where, f"`{line.strip()}` did not finish in 60 s")
            return
        said = (r.stdout + r.stderr).strip().replace("\n", "\n  ")
        if r.returncode < 0:
            self.problem(where, f"`{line.strip()}` crashed (signal {-r.returncode}):\n  {said}")
        elif words[0] == "pilecored" and r.returncode != 0:
            self.problem(where, f"`{line.strip()}` (with --check) exited {r.returncode}:\n  {said}")
        elif r.returncode == 2 and USAGE_ERROR.search(r.stderr):
            self.problem(where, f"`{line.strip()}` is not a valid command line:\n  {said}")

    def looks_like_command(self, line):
        """`pilectl SUBCOMMAND ...` or `pilecored --option ...`, not prose that names the programs."""
        if self.subcommands is None:
            r = subprocess.run([self.pilectl, "--help"], capture_output=True, text=True, timeout=60)
            listing = r.stdout.split("Subcommands:", 1)[-1]
            self.subcommands = set(re.findall(r"^  ([a-z][\w-]*)\s", listing, re.M))
        words = line.split()
        return len(words) > 1 and ((words[0] == "pilectl" and words[1] in self.subcommands) or (words[0] == "pilecored" and words[1].startswith("-")))

    def doc(self, doc):
        fragment = None
        for block in blocks_of(doc):
            if block.lang in ("yaml", "yml"):
                fragment = self.yaml_block(block, fragment)
            elif block.lang in ("sh", "bash", "shell", "console"):
                for n, raw in enumerate(block.lines):
                    line = raw.strip()
                    if line.startswith("$ "):
                        line = line[2:]
                    if re.match(r"^(pilectl|pilecored)(\s|$)", line):
                        self.command(block, n, line)
            else:
                for n, raw in enumerate(block.lines):
                    line = raw.strip()
                    if line.startswith("$ "):
                        line = line[2:]
                    if self.looks_like_command(line) and not re.search(r"[\[\]<>|]|\.\.\.|[A-Z]{3,}", line.split("#")[0]):
                        self.problem(f"{block.doc}:{block.line + 1 + n}", "a command outside a ```sh block: fence it ```sh so that it is checked "
                                                                           "(output goes in ```text blocks)")
                first = next((l for l in block.lines if l.strip() and not l.lstrip().startswith("#")), "")
                m = SECTION.match(first)
                if block.lang in ("", "text") and m and m.group(1) in SITE_SECTIONS and not block.marker:
                    self.problem(block.where, "site YAML outside a ```yaml block: fence it ```yaml and mark it (docs/writing-docs.md)")

    def collect_files(self, docs):
        """`file:` snippets first, so that a page may name a file another page (or a later block) shows."""
        for doc in docs:
            for block in blocks_of(doc):
                m = MARKER.match(block.marker or "")
                if m and m.group(3):
                    real = os.path.join(self.work, "root") + m.group(3)
                    os.makedirs(os.path.dirname(real), exist_ok=True)
                    with open(real, "w", encoding="utf-8") as f:
                        f.write("\n".join(block.lines) + "\n")
                    self.files[m.group(3)] = real


def facts(checker, docs, source):
    """What the prose says about the source tree: make targets, the API version, lintian overrides."""
    with open(os.path.join(source, "Makefile"), encoding="utf-8") as f:
        targets = set(re.findall(r"^([A-Za-z0-9_.-]+):", f.read(), re.M))
    with open(os.path.join(source, "plugin-api/include/pilecore/version.hpp"), encoding="utf-8") as f:
        header = f.read()
    major = re.search(r"#define PILECORE_API_MAJOR (\d+)", header).group(1)
    minor = re.search(r"#define PILECORE_API_MINOR (\d+)", header).group(1)
    for doc in docs:
        with open(doc, encoding="utf-8") as f:
            lines = f.read().split("\n")
        for n, line in enumerate(lines, 1):
            for target in re.findall(r"`make ([a-z][\w-]*)", line) + re.findall(r"^\s*make ([a-z][\w-]*)", line):
                if target not in targets:
                    checker.problem(f"{doc}:{n}", f"'make {target}': the Makefile has no such target")
            for word, got in re.findall(r"\b(now|today[^.;]*?)\s+`?(?:Provides: |Depends: )?(?:pilecore-abi-\d+ \([>=]+ )?(\d+\.\d+)\b", line):
                if "API" in line or "abi" in line:
                    if got != f"{major}.{minor}":
                        checker.problem(f"{doc}:{n}", f"says the API is {got} {word.split()[0]}; version.hpp says {major}.{minor}")
            for abi, got in re.findall(r"pilecore-abi-(\d+) \([>=]+ (\d+)\.\d+\)", line):
                if abi != got:
                    checker.problem(f"{doc}:{n}", f"pilecore-abi-{abi} with a {got}.x version")
        if os.path.basename(doc) == "packaging.md":
            # Every override the Lintian section lists must exist, and every existing one be listed.
            text = "\n".join(lines)
            section = re.search(r"^### Lintian\n(.*?)(?=^#)", text, re.M | re.S)
            listed = set(re.findall(r"^- `(pilecore[\w-]*): ([\w-]+)", section.group(1), re.M)) if section else set()
            present = set()
            for name in os.listdir(os.path.join(source, "packaging/deb")):
                if name.endswith(".lintian-overrides"):
                    with open(os.path.join(source, "packaging/deb", name), encoding="utf-8") as f:
                        present |= set(re.findall(r"^(pilecore[\w-]*): ([\w-]+)", f.read(), re.M))
            for package, tag in sorted(listed - present):
                checker.problem(doc, f"the Lintian section lists the override '{package}: {tag}', which packaging/deb/ does not have")
            for package, tag in sorted(present - listed):
                checker.problem(doc, f"packaging/deb/ overrides '{package}: {tag}', which the Lintian section does not explain")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pilectl", required=True)
    p.add_argument("--pilecored", required=True)
    p.add_argument("--source", required=True, help="the source tree (Makefile, version.hpp, packaging/deb)")
    p.add_argument("docs", nargs="+")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="pilecore-docs.") as work:
        c = Checker(os.path.abspath(a.pilectl), os.path.abspath(a.pilecored), work)
        c.collect_files(a.docs)
        for doc in a.docs:
            c.doc(doc)
        facts(c, a.docs, a.source)
    for problem in c.problems:
        print(problem)
    print(f"docs check: {len(a.docs)} pages, {c.validated} YAML snippets validated, {c.ran} commands run "
          f"({c.skipped} skipped), {len(c.problems)} problem(s)")
    return 1 if c.problems else 0


if __name__ == "__main__":
    sys.exit(main())
