// clln potentiometer controller: protocol core (drivers/firmware/PROTOCOL.md, v1.1; with an
// Extension such as the in-situ mode of insitu.h, v1.2).
// Portable C++11 (no Arduino headers): the sketch potbank.ino supplies the hardware
// hooks; tests build it on the host with a serial shim and talk to it with the
// Python driver. Identifiers carry prefixes (CMD_, ST_, RESET_) because avr-libc
// defines register macros such as PING, PINA and PORTB.
#pragma once
#include <stdint.h>
#include <string.h>

namespace potbank {

const uint8_t VERSION_MAJOR = 1, VERSION_MINOR = 1;
enum Status : uint8_t { ST_OK = 0, ST_UNKNOWN_COMMAND, ST_BAD_LENGTH, ST_OUT_OF_RANGE,
                        ST_NO_HANDSHAKE, ST_INCOMPATIBLE, ST_HARDWARE_FAULT };
enum Cmd : uint8_t { CMD_HELLO = 1, CMD_SET_ALL, CMD_GET_ALL, CMD_SET_ONE, CMD_PARK, CMD_PING,
                     CMD_SET_WATCHDOG, CMD_GET_STATUS, CMD_BOOT, CMD_REPLY = 0x80 };
// Reset cause bits of the BOOT packet: the AVR's MCUSR bits PORF, EXTRF, BORF, WDRF.
enum ResetCause : uint8_t { RESET_POWER_ON = 1, RESET_EXTERNAL = 2, RESET_BROWN_OUT = 4,
                            RESET_WATCHDOG = 8 };
const uint8_t NAME_MAX = 64;

// Hardware the protocol drives (implemented by the sketch or the host shim).
struct Hooks {
  void (*write_tap)(uint16_t pot, uint16_t tap);  // set one wiper
  int32_t (*read_tap)(uint16_t pot);              // read it back, or -1 if the part cannot
  void (*send)(const uint8_t* data, uint16_t n);  // bytes to the host
  uint32_t (*millis)();                           // monotonic milliseconds
};

uint16_t crc16(const uint8_t* p, uint16_t n, uint16_t crc = 0xFFFF) {  // CRC-16/CCITT-FALSE
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

// Buffer sizes of a controller with n pots (PROTOCOL.md §2, §9): the largest payload is
// GET_ALL's reply (1 + 2n bytes) or HELLO's (11 + NAME_MAX), the largest request SET_ALL's
// (2n); a packet adds 6 bytes, COBS one byte per 254 plus one.
constexpr uint16_t max_payload(uint16_t n) { return 2 * n + 1 > 11 + NAME_MAX ? 2 * n + 1 : 11 + NAME_MAX; }
constexpr uint16_t max_frame(uint16_t packet) { return packet + packet / 254 + 1; }
constexpr uint16_t larger(uint16_t a, uint16_t b) { return a > b ? a : b; }

// Commands a later protocol minor version adds (PROTOCOL.md §12: the in-situ mode, insitu.h).
// The controller hands an extension every request it does not know and every park; its
// hooks are static, so a controller without one (NoExtension) costs nothing.
struct NoExtension {
  static uint8_t minor() { return VERSION_MINOR; }
  // A stream command (no reply, no retry memory, §12.5): true when it was one.
  static bool stream(uint8_t, const uint8_t*, uint16_t) { return false; }
  // A request whose reply is longer than the controller's reply buffer: the extension
  // builds it in `scratch` (`room` bytes of the receive buffer past the request) and sends
  // it itself; it is not kept, so a retry executes again. True when it was one.
  static bool reply(uint8_t, uint8_t, const uint8_t*, uint16_t, bool, uint8_t*, uint16_t) { return false; }
  // Execute a request into r (status first): the reply length, or -1 when cmd is unknown.
  static int32_t execute(uint8_t, const uint8_t*, uint16_t, uint8_t*, bool) { return -1; }
  static void park() {}
  // Whether the extension drives the bench (a run): the watchdog then watches the host
  // as it does an unparked chain.
  static bool active() { return false; }
};

// EXT: the extension; REQUEST_MAX and REPLY_MAX: its largest request and reply payloads.
template <uint16_t N_POTS, class EXT = NoExtension, uint16_t REQUEST_MAX = 2 * N_POTS, uint16_t REPLY_MAX = 0>
class Controller {
 public:
  static_assert(N_POTS >= 1 && N_POTS <= 256, "SET_ALL carries 1..256 pots");
  static const uint16_t PAYLOAD = larger(max_payload(N_POTS), REPLY_MAX);
  static const uint16_t REQUEST_FRAME = max_frame(larger(2 * N_POTS, REQUEST_MAX) + 6);  // longer is garbage
  static const uint16_t REPLY_FRAME = max_frame(PAYLOAD + 6);

  Controller(Hooks hooks, uint16_t n_taps, const char* name)
      : hw_(hooks), n_taps_(n_taps), park_tap_(n_taps - 1), name_(name) {}

  // Start-up (PROTOCOL.md §7.1), once the serial port is up. After a power-on or
  // brown-out reset every pot is parked. After an external-pin or watchdog reset the
  // pots kept their power and their wipers: they are read back and kept, and the boot
  // guard parks them unless a valid HELLO arrives within the watchdog time. Then the
  // BOOT packet reports the reset cause and whether the pots were parked.
  void begin(uint8_t reset_cause) {
    start_ = last_valid_ = hw_.millis();
    bool warm = (reset_cause & (RESET_EXTERNAL | RESET_WATCHDOG)) &&
                !(reset_cause & (RESET_POWER_ON | RESET_BROWN_OUT));
    for (uint16_t i = 0; warm && i < N_POTS; i++) {
      int32_t tap = hw_.read_tap(i);
      if (tap < 0 || tap >= n_taps_) warm = false;  // no read-back, or not a tap we set
      else taps_[i] = tap;
    }
    if (warm) { parked_ = false; boot_guard_ = true; } else park();
    uint8_t* r = out_ + 4;
    r[0] = ST_OK; r[1] = reset_cause; r[2] = VERSION_MAJOR; r[3] = minor(); r[4] = parked_;
    send_packet(0, CMD_BOOT | CMD_REPLY, 5);
  }

  void receive(uint8_t byte) {
    if (byte != 0) {
      if (discarding_) return;
      if (len_ < REQUEST_FRAME) { buf_[len_++] = byte; return; }
      len_ = 0; discarding_ = true; bump(crc_errors_); return;
    }
    if (discarding_) { discarding_ = false; return; }
    if (len_) frame(len_);
    len_ = 0;
  }

  void tick() {  // the watchdog and the boot guard (PROTOCOL.md §7)
    uint32_t now = hw_.millis();
    if (handshake_ && watchdog_ms_ && (!parked_ || EXT::active()) && now - last_valid_ > watchdog_ms_) {
      park(); tripped_ = true;
    }
    if (boot_guard_ && now - start_ > BOOT_GUARD_MS) { park(); tripped_ = true; }
  }

  static const uint16_t BOOT_GUARD_MS = 2000;

 private:
  static void bump(uint16_t& c) { if (c < 0xFFFF) c++; }

  void park() {
    for (uint16_t i = 0; i < N_POTS; i++) { taps_[i] = park_tap_; hw_.write_tap(i, park_tap_); }
    parked_ = true;
    boot_guard_ = false;
    EXT::park();
  }

  static uint8_t minor() { return EXT::minor(); }

  // Frame out_[0..4+n) as a packet (header filled here) into reply_ and send it.
  void send_packet(uint8_t seq, uint8_t cmd, uint16_t n) {
    out_[0] = seq; out_[1] = cmd; out_[2] = n & 0xFF; out_[3] = n >> 8;
    uint16_t c = crc16(out_, 4 + n);
    out_[4 + n] = c >> 8; out_[5 + n] = c & 0xFF;
    reply_len_ = cobs_encode(out_, 6 + n, reply_);
    reply_[reply_len_++] = 0;
    hw_.send(reply_, reply_len_);
  }

  void frame(uint16_t n) {
    int32_t m = cobs_decode(buf_, n, buf_);  // in place: the output never overtakes the input
    uint8_t* pkt = buf_;
    if (m < 6) { bump(crc_errors_); return; }
    uint16_t len = pkt[2] | (pkt[3] << 8);
    uint16_t crc = (pkt[m - 2] << 8) | pkt[m - 1];
    if (len != m - 6 || crc16(pkt, m - 2) != crc) { bump(crc_errors_); return; }
    uint8_t seq = pkt[0], cmd = pkt[1];
    if (cmd & CMD_REPLY) return;
    last_valid_ = hw_.millis();
    bump(frames_ok_);
    if (EXT::stream(cmd, pkt + 4, len)) return;
    if (EXT::reply(seq, cmd, pkt + 4, len, handshake_, buf_ + m, REQUEST_FRAME - m)) return;
    if (have_last_ && seq == last_seq_ && cmd == last_cmd_ && crc == last_crc_) {
      hw_.send(reply_, reply_len_);  // a retry: the same reply, not executed again
      return;
    }
    uint16_t r = execute(cmd, pkt + 4, len, out_ + 4);
    have_last_ = true; last_seq_ = seq; last_cmd_ = cmd; last_crc_ = crc;
    send_packet(seq, cmd | CMD_REPLY, r);
  }

  static void put16(uint8_t* p, uint16_t v) { p[0] = v & 0xFF; p[1] = v >> 8; }
  static uint16_t get16(const uint8_t* p) { return p[0] | (p[1] << 8); }

  uint16_t execute(uint8_t cmd, const uint8_t* p, uint16_t n, uint8_t* r) {
    switch (cmd) {
      case CMD_HELLO: {
        if (n != 2) { r[0] = ST_BAD_LENGTH; return 1; }
        r[0] = p[0] == VERSION_MAJOR ? ST_OK : ST_INCOMPATIBLE;
        if (r[0] == ST_OK) { handshake_ = true; boot_guard_ = false; }
        r[1] = VERSION_MAJOR; r[2] = minor();
        put16(r + 3, N_POTS); put16(r + 5, n_taps_); put16(r + 7, park_tap_); put16(r + 9, watchdog_ms_);
        uint16_t k = strlen(name_); if (k > NAME_MAX) k = NAME_MAX;
        memcpy(r + 11, name_, k);
        return 11 + k;
      }
      case CMD_PING: r[0] = n ? ST_BAD_LENGTH : ST_OK; return 1;
      case CMD_GET_STATUS: {
        if (n) { r[0] = ST_BAD_LENGTH; return 1; }
        r[0] = ST_OK;
        r[1] = (parked_ ? 1 : 0) | (tripped_ ? 2 : 0) | (handshake_ ? 4 : 0);
        tripped_ = false;
        put16(r + 2, crc_errors_); put16(r + 4, frames_ok_);
        uint32_t up = hw_.millis() - start_;
        r[6] = up; r[7] = up >> 8; r[8] = up >> 16; r[9] = up >> 24;
        return 10;
      }
      case CMD_SET_ALL: case CMD_GET_ALL: case CMD_SET_ONE: case CMD_PARK: case CMD_SET_WATCHDOG: break;
      default: {  // CMD_BOOT too: it is never a request
        int32_t k = EXT::execute(cmd, p, n, r, handshake_);
        if (k >= 0) return (uint16_t)k;
        r[0] = ST_UNKNOWN_COMMAND; return 1;
      }
    }
    if (!handshake_) { r[0] = ST_NO_HANDSHAKE; return 1; }
    switch (cmd) {
      case CMD_SET_ALL: {
        if (n != 2 * N_POTS) { r[0] = ST_BAD_LENGTH; return 1; }
        for (uint16_t i = 0; i < N_POTS; i++) if (get16(p + 2 * i) >= n_taps_) { r[0] = ST_OUT_OF_RANGE; return 1; }
        r[0] = ST_OK;
        for (uint16_t i = 0; i < N_POTS; i++) {
          taps_[i] = get16(p + 2 * i);
          hw_.write_tap(i, taps_[i]);
          int32_t back = hw_.read_tap(i);
          if (back >= 0 && back != taps_[i]) r[0] = ST_HARDWARE_FAULT;
        }
        parked_ = false;
        return 1;
      }
      case CMD_GET_ALL: {
        if (n) { r[0] = ST_BAD_LENGTH; return 1; }
        r[0] = ST_OK;
        for (uint16_t i = 0; i < N_POTS; i++) {
          int32_t back = hw_.read_tap(i);
          put16(r + 1 + 2 * i, back >= 0 ? (uint16_t)back : taps_[i]);
        }
        return 1 + 2 * N_POTS;
      }
      case CMD_SET_ONE: {
        if (n != 4) { r[0] = ST_BAD_LENGTH; return 1; }
        uint16_t i = get16(p), t = get16(p + 2);
        if (i >= N_POTS || t >= n_taps_) { r[0] = ST_OUT_OF_RANGE; return 1; }
        taps_[i] = t; hw_.write_tap(i, t); parked_ = false;
        int32_t back = hw_.read_tap(i);
        r[0] = (back >= 0 && back != t) ? ST_HARDWARE_FAULT : ST_OK;
        return 1;
      }
      case CMD_PARK: if (n) { r[0] = ST_BAD_LENGTH; return 1; } park(); r[0] = ST_OK; return 1;
      case CMD_SET_WATCHDOG: {
        if (n != 2) { r[0] = ST_BAD_LENGTH; return 1; }
        uint16_t ms = get16(p);
        if (ms > 0 && ms < 100) { r[0] = ST_OUT_OF_RANGE; return 1; }
        watchdog_ms_ = ms; r[0] = ST_OK; return 1;
      }
    }
    r[0] = ST_UNKNOWN_COMMAND;
    return 1;
  }

  Hooks hw_;
  uint16_t n_taps_, park_tap_;
  const char* name_;
  uint16_t taps_[N_POTS];
  uint8_t buf_[REQUEST_FRAME], out_[PAYLOAD + 6], reply_[REPLY_FRAME + 1];
  uint16_t len_ = 0, reply_len_ = 0, watchdog_ms_ = 2000, crc_errors_ = 0, frames_ok_ = 0, last_crc_ = 0;
  bool discarding_ = false, handshake_ = false, parked_ = true, tripped_ = false, have_last_ = false;
  bool boot_guard_ = false;
  uint8_t last_seq_ = 0, last_cmd_ = 0;
  uint32_t start_ = 0, last_valid_ = 0;
};

}  // namespace potbank
