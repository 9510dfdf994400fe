// Which package a command evaluates. Every command that evaluates a model (logits, run, chat,
// perplexity, bench) takes -m PKG and, without it, $MOEFLUX_MODEL, else the bundled model.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

namespace moeflux::tool {

// The bundled model's directory name (models/ in the source tree, share/moeflux/models/ when
// installed).
constexpr const char* kBundledModel = "moeflux-tiny-kjv";

// Where the bundled model may be, relative to the running executable (/proc/self/exe), so that
// no build path is baked into the binary: <exe_dir>/../models/NAME (a build directory in the
// source tree, e.g. build/moeflux) and <exe_dir>/../share/moeflux/models/NAME (an installation,
// e.g. /usr/local/bin/moeflux).
std::vector<std::string> bundled_model_candidates();

// The package directory: `arg` (-m) if given, else $MOEFLUX_MODEL, else the first bundled model
// candidate that holds a manifest. Throws moeflux::Error listing the places tried when none does.
std::string resolve_model_dir(const std::string& arg);

// Registers -m/--model (optional; the default as above) on `cmd`.
void add_model_option(CLI::App* cmd, std::string* model);

}  // namespace moeflux::tool
