// Host build of the firmware's protocol core for interoperability tests: serves the
// controller on stdin/stdout (raw bytes), with 16 pots held in memory.
//   g++ -O2 -std=c++17 -o potbank-host host_shim.cpp
#include <chrono>
#include <cstdio>
#include <poll.h>
#include <unistd.h>
#include "potbank_protocol.h"

static uint16_t taps[16];
static void write_tap(uint16_t pot, uint16_t tap) { taps[pot] = tap; }
static int32_t read_tap(uint16_t pot) { return taps[pot]; }
static void send(const uint8_t* d, uint16_t n) { (void)!write(1, d, n); }
static uint32_t now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

int main() {
  potbank::Controller<16> c({write_tap, read_tap, send, now_ms}, 129, "clln potbank host build");
  c.begin(potbank::RESET_POWER_ON);  // a fresh process is a power-on: parks, sends BOOT
  uint8_t buf[256];
  for (;;) {
    pollfd p{0, POLLIN, 0};
    if (poll(&p, 1, 5) > 0) {
      ssize_t n = read(0, buf, sizeof buf);
      if (n <= 0) return 0;
      for (ssize_t i = 0; i < n; i++) c.receive(buf[i]);
    }
    c.tick();
  }
}
