// Autograd for the in-place rectifier guided_relu_.
//
// Python's torch.library.register_autograd does not cover ops that mutate their
// input, and emulating relu_ with `x.copy_(guided_relu(x))` makes autograd send a
// zero gradient to the overwritten value and add it back (a fill, a copy and an add
// per rectifier). A C++ autograd Function that marks `x` dirty records the op like
// aten's own relu_: no extra passes, and the backward is the native
// guided_relu_backward op.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

#include "../ops_common.h"

namespace interp_ext {
namespace {

// The forward on any device: clamp in place (validation first, before any write).
void guided_relu_inplace_forward(at::Tensor& x, c10::optional<double> upper, c10::string_view rule) {
  check_floating("guided_relu_", "x", x);
  parse_rule("guided_relu_", rule);
  if (upper.has_value()) {
    x.clamp_(0.0, parse_upper("guided_relu_", upper));
  } else {
    x.relu_();
  }
}

at::Tensor call_guided_relu_backward(const at::Tensor& grad, const at::Tensor& out, c10::optional<double> upper,
                                     const std::string& rule) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("interp_ext::guided_relu_backward", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::optional<double>,
                                               c10::string_view)>();
  return op.call(grad, out, upper, rule);
}

class GuidedReluInplace : public torch::autograd::Function<GuidedReluInplace> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::Tensor x, c10::optional<double> upper,
                            std::string rule) {
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      guided_relu_inplace_forward(x, upper, rule);
    }
    ctx->mark_dirty({x});
    // The output gives the same mask as the input (0 < x < upper), and is what
    // survives the in-place write.
    ctx->save_for_backward({x});
    ctx->saved_data["upper"] = upper.has_value() ? c10::IValue(*upper) : c10::IValue();
    ctx->saved_data["rule"] = rule;
    return x;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor out = ctx->get_saved_variables()[0];
    const c10::IValue& u = ctx->saved_data["upper"];
    const c10::optional<double> upper = u.isNone() ? c10::nullopt : c10::optional<double>(u.toDouble());
    return {call_guided_relu_backward(grads[0], out, upper, ctx->saved_data["rule"].toStringRef()), at::Tensor(),
            at::Tensor()};
  }
};

void guided_relu_inplace_autograd(at::Tensor& x, c10::optional<double> upper, c10::string_view rule) {
  GuidedReluInplace::apply(x, upper, std::string(rule));
}

}  // namespace

TORCH_LIBRARY_IMPL(interp_ext, CompositeExplicitAutograd, m) {
  m.impl("guided_relu_", &guided_relu_inplace_forward);
}

TORCH_LIBRARY_IMPL(interp_ext, Autograd, m) {
  m.impl("guided_relu_", &guided_relu_inplace_autograd);
}

}  // namespace interp_ext
