// Cross-entropy on adjusted logits, its gradient and the per-class statistics, in one
// pass over the logits' memory, for CPU logits laid out (N, C) or channels first,
// (N, C, P) (per pixel). Built on first use by eqlosses/functional/_native.py; the
// PyTorch-operation form in eqlosses/functional/softmax.py computes the same values.
//
// Per row i (a sample, or a pixel) with target t, weight w_i and z~ = z + a:
//   m = max_j z~_j,  e_j = exp(z~_j - m),  s = sum_j e_j,  p_j = e_j / s
//   nll_i = w_i (log s - (z~_t - m))          (exact however small p_t is)
//   grad_ij = g_i (p_j - [j == t])             (g_i: the row's gradient factor)
//   neg_increment_j += w_i p_j (j != t),  pos_increment_t += w_i (1 - p_t)
// A row of weight 0 does not count: its loss, gradient and statistics are 0, whatever its
// logits hold.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

// Rows are summed in at most this many chunks of consecutive rows, each into its own
// partial increments, added in chunk order: the result does not depend on the thread count.
constexpr int64_t kMaxChunks = 64;

// At least this many (N, C) rows a chunk, so that the partial sums (2 C a chunk) stay a
// few percent of the logits' size.
constexpr int64_t kMinRowsPerChunk = 64;

// About this many elements of work per task, as PyTorch's own elementwise kernels.
constexpr int64_t kGrainElements = 32768;

// A row's weight multiplies its loss and statistics; its gradient is multiplied by the
// weight times `scale` (the mean's 1 / count).
template <typename scalar_t>
struct RowFactors {
  const scalar_t* weight;  // nullptr: every row weighs 1
  scalar_t scale;

  scalar_t weight_of(int64_t row) const {
    return weight == nullptr ? scalar_t(1) : weight[row];
  }
  scalar_t grad_of(int64_t row) const {
    return weight == nullptr ? scale : weight[row] * scale;
  }
};

template <typename scalar_t>
struct Chunks {
  int64_t per_chunk;
  int64_t count;
  std::vector<scalar_t> partial;  // per chunk: C negative, then C positive partial sums

  Chunks(int64_t items, int64_t columns, int64_t min_per_chunk)
      : per_chunk(std::max<int64_t>(min_per_chunk, (items + kMaxChunks - 1) / kMaxChunks)),
        count(items == 0 ? 0 : (items + per_chunk - 1) / per_chunk),
        partial(static_cast<size_t>(count * 2 * columns), scalar_t(0)) {}

  // The chunks' sums, added in chunk order.
  void sum(int64_t columns, scalar_t* pos_increment, scalar_t* neg_increment) const {
    std::fill(neg_increment, neg_increment + columns, scalar_t(0));
    std::fill(pos_increment, pos_increment + columns, scalar_t(0));
    for (int64_t chunk = 0; chunk < count; ++chunk) {
      const scalar_t* neg = partial.data() + chunk * 2 * columns;
      const scalar_t* pos = neg + columns;
      for (int64_t j = 0; j < columns; ++j) {
        neg_increment[j] += neg[j];
        pos_increment[j] += pos[j];
      }
    }
  }
};

void check_label(int64_t target, int64_t columns) {
  TORCH_CHECK(
      target >= 0 && target < columns,
      "target: expected labels in [0, ", columns - 1, "], got ", target);
}

template <typename scalar_t>
scalar_t adjustment_of(const scalar_t* adjustment, int64_t column) {
  return adjustment == nullptr ? scalar_t(0) : adjustment[column];
}

// One call's buffers: labels one per row; the increments (C,).
template <typename scalar_t>
struct Problem {
  const scalar_t* logits;
  const scalar_t* adjustment;  // nullptr: none
  const int64_t* labels;
  RowFactors<scalar_t> factors;
  int64_t columns;
  scalar_t* grad;
  scalar_t* nll;
  scalar_t* pos_increment;
  scalar_t* neg_increment;

  void rows_kernel(int64_t rows) const;
  void positions_kernel(int64_t images, int64_t positions) const;
};

// (N, C): a row's C entries lie next to each other and stay in the first-level cache
// across the passes.
template <typename scalar_t>
void Problem<scalar_t>::rows_kernel(int64_t rows) const {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t width = Vec::size();
  Chunks<scalar_t> chunks(rows, columns, kMinRowsPerChunk);
  const int64_t grain =
      std::max<int64_t>(1, kGrainElements / std::max<int64_t>(chunks.per_chunk * columns, 1));

  at::parallel_for(0, chunks.count, grain, [&](int64_t first_chunk, int64_t last_chunk) {
    for (int64_t chunk = first_chunk; chunk < last_chunk; ++chunk) {
      scalar_t* neg = chunks.partial.data() + chunk * 2 * columns;
      scalar_t* pos = neg + columns;
      const int64_t end = std::min(rows, (chunk + 1) * chunks.per_chunk);
      for (int64_t i = chunk * chunks.per_chunk; i < end; ++i) {
        const scalar_t* z = logits + i * columns;
        scalar_t* g = grad + i * columns;
        const scalar_t weight = factors.weight_of(i);
        if (weight == scalar_t(0)) {
          std::fill(g, g + columns, scalar_t(0));
          nll[i] = scalar_t(0);
          continue;
        }
        const int64_t target = labels[i];
        check_label(target, columns);

        // z~ into the gradient row, and its maximum
        Vec max_vec(-std::numeric_limits<scalar_t>::infinity());
        int64_t j = 0;
        for (; j + width <= columns; j += width) {
          Vec value = Vec::loadu(z + j);
          if (adjustment != nullptr) {
            value = value + Vec::loadu(adjustment + j);
          }
          value.store(g + j);
          max_vec = at::vec::maximum(max_vec, value);
        }
        scalar_t row_max = at::vec::vec_reduce_all<scalar_t>(
            [](Vec& x, Vec& y) { return at::vec::maximum(x, y); }, max_vec);
        for (; j < columns; ++j) {
          const scalar_t value = z[j] + adjustment_of(adjustment, j);
          g[j] = value;
          // NaN propagates, as in the vector part
          row_max = (value > row_max || std::isnan(value)) ? value : row_max;
        }

        // exp(z~ - max) in place, and its sum
        const Vec shift(row_max);
        Vec sum_vec(scalar_t(0));
        j = 0;
        for (; j + width <= columns; j += width) {
          const Vec e = (Vec::loadu(g + j) - shift).exp_u20();
          e.store(g + j);
          sum_vec = sum_vec + e;
        }
        scalar_t sum = at::vec::vec_reduce_all<scalar_t>(
            [](Vec& x, Vec& y) { return x + y; }, sum_vec);
        for (; j < columns; ++j) {
          const scalar_t e = std::exp(g[j] - row_max);
          g[j] = e;
          sum += e;
        }

        const scalar_t target_logit = z[target] + adjustment_of(adjustment, target);
        nll[i] = weight * (std::log(sum) - (target_logit - row_max));
        const scalar_t inverse = scalar_t(1) / sum;
        const scalar_t target_prob = g[target] * inverse;
        const scalar_t grad_factor = factors.grad_of(i);
        // the target entry is left out of the negative sums (0 adds nothing), so that no
        // class's sum is a difference of nearly equal numbers
        g[target] = scalar_t(0);

        // the weighted probabilities into the negative sums, the gradient into the row
        const Vec weighted_vec(inverse * weight);
        const Vec scaled_vec(inverse * grad_factor);
        j = 0;
        for (; j + width <= columns; j += width) {
          const Vec e = Vec::loadu(g + j);
          (Vec::loadu(neg + j) + e * weighted_vec).store(neg + j);
          (e * scaled_vec).store(g + j);
        }
        for (; j < columns; ++j) {
          neg[j] += g[j] * (inverse * weight);
          g[j] = g[j] * (inverse * grad_factor);
        }
        pos[target] += weight * (scalar_t(1) - target_prob);
        g[target] = (target_prob - scalar_t(1)) * grad_factor;
      }
    }
  });
  chunks.sum(columns, pos_increment, neg_increment);
}

// Channels first, (images, C, P): a row is one position, its C entries P apart. Tiles of
// consecutive positions are worked on with the positions in the vector lanes; a tile's
// C x tile entries stay in the first-level cache across the passes.
template <typename scalar_t>
void Problem<scalar_t>::positions_kernel(int64_t images, int64_t positions) const {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t width = Vec::size();
  const int64_t tile = std::max<int64_t>(
      width, std::min<int64_t>(256, 8192 / std::max<int64_t>(columns, 1) / width * width));
  const int64_t tiles_per_image = (positions + tile - 1) / tile;
  const int64_t tasks = images * tiles_per_image;
  Chunks<scalar_t> chunks(tasks, columns, 1);
  const int64_t grain = std::max<int64_t>(
      1, kGrainElements / std::max<int64_t>(chunks.per_chunk * tile * columns, 1));

  at::parallel_for(0, chunks.count, grain, [&](int64_t first_chunk, int64_t last_chunk) {
    // per position of a tile: maximum, sum, 1 / sum, p_t, weight, gradient factor
    std::vector<scalar_t> lanes(static_cast<size_t>(6 * tile));
    scalar_t* row_max = lanes.data();
    scalar_t* sum = row_max + tile;
    scalar_t* inverse = sum + tile;
    scalar_t* target_prob = inverse + tile;
    scalar_t* weight = target_prob + tile;
    scalar_t* grad_factor = weight + tile;
    const Vec zero(scalar_t(0));
    for (int64_t chunk = first_chunk; chunk < last_chunk; ++chunk) {
      scalar_t* neg = chunks.partial.data() + chunk * 2 * columns;
      scalar_t* pos = neg + columns;
      const int64_t end = std::min(tasks, (chunk + 1) * chunks.per_chunk);
      for (int64_t task = chunk * chunks.per_chunk; task < end; ++task) {
        const int64_t image = task / tiles_per_image;
        const int64_t first = (task % tiles_per_image) * tile;
        const int64_t count = std::min(tile, positions - first);
        const int64_t offset = image * columns * positions + first;
        const int64_t first_row = image * positions + first;
        const scalar_t* z = logits + offset;
        scalar_t* g = grad + offset;
        for (int64_t p = 0; p < count; ++p) {
          weight[p] = factors.weight_of(first_row + p);
          grad_factor[p] = factors.grad_of(first_row + p);
        }

        // z~ (0 at a position that does not count) into the gradient, and its maximum
        std::fill(row_max, row_max + count, -std::numeric_limits<scalar_t>::infinity());
        for (int64_t c = 0; c < columns; ++c) {
          const Vec shift(adjustment_of(adjustment, c));
          for (int64_t p = 0; p < count; p += width) {
            const int64_t n = std::min(width, count - p);
            Vec value = Vec::loadu(z + c * positions + p, n) + shift;
            if (factors.weight != nullptr) {
              value = Vec::blendv(zero, value, Vec::loadu(weight + p, n) != zero);
            }
            value.store(g + c * positions + p, n);
            at::vec::maximum(Vec::loadu(row_max + p, n), value).store(row_max + p, n);
          }
        }
        // exp(z~ - max) in place, and its sums
        std::fill(sum, sum + count, scalar_t(0));
        for (int64_t c = 0; c < columns; ++c) {
          for (int64_t p = 0; p < count; p += width) {
            const int64_t n = std::min(width, count - p);
            const Vec e =
                (Vec::loadu(g + c * positions + p, n) - Vec::loadu(row_max + p, n)).exp_u20();
            e.store(g + c * positions + p, n);
            (Vec::loadu(sum + p, n) + e).store(sum + p, n);
          }
        }
        for (int64_t p = 0; p < count; ++p) {
          const int64_t target = labels[first_row + p];
          check_label(target, columns);
          const scalar_t target_logit = weight[p] == scalar_t(0)
              ? scalar_t(0)
              : z[target * positions + p] + adjustment_of(adjustment, target);
          nll[first_row + p] = weight[p] * (std::log(sum[p]) - (target_logit - row_max[p]));
          inverse[p] = scalar_t(1) / sum[p];
          target_prob[p] = g[target * positions + p] * inverse[p];
          // left out of the negative sums, as in rows_kernel
          g[target * positions + p] = scalar_t(0);
        }
        // the weighted probabilities into the negative sums, the gradient into the tile
        // (lanes past the tile's end load as zeros, so they add nothing to the sums)
        for (int64_t c = 0; c < columns; ++c) {
          Vec total(scalar_t(0));
          for (int64_t p = 0; p < count; p += width) {
            const int64_t n = std::min(width, count - p);
            const Vec prob = Vec::loadu(g + c * positions + p, n) * Vec::loadu(inverse + p, n);
            total = total + prob * Vec::loadu(weight + p, n);
            (prob * Vec::loadu(grad_factor + p, n)).store(g + c * positions + p, n);
          }
          neg[c] += at::vec::vec_reduce_all<scalar_t>(
              [](Vec& x, Vec& y) { return x + y; }, total);
        }
        for (int64_t p = 0; p < count; ++p) {
          const int64_t target = labels[first_row + p];
          pos[target] += weight[p] * (scalar_t(1) - target_prob[p]);
          g[target * positions + p] = (target_prob[p] - scalar_t(1)) * grad_factor[p];
        }
      }
    }
  });
  chunks.sum(columns, pos_increment, neg_increment);
}

// logits (N, C), or (N, C, P) channels first; labels and weight flat, one per row or
// position. weight (None: 1) multiplies a row's loss and statistics, 0 drops it; its
// gradient is multiplied by the weight times the scale: scale_tensor's value (0-dim, where
// the mean's count is a tensor), else scale.
std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_rows(
    const at::Tensor& logits,
    const std::optional<at::Tensor>& adjustment,
    const at::Tensor& labels,
    const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& scale_tensor,
    double scale,
    at::Tensor& grad) {
  TORCH_CHECK((logits.dim() == 2 || logits.dim() == 3) && logits.is_contiguous(),
              "logits: expected contiguous (N, C) or (N, C, P)");
  TORCH_CHECK(grad.sizes() == logits.sizes() && grad.is_contiguous() &&
                  grad.scalar_type() == logits.scalar_type(),
              "grad: expected a contiguous buffer like the logits");
  const bool channels_first = logits.dim() == 3;
  const int64_t images = logits.size(0);
  const int64_t columns = logits.size(1);
  const int64_t positions = channels_first ? logits.size(2) : 1;
  const int64_t rows = images * positions;
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == rows &&
                  labels.scalar_type() == at::kLong && labels.is_contiguous(),
              "labels: expected contiguous int64, one per row");
  if (weight.has_value()) {
    TORCH_CHECK(weight->dim() == 1 && weight->size(0) == rows &&
                    weight->scalar_type() == logits.scalar_type() && weight->is_contiguous(),
                "weight: expected a contiguous vector of the logits' dtype, one per row");
  }
  if (scale_tensor.has_value()) {
    TORCH_CHECK(scale_tensor->dim() == 0 && scale_tensor->device().is_cpu() &&
                    scale_tensor->scalar_type() == logits.scalar_type(),
                "scale_tensor: expected a 0-dim CPU tensor of the logits' dtype");
  }
  if (adjustment.has_value()) {
    TORCH_CHECK(adjustment->dim() == 1 && adjustment->size(0) == columns &&
                    adjustment->scalar_type() == logits.scalar_type() &&
                    adjustment->is_contiguous(),
                "adjustment: expected a contiguous (C,) vector of the logits' dtype");
  }
  at::Tensor nll = at::empty({rows}, logits.options());
  at::Tensor pos_increment = at::empty({columns}, logits.options());
  at::Tensor neg_increment = at::empty({columns}, logits.options());
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "softmax_rows", [&] {
    const Problem<scalar_t> problem{
        logits.const_data_ptr<scalar_t>(),
        adjustment.has_value() ? adjustment->const_data_ptr<scalar_t>() : nullptr,
        labels.const_data_ptr<int64_t>(),
        RowFactors<scalar_t>{
            weight.has_value() ? weight->const_data_ptr<scalar_t>() : nullptr,
            // a CPU value: reading it waits for nothing
            scale_tensor.has_value() ? scale_tensor->const_data_ptr<scalar_t>()[0]
                                     : static_cast<scalar_t>(scale)},
        columns,
        grad.mutable_data_ptr<scalar_t>(),
        nll.mutable_data_ptr<scalar_t>(),
        pos_increment.mutable_data_ptr<scalar_t>(),
        neg_increment.mutable_data_ptr<scalar_t>()};
    if (channels_first) {
      problem.positions_kernel(images, positions);
    } else {
      problem.rows_kernel(rows);
    }
  });
  return {nll, pos_increment, neg_increment};
}

}  // namespace

TORCH_LIBRARY(eqlosses_native, m) {
  m.def(
      "softmax_rows(Tensor logits, Tensor? adjustment, Tensor labels, Tensor? weight, "
      "Tensor? scale_tensor, float scale, Tensor(a!) grad) -> (Tensor, Tensor, Tensor)");
  m.impl("softmax_rows", c10::DispatchKey::CPU, TORCH_FN(softmax_rows));
}
