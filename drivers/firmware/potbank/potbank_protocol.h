// clln potentiometer controller: protocol core (drivers/firmware/PROTOCOL.md, v1.0).
// Portable C++ (no Arduino headers): the sketch potbank.ino supplies the hardware
// hooks; tests build it on the host with a serial shim and talk to it with the
// Python driver.
#pragma once
#include <stdint.h>
#include <string.h>

namespace potbank {

const uint8_t VERSION_MAJOR = 1, VERSION_MINOR = 0;
const uint16_t MAX_PAYLOAD = 512;
const uint16_t MAX_FRAME = 600;
enum Status : uint8_t { OK = 0, UNKNOWN_COMMAND, BAD_LENGTH, OUT_OF_RANGE, NO_HANDSHAKE,
                        INCOMPATIBLE, HARDWARE_FAULT };
enum Cmd : uint8_t { HELLO = 1, SET_ALL, GET_ALL, SET_ONE, PARK, PING, SET_WATCHDOG, GET_STATUS };

// Hardware the protocol drives (implemented by the sketch or the host shim).
struct Hooks {
  void (*write_tap)(uint16_t pot, uint16_t tap);  // set one wiper
  int32_t (*read_tap)(uint16_t pot);              // read it back, or -1 if the part cannot
  void (*send)(const uint8_t* data, uint16_t n);  // bytes to the host
  uint32_t (*millis)();                           // monotonic milliseconds
};

uint16_t crc16(const uint8_t* p, uint16_t n) {  // CRC-16/CCITT-FALSE
  uint16_t crc = 0xFFFF;
  while (n--) {
    crc ^= (uint16_t)(*p++) << 8;
    for (uint8_t b = 0; b < 8; b++) crc = (crc & 0x8000) ? (crc << 1) ^ 0x1021 : crc << 1;
  }
  return crc;
}

// COBS decode in place semantics: returns decoded length, or -1 if malformed.
int32_t cobs_decode(const uint8_t* in, uint16_t n, uint8_t* out) {
  uint16_t i = 0, o = 0;
  while (i < n) {
    uint8_t code = in[i++];
    if (code == 0) return -1;
    for (uint8_t k = 1; k < code; k++) {
      if (i >= n) return -1;
      if (in[i] == 0) return -1;
      out[o++] = in[i++];
    }
    if (code != 0xFF && i < n) out[o++] = 0;
  }
  return o;
}

uint16_t cobs_encode(const uint8_t* in, uint16_t n, uint8_t* out) {
  uint16_t o = 1, code_at = 0;
  uint8_t code = 1;
  for (uint16_t i = 0; i < n; i++) {
    if (in[i] == 0) {
      out[code_at] = code; code_at = o++; code = 1;
    } else {
      out[o++] = in[i]; code++;
      if (code == 0xFF) { out[code_at] = code; code_at = o++; code = 1; }
    }
  }
  out[code_at] = code;
  return o;
}

template <uint16_t N_POTS>
class Controller {
 public:
  Controller(Hooks hooks, uint16_t n_taps, const char* name)
      : hw_(hooks), n_taps_(n_taps), park_tap_(n_taps - 1), name_(name) {
    start_ = last_valid_ = hw_.millis();
    for (uint16_t i = 0; i < N_POTS; i++) { taps_[i] = park_tap_; hw_.write_tap(i, park_tap_); }
  }

  void receive(uint8_t byte) {
    if (byte != 0) {
      if (discarding_) return;
      if (len_ < MAX_FRAME) { buf_[len_++] = byte; return; }
      len_ = 0; discarding_ = true; bump(crc_errors_); return;
    }
    if (discarding_) { discarding_ = false; return; }
    if (len_) frame(buf_, len_);
    len_ = 0;
  }

  void tick() {  // the watchdog (PROTOCOL.md §7)
    if (handshake_ && watchdog_ms_ && !parked_ && hw_.millis() - last_valid_ > watchdog_ms_) {
      park(); tripped_ = true;
    }
  }

 private:
  static void bump(uint16_t& c) { if (c < 0xFFFF) c++; }

  void park() {
    for (uint16_t i = 0; i < N_POTS; i++) { taps_[i] = park_tap_; hw_.write_tap(i, park_tap_); }
    parked_ = true;
  }

  void frame(const uint8_t* enc, uint16_t n) {
    int32_t m = cobs_decode(enc, n, pkt_);
    if (m < 6) { bump(crc_errors_); return; }
    uint16_t len = pkt_[2] | (pkt_[3] << 8);
    uint16_t crc = (pkt_[m - 2] << 8) | pkt_[m - 1];
    if (len != m - 6 || crc16(pkt_, m - 2) != crc) { bump(crc_errors_); return; }
    uint8_t seq = pkt_[0], cmd = pkt_[1];
    if (cmd & 0x80) return;
    last_valid_ = hw_.millis();
    bump(frames_ok_);
    if (have_last_ && seq == last_seq_ && cmd == last_cmd_ && crc == last_crc_) {
      hw_.send(reply_, reply_len_);  // a retry: the same reply, not executed again
      return;
    }
    uint16_t r = execute(cmd, pkt_ + 4, len, out_ + 4);
    out_[0] = seq; out_[1] = cmd | 0x80; out_[2] = r & 0xFF; out_[3] = r >> 8;
    uint16_t c = crc16(out_, 4 + r);
    out_[4 + r] = c >> 8; out_[5 + r] = c & 0xFF;
    reply_len_ = cobs_encode(out_, 6 + r, reply_);
    reply_[reply_len_++] = 0;
    have_last_ = true; last_seq_ = seq; last_cmd_ = cmd; last_crc_ = crc;
    hw_.send(reply_, reply_len_);
  }

  static void put16(uint8_t* p, uint16_t v) { p[0] = v & 0xFF; p[1] = v >> 8; }
  static uint16_t get16(const uint8_t* p) { return p[0] | (p[1] << 8); }

  uint16_t execute(uint8_t cmd, const uint8_t* p, uint16_t n, uint8_t* r) {
    switch (cmd) {
      case HELLO: {
        if (n != 2) { r[0] = BAD_LENGTH; return 1; }
        r[0] = p[0] == VERSION_MAJOR ? OK : INCOMPATIBLE;
        if (r[0] == OK) handshake_ = true;
        r[1] = VERSION_MAJOR; r[2] = VERSION_MINOR;
        put16(r + 3, N_POTS); put16(r + 5, n_taps_); put16(r + 7, park_tap_); put16(r + 9, watchdog_ms_);
        uint16_t k = strlen(name_); if (k > 64) k = 64;
        memcpy(r + 11, name_, k);
        return 11 + k;
      }
      case PING: r[0] = n ? BAD_LENGTH : OK; return 1;
      case GET_STATUS: {
        if (n) { r[0] = BAD_LENGTH; return 1; }
        r[0] = OK;
        r[1] = (parked_ ? 1 : 0) | (tripped_ ? 2 : 0) | (handshake_ ? 4 : 0);
        tripped_ = false;
        put16(r + 2, crc_errors_); put16(r + 4, frames_ok_);
        uint32_t up = hw_.millis() - start_;
        r[6] = up; r[7] = up >> 8; r[8] = up >> 16; r[9] = up >> 24;
        return 10;
      }
      case SET_ALL: case GET_ALL: case SET_ONE: case PARK: case SET_WATCHDOG: break;
      default: r[0] = UNKNOWN_COMMAND; return 1;
    }
    if (!handshake_) { r[0] = NO_HANDSHAKE; return 1; }
    switch (cmd) {
      case SET_ALL: {
        if (n != 2 * N_POTS) { r[0] = BAD_LENGTH; return 1; }
        for (uint16_t i = 0; i < N_POTS; i++) if (get16(p + 2 * i) >= n_taps_) { r[0] = OUT_OF_RANGE; return 1; }
        r[0] = OK;
        for (uint16_t i = 0; i < N_POTS; i++) {
          taps_[i] = get16(p + 2 * i);
          hw_.write_tap(i, taps_[i]);
          int32_t back = hw_.read_tap(i);
          if (back >= 0 && back != taps_[i]) r[0] = HARDWARE_FAULT;
        }
        parked_ = false;
        return 1;
      }
      case GET_ALL: {
        if (n) { r[0] = BAD_LENGTH; return 1; }
        r[0] = OK;
        for (uint16_t i = 0; i < N_POTS; i++) {
          int32_t back = hw_.read_tap(i);
          put16(r + 1 + 2 * i, back >= 0 ? (uint16_t)back : taps_[i]);
        }
        return 1 + 2 * N_POTS;
      }
      case SET_ONE: {
        if (n != 4) { r[0] = BAD_LENGTH; return 1; }
        uint16_t i = get16(p), t = get16(p + 2);
        if (i >= N_POTS || t >= n_taps_) { r[0] = OUT_OF_RANGE; return 1; }
        taps_[i] = t; hw_.write_tap(i, t); parked_ = false;
        int32_t back = hw_.read_tap(i);
        r[0] = (back >= 0 && back != t) ? HARDWARE_FAULT : OK;
        return 1;
      }
      case PARK: if (n) { r[0] = BAD_LENGTH; return 1; } park(); r[0] = OK; return 1;
      case SET_WATCHDOG: {
        if (n != 2) { r[0] = BAD_LENGTH; return 1; }
        uint16_t ms = get16(p);
        if (ms > 0 && ms < 100) { r[0] = OUT_OF_RANGE; return 1; }
        watchdog_ms_ = ms; r[0] = OK; return 1;
      }
    }
    r[0] = UNKNOWN_COMMAND;
    return 1;
  }

  Hooks hw_;
  uint16_t n_taps_, park_tap_;
  const char* name_;
  uint16_t taps_[N_POTS];
  uint8_t buf_[MAX_FRAME + 1], pkt_[MAX_FRAME + 1], out_[MAX_PAYLOAD + 8], reply_[MAX_FRAME + 8];
  uint16_t len_ = 0, reply_len_ = 0, watchdog_ms_ = 2000, crc_errors_ = 0, frames_ok_ = 0, last_crc_ = 0;
  bool discarding_ = false, handshake_ = false, parked_ = true, tripped_ = false, have_last_ = false;
  uint8_t last_seq_ = 0, last_cmd_ = 0;
  uint32_t start_ = 0, last_valid_ = 0;
};

}  // namespace potbank
