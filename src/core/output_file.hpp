// Files the tools write (logits .npy, JSON reports, routing traces, the package manifest): never
// half-written, and never destroying what the path names.
//
// - A path that names a regular file, or nothing yet, is written to a temporary file in the same
//   directory, flushed to storage and renamed over the path (rename is atomic: a reader sees the
//   old file or the new one, never a part). An existing file keeps its permission bits.
// - Anything else that can be written (a FIFO, a character device such as /dev/null or a
//   terminal) is written in place: renaming over it would replace the device node (as root) or
//   fail, and the reader of a FIFO waits for the bytes, not for a new file.
// - A symbolic link is followed: its target is written (by the rules above), the link stays.
// - A directory is refused.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>

namespace moeflux {

// Checks, before any work, that `path` can be written as above: an existing file or device that
// may be written (and, for a regular file, a writable directory to rename in), or a new name in
// an existing, writable directory. Throws moeflux::Error "<what>: cannot write <path>: <reason>"
// ("<path>: ..." when `what` is empty).
void check_output_path(const std::string& path, const std::string& what);

// Writes `parts`, one after the other, to `path` as above. Throws moeflux::Error naming `what`
// and the path; after a failure a regular file still holds its previous content and no temporary
// file is left.
void write_output_file(const std::string& path, std::initializer_list<std::string_view> parts,
                       const std::string& what = "");

}  // namespace moeflux
