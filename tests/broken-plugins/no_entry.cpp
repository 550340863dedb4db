// A shared object that is not a pilecore plugin: it exports no entry symbol at all.
namespace {
int answer() { return 42; }
}  // namespace
int (*volatile broken_no_entry_keep)() = &answer;
