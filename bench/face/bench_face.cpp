// bench/face: face presented to payment decision, through payment-face.
//
// The camera module simulator sends a recognised face over the module's TCP line protocol; the
// plugin (the real payment-face.so, on the test Host whose strand is this thread) reads it on its
// module thread, presents the token, and the presented token goes straight to authorize(); the
// plugin checks liveness and asks the simulated face-pay provider over HTTPS (a fresh TLS
// connection per call, the provider's certificate verified against a CA this run makes), which
// answers after --provider-ms (300 ms, the seed's provider). Measured: from the module's FACE line
// to the decision callback, per face, one after the other.
// Target: p99 < 800 ms (the seed's "face < 0.8 s"); exit 1 on a miss.
//
//   bench_face [--runs N] [--provider-ms MS] [--target-ms MS]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "face_module_sim.hpp"
#include "https_provider.hpp"
#include "plugin_host.hpp"
#include "test_pki.hpp"
#include "test_support.hpp"
#include "../common/bench_env.hpp"

using namespace pilecore;
using Steady = std::chrono::steady_clock;

int main(int argc, char** argv) {
  int runs = 50;
  long provider_ms = 300;
  double target_ms = 800;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--runs") runs = std::atoi(argv[i + 1]);
    else if (a == "--provider-ms") provider_ms = std::atol(argv[i + 1]);
    else if (a == "--target-ms") target_ms = std::atof(argv[i + 1]);
    else {
      std::fprintf(stderr, "usage: bench_face [--runs N] [--provider-ms MS] [--target-ms MS]\n");
      return 2;
    }
  }
  try {
    pilecore::test::TempDir dir;
    const auto pki = sim::make_test_pki(dir.path());
    sim::FacePayProvider provider(pki);
    provider.set_latency(std::chrono::milliseconds(provider_ms));
    sim::FaceModuleSim module;
    const std::string config = "{provider_url: \"" + provider.url() + "\", provider_ca_file: \"" + pki.ca_cert.string() +
                               "\", module_port: " + std::to_string(module.port()) + ", module_reconnect_ms: 50}";
    pilecore::test::PluginHost host(std::string(PILECORE_BENCH_PLUGIN_DIR) + "/payment-face.so", config, dir.path() / "state");
    auto& method = host.create();
    if (!pilecore::test::eventually([&] { return module.connected(); })) throw std::runtime_error("the plugin never connected to the module");

    std::optional<payment::AuthorizationResult> decision;
    int n = 0;
    host.on_present = [&](const identification::Token& t) {
      const std::string txn = "B" + std::to_string(n);
      method.authorize({.operation_id = txn + "/authorize", .transaction_id = txn, .connector = 1, .token = &t, .channel = {}, .amount_fen = 20000,
                        .deadline = {}},
                       [&](payment::AuthorizationResult r) { decision = std::move(r); });
    };
    std::vector<double> ms;
    int approved = 0;
    for (n = 0; n < runs; ++n) {
      const std::string token = "FACE" + std::to_string(n);
      provider.enrol(token, 50000);
      decision.reset();
      const auto t0 = Steady::now();
      if (module.show(token, 950) == 0) throw std::runtime_error("the module lost its plugin");
      if (!host.run_until([&] { return decision.has_value(); }, std::chrono::seconds(10))) throw std::runtime_error("no decision within 10 s");
      ms.push_back(std::chrono::duration<double, std::milli>(Steady::now() - t0).count());
      if (decision->decision == payment::Decision::approved) ++approved;
    }
    host.destroy();
    std::sort(ms.begin(), ms.end());
    auto pct = [&](double p) { return ms[std::min(ms.size() - 1, static_cast<std::size_t>(p * static_cast<double>(ms.size())))]; };
    const double p50 = pct(0.50), p99 = pct(0.99);
    std::printf("bench_face: %d faces, provider answering in %ld ms, load %s\n", runs, provider_ms, pilecore::bench::loadavg().c_str());
    std::printf("  face presented -> decision: p50 %.1f ms  p99 %.1f ms  max %.1f ms  (%d approved)\n", p50, p99, ms.back(), approved);
    std::printf("  overhead over the provider's %ld ms: p50 %.1f ms  p99 %.1f ms\n", provider_ms, p50 - static_cast<double>(provider_ms),
                p99 - static_cast<double>(provider_ms));
    const bool ok = p99 < target_ms && approved == runs;
    std::printf("  target p99 < %.0f ms: %s\n", target_ms, ok ? "met" : "MISSED");
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_face: %s\n", e.what());
    return 1;
  }
}
