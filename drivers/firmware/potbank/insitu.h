// clln in-situ controller: the experiment loop run by the microcontroller itself
// (drivers/firmware/PROTOCOL.md §12, protocol 1.2). Download an experiment in CRC-checked
// chunks, run it step by step on the analog front end (the twin networks, their converters
// and the per-edge comparators or gate circuits: PROTOCOL.md §12.7), stream one STEP record
// per step under the host's credit, keep every unacknowledged record for retransmission,
// and resume from a host checkpoint.
//
// Portable C++11 apart from the hooks: the sketch supplies the front end (FrontEnd) and
// the serial output. Arithmetic is in float (IEEE single on the AVR). A gate-voltage
// bench's state (f64 gate volts, §12.6) is relayed as raw bytes, never computed with.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "potbank_protocol.h"

namespace potbank {

const uint8_t ST_BAD_EXPERIMENT = 7;
enum InSituCmd : uint8_t { CMD_EXP_BEGIN = 0x0A, CMD_EXP_CHUNK, CMD_EXP_COMMIT, CMD_RUN, CMD_ACK,
                           CMD_RESEND, CMD_GET_STATE, CMD_SET_STATE, CMD_STEP = 0x12, CMD_STEP_PART };

#ifndef INSITU_MEMORY
#define INSITU_MEMORY 6144  // bytes for the experiment and the buffered records (§12.2)
#endif
#ifndef INSITU_MAX_NODES
#define INSITU_MAX_NODES 16
#endif
#ifndef INSITU_MAX_EDGES
#define INSITU_MAX_EDGES 32  // a gate bench's (transistor-16: 32)
#endif
#ifndef INSITU_MAX_TAP_EDGES
#define INSITU_MAX_TAP_EDGES 24  // a tap bench's
#endif
const uint8_t INSITU_MAX_PORTS = 4;          // sources, and clamped outputs
const uint16_t INSITU_TICK_NS = 500;         // Timer1 at 16 MHz / 8
const uint32_t INSITU_MAX_TICKS = 65535;     // a 16-bit compare register
const uint16_t INSITU_RECORD_MAX = 512;      // one record per frame (without flag bit 5)
const uint8_t FLAG_WIDE = 0x10;              // bit 4: f64 states (gate volts), §12.6
const uint8_t FLAG_SPLIT = 0x20;             // bit 5: records as STEP_PART frames, §12.6
const uint8_t PART_BYTES = 64;               // record bytes per STEP_PART frame
const uint8_t STATE_F32 = 4, STATE_F64 = 8;  // GET_STATE's payload: the width asked for
const uint16_t INSITU_HEADER = 41;           // §12.2
const uint16_t INSITU_RECORD_HEAD = 26;      // §12.4: step .. test_accuracy
const float VOLT_LSB = 250e-6f;              // V per count of a recorded node voltage
const int16_t NO_VOLTAGE = -32768;
// The largest request: an EXP_CHUNK (offset and 508 bytes). The largest reply the controller
// buffers: a tap bench's GET_STATE (a gate bench's, f64, is built in the receive buffer).
const uint16_t INSITU_REQUEST_MAX = 512;
const uint16_t INSITU_REPLY_MAX = 1 + 4 + 4 * INSITU_MAX_TAP_EDGES;
static_assert(4 + 8 * INSITU_MAX_EDGES <= INSITU_REQUEST_MAX, "an f64 SET_STATE fits a request");

struct FrontEndInfo {
  uint8_t n_nodes, n_edges;
  uint16_t n_taps;  // 0: the edges' state is analog (gate volts, f64), not tracked taps
  uint8_t n_sources, n_outputs;
  uint8_t outputs[INSITU_MAX_PORTS];  // node index of each clamped output, in order
};

// The analog front end (PROTOCOL.md §12.7). Every call returns false when the front end
// did not answer.
struct FrontEnd {
  bool (*info)(FrontEndInfo* out);
  // Settle the free twin (clamps null) or the clamped twin at `clamps` and read every node.
  bool (*measure)(const float* sources, const float* clamps, float* nodes);
  // Hold the twins for the next learning window: the clamped twin at `clamps`, the free
  // twin free (free_clamps null) or at `free_clamps`.
  bool (*arm)(const float* sources, const float* clamps, const float* free_clamps);
  void (*window)(uint16_t ticks);             // learning enabled for ticks Timer1 ticks
  bool (*get_taps)(uint16_t* taps);           // tracked position of every edge
  bool (*set_taps)(const uint16_t* taps);
  void (*release)();                          // sources to 0 V, learning disarmed
  // A gate bench's state: f64 gate volts of every edge, raw little-endian bytes. set_state
  // returns a status (ST_OUT_OF_RANGE for volts the gates cannot take).
  bool (*get_state)(uint8_t* f64s);
  uint8_t (*set_state)(const uint8_t* f64s);
};

class InSitu {
 public:
  InSitu(FrontEnd fe, void (*send)(const uint8_t*, uint16_t)) : fe_(fe), send_(send) {}

  uint8_t minor() const { return 2; }

  void park() {  // PARK and the watchdog end a run (§12.3)
    running_ = false;
    fe_.release();
  }

  bool stream(uint8_t cmd, const uint8_t* p, uint16_t n) {
    if (cmd != CMD_ACK && cmd != CMD_RESEND) return false;
    if (n != 4 || !running_) return true;
    uint32_t r = get32(p);
    // The host holds every record below r (the reference host asks only for its next one).
    if (r > acked_ || !started_) { acked_ = r < first_ ? first_ : r; started_ = true; }
    if (cmd == CMD_RESEND && produced_ && r >= acked_ && r <= top_) send_record(r);
    return true;
  }

  // GET_STATE of a gate bench (f64, longer than the controller's reply buffer): the reply is
  // built in the receive buffer's free `room` and sent from there (§12.6). The payload
  // `0x08, first, count` asks for edges first .. first + count - 1 only: short frames get
  // through a noisy line. The front end's gates are read whole and the slice moved down.
  bool reply(uint8_t seq, uint8_t cmd, const uint8_t* p, uint16_t n, bool handshake, uint8_t* scratch,
             uint16_t room) {
    if (cmd != CMD_GET_STATE || !handshake || (n != 1 && n != 3) || p[0] != STATE_F64) return false;
    if (!front_end() || !gates()) return false;  // answered by execute()
    uint8_t first = n == 3 ? p[1] : 0, count = n == 3 ? p[2] : info_.n_edges;
    if (!count || (uint16_t)first + count > info_.n_edges) return false;  // execute(): OUT_OF_RANGE
    uint16_t len = 5 + 8 * count;
    if (room < 5u + 8u * info_.n_edges) return false;
    if (fe_.get_state(scratch + 5)) {
      if (first) memmove(scratch + 5, scratch + 5 + 8 * first, 8 * count);
      scratch[0] = ST_OK;
      put32(scratch + 1, step_);
    } else {
      scratch[0] = ST_HARDWARE_FAULT;
      len = 1;
    }
    send_packet(seq, CMD_GET_STATE | CMD_REPLY, 0, 0, scratch, len);
    return true;
  }

  int32_t execute(uint8_t cmd, const uint8_t* p, uint16_t n, uint8_t* r, bool handshake) {
    if (cmd < CMD_EXP_BEGIN || cmd > CMD_SET_STATE) return -1;
    if (!handshake) return status(r, ST_NO_HANDSHAKE);
    switch (cmd) {
      case CMD_EXP_BEGIN:
        if (n != 6) return status(r, ST_BAD_LENGTH);
        if (get32(p) > INSITU_MEMORY) return status(r, ST_OUT_OF_RANGE);
        running_ = committed_ = false;
        size_ = get32(p); crc_ = p[4] | (p[5] << 8);
        return status(r, ST_OK);
      case CMD_EXP_CHUNK: {
        if (n < 4) return status(r, ST_BAD_LENGTH);
        uint32_t offset = get32(p);
        if (offset > size_ || n - 4 > size_ - offset) return status(r, ST_OUT_OF_RANGE);
        memcpy(arena_ + offset, p + 4, n - 4);
        committed_ = running_ = false;
        return status(r, ST_OK);
      }
      case CMD_EXP_COMMIT:
        if (n) return status(r, ST_BAD_LENGTH);
        running_ = false;
        committed_ = crc16(arena_, size_) == crc_ && front_end() && parse();
        return status(r, committed_ ? ST_OK : ST_BAD_EXPERIMENT);
      case CMD_RUN: {
        if (n != 10) return status(r, ST_BAD_LENGTH);
        uint32_t start = get32(p), count = get32(p + 4);
        uint16_t credit = p[8] | (p[9] << 8);
        if (!committed_ || start != step_ || credit < 1 || count < 1 || start >= steps_)
          return status(r, ST_OUT_OF_RANGE);
        record_ = INSITU_RECORD_HEAD + 4 * n_train_ * info_.n_nodes + state_bytes();
        if ((!(flags_ & FLAG_SPLIT) && record_ > INSITU_RECORD_MAX) ||
            size_ + (uint32_t)credit * record_ > INSITU_MEMORY)
          return status(r, ST_OUT_OF_RANGE);
        first_ = start == 0 ? 0 : start + 1;
        final_ = count > steps_ - start ? steps_ : start + count;
        credit_ = credit; acked_ = first_;
        started_ = produced_ = false;
        running_ = true;
        return status(r, ST_OK);
      }
      case CMD_GET_STATE: {
        bool wide = n >= 1 && p[0] == STATE_F64;  // f64: all edges, or a slice (n 3)
        if (!(n == 0 || (n == 1 && (wide || p[0] == STATE_F32)) || (n == 3 && wide)))
          return status(r, ST_BAD_LENGTH);
        if (!front_end()) return status(r, ST_HARDWARE_FAULT);
        // a state in its own width only: tracked taps as f32, gate volts as f64 (reply(),
        // which leaves a slice of no edge or past the last one to this refusal)
        if (gates() || wide) return status(r, ST_OUT_OF_RANGE);
        if (!fe_.get_taps(taps_)) return status(r, ST_HARDWARE_FAULT);
        r[0] = ST_OK;
        put32(r + 1, step_);
        for (uint8_t j = 0; j < info_.n_edges; j++) putf(r + 5 + 4 * j, taps_[j]);
        return 5 + 4 * info_.n_edges;
      }
      case CMD_SET_STATE: {
        if (!front_end()) return status(r, ST_HARDWARE_FAULT);
        if (gates()) {  // f64 gate volts, relayed to the front end, which checks them
          if (n != 4u + 8u * info_.n_edges) return status(r, ST_BAD_LENGTH);
          running_ = false;
          uint8_t s = fe_.set_state(p + 4);
          if (s == ST_OK) step_ = get32(p);
          return status(r, s);
        }
        if (n != 4u + 4u * info_.n_edges) return status(r, ST_BAD_LENGTH);
        for (uint8_t j = 0; j < info_.n_edges; j++) {
          float t = getf(p + 4 + 4 * j);
          if (!(t > -0.5f && t < info_.n_taps - 0.5f)) return status(r, ST_OUT_OF_RANGE);
          taps_[j] = (uint16_t)lrint(t);
        }
        running_ = false;
        if (!fe_.set_taps(taps_)) return status(r, ST_HARDWARE_FAULT);
        step_ = get32(p);
        return status(r, ST_OK);
      }
    }
    return status(r, ST_UNKNOWN_COMMAND);
  }

  // Called from the main loop: runs the next step when the host's credit allows it.
  void poll() {
    if (!running_ || !started_) return;
    uint32_t next = produced_ ? top_ + 1 : first_;
    if (next > final_ || next > acked_ - 1 + credit_) return;
    uint8_t* rec = slot(next);
    if (!run_step(next, rec)) { running_ = false; return; }  // the front end failed
    if (next) step_ = next;
    top_ = next; produced_ = true;
    if (!running_) return;  // a PARK during the step
    send_record(next);
  }

  uint32_t step() const { return step_; }
  bool running() const { return running_; }

 private:
  static uint16_t status(uint8_t* r, uint8_t s) { r[0] = s; return 1; }
  static uint32_t get32(const uint8_t* p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
  }
  static void put32(uint8_t* p, uint32_t v) { p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24; }
  static float getf(const uint8_t* p) { float v; memcpy(&v, p, 4); return v; }
  static void putf(uint8_t* p, float v) { memcpy(p, &v, 4); }
  static void put16(uint8_t* p, int16_t v) { p[0] = v & 0xFF; p[1] = (uint16_t)v >> 8; }

  bool front_end() {
    if (!fe_ok_) fe_ok_ = fe_.info(&info_) && info_.n_nodes <= INSITU_MAX_NODES &&
                          info_.n_edges <= (info_.n_taps ? INSITU_MAX_TAP_EDGES : INSITU_MAX_EDGES) &&
                          info_.n_sources <= INSITU_MAX_PORTS && info_.n_outputs <= INSITU_MAX_PORTS;
    return fe_ok_;
  }

  bool gates() const { return info_.n_taps == 0; }  // an analog state: f64 gate volts
  uint16_t state_bytes() const { return (gates() ? 8 : 4) * info_.n_edges; }

  // The edges' state into a record: f64 gate volts as the front end gives them, or the
  // tracked taps as f32.
  bool read_state(uint8_t* out) {
    if (gates()) return fe_.get_state(out);
    if (!fe_.get_taps(taps_)) return false;
    for (uint8_t j = 0; j < info_.n_edges; j++) putf(out + 4 * j, taps_[j]);
    return true;
  }

  // The experiment's layout (§12.2); false when it does not parse or cannot run here.
  bool parse() {
    const uint8_t* h = arena_;
    if (size_ < INSITU_HEADER || memcmp(h, "CLX1", 4)) return false;
    flags_ = h[4];
    // bits 6-7 are not defined; bit 4 (f64 states) must match the front end's state (§12.6)
    if ((flags_ & 0xC0) || !(flags_ & FLAG_WIDE) != !gates()) return false;
    n_train_ = h[5] | h[6] << 8; n_test_ = h[7] | h[8] << 8;
    uint8_t n_src = h[9], n_out = h[10];
    steps_ = get32(h + 11); test_every_ = get32(h + 15);
    levels_ = h[19] | h[20] << 8;
    gain_ = getf(h + 21); margin_ = getf(h + 25);
    uint32_t tick_ns = get32(h + 29), max_ticks = get32(h + 33);
    n_eta_ = h[37] | h[38] << 8; n_win_ = h[39] | h[40] << 8;
    if (n_src != info_.n_sources || n_out != info_.n_outputs || n_train_ < 1 || steps_ < 1 ||
        test_every_ < 1 || levels_ < 1 || tick_ns != INSITU_TICK_NS || max_ticks > INSITU_MAX_TICKS ||
        n_eta_ < 1 || n_win_ < 1)
      return false;
    uint32_t off = INSITU_HEADER;
    train_x_ = off; off += 4ul * n_train_ * n_src;
    train_y_ = off; off += 4ul * n_train_ * n_out;
    test_x_ = off; off += 4ul * n_test_ * n_src;
    test_y_ = off; off += 4ul * n_test_ * n_out;
    labels_ = off; if (flags_ & 8) off += (uint32_t)n_train_ + n_test_;
    learn_ = off; off += n_train_;
    eta_ = off; off += 7ul * n_eta_;
    win_ = off; off += 8ul * n_win_;
    if (off != size_) return false;
    for (uint16_t i = 0; (flags_ & 8) && i < n_train_ + n_test_; i++)
      if (arena_[labels_ + i] >= n_out) return false;
    for (uint16_t i = 0; i < n_eta_; i++) {  // runs start at step 1 and ascend
      uint32_t s = get32(arena_ + eta_ + 7 * i);
      uint16_t code = arena_[eta_ + 7 * i + 4] | arena_[eta_ + 7 * i + 5] << 8;
      if ((i == 0 ? s != 1 : s <= get32(arena_ + eta_ + 7 * (i - 1))) || s > steps_ || code > levels_) return false;
      if (arena_[eta_ + 7 * i + 6] && !(gain_ > 0)) return false;  // amplified without an amplifier
    }
    for (uint16_t i = 0; i < n_win_; i++) {
      uint32_t s = get32(arena_ + win_ + 8 * i), ticks = get32(arena_ + win_ + 8 * i + 4);
      if ((i == 0 ? s != 1 : s <= get32(arena_ + win_ + 8 * (i - 1))) || s > steps_) return false;
      if (ticks < 1 || ticks > max_ticks) return false;
    }
    return true;
  }

  // The run of a schedule (entries of `width` bytes from `at`) that holds step k.
  const uint8_t* run_of(uint32_t at, uint16_t count, uint8_t width, uint32_t k) const {
    uint16_t i = 0;
    while (i + 1 < count && get32(arena_ + at + (uint32_t)width * (i + 1)) <= k) i++;
    return arena_ + at + (uint32_t)width * i;
  }

  uint8_t* slot(uint32_t record) { return arena_ + size_ + (uint32_t)(record % credit_) * record_; }

  const uint8_t* source(uint32_t base, uint16_t i, uint8_t width) const { return arena_ + base + 4ul * i * width; }

  static float f32at(const uint8_t* p, uint8_t j) { return getf(p + 4 * j); }

  // Wrong (hinge gating): misclassified with labels, else largest |error| above the margin.
  bool wrong(const float* nodes, const uint8_t* target, int16_t label) const {
    if (label >= 0) return argmax(nodes) != label;
    float worst = 0;
    for (uint8_t o = 0; o < info_.n_outputs; o++) {
      float e = fabs(nodes[info_.outputs[o]] - f32at(target, o));
      if (e > worst) worst = e;
    }
    return worst > margin_;
  }

  uint8_t argmax(const float* nodes) const {
    uint8_t best = 0;
    for (uint8_t o = 1; o < info_.n_outputs; o++)
      if (nodes[info_.outputs[o]] > nodes[info_.outputs[best]]) best = o;
    return best;
  }

  float squared_error(const float* nodes, const uint8_t* target) const {
    float sum = 0;
    for (uint8_t o = 0; o < info_.n_outputs; o++) {
      float e = nodes[info_.outputs[o]] - f32at(target, o);
      sum += e * e;
    }
    return sum;
  }

  static int16_t counts(float volts) {
    float c = volts / VOLT_LSB;
    if (c > 32767.0f) return 32767;
    if (c < -32767.0f) return -32767;
    return (int16_t)lrint(c);
  }

  // A free pass over n samples: mean squared output error (V^2); with `correct`, the
  // number classified right; with `voltages`, every node's count of each sample.
  bool free_pass(uint32_t xs, uint32_t ys, uint16_t n, uint32_t labels, float* error,
                 uint16_t* correct, uint8_t* voltages, uint16_t* teaching) {
    float* v = v_;
    float sum = 0;
    uint8_t ns = info_.n_sources, no = info_.n_outputs;
    for (uint16_t i = 0; i < n; i++) {
      if (!fe_.measure(load(source(xs, i, ns), ns, src_), 0, v)) return false;
      const uint8_t* y = source(ys, i, no);
      sum += squared_error(v, y);
      int16_t label = (flags_ & 8) ? arena_[labels + i] : -1;
      if (correct && label >= 0 && argmax(v) == label) (*correct)++;
      if (voltages)
        for (uint8_t k = 0; k < info_.n_nodes; k++) put16(voltages + 2 * (i * info_.n_nodes + k), counts(v[k]));
      if (teaching && arena_[learn_ + i] && (!(flags_ & 1) || wrong(v, y, label))) (*teaching)++;
    }
    *error = sum / ((float)n * no);
    return true;
  }

  const float* load(const uint8_t* p, uint8_t count, float* out) const {
    for (uint8_t j = 0; j < count; j++) out[j] = f32at(p, j);
    return out;
  }

  // One record (§12.4) into rec: step 0 is the initial evaluation, step k > 0 one step of
  // the loop (PROTOCOL.md §12.8).
  bool run_step(uint32_t k, uint8_t* rec) {
    uint16_t N = n_train_, nn = info_.n_nodes;
    uint8_t no = info_.n_outputs;
    uint8_t* free_v = rec + INSITU_RECORD_HEAD;
    uint8_t* clamped_v = free_v + 2u * N * nn;
    for (uint16_t i = 0; i < N * nn; i++) put16(clamped_v + 2 * i, NO_VOLTAGE);
    float eta = 0, window_us = 0, train_error;
    uint16_t count = 0;
    if (k == 0) {
      if (!free_pass(train_x_, train_y_, N, labels_, &train_error, 0, free_v, 0)) return false;
    } else {
      const uint8_t* e = run_of(eta_, n_eta_, 7, k);
      eta = (float)(e[4] | e[5] << 8) / levels_;
      if (e[6]) eta *= gain_;
      uint16_t teaching = 0;
      if (!free_pass(train_x_, train_y_, N, labels_, &train_error, 0, 0, &teaching)) return false;
      uint32_t ticks = get32(run_of(win_, n_win_, 8, k) + 4);
      if (flags_ & 2) ticks = nor_ticks(ticks, teaching ? teaching : 1);
      window_us = ticks * (INSITU_TICK_NS / 1000.0f);
      float *v = v_, *clamps = clamps_, *mirror = mirror_;
      for (uint16_t i = 0; i < N; i++) {
        const float* src = load(source(train_x_, i, info_.n_sources), info_.n_sources, src_);
        if (!fe_.measure(src, 0, v)) return false;
        for (uint8_t j = 0; j < nn; j++) put16(free_v + 2 * (i * nn + j), counts(v[j]));
        const uint8_t* y = source(train_y_, i, no);
        if (!arena_[learn_ + i]) continue;
        if ((flags_ & 1) && !wrong(v, y, (flags_ & 8) ? arena_[labels_ + i] : -1)) continue;
        for (uint8_t o = 0; o < no; o++) {
          float out = v[info_.outputs[o]], nudge = eta * (f32at(y, o) - out);
          clamps[o] = out + nudge;
          mirror[o] = out - nudge;
        }
        if (!fe_.measure(src, clamps, v)) return false;
        for (uint8_t j = 0; j < nn; j++) put16(clamped_v + 2 * (i * nn + j), counts(v[j]));
        if (!fe_.arm(src, clamps, (flags_ & 4) ? mirror : 0)) return false;
        fe_.window((uint16_t)ticks);
        count++;
      }
    }
    // a step's state is the edges' after its windows, before its test pass (docs/insitu.md,
    // "The loop"; a gate leaks while the test samples are measured); step 0's, after it
    uint8_t* state = clamped_v + 2u * N * nn;
    if (k && !read_state(state)) return false;
    float test_error = NAN, accuracy = NAN;
    if (k == 0 || k % test_every_ == 0 || k == steps_) {
      uint16_t right = 0;
      if (!free_pass(test_x_, test_y_, n_test_, labels_ + N, &test_error, &right, 0, 0)) return false;
      if (flags_ & 8) accuracy = (float)right / n_test_;
    }
    if (!k && !read_state(state)) return false;
    put32(rec, k);
    putf(rec + 4, eta);
    putf(rec + 8, window_us);
    rec[12] = count & 0xFF; rec[13] = count >> 8;
    putf(rec + 14, train_error);
    putf(rec + 18, test_error);
    putf(rec + 22, accuracy);
    return true;
  }

  // NOR: the step's window shared by the teaching samples, rounded to the nearest tick
  // (ties to even), at least one.
  static uint32_t nor_ticks(uint32_t ticks, uint16_t n) {
    uint32_t q = ticks / n, rem = ticks % n;
    if (2 * rem > n || (2 * rem == n && (q & 1))) q++;
    return q ? q : 1;
  }

  // A buffered record: one STEP packet (§12.4), or STEP_PART packets of at most 64 of its
  // bytes each (flag bit 5, §12.6).
  void send_record(uint32_t record) {
    const uint8_t* payload = slot(record);
    if (!(flags_ & FLAG_SPLIT)) {
      send_packet((uint8_t)record, CMD_STEP | CMD_REPLY, 0, 0, payload, record_);
      return;
    }
    uint8_t parts = (record_ + PART_BYTES - 1) / PART_BYTES, head[6];
    put32(head, record);
    head[5] = parts;
    for (uint8_t k = 0; k < parts; k++) {
      uint16_t at = (uint16_t)k * PART_BYTES, len = record_ - at < PART_BYTES ? record_ - at : PART_BYTES;
      head[4] = k;
      send_packet((uint8_t)record, CMD_STEP_PART | CMD_REPLY, head, sizeof(head), payload + at, len);
    }
  }

  // A packet (seq, cmd, the payload `pre` then `body`), COBS-encoded as it goes out.
  void send_packet(uint8_t seq, uint8_t cmd, const uint8_t* pre, uint16_t n_pre, const uint8_t* body,
                   uint16_t n_body) {
    uint16_t len = n_pre + n_body;
    uint8_t head[4] = {seq, cmd, (uint8_t)len, (uint8_t)(len >> 8)};
    uint16_t crc = crc16(body, n_body, crc16(pre, n_pre, crc16(head, 4)));
    uint8_t tail[2] = {(uint8_t)(crc >> 8), (uint8_t)crc};
    uint16_t total = 4 + len + 2;
    auto at = [&](uint16_t i) -> uint8_t {
      return i < 4 ? head[i] : i < 4 + n_pre ? pre[i - 4] : i < 4 + len ? body[i - 4 - n_pre] : tail[i - 4 - len];
    };
    uint16_t i = 0;
    for (;;) {
      uint16_t j = i;
      while (j < total && j - i < 254 && at(j) != 0) j++;
      out(j - i + 1);
      for (uint16_t m = i; m < j; m++) out(at(m));
      if (j == total) break;
      i = j - i == 254 ? j : j + 1;  // a full block consumes no zero
    }
    out(0);
    flush();
  }

  void out(uint8_t b) { if (pending_ == sizeof(chunk_)) flush(); chunk_[pending_++] = b; }
  void flush() { if (pending_) send_(chunk_, pending_); pending_ = 0; }

  FrontEnd fe_;
  void (*send_)(const uint8_t*, uint16_t);
  FrontEndInfo info_;
  bool fe_ok_ = false, committed_ = false, running_ = false, started_ = false, produced_ = false;
  uint8_t flags_ = 0, chunk_[16], pending_ = 0;
  uint16_t crc_ = 0, n_train_ = 0, n_test_ = 0, levels_ = 1, n_eta_ = 0, n_win_ = 0, credit_ = 1, record_ = 0;
  uint32_t size_ = 0, steps_ = 0, test_every_ = 1, step_ = 0;
  uint32_t train_x_, train_y_, test_x_, test_y_, labels_, learn_, eta_, win_;
  uint32_t first_ = 0, final_ = 0, acked_ = 0, top_ = 0;
  float gain_ = 0, margin_ = 0;
  // Scratch (here rather than on the stack, so that avr-size counts it): one sample's
  // sources, node voltages, clamps and mirrored clamps, and the edges' taps.
  float src_[INSITU_MAX_PORTS], v_[INSITU_MAX_NODES], clamps_[INSITU_MAX_PORTS], mirror_[INSITU_MAX_PORTS];
  uint16_t taps_[INSITU_MAX_TAP_EDGES];
  uint8_t arena_[INSITU_MEMORY];
};

}  // namespace potbank
