// `moeflux tokenize`: text -> token ids (a JSON array on one line), or ids -> text (--decode),
// with a tokenizer.json (-t) or a package's copy of its checkpoint's tokenizer (-m).
#include <cstdio>
#include <memory>
#include <string>

#include "commands.hpp"
#include "core/error.hpp"
#include "formats/package.hpp"
#include "text/tokenizer.hpp"

namespace moeflux::tool {

namespace {

constexpr const char* kPackageTokenizer = "tokenizer/tokenizer.json";

struct TokenizeOptions {
  std::string tokenizer_json, package, text, decode;
  bool no_special = false, skip_special = false;
  CLI::Option* text_opt = nullptr;
  CLI::Option* decode_opt = nullptr;
};

std::string tokenizer_path(const TokenizeOptions& o) {
  if (o.tokenizer_json.empty() == o.package.empty())
    usage_fail("tokenize: give exactly one of -t TOKENIZER_JSON and -m PKG");
  if (!o.tokenizer_json.empty()) return o.tokenizer_json;
  PackageOpenOptions po;
  po.verify_resident = false;  // only the tokenizer is used
  const Package pkg = Package::open(o.package, po);
  for (const std::string& f : pkg.manifest().tokenizer_files)
    if (f == kPackageTokenizer) return pkg.dir() + "/" + f;
  fail(o.package + ": the package has no " + kPackageTokenizer +
       " (its checkpoint had no tokenizer.json)");
}

Runner add_tokenize(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "tokenize", "Encode TEXT to token ids (a JSON array), or decode ids with --decode");
  auto o = std::make_shared<TokenizeOptions>();
  auto* t = cmd->add_option("-t,--tokenizer", o->tokenizer_json, "A tokenizer.json file");
  auto* m = cmd->add_option("-m,--model", o->package,
                            "A moeflux package: uses its tokenizer/tokenizer.json");
  t->excludes(m);
  o->text_opt = cmd->add_option("TEXT", o->text, "Text to encode (may be empty)");
  o->decode_opt = cmd->add_option("--decode", o->decode,
                                  "Comma-separated ids to decode; prints their bytes exactly, "
                                  "without an added newline");
  o->text_opt->excludes(o->decode_opt);
  cmd->add_flag("--no-special", o->no_special,
                "Encode special tokens written in TEXT as plain text");
  cmd->add_flag("--skip-special", o->skip_special, "With --decode: leave special tokens out");
  return [o] {
    const bool decoding = o->decode_opt->count() > 0;
    if (!decoding && o->text_opt->count() == 0) usage_fail("tokenize: give TEXT or --decode IDS");
    const std::string path = tokenizer_path(*o);
    const Tokenizer tok = Tokenizer::from_file(path);
    if (decoding) {
      const std::vector<int> ids = parse_int_list(o->decode, "--decode");
      for (int id : ids) {
        if (id >= tok.vocab_size())
          usage_fail("--decode: id " + std::to_string(id) + " is out of range (" + path +
                     " has vocabulary size " + std::to_string(tok.vocab_size()) + ")");
      }
      std::string text;
      try {
        text = tok.decode(ids, o->skip_special);
      } catch (const Error& e) {
        fail(std::string("--decode: ") + e.what());
      }
      std::fwrite(text.data(), 1, text.size(), stdout);
      return 0;
    }
    const std::vector<int> ids = tok.encode(o->text, /*parse_special=*/!o->no_special);
    std::string line = "[";
    for (size_t i = 0; i < ids.size(); ++i) line += (i ? "," : "") + std::to_string(ids[i]);
    line += "]\n";
    std::fwrite(line.data(), 1, line.size(), stdout);
    return 0;
  };
}

const CommandRegistration registration(25, add_tokenize);

}  // namespace

}  // namespace moeflux::tool
