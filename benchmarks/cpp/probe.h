// What the probes of benchmarks/cpp share: the floor probes' arguments (ROWS COLS ROUNDS:
// conversion_floor.cpp, column_floor.cpp) and the timing loop of those and torch_ab.cpp.
// Every round runs every candidate once, in a shuffled order (seeded), after one untimed
// call of each (every buffer touched, and in the caches it fits); a candidate's time is
// the median over the rounds. In one process and interleaved, so that a comparison does
// not rest on where two processes' code and data happened to land, nor on the minute.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace fastwn::probe {

struct Args {
  int64_t rows, cols;
  int rounds;
};

// ROWS COLS ROUNDS from the command line, ROWS and COLS multiples of what the probe's
// loops take; false (after printing `usage`) when they are not.
inline bool read_args(int argc, char** argv, const char* usage, int64_t rows_multiple, int64_t cols_multiple,
                      Args& a) {
  if (argc >= 4) a = {std::atoll(argv[1]), std::atoll(argv[2]), std::atoi(argv[3])};
  if (argc >= 4 && a.rows > 0 && a.cols > 0 && a.rounds > 0 && a.rows % rows_multiple == 0 &&
      a.cols % cols_multiple == 0)
    return true;
  std::fprintf(stderr, "usage: %s\n", usage);
  return false;
}

struct Candidate {
  std::string name;
  std::function<void()> run;
  std::string floor;  // the candidate whose time this one is reported against ("": none)
  std::vector<double> us;
};

// repeat > 1: each round runs each candidate `repeat` times in a row and times all but the
// first, so that every timed call finds the caches as the same candidate's previous call
// left them (torch_ab's TORCH_AB_REPEAT).
inline void time_rounds(std::vector<Candidate>& cs, int rounds, int repeat = 1) {
  std::vector<size_t> order(cs.size());
  for (size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::mt19937 rng(0);
  for (auto& c : cs) c.run();
  for (int round = 0; round < rounds; ++round) {
    std::shuffle(order.begin(), order.end(), rng);
    for (size_t k : order) {
      if (repeat > 1) cs[k].run();  // untimed: leaves the caches as this candidate does
      for (int i = 0; i < std::max(1, repeat - 1); ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        cs[k].run();
        cs[k].us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
      }
    }
  }
}

inline double median_us(const Candidate& c) {
  std::vector<double> x = c.us;
  std::sort(x.begin(), x.end());
  return x[x.size() / 2];
}

// A line per candidate: its median, and with a floor the floor's time as a share of it.
inline void print_medians(const std::vector<Candidate>& cs) {
  for (const auto& c : cs) {
    const double t = median_us(c);
    double floor_us = 0;
    for (const auto& f : cs)
      if (f.name == c.floor) floor_us = median_us(f);
    if (c.floor.empty() || floor_us == 0) {
      std::printf("  %-36s %9.1f us\n", c.name.c_str(), t);
      continue;
    }
    std::printf("  %-36s %9.1f us  %3.0f %% of %s's time\n", c.name.c_str(), t, 100 * floor_us / t, c.floor.c_str());
  }
}

}  // namespace fastwn::probe
