// std::visit with one lambda per alternative: std::visit(overloaded{[](const A&) {...}, ...}, v).
#pragma once

namespace pilecore::core {

template <class... F>
struct overloaded : F... {
  using F::operator()...;
};
template <class... F>
overloaded(F...) -> overloaded<F...>;

}  // namespace pilecore::core
