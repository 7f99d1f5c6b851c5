// Device-agnostic geometry of patch_splice, shared by the CPU and CUDA kernels: one
// output row of a box read from a (H, W) map, in map coordinates starting at column
// `ox`, with an optional patch spliced over the map. Columns of the row fall into five
// runs: [0, xa) and [xb, w) lie outside the map (the padding value), [pa, pb) inside the
// patch, the rest read the map itself. Every output element belongs to exactly one run.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace interp_ext {

struct SpliceRow {
  int64_t xa, pa, pb, xb;
};

C10_HOST_DEVICE inline int64_t clamp_to(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

// ox: the row's first map column; w: its length; W: the map's width; patch columns
// [px, px + pw) apply when `in_patch_rows` (the row's map row lies in the patch's rows).
// Origins are bounded by the caller (|origin| < 2^40), so no sum below overflows.
C10_HOST_DEVICE inline SpliceRow splice_row(int64_t ox, int64_t w, int64_t W, bool in_patch_rows, int64_t px,
                                            int64_t pw) {
  SpliceRow r;
  r.xa = clamp_to(-ox, 0, w);
  r.xb = clamp_to(W - ox, r.xa, w);
  if (in_patch_rows) {
    r.pa = clamp_to(px - ox, r.xa, r.xb);
    r.pb = clamp_to(px + pw - ox, r.pa, r.xb);
  } else {
    r.pa = r.pb = r.xa;
  }
  return r;
}

// Where output column j of a row reads from.
enum class SpliceSource { Pad, Map, Patch };

C10_HOST_DEVICE inline SpliceSource splice_source(const SpliceRow& r, int64_t j) {
  if (j < r.xa || j >= r.xb) return SpliceSource::Pad;
  if (j >= r.pa && j < r.pb) return SpliceSource::Patch;
  return SpliceSource::Map;
}

}  // namespace interp_ext
